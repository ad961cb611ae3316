//! What a journaled operation is ([`OperationKind`]) and where it is in its life
//! ([`OperationStatus`]): one pair of enums for the store, the API and the daemon, whose
//! wire names (`snapshot_save`, `rolled_back`, …) are their serde names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident ($noun:literal) { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name (the serde name).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with a wire name (`status == "running"`).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        /// Parses the wire name [`Self::as_str`] gives.
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}", $noun))
            }
        }
    };
}

wire_enum! {
    /// Where an operation is in its life.
    OperationStatus ("status") {
        /// Accepted and being carried out.
        Running = "running",
        /// Done; the result is recorded.
        Succeeded = "succeeded",
        /// Ended with an error; the error is recorded and nothing was left half done.
        Failed = "failed",
        /// Its owner died before it finished and the recovery undid or abandoned it.
        RolledBack = "rolled_back",
    }
}

impl OperationStatus {
    /// Whether it will change no more.
    pub fn is_terminal(self) -> bool {
        self != OperationStatus::Running
    }
}

wire_enum! {
    /// What an operation does.
    OperationKind ("operation kind") {
        /// Define a VM.
        Create = "create",
        /// Boot it.
        Start = "start",
        /// Stop it.
        Stop = "stop",
        /// Pause its vCPUs.
        Pause = "pause",
        /// Resume them.
        Resume = "resume",
        /// Reboot the guest.
        Reboot = "reboot",
        /// Remove the VM.
        Delete = "delete",
        /// Save a memory snapshot.
        SnapshotSave = "snapshot_save",
        /// Restore one.
        SnapshotRestore = "snapshot_restore",
        /// Delete one.
        SnapshotDelete = "snapshot_delete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serde_names_and_parse_back() {
        for s in OperationStatus::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.as_str().parse::<OperationStatus>(), Ok(*s));
        }
        for k in OperationKind::ALL {
            assert_eq!(serde_json::to_string(k).unwrap(), format!("\"{k}\""));
            assert_eq!(k.as_str().parse::<OperationKind>(), Ok(*k));
        }
        assert!("exploded".parse::<OperationStatus>().is_err());
        assert!(
            OperationStatus::RolledBack.is_terminal() && !OperationStatus::Running.is_terminal()
        );
    }
}

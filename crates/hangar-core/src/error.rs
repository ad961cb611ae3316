//! The error taxonomy of the backend contracts.
//!
//! Domain errors are enums with context ([`Error`] for the backend contracts, spec diagnostics in
//! `hangar-spec`, each adapter's own enum carried whole in [`Error::Adapter`]); each maps every
//! variant to exactly one stable code from [`crate::code`], re-exported here.

use std::fmt;

pub use crate::code::{registry_markdown, Coded, ErrorClass, ErrorCode};
use crate::ids::{InvalidName, NetworkName, SnapshotId, VmName, VolumeId};
use crate::lifecycle::InvalidTransition;

/// The error type of the backend contracts. Every variant carries the context needed to act on
/// it and maps to one stable code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// No such VM.
    #[error("VM {0} not found")]
    VmNotFound(VmName),
    /// A VM of that name exists with a different spec.
    #[error("VM {0} already exists with a different spec")]
    VmExists(VmName),
    /// The state machine refused the move.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// A bad argument.
    #[error("invalid argument {what}: {reason}")]
    InvalidArgument {
        /// The argument.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An invalid name.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// No such snapshot.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(SnapshotId),
    /// A snapshot with that id exists already.
    #[error("snapshot {0} already exists")]
    SnapshotExists(SnapshotId),
    /// The snapshot is in use.
    #[error("snapshot {snapshot} is in use by VM {vm}")]
    SnapshotInUse {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The VM using it.
        vm: VmName,
    },
    /// The snapshot cannot be restored onto this VM.
    #[error("snapshot {snapshot} cannot be restored: {reason}")]
    SnapshotMismatch {
        /// The snapshot.
        snapshot: SnapshotId,
        /// What differs.
        reason: String,
    },
    /// No such disk.
    #[error("disk {0} not found")]
    DiskNotFound(VolumeId),
    /// A disk with that id exists.
    #[error("disk {0} already exists")]
    DiskExists(VolumeId),
    /// The disk has snapshots.
    #[error("disk {disk} has {count} snapshot(s)")]
    DiskHasSnapshots {
        /// The disk.
        disk: VolumeId,
        /// How many snapshots reference it.
        count: usize,
    },
    /// The disk is in use.
    #[error("disk {disk} is in use by {user}")]
    DiskInUse {
        /// The disk.
        disk: VolumeId,
        /// What uses it.
        user: String,
    },
    /// No such NIC.
    #[error("VM {vm} has no NIC {nic}")]
    NicNotFound {
        /// The VM.
        vm: VmName,
        /// The NIC name.
        nic: String,
    },
    /// A NIC of that name exists.
    #[error("VM {vm} already has a NIC {nic}")]
    NicExists {
        /// The VM.
        vm: VmName,
        /// The NIC name.
        nic: String,
    },
    /// No such network.
    #[error("network {0} not found")]
    NetworkNotFound(NetworkName),
    /// A network of that name exists.
    #[error("network {0} already exists")]
    NetworkExists(NetworkName),
    /// The network has leases.
    #[error("network {network} is in use by {vms:?}")]
    NetworkInUse {
        /// The network.
        network: NetworkName,
        /// The VMs with NICs on it.
        vms: Vec<String>,
    },
    /// No address left.
    #[error("network {network} ({subnet}) has no free address")]
    NetworkExhausted {
        /// The network.
        network: NetworkName,
        /// Its subnet.
        subnet: String,
    },
    /// The subnet overlaps another network's.
    #[error("subnet {subnet} overlaps network {other} ({other_subnet})")]
    NetworkOverlap {
        /// The subnet asked for.
        subnet: String,
        /// The network it overlaps.
        other: NetworkName,
        /// That network's subnet.
        other_subnet: String,
    },
    /// The host cannot build the network.
    #[error("the host network cannot be set up: {0}")]
    NetworkUnavailable(String),
    /// The engine lacks a capability.
    #[error("the engine does not support {0}")]
    Unsupported(String),
    /// The engine is not usable.
    #[error("engine unavailable: {0}")]
    EngineUnavailable(String),
    /// The engine failed.
    #[error("engine failed: {0}")]
    EngineFailed(String),
    /// Cancelled by the caller.
    #[error("operation cancelled")]
    Cancelled,
    /// Took too long.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// A quota would be exceeded.
    #[error("quota {quota} exceeded: limit {limit}, in use {used}, requested {requested}")]
    QuotaExceeded {
        /// The quota's name.
        quota: String,
        /// The limit.
        limit: u64,
        /// Current use.
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// A failure in an adapter's own machinery (its state store, image tools) that keeps its
    /// own code.
    #[error("{message}")]
    Backend {
        /// The code.
        code: ErrorCode,
        /// What happened.
        message: String,
    },
    /// An adapter's own error, carried whole: its code, hint, field path and source chain
    /// reach the edge (CLI, API) instead of being flattened into a string here.
    #[error(transparent)]
    Adapter(AdapterError),
    /// An error injected by a fake (test knob); reports the chosen code.
    #[error("injected fault {code} on call {call}")]
    Injected {
        /// The code the test asked for.
        code: ErrorCode,
        /// The call number that failed.
        call: u64,
    },
}

impl Coded for Error {
    fn code(&self) -> ErrorCode {
        match self {
            Error::VmNotFound(_) => ErrorCode::VmNotFound,
            Error::VmExists(_) => ErrorCode::VmExists,
            Error::InvalidTransition(_) => ErrorCode::InvalidTransition,
            Error::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Error::InvalidName(e) => e.code(),
            Error::SnapshotNotFound(_) => ErrorCode::SnapshotNotFound,
            Error::SnapshotExists(_) => ErrorCode::SnapshotExists,
            Error::SnapshotInUse { .. } => ErrorCode::SnapshotInUse,
            Error::SnapshotMismatch { .. } => ErrorCode::SnapshotMismatch,
            Error::DiskNotFound(_) => ErrorCode::DiskNotFound,
            Error::DiskExists(_) => ErrorCode::DiskExists,
            Error::DiskHasSnapshots { .. } => ErrorCode::DiskHasSnapshots,
            Error::DiskInUse { .. } => ErrorCode::DiskInUse,
            Error::NicNotFound { .. } => ErrorCode::NicNotFound,
            Error::NicExists { .. } => ErrorCode::NicExists,
            Error::NetworkNotFound(_) => ErrorCode::NetworkNotFound,
            Error::NetworkExists(_) => ErrorCode::NetworkExists,
            Error::NetworkInUse { .. } => ErrorCode::NetworkInUse,
            Error::NetworkExhausted { .. } => ErrorCode::NetworkExhausted,
            Error::NetworkOverlap { .. } => ErrorCode::NetworkOverlap,
            Error::NetworkUnavailable(_) => ErrorCode::NetworkUnavailable,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::EngineUnavailable(_) => ErrorCode::EngineUnavailable,
            Error::EngineFailed(_) => ErrorCode::EngineFailed,
            Error::Cancelled => ErrorCode::Cancelled,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            Error::Backend { code, .. } => *code,
            Error::Injected { code, .. } => *code,
            Error::Adapter(e) => e.0.code(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            Error::Adapter(e) => e.0.hint(),
            Error::InvalidName(e) => Some(e.hint()),
            Error::InvalidTransition(e) => Some(e.hint()),
            _ => None,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            Error::Adapter(e) => e.0.path(),
            // Field-shaped arguments (`boot.kernel`, `disk[0].source`) name the spec field.
            Error::InvalidArgument { what, .. }
                if what.chars().all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c)) =>
            {
                Some(what.clone())
            }
            _ => None,
        }
    }
}

/// Result alias for the backend contracts.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error type an adapter defines for itself: a real error (with its sources) that knows its
/// stable code.
pub trait CodedError: std::error::Error + Coded + Send + Sync + 'static {}

impl<T: std::error::Error + Coded + Send + Sync + 'static> CodedError for T {}

/// An adapter's error inside [`Error::Adapter`]: shared (so [`Error`] stays `Clone`), compared
/// by code and message, and open to [`AdapterError::downcast_ref`] for callers that know the
/// adapter.
#[derive(Clone)]
pub struct AdapterError(std::sync::Arc<dyn CodedError>);

impl AdapterError {
    /// Wraps an adapter's error.
    pub fn new(e: impl CodedError) -> AdapterError {
        AdapterError(std::sync::Arc::new(e))
    }

    /// The adapter's own error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let e: &(dyn std::error::Error + 'static) = &*self.0;
        e.downcast_ref()
    }
}

impl fmt::Debug for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for AdapterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for AdapterError {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
            || (self.0.code() == other.0.code() && self.0.to_string() == other.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_error_keeps_its_code_hint_path_and_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot reach the thing")]
        struct Outer(#[source] std::io::Error);
        impl Coded for Outer {
            fn code(&self) -> ErrorCode {
                ErrorCode::Timeout
            }
            fn hint(&self) -> Option<String> {
                Some("wait longer".into())
            }
            fn path(&self) -> Option<String> {
                Some("boot.kernel".into())
            }
        }
        let e = Error::Adapter(AdapterError::new(Outer(std::io::Error::other("inner"))));
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(e.hint().as_deref(), Some("wait longer"));
        assert_eq!(e.path().as_deref(), Some("boot.kernel"));
        assert_eq!(e.to_string(), "cannot reach the thing");
        let source = std::error::Error::source(&e).expect("the io error is its source");
        assert_eq!(source.to_string(), "inner");
        assert_eq!(e.clone(), e);
        let Error::Adapter(a) = &e else { unreachable!() };
        assert!(a.downcast_ref::<Outer>().is_some());
        assert!(a.downcast_ref::<std::io::Error>().is_none());
    }

    #[test]
    fn injected_errors_report_the_chosen_code() {
        let e = Error::Injected { code: ErrorCode::Timeout, call: 3 };
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert!(e.retryable());
    }
}

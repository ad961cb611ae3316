//! Identifier newtypes.
//!
//! Every identifier that crosses a boundary (spec file, API, store) is one of these types, so a
//! string is validated once, where it enters, and never again. All names share one grammar: 1–63
//! characters of `[a-z0-9-]`, not starting or ending with `-` (a DNS label, so a name is usable
//! as a hostname, a file name and a URL segment without quoting).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;

/// Longest accepted name, in bytes (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidName {
    /// Which kind of identifier was being parsed (`vm name`, `tenant id`, …).
    pub kind: &'static str,
    /// The rejected input, as given.
    pub value: String,
    /// What rule it broke.
    pub reason: NameRule,
}

impl InvalidName {
    /// The stable error code: shell metacharacters get their own code because they usually
    /// mean someone is trying to smuggle a command through a name.
    pub fn code(&self) -> ErrorCode {
        match self.reason {
            NameRule::ShellMetacharacter(_) => ErrorCode::SpecShellMetachar,
            _ => ErrorCode::InvalidName,
        }
    }

    /// A one-line fix for the user.
    pub fn hint(&self) -> String {
        match self.reason {
            NameRule::Empty | NameRule::TooLong(_) => {
                format!("use 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-'")
            }
            NameRule::EdgeHyphen => "remove the leading or trailing '-'".to_string(),
            NameRule::BadChar(_) | NameRule::ShellMetacharacter(_) => {
                let suggestion = suggest_name(&self.value);
                if suggestion.is_empty() {
                    "use only a-z, 0-9 and '-'".to_string()
                } else {
                    format!("use only a-z, 0-9 and '-', for example {suggestion:?}")
                }
            }
            NameRule::BadInstanceId => "instance ids look like i-0123abcd".to_string(),
            NameRule::Separator => format!(
                "'{TENANT_SEPARATOR}' separates a tenant from a name (acme{TENANT_SEPARATOR}web); use single hyphens"
            ),
            NameRule::LongerThan { max, .. } => {
                format!("use at most {max} characters (a shorter name, or a shorter tenant or pool id)")
            }
        }
    }
}

/// The rule a rejected name broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// The name is empty.
    Empty,
    /// Longer than [`MAX_NAME_LEN`]; carries the length.
    TooLong(usize),
    /// Starts or ends with `-`.
    EdgeHyphen,
    /// A character outside `[a-z0-9-]`.
    BadChar(char),
    /// A shell metacharacter (`;`, `|`, `$`, …).
    ShellMetacharacter(char),
    /// Not of the form `i-` + 8 lowercase hex digits.
    BadInstanceId,
    /// Contains [`TENANT_SEPARATOR`] where it is not allowed (tenant ids, names given inside a
    /// tenant's scope).
    Separator,
    /// Longer than a limit tighter than [`MAX_NAME_LEN`] (tenant ids, pool ids, names whose
    /// derived names must fit).
    LongerThan {
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRule::Empty => write!(f, "must not be empty"),
            NameRule::TooLong(n) => write!(f, "is {n} characters long, at most {MAX_NAME_LEN}"),
            NameRule::EdgeHyphen => write!(f, "must not start or end with '-'"),
            NameRule::BadChar(c) => write!(f, "contains {c:?}; only a-z, 0-9 and '-' are allowed"),
            NameRule::ShellMetacharacter(c) => write!(f, "contains the shell metacharacter {c:?}"),
            NameRule::BadInstanceId => write!(f, "must be 'i-' followed by 8 lowercase hex digits"),
            NameRule::Separator => write!(f, "must not contain '{TENANT_SEPARATOR}'"),
            NameRule::LongerThan { len, max } => {
                write!(f, "is {len} characters long, at most {max}")
            }
        }
    }
}

/// Characters a shell gives meaning to. Names never need them, and their presence is a sign of
/// injection attempts, so they are reported with their own code.
pub const SHELL_METACHARACTERS: &[char] = &[
    ';', '|', '&', '$', '`', '<', '>', '(', ')', '{', '}', '*', '?', '!', '~', '\\', '"', '\'',
    '\n', '#',
];

/// Checks `value` against the shared name grammar.
pub fn check_name(kind: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |reason| Err(InvalidName { kind, value: value.to_string(), reason });
    if value.is_empty() {
        return fail(NameRule::Empty);
    }
    if let Some(c) = value.chars().find(|c| SHELL_METACHARACTERS.contains(c)) {
        return fail(NameRule::ShellMetacharacter(c));
    }
    if let Some(c) =
        value.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(NameRule::BadChar(c));
    }
    if value.len() > MAX_NAME_LEN {
        return fail(NameRule::TooLong(value.len()));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail(NameRule::EdgeHyphen);
    }
    Ok(())
}

/// Best-effort repair of a rejected name, used in hints (`My_VM` → `my-vm`).
pub fn suggest_name(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    trimmed[..trimmed.len().min(MAX_NAME_LEN)].trim_end_matches('-').to_string()
}

/// Separates a tenant id from a name in a tenant-qualified name: VM `web` of tenant `acme` is
/// `acme--web` on the host, and so are its pools (`acme--pool`) and snapshots. Tenants thereby
/// have namespaces of their own: one tenant's names can never collide with, or reveal, another's.
pub const TENANT_SEPARATOR: &str = "--";

/// Longest tenant id: leaves room in a 63-character name for `--` and a name of 37 characters.
pub const MAX_TENANT_ID_LEN: usize = 24;

fn check_tenant_id(kind: &'static str, value: &str) -> Result<(), InvalidName> {
    check_name(kind, value)?;
    let fail = |reason| Err(InvalidName { kind, value: value.to_string(), reason });
    if value.contains(TENANT_SEPARATOR) {
        return fail(NameRule::Separator);
    }
    if value.len() > MAX_TENANT_ID_LEN {
        return fail(NameRule::LongerThan { len: value.len(), max: MAX_TENANT_ID_LEN });
    }
    Ok(())
}

/// The tenant a qualified name belongs to: the part before the first [`TENANT_SEPARATOR`], if
/// the name has one.
pub fn tenant_prefix(name: &str) -> Option<&str> {
    name.split_once(TENANT_SEPARATOR).map(|(tenant, _)| tenant)
}

/// `name` inside `tenant`'s namespace: `tenant--name`, or `name` itself when it already
/// carries that prefix. The result is not validated here (the caller parses it into its id
/// type, which checks the length).
pub fn qualify(tenant: &TenantId, name: &str) -> String {
    let prefix = format!("{tenant}{TENANT_SEPARATOR}");
    if name.starts_with(&prefix) {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        name_type!($(#[$doc])* $name, $kind, check_name);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates a name.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                $check($kind, &value)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The name of a VM, unique on a node.
    VmName,
    "vm name"
);
name_type!(
    /// A tenant: the isolation and quota boundary. Besides the shared grammar, a tenant id is at
    /// most [`MAX_TENANT_ID_LEN`] characters and has no [`TENANT_SEPARATOR`], so that
    /// `tenant--name` splits one way only and leaves room for the name.
    TenantId,
    "tenant id",
    check_tenant_id
);
name_type!(
    /// A network (one host bridge and subnet); `tenant--name` for a tenant's, as for VMs.
    NetworkName,
    "network name"
);
name_type!(
    /// A pool of interchangeable instances belonging to a tenant.
    PoolId,
    "pool id"
);
name_type!(
    /// A gateway route to a pool's instances; `tenant--name` for a tenant's, as for pools.
    RouteId,
    "route id"
);
name_type!(
    /// A host running `hangard`.
    NodeId,
    "node id"
);
name_type!(
    /// A disk volume or overlay.
    VolumeId,
    "volume id"
);
name_type!(
    /// A memory or disk snapshot.
    SnapshotId,
    "snapshot id"
);
name_type!(
    /// A long-running operation.
    OperationId,
    "operation id"
);
name_type!(
    /// The name of a device inside one VM (a disk or a NIC).
    DeviceName,
    "device name"
);

/// A generated instance identifier: `i-` followed by 8 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// Parses an instance id.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        let ok = value.len() == 10
            && value.starts_with("i-")
            && value[2..].chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if ok {
            Ok(Self(value))
        } else {
            Err(InvalidName { kind: "instance id", value, reason: NameRule::BadInstanceId })
        }
    }

    /// Builds the id from 32 random (or counter) bits; the caller owns the entropy so this stays
    /// pure and testable.
    pub fn from_bits(bits: u32) -> Self {
        Self(format!("i-{bits:08x}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for InstanceId {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<InstanceId> for String {
    fn from(value: InstanceId) -> String {
        value.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web-1", "0", &"x".repeat(63)] {
            assert!(VmName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        let cases = [
            ("", NameRule::Empty),
            ("-a", NameRule::EdgeHyphen),
            ("a-", NameRule::EdgeHyphen),
            ("Web", NameRule::BadChar('W')),
            ("a_b", NameRule::BadChar('_')),
            ("a;rm", NameRule::ShellMetacharacter(';')),
            ("$(x)", NameRule::ShellMetacharacter('$')),
        ];
        for (input, rule) in cases {
            let err = VmName::new(input).unwrap_err();
            assert_eq!(err.reason, rule, "{input:?}");
        }
        assert_eq!(VmName::new("x".repeat(64)).unwrap_err().reason, NameRule::TooLong(64));
    }

    #[test]
    fn metacharacters_have_their_own_code() {
        assert_eq!(VmName::new("a|b").unwrap_err().code(), ErrorCode::SpecShellMetachar);
        assert_eq!(VmName::new("A").unwrap_err().code(), ErrorCode::InvalidName);
    }

    #[test]
    fn suggestion_is_a_valid_name() {
        assert_eq!(suggest_name("My_VM!"), "my-vm");
        assert!(VmName::new(suggest_name("--Hello World--")).is_ok());
    }

    #[test]
    fn instance_ids() {
        assert_eq!(InstanceId::from_bits(0xdead).as_str(), "i-0000dead");
        assert!(InstanceId::new("i-0123abcd").is_ok());
        for bad in ["i-0123ABCD", "i-123", "x-01234567", "i-0123abcde"] {
            assert!(InstanceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_ids_are_short_and_have_no_separator() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("a-b").is_ok());
        assert_eq!(TenantId::new("a--b").unwrap_err().reason, NameRule::Separator);
        assert_eq!(
            TenantId::new("x".repeat(25)).unwrap_err().reason,
            NameRule::LongerThan { len: 25, max: 24 }
        );
        // Other names keep the shared grammar.
        assert!(VmName::new("acme--web").is_ok());
    }

    #[test]
    fn qualified_names() {
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(qualify(&acme, "web"), "acme--web");
        assert_eq!(qualify(&acme, "acme--web"), "acme--web");
        // Another tenant's qualified name stays inside this tenant's namespace.
        assert_eq!(qualify(&acme, "beta--web"), "acme--beta--web");
        assert_eq!(tenant_prefix("acme--web"), Some("acme"));
        assert_eq!(tenant_prefix("acme--web--x"), Some("acme"));
        assert_eq!(tenant_prefix("web-1"), None);
    }

    #[test]
    fn serde_validates() {
        let ok: VmName = serde_json::from_str("\"web\"").unwrap();
        assert_eq!(ok.as_str(), "web");
        assert!(serde_json::from_str::<VmName>("\"Web\"").is_err());
    }
}

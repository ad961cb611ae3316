//! The error codes: every error Hangar reports carries a stable [`ErrorCode`]
//! (`E_UPPER_SNAKE`). Codes are the contract with scripts and API clients: they are
//! **append-only** once released; a code's meaning never changes and a code is never reused.
//! The registry below is the single source of `docs/error-codes.md` (a test fails when the two
//! drift). This module depends on nothing else in the crate, so every module may use it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a failure should be reported to a process: the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The input was invalid or the operation failed: exit code 1.
    Invalid,
    /// Usage or environment problem (missing file, missing engine): exit code 2.
    Environment,
}

impl ErrorClass {
    /// The process exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorClass::Invalid => 1,
            ErrorClass::Environment => 2,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, retryable: $retry:literal, class: $class:ident,
        meaning: $meaning:literal, fix: $fix:literal; )*) => {
        /// A stable, machine-readable error code. Append-only: never rename or reuse one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable string form, e.g. `E_VM_NOT_FOUND`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// Whether retrying the same request unchanged can succeed.
            pub fn retryable(self) -> bool {
                match self { $( ErrorCode::$variant => $retry, )* }
            }

            /// What the code means, one sentence.
            pub fn meaning(self) -> &'static str {
                match self { $( ErrorCode::$variant => $meaning, )* }
            }

            /// The typical fix, one sentence.
            pub fn typical_fix(self) -> &'static str {
                match self { $( ErrorCode::$variant => $fix, )* }
            }

            /// Whether this is bad input/failed operation or a usage/environment problem.
            pub fn class(self) -> ErrorClass {
                match self { $( ErrorCode::$variant => ErrorClass::$class, )* }
            }

            /// Looks a code up by its string form.
            pub fn parse(code: &str) -> Option<ErrorCode> {
                match code { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

error_codes! {
    /// A spec file is not valid TOML or JSON.
    SpecSyntax = "E_SPEC_SYNTAX", retryable: false, class: Invalid,
        meaning: "The spec file is not well-formed TOML or JSON.",
        fix: "Fix the syntax at the reported line and column.";
    /// A field the schema does not know.
    SpecUnknownField = "E_SPEC_UNKNOWN_FIELD", retryable: false, class: Invalid,
        meaning: "The spec contains a field the schema does not define (often a typo).",
        fix: "Rename the field as the hint suggests or remove it; `hangar schema` lists every field.";
    /// A required field is absent.
    SpecMissingField = "E_SPEC_MISSING_FIELD", retryable: false, class: Invalid,
        meaning: "A required field is missing.",
        fix: "Add the field named in the error's path.";
    /// A field has the wrong type.
    SpecType = "E_SPEC_TYPE", retryable: false, class: Invalid,
        meaning: "A field has the wrong type (for example a string where a number belongs).",
        fix: "Write the value with the type the error names.";
    /// A value outside the accepted set.
    SpecInvalidValue = "E_SPEC_INVALID_VALUE", retryable: false, class: Invalid,
        meaning: "A field's value is not one of the accepted values.",
        fix: "Use one of the values listed in the hint.";
    /// Unsupported schema version.
    SpecSchemaVersion = "E_SPEC_SCHEMA_VERSION", retryable: false, class: Invalid,
        meaning: "The spec declares a schema_version this Hangar does not support.",
        fix: "Set schema_version = 1.";
    /// A resource amount outside its range.
    SpecOutOfRange = "E_SPEC_OUT_OF_RANGE", retryable: false, class: Invalid,
        meaning: "A resource amount (vcpus, memory, disk size, port) is outside its allowed range.",
        fix: "Use a value inside the range given in the message.";
    /// More than one boot source.
    SpecBootConflict = "E_SPEC_BOOT_CONFLICT", retryable: false, class: Invalid,
        meaning: "The boot section names more than one boot source (image and kernel), or mixes their fields.",
        fix: "Keep either `image` or `kernel` (+ `initrd`), not both.";
    /// A built-in image name that does not exist.
    SpecUnknownImage = "E_SPEC_UNKNOWN_IMAGE", retryable: false, class: Invalid,
        meaning: "The boot image is not a built-in image.",
        fix: "Use one of the built-in images listed in the hint, or boot a kernel file.";
    /// A disk without exactly one source.
    SpecDiskSource = "E_SPEC_DISK_SOURCE", retryable: false, class: Invalid,
        meaning: "A disk must have exactly one of `source` (a base image) or `size_mib` (a blank disk), and a blank disk cannot be read-only.",
        fix: "Give the disk either `source` or `size_mib`.";
    /// Two disks or two NICs share a name.
    SpecDuplicateName = "E_SPEC_DUPLICATE_NAME", retryable: false, class: Invalid,
        meaning: "Two disks, or two NICs, have the same name.",
        fix: "Give each disk and each NIC a unique name.";
    /// Two forwards use the same host port.
    SpecDuplicatePort = "E_SPEC_DUPLICATE_PORT", retryable: false, class: Invalid,
        meaning: "Two port forwards use the same host port and protocol.",
        fix: "Use a different host port for each forward.";
    /// A malformed port-forward rule.
    SpecForward = "E_SPEC_FORWARD", retryable: false, class: Invalid,
        meaning: "A port-forward rule is malformed or used on a NIC that cannot forward.",
        fix: "Write forwards as \"[tcp|udp:]HOST_PORT:GUEST_PORT\" on a NIC with mode = \"user\".";
    /// A value that looks like a secret.
    SpecSecret = "E_SPEC_SECRET", retryable: false, class: Invalid,
        meaning: "A value looks like a secret (password, token, private key); specs are stored, hashed and printed in plans.",
        fix: "Remove the secret from the spec and deliver it to the guest at run time.";
    /// Shell metacharacters in a name.
    SpecShellMetachar = "E_SPEC_SHELL_METACHAR", retryable: false, class: Invalid,
        meaning: "A name contains shell metacharacters.",
        fix: "Use only a-z, 0-9 and '-' in names.";
    /// A path into a forbidden pseudo filesystem.
    SpecForbiddenPath = "E_SPEC_FORBIDDEN_PATH", retryable: false, class: Invalid,
        meaning: "A path points into /proc, /sys or /dev, which are never valid VM inputs.",
        fix: "Point the path at a regular file.";
    /// A path that cannot be used.
    SpecInvalidPath = "E_SPEC_INVALID_PATH", retryable: false, class: Invalid,
        meaning: "A path is empty, not valid UTF-8, or contains a NUL byte.",
        fix: "Use a plain file path, absolute or relative to the spec file.";
    /// A malformed label.
    SpecInvalidLabel = "E_SPEC_INVALID_LABEL", retryable: false, class: Invalid,
        meaning: "A label key or value is malformed.",
        fix: "Label keys are 1-63 chars of a-z, 0-9, '.', '_', '/', '-' starting with a letter or digit; values at most 256 printable characters.";
    /// The spec file is too large.
    SpecTooLarge = "E_SPEC_TOO_LARGE", retryable: false, class: Invalid,
        meaning: "The spec document exceeds the maximum size (1 MiB).",
        fix: "Specs are small; check that the right file was given.";
    /// The spec file extension is not recognised.
    SpecFormat = "E_SPEC_FORMAT", retryable: false, class: Invalid,
        meaning: "The spec document is neither TOML nor JSON.",
        fix: "Name the file *.toml or *.json.";
    /// An invalid name.
    InvalidName = "E_INVALID_NAME", retryable: false, class: Invalid,
        meaning: "A name or id does not follow the naming rules.",
        fix: "Use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'.";
    /// A lifecycle transition the state machine forbids.
    InvalidTransition = "E_INVALID_TRANSITION", retryable: false, class: Invalid,
        meaning: "The requested operation is not allowed in the VM's current state.",
        fix: "Check the VM's state (`hangar ps`) and run the operation the state allows (for example stop before rm).";
    /// An argument to an engine operation is invalid.
    InvalidArgument = "E_INVALID_ARGUMENT", retryable: false, class: Invalid,
        meaning: "An argument to an operation is invalid (for example shrinking a disk).",
        fix: "Correct the argument as the message says.";
    /// No such VM.
    VmNotFound = "E_VM_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No VM with that name exists.",
        fix: "List VMs with `hangar ps --all` and check the name.";
    /// A different VM with that name exists.
    VmExists = "E_VM_EXISTS", retryable: false, class: Invalid,
        meaning: "A VM with that name already exists with a different spec.",
        fix: "Choose another name, or remove the existing VM first.";
    /// No such snapshot.
    SnapshotNotFound = "E_SNAPSHOT_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No snapshot with that id exists.",
        fix: "List snapshots with `hangar snapshot ls`.";
    /// A snapshot with that id exists.
    SnapshotExists = "E_SNAPSHOT_EXISTS", retryable: false, class: Invalid,
        meaning: "A snapshot with that id already exists.",
        fix: "Choose another snapshot id or delete the existing snapshot.";
    /// The snapshot is in use.
    SnapshotInUse = "E_SNAPSHOT_IN_USE", retryable: true, class: Invalid,
        meaning: "The snapshot is in use (a VM is sleeping on it) and cannot be deleted.",
        fix: "Wake or remove the VM that uses the snapshot first.";
    /// The snapshot does not match the VM or engine.
    SnapshotMismatch = "E_SNAPSHOT_MISMATCH", retryable: false, class: Invalid,
        meaning: "The snapshot was taken from a different spec or engine version and cannot be restored here.",
        fix: "Restore onto a VM with the same spec and engine version, or take a new snapshot.";
    /// No such disk.
    DiskNotFound = "E_DISK_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No disk volume with that id exists.",
        fix: "Check the volume id.";
    /// A disk with that id exists.
    DiskExists = "E_DISK_EXISTS", retryable: false, class: Invalid,
        meaning: "A disk volume with that id already exists.",
        fix: "Choose another volume id or delete the existing one.";
    /// The disk has snapshots.
    DiskHasSnapshots = "E_DISK_HAS_SNAPSHOTS", retryable: false, class: Invalid,
        meaning: "The disk has snapshots and cannot be deleted.",
        fix: "Delete the disk's snapshots first.";
    /// The disk is in use.
    DiskInUse = "E_DISK_IN_USE", retryable: false, class: Invalid,
        meaning: "The disk is the base of an overlay (or attached) and cannot be deleted.",
        fix: "Delete the overlays built on it first.";
    /// No such NIC.
    NicNotFound = "E_NIC_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "The VM has no NIC with that name.",
        fix: "Check the NIC name in the VM's spec.";
    /// A NIC with that name exists.
    NicExists = "E_NIC_EXISTS", retryable: false, class: Invalid,
        meaning: "The VM already has a NIC with that name.",
        fix: "Choose another NIC name.";
    /// The engine cannot be used.
    EngineUnavailable = "E_ENGINE_UNAVAILABLE", retryable: true, class: Environment,
        meaning: "The VM engine (for example qemu-system-x86_64) is missing or cannot be started.",
        fix: "Run `hangar doctor` and install what it names (scripts/setup does it on Debian).";
    /// The engine failed.
    EngineFailed = "E_ENGINE_FAILED", retryable: true, class: Invalid,
        meaning: "The engine reported an error or died while carrying out the operation.",
        fix: "Read the VM's log (`hangar logs NAME`); retry once the cause is fixed.";
    /// The engine lacks a capability.
    Unsupported = "E_UNSUPPORTED", retryable: false, class: Invalid,
        meaning: "The engine does not support this operation.",
        fix: "Check `hangar doctor` for the engine's capabilities.";
    /// The requested accelerator cannot be used.
    AccelUnavailable = "E_ACCEL_UNAVAILABLE", retryable: false, class: Invalid,
        meaning: "The spec requires an accelerator (kvm) that cannot work on this host.",
        fix: "Set machine.accel = \"auto\" (or \"tcg\"), or run on a host with working hardware virtualisation.";
    /// The host facts document is invalid.
    HostFactsInvalid = "E_HOST_FACTS_INVALID", retryable: false, class: Environment,
        meaning: "The host facts given with --host-facts are not valid.",
        fix: "Produce the file with `hangar plan --output json` on the target host, or fix the field named.";
    /// A path is too long for its use.
    PathTooLong = "E_PATH_TOO_LONG", retryable: false, class: Environment,
        meaning: "A runtime path (for example a unix socket, limited to 107 bytes) is too long.",
        fix: "Use a shorter HANGAR_HOME (or runtime_dir in the host facts), or a shorter VM name.";
    /// The operation was cancelled.
    Cancelled = "E_CANCELLED", retryable: true, class: Invalid,
        meaning: "The operation was cancelled before it finished; nothing was left half done.",
        fix: "Run the operation again.";
    /// The operation timed out.
    Timeout = "E_TIMEOUT", retryable: true, class: Invalid,
        meaning: "The operation did not finish within its time limit.",
        fix: "Retry with a longer --timeout, or check the VM's log.";
    /// A quota would be exceeded.
    QuotaExceeded = "E_QUOTA_EXCEEDED", retryable: false, class: Invalid,
        meaning: "The operation would exceed one of the tenant's quotas.",
        fix: "Free resources in the tenant or raise its quota.";
    /// A file could not be read or written.
    Io = "E_IO", retryable: true, class: Environment,
        meaning: "A file could not be read or written.",
        fix: "Check that the path exists and is readable.";
    /// The state store cannot be opened or written.
    StoreUnavailable = "E_STORE_UNAVAILABLE", retryable: true, class: Environment,
        meaning: "Hangar's state store cannot be opened or written (permissions, disk full, locked).",
        fix: "Check that HANGAR_HOME is writable and has free space; `hangar doctor` checks both.";
    /// The state store holds data that fails validation.
    StoreCorrupt = "E_STORE_CORRUPT", retryable: false, class: Environment,
        meaning: "A record in the state store fails validation; Hangar refuses to act on it.",
        fix: "Inspect the named record; remove the VM with `hangar rm --force` or restore the store from a backup.";
    /// Someone else holds an exclusive resource.
    Busy = "E_BUSY", retryable: true, class: Invalid,
        meaning: "An exclusive resource (for example a VM's serial console) is held by another client.",
        fix: "Wait for the other client to let go (a console detaches with Ctrl-]) and retry.";
    /// No operation has the given id.
    OperationNotFound = "E_OPERATION_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No operation with that id is in the journal.",
        fix: "List operations with `hangar ops` (or GET /v1/operations) and use one of the ids shown.";
    /// The operation's owner died before it finished; recovery undid or abandoned it.
    Interrupted = "E_INTERRUPTED", retryable: true, class: Invalid,
        meaning: "The process carrying out the operation died before it finished; on restart the operation was rolled back and the VM left in the state observed.",
        fix: "Check the VM's state (`hangar ps -a`) and run the operation again.";
    /// A TCP request came without a valid bearer token.
    Unauthorized = "E_UNAUTHORIZED", retryable: false, class: Invalid,
        meaning: "The request reached hangard over TCP without a valid bearer token.",
        fix: "Create a token on the host with `hangar token create` and send it as `Authorization: Bearer <token>`.";
    /// No tenant has the given id.
    TenantNotFound = "E_TENANT_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No tenant with that id exists on this host.",
        fix: "List tenants with `hangar tenant ls`, or create it with `hangar tenant create ID`.";
    /// No pool has the given id.
    PoolNotFound = "E_POOL_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No pool with that id exists on this host.",
        fix: "List pools with `hangar pool ls`, or create it with `hangar pool create POOL --tenant T --spec FILE`.";
    /// A pool with the given id already exists.
    PoolExists = "E_POOL_EXISTS", retryable: false, class: Invalid,
        meaning: "A pool with that id already exists.",
        fix: "Pick another id, change the pool with `hangar pool scale`, or remove it first with `hangar pool rm`.";
    /// No instance has the given id.
    InstanceNotFound = "E_INSTANCE_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No fleet instance with that id exists (it may have been released or replaced).",
        fix: "List instances with `hangar instance ls`.";
    /// The tenant still owns pools.
    TenantInUse = "E_TENANT_IN_USE", retryable: false, class: Invalid,
        meaning: "The tenant still owns at least one pool, so it cannot be removed.",
        fix: "Remove the tenant's pools first (`hangar pool rm POOL`), then the tenant.";
    /// The principal may not do this.
    Forbidden = "E_FORBIDDEN", retryable: false, class: Invalid,
        meaning: "The caller's token or user is not allowed to do this (its scope or role does not cover it).",
        fix: "Use a token with the needed scope and role (`hangar token create --tenant T --role owner`, or --admin), or ask the host's administrator.";
    /// A spec names a host file outside the allowed roots.
    PathNotAllowed = "E_PATH_NOT_ALLOWED", retryable: false, class: Invalid,
        meaning: "A spec names a host file (kernel, initrd, disk source, or a qcow2 backing file) outside the directories this host allows, or reaches one through a symlink.",
        fix: "Put the file under $HANGAR_HOME/images or an allowed directory (`hangar doctor` lists them; an admin adds one with `hangard --allow-path DIR`), and name it without symlinks.";
    /// The audit log cannot be written.
    AuditUnavailable = "E_AUDIT_UNAVAILABLE", retryable: true, class: Environment,
        meaning: "The audit log could not be written, so the request was refused before anything was done (hangard fails closed).",
        fix: "Check $HANGAR_HOME/audit.log (`hangar audit verify`), the disk's free space and the daemon's log, then retry.";
    /// A JSON object names a key twice.
    SpecDuplicateKey = "E_SPEC_DUPLICATE_KEY", retryable: false, class: Invalid,
        meaning: "A JSON document (a spec or an API body) has an object with the same key twice; JSON names must be unique, and Hangar will not guess which one was meant.",
        fix: "Keep one of the two keys at the reported line and column.";
    /// The host has not enough free memory or disk for the VM.
    HostCapacity = "E_HOST_CAPACITY", retryable: true, class: Environment,
        meaning: "The host's available memory or free disk cannot hold the VM now (its RAM plus QEMU's overhead, or its new disks); nothing was started.",
        fix: "Stop or remove other VMs, free disk space under $HANGAR_HOME, or give the VM less memory or smaller disks; `hangar doctor` shows what the host has.";
    /// The guest agent does not answer.
    AgentUnavailable = "E_AGENT_UNAVAILABLE", retryable: true, class: Environment,
        meaning: "The VM's guest agent did not answer on its channel in time: the VM is not running, its image has no agent (only the built-in images do), the guest is still booting or hung, or another client held the channel too long.",
        fix: "Check that the VM runs (`hangar ps`) and boots an image with the agent, then retry; `hangar logs NAME` shows the guest's console.";
    /// The guest agent cannot do what was asked.
    AgentUnsupported = "E_AGENT_UNSUPPORTED", retryable: false, class: Invalid,
        meaning: "The guest's agent speaks no protocol version the host speaks, or lacks the capability asked for (its version is in the message).",
        fix: "Rebuild the image with this Hangar's agent (`scripts/build-image`), or use what the agent supports.";
    /// The guest agent reported a failure.
    AgentFailed = "E_AGENT_FAILED", retryable: false, class: Invalid,
        meaning: "The guest agent could not do what was asked (its own code and message say why: an invalid request, an I/O error in the guest).",
        fix: "Read the agent's message; fix the request or the guest.";
    /// No network of that name.
    NetworkNotFound = "E_NETWORK_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No network of that name exists (for this tenant).",
        fix: "Check `hangar network ls`, or create it with `hangar network create NAME --subnet CIDR`.";
    /// A network of that name exists.
    NetworkExists = "E_NETWORK_EXISTS", retryable: false, class: Invalid,
        meaning: "A network of that name already exists.",
        fix: "Choose another name, or remove the old network first (`hangar network rm`).";
    /// The network still has VMs on it.
    NetworkInUse = "E_NETWORK_IN_USE", retryable: false, class: Invalid,
        meaning: "The network still has leases: VMs with NICs on it (named in the message).",
        fix: "Remove those VMs (`hangar rm`) first.";
    /// Every address of the network's subnet is leased.
    NetworkExhausted = "E_NETWORK_EXHAUSTED", retryable: false, class: Invalid,
        meaning: "Every host address of the network's subnet is leased to a NIC.",
        fix: "Remove VMs from the network, or create a network with a larger subnet.";
    /// The subnet overlaps another network's.
    NetworkOverlap = "E_NETWORK_OVERLAP", retryable: false, class: Invalid,
        meaning: "The subnet overlaps the subnet of another Hangar network (named in the message); their guests could not be routed apart.",
        fix: "Pick a subnet that overlaps no other (`hangar network ls` lists them).";
    /// The host cannot set up the network.
    NetworkUnavailable = "E_NETWORK_UNAVAILABLE", retryable: false, class: Environment,
        meaning: "The host refused to create a network device or rule (no bridge or TUN support, not root, no nf_tables); the kernel's reason is in the message.",
        fix: "Run as root on a kernel with bridge, tun and nf_tables support; `hangar doctor` checks each.";
    /// No route has the given id.
    RouteNotFound = "E_ROUTE_NOT_FOUND", retryable: false, class: Invalid,
        meaning: "No gateway route with that id exists (or it belongs to another tenant).",
        fix: "List routes with `hangar route ls`.";
    /// The route conflicts with another.
    RouteConflict = "E_ROUTE_CONFLICT", retryable: false, class: Invalid,
        meaning: "A route with that id exists, or another route already matches the same connections (same listen address and port, and for HTTP the same host and path prefix), or mixes TCP and HTTP on one port.",
        fix: "Pick another id, port, host or path prefix (`hangar route ls` lists the routes), or remove the other route with `hangar route rm`.";
    /// The gateway could not hand a connection to an instance.
    GatewayUnavailable = "E_GATEWAY_UNAVAILABLE", retryable: true, class: Invalid,
        meaning: "The gateway could not give the connection an instance: waking or creating one failed, its port never accepted, or too many connections were already waiting for one.",
        fix: "Retry; if it persists, `hangar pool status POOL` and `hangar events` say why the pool has no instance.";
    /// etcd, which holds a cluster's shared state, cannot be reached.
    ClusterUnavailable = "E_CLUSTER_UNAVAILABLE", retryable: true, class: Environment,
        meaning: "The node cannot reach a quorum of the cluster's etcd members, so it refuses changes; VMs that run keep running, and the node catches up by itself when etcd answers again.",
        fix: "Retry once etcd is back; `hangar node ls` and the etcd members' health (`etcdctl endpoint health`) say which members are down.";
    /// A cluster document is not signed by a trusted cluster key.
    SignatureInvalid = "E_SIGNATURE_INVALID", retryable: false, class: Invalid,
        meaning: "A document in the cluster's store (a pool, a quota, a node's desired state) is unsigned, tampered with, or signed by a key this node does not trust; the node refuses to act on it and audits the refusal.",
        fix: "Write cluster documents only through hangard (it signs them); after a key rotation, add the new public key to every node's trusted keys (`hangar cluster key`).";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        ErrorCode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
    }
}

/// The registry as Markdown: the exact content of `docs/error-codes.md`.
pub fn registry_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         Generated from `crates/hangar-core/src/code.rs` by `hangar errors --output markdown`; \
         a test fails when the two differ. Codes are append-only: a released code keeps its \
         meaning forever.\n\n\
         | code | meaning | retryable | exit | typical fix |\n|---|---|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            code.as_str(),
            code.meaning(),
            if code.retryable() { "yes" } else { "no" },
            code.class().exit_code(),
            code.typical_fix().replace('|', "\\|"),
        ));
    }
    out
}

/// Anything that carries a stable error code.
pub trait Coded {
    /// The stable code.
    fn code(&self) -> ErrorCode;
    /// Whether retrying unchanged can succeed. Defaults to the code's answer.
    fn retryable(&self) -> bool {
        self.code().retryable()
    }
    /// The field path the error is about, if any (`disk[1].format`).
    fn path(&self) -> Option<String> {
        None
    }
    /// A specific fix, if the error knows better than the code's typical fix.
    fn hint(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_upper_snake_and_parse_back() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate {s}");
            assert!(s.starts_with("E_"), "{s}");
            assert!(
                s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{s}"
            );
            assert_eq!(ErrorCode::parse(s), Some(*code));
            assert!(!code.meaning().is_empty() && !code.typical_fix().is_empty());
        }
    }

    #[test]
    fn serde_uses_the_stable_string() {
        let json = serde_json::to_string(&ErrorCode::VmNotFound).unwrap();
        assert_eq!(json, "\"E_VM_NOT_FOUND\"");
        let back: ErrorCode = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ErrorCode::VmNotFound);
        assert!(serde_json::from_str::<ErrorCode>("\"E_NOPE\"").is_err());
    }
}

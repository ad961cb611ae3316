//! What the store keeps: one record type per table, as the rest of Hangar sees it.

use hangar_core::access::Scope;
use hangar_core::clock::Timestamp;
use hangar_core::contracts::SnapshotLayout;
use hangar_core::ids::{OperationId, PoolId, SnapshotId, TenantId, VmName, VolumeId};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::{DiskFormat, VmSpec};
use serde::{Deserialize, Serialize};

/// A running engine process, identified so that a recycled PID is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Its process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// The `(pid, start time)` columns of an optional process identity.
pub(crate) fn process_columns(p: Option<ProcessIdentity>) -> (Option<i64>, Option<i64>) {
    match p {
        Some(p) => (Some(i64::from(p.pid)), Some(p.start_time as i64)),
        None => (None, None),
    }
}

/// Everything Hangar knows about one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    /// Its normalised spec.
    pub spec: VmSpec,
    /// The spec's canonical hash.
    pub spec_hash: String,
    /// The plan it runs, as JSON (validated by the engine adapter that wrote it).
    pub plan_json: String,
    /// Current state.
    pub state: VmState,
    /// Why it is in that state, when not obvious.
    pub reason: Option<String>,
    /// Its runtime directory.
    pub runtime_dir: String,
    /// The engine process, while there is one.
    pub process: Option<ProcessIdentity>,
    /// Milliseconds from spawn to guest-ready of the last boot.
    pub boot_ms: Option<u64>,
    /// The memory snapshot a `sleeping` VM will wake from, or a `spare` waits for.
    pub sleeping_on: Option<SnapshotId>,
    /// Length of the console log when the current QEMU was spawned: its boot's output starts
    /// there (lets a restarted daemon finish a boot whose waiter died).
    pub boot_log_offset: Option<u64>,
    /// When it was defined.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl VmRecord {
    /// The VM's name.
    pub fn name(&self) -> &VmName {
        &self.spec.name
    }
}

/// A memory snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshot's id, unique on the node.
    pub id: SnapshotId,
    /// The VM it was taken from.
    pub vm: VmName,
    /// The state file.
    pub path: String,
    /// spec_hash of the VM when taken.
    pub spec_hash: String,
    /// Hash of that spec without name, tenant and pool: VMs with the same clone hash can be
    /// restored from it. `None` for snapshots written before schema version 4.
    pub clone_hash: Option<String>,
    /// The source's writable disks, copied when the snapshot was taken.
    pub disks: Vec<FrozenDisk>,
    /// Engine version that wrote it.
    pub engine_version: String,
    /// Bytes its files take on disk (state, RAM file, frozen disks).
    pub size_bytes: u64,
    /// How it stores guest RAM.
    pub layout: SnapshotLayout,
    /// The RAM file of a `mapped` snapshot.
    pub ram_path: Option<String>,
    /// When it was taken.
    pub created_at: Timestamp,
    /// The tenant of the VM it was taken from (its owner).
    pub tenant: Option<TenantId>,
    /// The pool of the VM it was taken from.
    pub pool: Option<PoolId>,
}

/// A writable disk of a snapshot's source VM, frozen at save time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenDisk {
    /// The disk's name in the spec (the same in every clone).
    pub disk: String,
    /// The frozen copy.
    pub path: String,
}

/// A disk volume managed through the `Disks` contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// The volume's id, unique on the node.
    pub id: VolumeId,
    /// The image file.
    pub path: String,
    /// Size the guest sees, in MiB (not the space the image takes on the host).
    pub size_mib: u64,
    /// The image file's format.
    pub format: DiskFormat,
    /// The volume it overlays.
    pub base: Option<VolumeId>,
    /// Internal disk snapshots.
    pub snapshots: Vec<SnapshotId>,
}

/// One entry of the event stream: a lifecycle transition, or something the engine observed
/// that is not a state change. The store keeps exactly what the `Events` contract serves, so
/// this is core's [`EventKind`](hangar_core::contracts::EventKind) (the name stays for
/// callers of [`Store::events_since`](crate::Store::events_since)).
pub type StoredEvent = hangar_core::contracts::EventKind;

pub use hangar_core::operation::{OperationKind, OperationStatus};

/// A journaled operation. The store keeps its request, result and error as JSON; their
/// meaning belongs to `hangar-control`, the store only checks they are JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation's id, as clients see it.
    pub id: OperationId,
    /// What it does.
    pub kind: OperationKind,
    /// What it acts on (a VM name, a snapshot id).
    pub target: String,
    /// The request, as JSON.
    pub request_json: String,
    /// Whether it is running or how it ended.
    pub status: OperationStatus,
    /// The phase it last reported.
    pub progress: Option<String>,
    /// The result, as JSON, once succeeded.
    pub result_json: Option<String>,
    /// The error, as JSON, once failed or rolled back.
    pub error_json: Option<String>,
    /// The process carrying it out; recovery only touches operations whose owner is gone.
    pub owner: Option<ProcessIdentity>,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// When its status, progress or owner last changed.
    pub updated_at: Timestamp,
}

/// An API token: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (appears in the audit log).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// What it may reach.
    pub scope: Scope,
    /// When it was issued.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_statuses_round_trip_through_their_wire_names() {
        for &status in OperationStatus::ALL {
            assert_eq!(status.as_str().parse::<OperationStatus>(), Ok(status));
            assert_eq!(serde_json::to_string(&status).unwrap(), format!("\"{}\"", status.as_str()));
        }
        assert!("rolled-back".parse::<OperationStatus>().is_err());
    }
}

//! Hangar's REST API v1: the wire types `hangard` serves and the CLI reads, and a minimal
//! HTTP/1.1 client for `hangard`'s unix socket.
//!
//! Keeping the types here is what makes `hangar ps` print the same thing whether it asked the
//! daemon or read the store itself: both build a [`VmView`] with [`VmView::from_record`].

use hangar_core::error::ErrorCode;
use hangar_qemu::{process, QemuEngine};
use hangar_store::VmRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod client;

/// One VM as `hangar ps` and `GET /v1/vms` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    /// Name.
    pub name: String,
    /// Lifecycle state (`running`, `stopped`, `failed`, …).
    pub state: String,
    /// Accelerator its plan uses (`kvm` or `tcg`).
    pub accel: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Seconds since its QEMU started, while it runs.
    pub uptime_s: Option<u64>,
    /// QEMU's process id, while it runs.
    pub pid: Option<u32>,
    /// Milliseconds from spawn to guest-ready of the last boot.
    pub boot_ms: Option<u64>,
    /// Why it is in its state, when that is not obvious.
    pub reason: Option<String>,
    /// The canonical hash of its spec.
    pub spec_hash: String,
}

impl VmView {
    /// The view of a (freshly refreshed) record.
    pub fn from_record(rec: &VmRecord) -> VmView {
        VmView {
            name: rec.name().to_string(),
            state: rec.state.as_str().to_string(),
            accel: QemuEngine::plan_of(rec)
                .map(|p| p.accel_resolved.as_str().to_string())
                .unwrap_or_default(),
            vcpus: rec.spec.machine.vcpus,
            memory_mib: rec.spec.machine.memory_mib,
            uptime_s: rec.process.and_then(process::uptime).map(|u| u.as_secs()),
            pid: rec.process.map(|p| p.pid),
            boot_ms: rec.boot_ms,
            reason: rec.reason.clone(),
            spec_hash: rec.spec_hash.clone(),
        }
    }

    /// Whether `hangar ps` without `--all` shows it.
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "defined" | "stopped" | "deleted")
    }
}

/// Every error response: the stable code, what happened, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable error code (`E_VM_NOT_FOUND`, …); see `GET /v1/errors`.
    pub code: String,
    /// What happened.
    pub message: String,
    /// The field the error is about (`machine.vcpus`), if any.
    pub path: Option<String>,
    /// How to fix it.
    pub hint: String,
    /// Every problem, for spec validation errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<serde_json::Value>,
}

/// The HTTP status an error code maps to.
pub fn http_status(code: ErrorCode) -> u16 {
    use ErrorCode::*;
    match code {
        VmNotFound | SnapshotNotFound | DiskNotFound | NicNotFound => 404,
        VmExists | SnapshotExists | DiskExists | InvalidTransition | SnapshotInUse | DiskInUse
        | DiskHasSnapshots | NicExists | Busy => 409,
        SpecTooLarge => 413,
        EngineUnavailable | StoreUnavailable => 503,
        Timeout => 504,
        QuotaExceeded => 429,
        Cancelled => 409,
        EngineFailed | StoreCorrupt | Io => 500,
        Unsupported => 501,
        _ => match code.class() {
            hangar_core::error::ErrorClass::Invalid => 400,
            hangar_core::error::ErrorClass::Environment => 500,
        },
    }
}

/// `POST /v1/vms/{name}/stop` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Skip the guest and stop QEMU at once.
    #[serde(default)]
    pub force: bool,
    /// Seconds the guest gets to power off before escalation (default 30).
    pub timeout_s: Option<u64>,
}

/// `POST /v1/vms/{name}/snapshots` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot id.
    pub id: String,
    /// Release the QEMU process afterwards (the VM sleeps until restored).
    #[serde(default)]
    pub sleep: bool,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the daemon answers.
    pub status: String,
    /// Hangar's version.
    pub version: String,
    /// QEMU's version, if found.
    pub qemu: Option<String>,
    /// The accelerator plans use on this host, and why.
    pub accel: String,
}

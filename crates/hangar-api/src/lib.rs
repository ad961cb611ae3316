//! Hangar's REST API v1: the wire types `hangard` serves and the CLI reads, and a minimal
//! HTTP/1.1 client for `hangard`'s unix socket.
//!
//! Keeping the types here is what makes `hangar ps` print the same thing whether it asked the
//! daemon or read the store itself: both build a [`VmView`] with `hangar_control::view_of`.
//! This crate depends on `hangar-core` (and the fleet's plain types) only: no engine, no store.

pub use cluster::{ClusterEvents, ClusterNode, NodeEvent};
use hangar_core::error::ErrorCode;
pub use hangar_core::operation::{OperationKind, OperationStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub mod client;
pub mod cluster;
pub mod fleet;
pub mod ws;

/// One VM as `hangar ps` and `GET /v1/vms` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    /// The VM's name (`acme--web` for a tenant's VM).
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
    /// The tenant it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The guest's IPv4 addresses (`ADDRESS/PREFIX`) while it runs: what Hangar configured
    /// (a `user` NIC's guest is 10.0.2.15/24, reachable through its forwarded ports).
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl VmView {
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
    /// The operation that failed, when the error ended one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl ErrorBody {
    /// A body for `code` with its registry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code: code.as_str().to_string(),
            message: message.into(),
            path: None,
            hint: code.typical_fix().to_string(),
            errors: vec![],
            operation: None,
        }
    }

    /// The code, if this Hangar knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

impl From<hangar_core::error::Error> for ErrorBody {
    fn from(e: hangar_core::error::Error) -> ErrorBody {
        use hangar_core::error::Coded;
        let code = e.code();
        ErrorBody {
            code: code.as_str().to_string(),
            message: e.to_string(),
            path: e.path(),
            hint: Coded::hint(&e).unwrap_or_else(|| code.typical_fix().to_string()),
            errors: vec![],
            operation: None,
        }
    }
}

impl From<hangar_spec::SpecErrors> for ErrorBody {
    fn from(e: hangar_spec::SpecErrors) -> ErrorBody {
        let first = &e.0[0];
        ErrorBody {
            code: first.code.as_str().to_string(),
            message: first.message.clone(),
            path: Some(first.path.clone()).filter(|p| !p.is_empty()),
            hint: first.hint.clone(),
            errors: e
                .0
                .iter()
                .map(|d| serde_json::to_value(d).expect("diagnostics serialise"))
                .collect(),
            operation: None,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What an operation does. The body of every mutating call is turned into one of these and
/// journaled before anything is touched, so a restarted daemon knows what was in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OperationRequest {
    /// Define a VM from a spec (the document `POST /v1/vms` takes: vm.json's shape).
    Create {
        /// The spec.
        #[schema(value_type = Object)]
        spec: serde_json::Value,
        /// The absolute directory relative paths in the spec resolve against (default "/").
        #[serde(default)]
        base_dir: Option<String>,
    },
    /// Boot a VM.
    Start {
        /// VM name.
        vm: String,
        /// Return once the vCPUs run instead of waiting for the guest.
        #[serde(default)]
        no_wait: bool,
        /// Seconds to wait for the guest (default: the engine's boot timeout).
        #[serde(default)]
        timeout_s: Option<u64>,
    },
    /// Stop a VM.
    Stop {
        /// VM name.
        vm: String,
        /// Skip the guest and stop QEMU at once.
        #[serde(default)]
        force: bool,
        /// Seconds the guest gets to power off before escalation (default 30).
        #[serde(default)]
        timeout_s: Option<u64>,
    },
    /// Pause the vCPUs.
    Pause {
        /// VM name.
        vm: String,
    },
    /// Resume the vCPUs.
    Resume {
        /// VM name.
        vm: String,
    },
    /// Reboot the guest.
    Reboot {
        /// VM name.
        vm: String,
    },
    /// Remove a VM.
    Delete {
        /// VM name.
        vm: String,
        /// Stop it first if it runs.
        #[serde(default)]
        force: bool,
    },
    /// Save a VM's memory.
    SnapshotSave {
        /// VM name.
        vm: String,
        /// Snapshot id.
        id: String,
        /// Release the QEMU process afterwards.
        #[serde(default)]
        sleep: bool,
    },
    /// Boot a VM from a memory snapshot.
    SnapshotRestore {
        /// VM name.
        vm: String,
        /// Snapshot id.
        id: String,
    },
    /// Delete a snapshot.
    SnapshotDelete {
        /// Snapshot id.
        id: String,
    },
}

/// The field naming what a request acts on, borrowed as the request is (shared or mutable):
/// one list for [`OperationRequest::target`] and [`OperationRequest::target_mut`].
macro_rules! target_of {
    ($request:expr) => {
        match $request {
            OperationRequest::Create { .. } => None,
            OperationRequest::Start { vm, .. }
            | OperationRequest::Stop { vm, .. }
            | OperationRequest::Pause { vm }
            | OperationRequest::Resume { vm }
            | OperationRequest::Reboot { vm }
            | OperationRequest::Delete { vm, .. }
            | OperationRequest::SnapshotSave { vm, .. }
            | OperationRequest::SnapshotRestore { vm, .. } => Some(vm),
            OperationRequest::SnapshotDelete { id } => Some(id),
        }
    };
}

impl OperationRequest {
    /// The kind, as journaled and shown (`start`, `snapshot_save`, …).
    pub fn kind(&self) -> OperationKind {
        match self {
            OperationRequest::Create { .. } => OperationKind::Create,
            OperationRequest::Start { .. } => OperationKind::Start,
            OperationRequest::Stop { .. } => OperationKind::Stop,
            OperationRequest::Pause { .. } => OperationKind::Pause,
            OperationRequest::Resume { .. } => OperationKind::Resume,
            OperationRequest::Reboot { .. } => OperationKind::Reboot,
            OperationRequest::Delete { .. } => OperationKind::Delete,
            OperationRequest::SnapshotSave { .. } => OperationKind::SnapshotSave,
            OperationRequest::SnapshotRestore { .. } => OperationKind::SnapshotRestore,
            OperationRequest::SnapshotDelete { .. } => OperationKind::SnapshotDelete,
        }
    }

    /// What it may do, for the access policy.
    pub fn action(&self) -> hangar_core::access::Action {
        use hangar_core::access::Action;
        match self {
            OperationRequest::Create { .. } => Action::VmCreate,
            OperationRequest::Delete { .. } => Action::VmDelete,
            OperationRequest::Start { .. }
            | OperationRequest::Stop { .. }
            | OperationRequest::Pause { .. }
            | OperationRequest::Resume { .. }
            | OperationRequest::Reboot { .. } => Action::VmOperate,
            OperationRequest::SnapshotSave { .. } => Action::SnapshotSave,
            OperationRequest::SnapshotRestore { .. } => Action::SnapshotRestore,
            OperationRequest::SnapshotDelete { .. } => Action::SnapshotDelete,
        }
    }

    /// The VM it acts on, or for `snapshot_delete` the snapshot (`None` for `create`, whose VM
    /// is in its spec).
    pub fn target(&self) -> Option<&str> {
        target_of!(self).map(String::as_str)
    }

    /// Mutable access to the name [`OperationRequest::target`] returns (to resolve it in a
    /// principal's namespace).
    pub fn target_mut(&mut self) -> Option<&mut String> {
        target_of!(self)
    }

    /// The tenant whose object it acts on: the spec's `tenant` for `create`, else the
    /// tenant prefix of its target (a tenant's VMs and snapshots are named `tenant--name`).
    pub fn tenant(&self) -> Option<String> {
        match self {
            OperationRequest::Create { spec, .. } => {
                spec.get("tenant").and_then(|t| t.as_str()).map(str::to_string)
            }
            _ => self.target().and_then(hangar_core::ids::tenant_prefix).map(str::to_string),
        }
    }
}

/// What a finished operation produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperationResult {
    /// The VM afterwards (absent after delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmView>,
    /// The snapshot written (snapshot_save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub snapshot: Option<hangar_core::contracts::SnapshotInfo>,
    /// Whether a graceful stop had to be forced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
    /// How long the engine call took, in milliseconds.
    pub took_ms: u64,
}

/// An operation: what was asked, where it is, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    /// Id (`op-…`).
    pub id: String,
    /// What it does (`start`, `stop`, `snapshot_save`, …).
    #[schema(value_type = String)]
    pub kind: OperationKind,
    /// What it acts on (a VM name or a snapshot id).
    pub target: String,
    /// `running`, `succeeded`, `failed` or `rolled_back`.
    #[schema(value_type = String)]
    pub status: OperationStatus,
    /// The phase it last reported: a start reports `disks`, `engine`, `boot` and `ready`, in
    /// that order (`engine` and `ready` on the fake engine); other kinds report none.
    pub progress: Option<String>,
    /// The request.
    pub request: OperationRequest,
    /// What it produced, once succeeded.
    pub result: Option<OperationResult>,
    /// Why it failed or was rolled back.
    pub error: Option<ErrorBody>,
    /// Created, milliseconds since the epoch.
    pub created_at: u64,
    /// Last changed, milliseconds since the epoch.
    pub updated_at: u64,
}

impl Operation {
    /// Whether it will change no more.
    pub fn is_done(&self) -> bool {
        self.status.is_terminal()
    }
}

/// One line of an operation's progress stream (`?stream=true` on a mutating call, served as
/// `application/x-ndjson`): each phase as the operation reports it, then, last, the operation
/// as it ended. A blank line is a keep-alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressLine {
    /// A phase began (`disks`, `engine`, `boot`, `ready` for a start).
    Phase(String),
    /// The operation finished (succeeded or not): the stream's last line.
    Operation(Box<Operation>),
}

/// One entry of `GET /v1/events` (the `data:` of an SSE event) and of `hangar events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventView {
    /// A lifecycle transition.
    Transition {
        /// Sequence number.
        seq: u64,
        /// VM.
        vm: String,
        /// State before (absent when the VM was created).
        from: Option<String>,
        /// State after.
        to: String,
        /// When, milliseconds since the epoch.
        at: u64,
        /// `user`, `reconciler`, `engine` or `fault`.
        cause: String,
        /// The operation it belongs to, if any.
        operation: Option<String>,
    },
    /// Something the engine observed that is not a state change, or a reconcile pass.
    Engine {
        /// Sequence number.
        seq: u64,
        /// VM, or `fleet` for a reconcile pass's report.
        vm: String,
        /// When, milliseconds since the epoch.
        at: u64,
        /// What happened.
        message: String,
    },
}

impl EventView {
    /// The VM it is about (`fleet` for a reconcile pass).
    pub fn vm(&self) -> &str {
        match self {
            EventView::Transition { vm, .. } | EventView::Engine { vm, .. } => vm,
        }
    }

    /// The view of a stored event.
    pub fn from_event(e: &hangar_core::contracts::Event) -> EventView {
        use hangar_core::contracts::EventKind;
        match &e.kind {
            EventKind::Transition(t) => EventView::Transition {
                seq: e.seq,
                vm: t.vm.to_string(),
                from: t.from.map(|s| s.as_str().to_string()),
                to: t.to.as_str().to_string(),
                at: t.at.0,
                cause: serde_json::to_value(t.cause)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                operation: t.operation.as_ref().map(|o| o.to_string()),
            },
            EventKind::Engine { vm, at, message } => EventView::Engine {
                seq: e.seq,
                vm: vm.to_string(),
                at: at.0,
                message: message.clone(),
            },
        }
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            EventView::Transition { seq, .. } | EventView::Engine { seq, .. } => *seq,
        }
    }

    /// When it happened, milliseconds since the epoch.
    pub fn at(&self) -> u64 {
        match self {
            EventView::Transition { at, .. } | EventView::Engine { at, .. } => *at,
        }
    }
}

/// One image as `GET /v1/images` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageView {
    /// Name (the directory under `$HANGAR_HOME/images` or the system-wide image directory).
    pub name: String,
    /// The image's directory: in `$HANGAR_HOME/images`, or in the system-wide, read-only one
    /// (`/usr/local/share/hangar/images`) when this Hangar has no copy of its own.
    pub dir: String,
    /// Whether the kernel and initrd are both present.
    pub complete: bool,
    /// The manifest (`manifest.json`), when readable.
    #[schema(value_type = Option<Object>)]
    pub manifest: Option<serde_json::Value>,
    /// Total bytes of the image's files.
    pub size_bytes: u64,
}

/// A token as `hangar token create` returns it: the secret is shown once and never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewToken {
    /// Public id (appears in the audit log).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may reach: `admin`, or `tenant:<id>:<role>` (role viewer, operator or owner).
    pub scope: String,
    /// The bearer secret.
    pub token: String,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token is for (1-64 printable characters).
    pub name: String,
    /// `admin`, or `tenant:<id>:<role>` (role viewer, operator or owner).
    pub scope: String,
}

/// A token as listed (never its secret, which is not stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// What it is for.
    pub name: String,
    /// What it may reach.
    pub scope: String,
    /// When it was made (ms since the Unix epoch).
    pub created_at: u64,
}

/// A network as `hangar network ls` and `GET /v1/networks` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    /// Its name (`acme--default` for a tenant's).
    pub name: String,
    /// The tenant that owns it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its subnet (`10.88.0.0/24`).
    pub subnet: String,
    /// The gateway: the host bridge's address.
    pub gateway: String,
    /// The host bridge's name.
    pub bridge: String,
    /// Whether guests reach beyond the host (masqueraded).
    pub nat: bool,
    /// Addresses leased to VMs' NICs.
    pub leases: Vec<LeaseView>,
    /// Host addresses left for new NICs.
    pub free: u32,
}

/// One leased address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseView {
    /// The address.
    pub address: String,
    /// The VM holding it.
    pub vm: String,
    /// Its NIC.
    pub nic: String,
    /// The NIC's MAC address.
    pub mac: String,
}

/// `POST /v1/networks` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// Its name; a tenant's network is named `tenant--name` (given `tenant`, the prefix is
    /// added).
    pub name: String,
    /// Its subnet: a private IPv4 range, prefix 16 to 29 (`10.88.0.0/24`).
    pub subnet: String,
    /// The tenant that owns it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Masquerade guests' traffic out of the host (default true).
    #[serde(default = "default_true")]
    pub nat: bool,
}

fn default_true() -> bool {
    true
}

/// The HTTP status an error code maps to.
pub fn http_status(code: ErrorCode) -> u16 {
    use ErrorCode::*;
    match code {
        VmNotFound | SnapshotNotFound | DiskNotFound | NicNotFound | OperationNotFound
        | TenantNotFound | PoolNotFound | InstanceNotFound | NetworkNotFound | RouteNotFound => 404,
        PoolExists | TenantInUse | NetworkExists | NetworkInUse | NetworkOverlap
        | RouteConflict => 409,
        NetworkExhausted => 409,
        NetworkUnavailable | GatewayUnavailable | ClusterUnavailable => 503,
        SignatureInvalid => 422,
        Unauthorized => 401,
        Forbidden => 403,
        PathNotAllowed => 400,
        AuditUnavailable | HostCapacity => 503,
        Interrupted => 409,
        VmExists | SnapshotExists | DiskExists | InvalidTransition | SnapshotInUse | DiskInUse
        | DiskHasSnapshots | NicExists | Busy => 409,
        SpecTooLarge => 413,
        EngineUnavailable | StoreUnavailable => 503,
        Timeout => 504,
        QuotaExceeded => 429,
        Cancelled => 409,
        EngineFailed | StoreCorrupt | Io => 500,
        Unsupported | AgentUnsupported => 501,
        // Retryable: the guest is not running or its agent does not answer yet.
        AgentUnavailable => 503,
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

/// `POST /v1/vms/{name}/start` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Finish once the vCPUs run instead of waiting for the guest.
    #[serde(default)]
    pub no_wait: bool,
    /// Seconds to wait for the guest (default: the engine's boot timeout).
    pub timeout_s: Option<u64>,
}

/// The guest images: one directory each, with `vmlinuz`, `initrd.img` and `manifest.json`
/// (written by `hangar-image build`), in `home/images` and then in `shared` (the system-wide
/// image directory) for names `home/images` does not have: the images a spec can boot.
pub fn images(home: &std::path::Path, shared: &std::path::Path) -> std::io::Result<Vec<ImageView>> {
    let mut out = images_in(&home.join("images"))?;
    // The shared directory is someone else's: unreadable means none, not an error.
    for image in images_in(shared).unwrap_or_default() {
        if !out.iter().any(|own| own.name == image.name) {
            out.push(image);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn images_in(dir: &std::path::Path) -> std::io::Result<Vec<ImageView>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        let mut size_bytes = 0;
        for file in std::fs::read_dir(&path)?.flatten() {
            size_bytes += file.metadata().map(|m| m.len()).unwrap_or(0);
        }
        // An unreadable manifest is shown as absent, not trusted and not fatal to the listing.
        let manifest = std::fs::read(path.join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(ImageView {
            name: entry.file_name().to_string_lossy().into_owned(),
            dir: path.display().to_string(),
            complete: path.join("vmlinuz").is_file() && path.join("initrd.img").is_file(),
            manifest,
            size_bytes,
        });
    }
    Ok(out)
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

//! The one library behind every Hangar command.
//!
//! [`Control`] is what a command asks for: list and inspect VMs, run an
//! [`OperationRequest`], read operations, snapshots and events. Two implementations speak it:
//!
//! - [`Local`] carries requests out on this host through the engine (`hangar-qemu`), journaling
//!   each one as an operation in the store first, so that if its process dies the next
//!   [`Local::recover`] finishes or rolls it back. `hangard` serves its API with a `Local`;
//!   the CLI uses one when no daemon runs.
//! - [`Remote`] sends the same requests to `hangard` over its unix socket.
//!
//! Commands are written once against `dyn Control`; which one they get is decided by
//! [`connect`]. That is what keeps the CLI's output identical with and without the daemon.

use std::path::{Path, PathBuf};

use hangar_api::{ErrorBody, EventView, Operation, OperationRequest, VmView};
use hangar_core::contracts::SnapshotInfo;
use hangar_core::error::ErrorCode;

mod backend;
mod error;
pub mod fleet;
mod local;
mod remote;
mod remote_guest;
pub mod tokens;

pub use backend::{Backend, Start};
pub mod networks;
pub use error::ControlError;
pub use local::{allowed_roots, check_paths, Local, Pending};
pub use remote::Remote;

/// The view `hangar ps` and `GET /v1/vms` show of a (freshly refreshed) record: built here, at
/// the edge that knows both the store and the engine, so the wire types need neither.
pub fn view_of(rec: &hangar_store::VmRecord) -> VmView {
    let plan = hangar_qemu::QemuEngine::plan_of(rec).ok();
    let addresses = match (&plan, rec.state) {
        (Some(plan), hangar_core::lifecycle::VmState::Running) => plan
            .guest_network
            .iter()
            .flat_map(|n| &n.nics)
            .flat_map(|n| n.addresses.iter().cloned())
            .collect(),
        _ => Vec::new(),
    };
    VmView {
        name: rec.name().to_string(),
        state: rec.state.as_str().to_string(),
        accel: plan.map(|p| p.accel_resolved.as_str().to_string()).unwrap_or_default(),
        vcpus: rec.spec.machine.vcpus,
        memory_mib: rec.spec.machine.memory_mib,
        uptime_s: rec.process.and_then(hangar_qemu::process::uptime).map(|u| u.as_secs()),
        pid: rec.process.map(|p| p.pid),
        boot_ms: rec.boot_ms,
        reason: rec.reason.clone(),
        spec_hash: rec.spec_hash.clone(),
        tenant: rec.spec.tenant.as_ref().map(|t| t.to_string()),
        addresses,
    }
}

/// Results carry the API's error body: code, message, path and hint, whichever side failed.
pub type Result<T> = std::result::Result<T, ControlError>;

/// What commands ask of Hangar, locally or through `hangard`.
pub trait Control: Send + Sync {
    /// Every VM, refreshed against reality.
    fn list(&self) -> Result<Vec<VmView>>;
    /// One VM.
    fn get(&self, vm: &str) -> Result<VmView>;
    /// Carries out `request` and waits for it; `progress` hears each phase it reports. A failed
    /// operation is an `Err` whose body names the operation.
    fn run(&self, request: OperationRequest, progress: &dyn Fn(&str)) -> Result<Operation>;
    /// One operation.
    fn operation(&self, id: &str) -> Result<Operation>;
    /// The newest `limit` operations, newest first.
    fn operations(&self, limit: usize) -> Result<Vec<Operation>>;
    /// Memory snapshots, of one VM or all.
    fn snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotInfo>>;
    /// Events after sequence number `after`, oldest first, at most `limit`.
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<EventView>>;
    /// Where requests go, for messages (`local` or the daemon's socket).
    fn describe(&self) -> String;
    /// Work inside running guests (exec, files, info), the same way: through the daemon when
    /// it runs (which checks and audits it), else straight to the VM's agent.
    fn guest(&self) -> &dyn hangar_core::contracts::Guest;
    /// Every network with its leases.
    fn networks(&self) -> Result<Vec<hangar_api::NetworkView>>;
    /// Creates a network (and its host bridge).
    fn create_network(&self, req: &hangar_api::NetworkRequest) -> Result<hangar_api::NetworkView>;
    /// Removes a network no VM uses (and its host bridge).
    fn remove_network(&self, name: &str) -> Result<()>;
    /// Records `tenant`'s default network if it has none (`TENANT--default`).
    fn ensure_tenant_network(&self, _tenant: &hangar_core::ids::TenantId) -> Result<()> {
        Ok(())
    }
    /// Removes every network of `tenant` (refused while a VM uses one).
    fn remove_tenant_networks(&self, _tenant: &hangar_core::ids::TenantId) -> Result<()> {
        Ok(())
    }
}

/// Whether to use `hangard`: the value of `HANGAR_DAEMON`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonMode {
    /// Use the daemon when its socket answers (the default).
    Auto,
    /// Fail if the daemon does not answer.
    Require,
    /// Never use the daemon; work on the store directly.
    Never,
}

impl DaemonMode {
    /// Reads `HANGAR_DAEMON` (unset means auto).
    pub fn from_env() -> Result<DaemonMode> {
        match std::env::var("HANGAR_DAEMON").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(DaemonMode::Auto),
            Ok("require") => Ok(DaemonMode::Require),
            Ok("never") => Ok(DaemonMode::Never),
            Ok(other) => {
                let mut e = ErrorBody::new(
                    ErrorCode::InvalidArgument,
                    format!("HANGAR_DAEMON={other:?} is not auto, require or never"),
                );
                e.hint = "unset HANGAR_DAEMON or set it to auto, require or never".into();
                Err(e.into())
            }
        }
    }
}

/// The daemon's socket in `home`.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("hangard.sock")
}

/// Whether a daemon answers on `home`'s socket.
pub fn daemon_running(home: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(home)).is_ok()
}

/// A daemon on another host, from the environment: `HANGAR_REMOTE=https://HOST:PORT` with
/// `HANGAR_TOKEN` and `HANGAR_TLS_FINGERPRINT` (the daemon's certificate, `sha256:…`, printed
/// when it starts and by `hangar doctor` there). `http://` works only with a daemon started
/// `--insecure-plaintext`. `None` when `HANGAR_REMOTE` is unset.
pub fn remote_from_env() -> Result<Option<Remote>> {
    let Ok(url) = std::env::var("HANGAR_REMOTE") else {
        return Ok(None);
    };
    let bad = |message: String, hint: &str| {
        ControlError::refused(ErrorCode::InvalidArgument, message).hint(hint)
    };
    let (tls, addr) = if let Some(a) = url.strip_prefix("https://") {
        (true, a)
    } else if let Some(a) = url.strip_prefix("http://") {
        (false, a)
    } else {
        return Err(bad(
            format!("HANGAR_REMOTE={url:?} is not https://HOST:PORT"),
            "set HANGAR_REMOTE=https://HOST:PORT (what hangard --listen-tcp serves)",
        ));
    };
    let addr = addr.trim_end_matches('/').to_string();
    let token = std::env::var("HANGAR_TOKEN").map_err(|_| {
        bad(
            "HANGAR_REMOTE is set but HANGAR_TOKEN is not".into(),
            "create a token on the daemon's host (`hangar token create …`) and set HANGAR_TOKEN",
        )
    })?;
    let fingerprint = if tls {
        let pin = std::env::var("HANGAR_TLS_FINGERPRINT").map_err(|_| {
            bad(
                "HANGAR_REMOTE is https:// but HANGAR_TLS_FINGERPRINT is not set".into(),
                "set HANGAR_TLS_FINGERPRINT=sha256:… as hangard printed it (or `hangar doctor` on its host shows it)",
            )
        })?;
        let hex = pin.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                format!("HANGAR_TLS_FINGERPRINT={pin:?} is not sha256:<64 hex digits>"),
                "copy the fingerprint hangard printed",
            ));
        }
        Some(pin)
    } else {
        None
    };
    Ok(Some(Remote::at(hangar_api::client::Endpoint::Tcp { addr, fingerprint, token })))
}

/// The daemon if `mode` and reality say so, else `None` (the caller opens a [`Local`]; it is
/// not opened here because opening probes the host, which the daemon path never needs). A
/// remote daemon (`HANGAR_REMOTE`) is always used when set.
pub fn remote_for(home: &Path, mode: DaemonMode) -> Result<Option<Remote>> {
    if let Some(remote) = remote_from_env()? {
        return Ok(Some(remote));
    }
    let socket = socket_path(home);
    match mode {
        DaemonMode::Never => Ok(None),
        DaemonMode::Require => Ok(Some(Remote::new(socket))),
        DaemonMode::Auto => Ok(daemon_running(home).then(|| Remote::new(socket))),
    }
}

/// Where guest calls (exec, files, info) go: the daemon when `mode` and reality say so, else
/// straight to the engine's agents. Lighter than [`connect`]: a guest call needs neither the
/// operation journal nor the fleet registry, and opening them costs a CLI exec ~10 ms.
pub fn guest_for(home: &Path, mode: DaemonMode) -> Result<Box<dyn hangar_core::contracts::Guest>> {
    match remote_for(home, mode)? {
        Some(remote) => Ok(Box::new(remote)),
        None => Ok(Box::new(hangar_qemu::QemuEngine::open(
            home,
            hangar_qemu::EngineOptions::default(),
        )?)),
    }
}

/// The [`Control`] commands use: the daemon when `mode` and reality say so, else a [`Local`]
/// over `home` whose specs may name host files under `allow` too (the daemon has its own
/// allowed roots: `hangard --allow-path`).
pub fn connect(home: &Path, mode: DaemonMode, allow: &[PathBuf]) -> Result<Box<dyn Control>> {
    match remote_for(home, mode)? {
        Some(remote) => Ok(Box::new(remote)),
        None => Ok(Box::new(Local::open(home, allow)?)),
    }
}

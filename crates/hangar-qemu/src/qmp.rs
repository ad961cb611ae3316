//! A blocking facade over the async QMP client: the contracts are synchronous, so each call
//! runs on the engine's own single-threaded runtime.

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_core::error::Result;
use hangar_qmp::{MigrationStatus, Qmp, QmpControl, QmpError, QmpQuery, RunState, StatusInfo};
use tokio::runtime::Runtime;

use crate::error::QemuError;

/// How often long-running QMP states (migration, incoming load) are polled.
const POLL: Duration = Duration::from_millis(5);

/// Waits between polls of QEMU's state: 250 µs first, doubling up to [`POLL`]. A loaded
/// snapshot of device state only, or a save of it, is done in a few milliseconds, and a fixed
/// 5 ms poll made each of them cost a whole extra interval (a spare's claim, a save).
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_micros(250))
    }

    fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(POLL);
    }
}

fn qmp_err(e: QmpError) -> hangar_core::error::Error {
    QemuError::Qmp(e).into()
}

/// A VM's run state, simplified for the engine's decisions.
#[derive(Debug, Clone)]
pub struct Status(StatusInfo);

impl Status {
    /// States after which the VM cannot run on (QEMU stays alive, paused, until killed).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.0.status,
            RunState::InternalError
                | RunState::GuestPanicked
                | RunState::Shutdown
                | RunState::IoError
        )
    }

    /// Whether the vCPUs run.
    pub fn is_running(&self) -> bool {
        self.0.running
    }

    /// Paused at the end of an outgoing migration (a save that kept the VM).
    pub fn is_after_save(&self) -> bool {
        self.0.status == RunState::PostMigrate
    }

    /// Waiting for, or loading, an incoming migration (a restore not finished).
    pub fn is_incoming(&self) -> bool {
        self.0.status == RunState::InMigrate
    }

    /// QEMU's name for the state.
    pub fn name(&self) -> String {
        self.0.status.as_str().to_string()
    }
}

/// A connected QMP session.
pub struct QmpSession<'rt> {
    rt: &'rt Runtime,
    qmp: Qmp,
}

impl<'rt> QmpSession<'rt> {
    /// Connects, retrying until the socket answers or `deadline` passes.
    pub fn connect(rt: &'rt Runtime, socket: &Path, deadline: Duration) -> Result<QmpSession<'rt>> {
        let qmp = rt.block_on(Qmp::connect(socket, deadline)).map_err(qmp_err)?;
        Ok(QmpSession { rt, qmp })
    }

    /// [`QmpSession::connect`] that gives up as soon as `alive` says the process is gone (a
    /// refused connection is otherwise retried until the deadline). `None` when it died.
    pub fn connect_while(
        rt: &'rt Runtime, socket: &Path, deadline: Duration, alive: impl Fn() -> bool,
    ) -> Option<std::result::Result<QmpSession<'rt>, QmpError>> {
        let qmp = rt.block_on(async {
            tokio::select! {
                r = Qmp::connect(socket, deadline) => Some(r),
                () = async {
                    while alive() {
                        tokio::time::sleep(POLL).await;
                    }
                } => None,
            }
        })?;
        Some(qmp.map(|qmp| QmpSession { rt, qmp }))
    }

    /// `query-status`.
    pub fn status(&self) -> Result<Status> {
        self.rt.block_on(self.qmp.query_status()).map(Status).map_err(qmp_err)
    }

    /// Pauses the vCPUs.
    pub fn stop(&self) -> Result<()> {
        self.rt.block_on(self.qmp.stop()).map_err(qmp_err)
    }

    /// Resumes the vCPUs.
    pub fn cont(&self) -> Result<()> {
        self.rt.block_on(self.qmp.cont()).map_err(qmp_err)
    }

    /// Presses the ACPI power button.
    pub fn powerdown(&self) -> Result<()> {
        self.rt.block_on(self.qmp.system_powerdown()).map_err(qmp_err)
    }

    /// Resets the machine (a hard reboot of the guest).
    pub fn reset(&self) -> Result<()> {
        self.rt.block_on(self.qmp.system_reset()).map_err(qmp_err)
    }

    /// What QEMU does when the guest (or `system_reset`) resets the machine. Plans run QEMU
    /// with `-no-reboot` (`shutdown`): a guest that panics or reboots by itself ends the process,
    /// which Hangar reports. A deliberate reboot switches to `reset` until the guest is back.
    pub fn set_reboot_action(&self, reset: bool) -> Result<()> {
        let action = if reset { "reset" } else { "shutdown" };
        self.rt
            .block_on(self.qmp.execute("set-action", Some(serde_json::json!({ "reboot": action }))))
            .map(drop)
            .map_err(qmp_err)
    }

    /// Whether guest RAM is the VM's own file mapped shared (`qom-get` of the RAM backend's
    /// `share`): then what the guest wrote is in that file and a snapshot needs only the
    /// device state. `false` for anything else, including a VM planned before RAM files (no
    /// such backend) and a reply that is not a boolean: those save their RAM in the stream.
    pub fn ram_is_own_file(&self) -> bool {
        let path = format!("/objects/{}", hangar_plan::RAM_BACKEND);
        let args = serde_json::json!({ "path": path, "property": "share" });
        matches!(
            self.rt.block_on(self.qmp.execute("qom-get", Some(args))),
            Ok(serde_json::Value::Bool(true))
        )
    }

    /// Sets migration capability `x-ignore-shared`: RAM mapped shared from a file is left out
    /// of the stream (the file holds it). Both the saving and the restoring side need it.
    pub fn ignore_shared_ram(&self, on: bool) -> Result<()> {
        let args = serde_json::json!({
            "capabilities": [{ "capability": "x-ignore-shared", "state": on }]
        });
        self.rt
            .block_on(self.qmp.execute("migrate-set-capabilities", Some(args)))
            .map(drop)
            .map_err(qmp_err)
    }

    /// With `-incoming defer`: starts loading the device state from `uri`.
    pub fn migrate_incoming(&self, uri: &str) -> Result<()> {
        let args = serde_json::json!({ "uri": uri });
        self.rt
            .block_on(self.qmp.execute("migrate-incoming", Some(args)))
            .map(drop)
            .map_err(qmp_err)
    }

    /// Asks QEMU to exit. The connection may close before the reply: that counts as success.
    pub fn quit(&self) -> Result<()> {
        match self.rt.block_on(self.qmp.quit()) {
            Ok(()) | Err(QmpError::Disconnected { .. }) => Ok(()),
            Err(e) => Err(qmp_err(e)),
        }
    }

    /// Waits until the vCPUs run.
    pub fn wait_running(&self, deadline: Instant) -> Result<()> {
        let mut backoff = Backoff::new();
        loop {
            let s = self.status()?;
            if s.0.running {
                return Ok(());
            }
            if s.is_fatal() {
                return Err(QemuError::Fatal { status: s.name(), context: String::new() }.into());
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Deadline { what: "waiting for the vCPUs to run" }.into());
            }
            backoff.wait();
        }
    }

    /// With `-incoming`: waits until the memory snapshot is loaded (QEMU leaves `inmigrate`).
    pub fn wait_incoming_done(&self, deadline: Instant) -> Result<()> {
        let mut backoff = Backoff::new();
        loop {
            let s = self.status()?;
            match s.0.status {
                RunState::InMigrate | RunState::Prelaunch => {}
                RunState::Paused | RunState::PostMigrate | RunState::Running => return Ok(()),
                _ if s.is_fatal() => return Err(QemuError::LoadFailed { status: s.name() }.into()),
                _ => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Deadline { what: "loading the memory snapshot" }.into());
            }
            backoff.wait();
        }
    }

    /// Writes the paused VM's memory and device state to `path` and waits for completion.
    pub fn migrate_to_file(&self, path: &Path, deadline: Instant) -> Result<()> {
        let uri = format!("file:{}", path.display());
        self.rt.block_on(self.qmp.migrate(&uri)).map_err(qmp_err)?;
        let mut backoff = Backoff::new();
        loop {
            let info = self.rt.block_on(self.qmp.query_migrate()).map_err(qmp_err)?;
            match info.status {
                MigrationStatus::Completed => return Ok(()),
                MigrationStatus::Failed | MigrationStatus::Cancelled => {
                    return Err(QemuError::SaveFailed {
                        detail: info.error_desc.unwrap_or_else(|| info.status.to_string()),
                    }
                    .into())
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Deadline { what: "saving the memory snapshot" }.into());
            }
            backoff.wait();
        }
    }
}

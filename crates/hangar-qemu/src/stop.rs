//! The stop ladder and its one reaping step.

use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::Result;
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{Cause, VmState};
use hangar_plan::Plan;
use hangar_store::VmRecord;

use crate::engine::*;
use crate::process;

impl QemuEngine {
    /// Ends a VM's QEMU for good (the ladder's forced rungs), removes what only a running QEMU
    /// uses, and forgets the process: what every failed or abandoned operation does.
    pub(crate) fn reap(&self, rec: &mut VmRecord, plan: &Plan) {
        self.shut_down(rec, plan, StopMode::Force);
        self.cleanup_runtime(plan);
        rec.process = None;
    }

    /// The stop ladder: guest power-off (graceful only) → QMP quit → SIGTERM → SIGKILL, always
    /// aimed at the exact process. Returns whether escalation past the guest was needed.
    pub(crate) fn shut_down(&self, rec: &VmRecord, plan: &Plan, mode: StopMode) -> bool {
        let Some(p) = rec.process.filter(|p| process::alive(*p)) else {
            return false;
        };
        let ctl = self.qmp(plan).ok();
        if let StopMode::Graceful { timeout } = mode {
            if let Some(ctl) = &ctl {
                // A paused guest cannot react to the power button.
                if rec.state == VmState::Paused {
                    let _ = ctl.cont();
                }
                if ctl.powerdown().is_ok() && process::wait_exit(p, timeout) {
                    return false;
                }
                self.engine_event(
                    rec,
                    format!(
                        "guest did not power off within {:.1} s; escalating to QMP quit",
                        timeout.as_secs_f64()
                    ),
                );
            } else if process::wait_exit(p, Duration::ZERO) {
                return false;
            }
        }
        if let Some(ctl) = &ctl {
            let _ = ctl.quit();
        }
        if !process::wait_exit(p, QUIT_GRACE) {
            self.engine_event(
                rec,
                format!(
                    "QEMU (pid {}) still alive after quit; sending SIGTERM, then SIGKILL",
                    p.pid
                ),
            );
            process::terminate(p, TERM_GRACE);
        }
        matches!(mode, StopMode::Graceful { .. })
    }

    /// The stop ladder behind [`Lifecycle::stop`].
    pub fn stop_vm(
        &self, vm: &VmName, mode: StopMode, cancel: &CancelToken,
    ) -> Result<StopOutcome> {
        let started = Instant::now();
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        cancel.check()?;
        let plan = Self::plan_of(&rec)?;
        let mut escalated = false;
        match rec.state {
            VmState::Defined | VmState::Stopped => {}
            VmState::Sleeping => {
                rec.sleeping_on = None;
                // What its last QEMU left for the next start (see `Snapshots::save`).
                self.cleanup_runtime(&plan);
                self.step(&mut rec, VmState::Stopped, Cause::User)?;
            }
            VmState::Running
            | VmState::Paused
            | VmState::Starting
            | VmState::Failed
            | VmState::Spare => {
                rec.sleeping_on = None;
                let before = rec.state;
                self.step(&mut rec, VmState::Stopping, Cause::User)?;
                rec.state = before; // the ladder needs to know whether the vCPUs were paused
                escalated = self.shut_down(&rec, &plan, mode);
                rec.state = VmState::Stopping;
                self.cleanup_runtime(&plan);
                rec.process = None;
                let cause =
                    if escalated || mode == StopMode::Force { Cause::User } else { Cause::Engine };
                self.step(&mut rec, VmState::Stopped, cause)?;
            }
            other => return Err(refuse(vm, other, VmState::Stopping)),
        }
        Ok(StopOutcome { status: Self::status_of(&rec), escalated, took: started.elapsed() })
    }
}

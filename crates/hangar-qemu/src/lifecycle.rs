//! The `Lifecycle` contract.

use crate::error::QemuError;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{current_operation, Cause, LifecycleObserver, StateMachine, VmState};
use hangar_core::spec::{BootSource, VmSpec};
use hangar_store::VmRecord;

use crate::console::{self, LogTail};
use crate::engine::*;
use crate::qmp::QmpSession;

impl Lifecycle for QemuEngine {
    fn define(&self, spec: &VmSpec) -> Result<VmStatus> {
        let mut spec = spec.clone();
        if let (Some(extra), BootSource::Image { cmdline, .. }) =
            (&self.options.extra_cmdline, &mut spec.boot)
        {
            *cmdline =
                if cmdline.is_empty() { extra.clone() } else { format!("{cmdline} {extra}") };
        }
        let _lock = self.lock(&spec.name)?;
        if let Some(existing) = self.db(|s| s.get_vm(&spec.name))? {
            let hash = hangar_spec::CanonicalSpec::new(spec.clone()).hash.0;
            return if existing.spec_hash == hash {
                Ok(Self::status_of(&self.refresh(existing)?))
            } else {
                Err(Error::VmExists(spec.name.clone()))
            };
        }
        let name = spec.name.clone();
        // Leases are taken while planning: a define that fails gives them back.
        self.define_new(spec).inspect_err(|_| {
            let _ = self.with_store(|s| hangar_net::release(s, &name));
        })
    }

    fn start(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        self.start_with(vm, &StartOptions::default(), cancel)
    }

    fn stop(&self, vm: &VmName, mode: StopMode, cancel: &CancelToken) -> Result<StopOutcome> {
        self.stop_vm(vm, mode, cancel)
    }

    fn pause(&self, vm: &VmName) -> Result<VmStatus> {
        let pausing = [VmState::Running, VmState::Pausing, VmState::Paused];
        self.switch_vcpus(vm, pausing, "pause", |qmp| qmp.stop())
    }

    fn resume(&self, vm: &VmName) -> Result<VmStatus> {
        let resuming = [VmState::Paused, VmState::Resuming, VmState::Running];
        self.switch_vcpus(vm, resuming, "resume", |qmp| qmp.cont())
    }

    fn reboot(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        cancel.check()?;
        if rec.state != VmState::Running {
            return Err(refuse(vm, rec.state, VmState::Running));
        }
        let plan = Self::plan_of(&rec)?;
        let p = rec.process.ok_or(QemuError::NoProcess)?;
        let mut tail =
            LogTail::from(Self::console_log(&plan).as_deref().map(console::len).unwrap_or(0));
        let ctl = self.qmp(&plan)?;
        let started = Instant::now();
        // The firmware and early boot may reset again: keep `reset` until the guest is back.
        ctl.set_reboot_action(true)?;
        let rebooted = ctl.reset().and_then(|()| {
            let timeout = self.options.boot_timeout;
            self.wait_ready(&rec, &ctl, p, &plan, &mut tail, started + timeout, timeout, cancel)
        });
        let restored = ctl.set_reboot_action(false);
        if let Err(e) = rebooted.and(restored) {
            rec.reason = Some(format!("reboot failed: {e}"));
            self.step(&mut rec, VmState::Failed, Cause::Fault)?;
            return Err(e);
        }
        rec.boot_ms = Some(started.elapsed().as_millis() as u64);
        self.save(&mut rec)?;
        Ok(Self::status_of(&rec))
    }

    fn undefine(&self, vm: &VmName) -> Result<()> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if !rec.state.can_transition_to(VmState::Deleted) {
            return Err(refuse(vm, rec.state, VmState::Deleted));
        }
        let plan = Self::plan_of(&rec)?;
        // A failed VM may still have a paused QEMU (internal error): leave nothing behind.
        self.reap(&mut rec, &plan);
        self.step(&mut rec, VmState::Deleted, Cause::User)?;
        let dir = Path::new(&plan.runtime_dir);
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| QemuError::io("cannot remove", dir, e))?;
        }
        self.db(|s| s.delete_vm(vm))?;
        // Its TAPs went with its QEMU; its addresses go back to their networks, and its rules
        // go.
        if self.with_store(|s| hangar_net::release(s, vm))? + self.sweep_leases()? > 0 {
            self.with_store(|s| hangar_net::rules::sync(s, None))?;
        }
        Ok(())
    }

    fn status(&self, vm: &VmName) -> Result<VmStatus> {
        Ok(Self::status_of(&self.record(vm)?))
    }

    fn list(&self) -> Result<Vec<VmStatus>> {
        let records = self.db(|s| s.list_vms())?;
        records.into_iter().map(|r| self.refresh(r).map(|r| Self::status_of(&r))).collect()
    }

    fn observe(&self, observer: Arc<dyn LifecycleObserver>) {
        self.observers.register(observer)
    }
}

impl QemuEngine {
    /// Pausing or resuming: moves `vm` from `from` to `to` through `via` with `command`; a VM
    /// already there is left alone, a failed command (`verb`) leaves it failed with the reason.
    fn switch_vcpus(
        &self, vm: &VmName, [from, via, to]: [VmState; 3], verb: &str,
        command: impl FnOnce(&QmpSession<'_>) -> Result<()>,
    ) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        match rec.state {
            s if s == to => {}
            s if s == from => {
                let plan = Self::plan_of(&rec)?;
                self.step(&mut rec, via, Cause::User)?;
                match self.qmp(&plan).and_then(|c| command(&c)) {
                    Ok(()) => self.step(&mut rec, to, Cause::Engine)?,
                    Err(e) => {
                        rec.reason = Some(format!("{verb} failed: {e}"));
                        self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                        return Err(e);
                    }
                }
            }
            other => return Err(refuse(vm, other, via)),
        }
        Ok(Self::status_of(&rec))
    }
}

impl QemuEngine {
    /// Defines a VM whose name is free (the caller holds its lock).
    fn define_new(&self, spec: VmSpec) -> Result<VmStatus> {
        let (canonical, mut plan) = self.replan(spec)?;

        // Held until the record is in: two defines must not both see a uid as free.
        let _uids =
            hangar_store::SharedLock::acquire(&self.home, "uids").map_err(QemuError::Store)?;
        self.unique_user(&mut plan)?;
        let machine = StateMachine::new(
            canonical.spec.name.clone(),
            self.clock.clone(),
            self.observers.clone(),
            Cause::User,
            current_operation(),
        );
        let event = machine.history()[0].clone();
        let rec = VmRecord {
            spec_hash: canonical.hash.0.clone(),
            plan_json: plan.to_json(),
            state: VmState::Defined,
            reason: None,
            runtime_dir: plan.runtime_dir.clone(),
            process: None,
            boot_ms: None,
            sleeping_on: None,
            boot_log_offset: None,
            created_at: event.at,
            updated_at: event.at,
            spec: canonical.spec,
        };
        self.db(|s| s.define_vm(&rec, &event))?;
        Ok(Self::status_of(&rec))
    }
}

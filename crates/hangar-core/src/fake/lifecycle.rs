//! [`Lifecycle`] for the fake: define, start, stop (graceful stops honoured unless the knob
//! says otherwise), pause, resume, reboot, undefine, status.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::cancel::CancelToken;
use crate::contracts::*;
use crate::error::{Error, Result};
use crate::ids::VmName;
use crate::lifecycle::{Cause, LifecycleObserver, StateMachine, VmState};
use crate::spec::VmSpec;

use super::{lock, refuse, status_of, FakeEngine, FakeVm};

impl Lifecycle for FakeEngine {
    fn define(&self, spec: &VmSpec) -> Result<VmStatus> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        if let Ok(existing) = inner.vm(&spec.name) {
            return if existing.spec == *spec {
                Ok(status_of(&spec.name, existing))
            } else {
                Err(Error::VmExists(spec.name.clone()))
            };
        }
        let machine = StateMachine::new(
            spec.name.clone(),
            self.config.clock.clone(),
            self.observers.clone(),
            Cause::User,
            None,
        );
        let created = machine.history()[0].clone();
        inner.record(created, self.config.event_capacity);
        let vm = FakeVm {
            spec: spec.clone(),
            machine,
            nics: spec.nics.clone(),
            reason: None,
            sleeping_on: None,
            spare_for: None,
            files: BTreeMap::new(),
            network: None,
        };
        inner.vms.insert(spec.name.clone(), vm);
        Ok(status_of(&spec.name, inner.vm(&spec.name)?))
    }

    fn start(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        self.booting();
        self.enter()?;
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        cancel.check()?;
        match state {
            VmState::Running => {}
            VmState::Defined | VmState::Stopped => {
                self.step(&mut inner, vm, VmState::Starting, Cause::User)?;
                self.step(&mut inner, vm, VmState::Running, Cause::Engine)?;
            }
            other => return Err(refuse(vm, other, VmState::Starting)),
        }
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn stop(&self, vm: &VmName, mode: StopMode, cancel: &CancelToken) -> Result<StopOutcome> {
        self.enter()?;
        let started = self.config.clock.now();
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        cancel.check()?;
        let mut escalated = false;
        match state {
            VmState::Defined | VmState::Stopped => {}
            VmState::Sleeping => {
                self.step(&mut inner, vm, VmState::Stopped, Cause::User)?;
                inner.vm_mut(vm)?.sleeping_on = None;
            }
            VmState::Running
            | VmState::Paused
            | VmState::Starting
            | VmState::Failed
            | VmState::Spare => {
                self.step(&mut inner, vm, VmState::Stopping, Cause::User)?;
                inner.vm_mut(vm)?.spare_for = None;
                if let StopMode::Graceful { timeout } = mode {
                    let honoured = lock(&self.capabilities).has(Capability::GracefulStop)
                        && !self.ignore_graceful_stop.load(Ordering::SeqCst);
                    if !honoured {
                        // The guest did not react: wait out the timeout, then force.
                        self.config.clock.sleep(timeout);
                        escalated = true;
                    }
                }
                let cause =
                    if escalated || mode == StopMode::Force { Cause::User } else { Cause::Engine };
                self.step(&mut inner, vm, VmState::Stopped, cause)?;
            }
            other => return Err(refuse(vm, other, VmState::Stopping)),
        }
        Ok(StopOutcome {
            status: status_of(vm, inner.vm(vm)?),
            escalated,
            took: self.config.clock.now().since(started),
        })
    }

    fn pause(&self, vm: &VmName) -> Result<VmStatus> {
        self.switch_vcpus(vm, [VmState::Running, VmState::Pausing, VmState::Paused], "pause")
    }

    fn resume(&self, vm: &VmName) -> Result<VmStatus> {
        self.switch_vcpus(vm, [VmState::Paused, VmState::Resuming, VmState::Running], "resume")
    }

    fn reboot(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        self.enter()?;
        self.require(Capability::Reboot, "reboot")?;
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        cancel.check()?;
        if state != VmState::Running {
            return Err(refuse(vm, state, VmState::Running));
        }
        // A reboot happens inside the guest: the VM stays `running`; the stream says so.
        self.push_engine_event(&mut inner, vm, "guest rebooted");
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn undefine(&self, vm: &VmName) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        if !state.can_transition_to(VmState::Deleted) {
            return Err(refuse(vm, state, VmState::Deleted));
        }
        self.step(&mut inner, vm, VmState::Deleted, Cause::User)?;
        Ok(())
    }

    fn status(&self, vm: &VmName) -> Result<VmStatus> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn list(&self) -> Result<Vec<VmStatus>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner
            .vms
            .iter()
            .filter(|(_, vm)| vm.machine.state() != VmState::Deleted)
            .map(|(name, vm)| status_of(name, vm))
            .collect())
    }

    fn observe(&self, observer: Arc<dyn LifecycleObserver>) {
        self.observers.register(observer)
    }
}

//! One engine step on one instance (reserve under the lock, work unlocked, record), and the
//! steps passes and claims are made of: create (clone or boot), resume, wake, pause, sleep,
//! remove.

use crate::error::FleetError;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Lifecycle, SaveMode, Snapshots, StopMode, VmStatus};
use hangar_core::error::{Error, Result};
use hangar_core::ids::{InstanceId, PoolId, SnapshotId, VmName};
use hangar_core::lifecycle::VmState;

use crate::quota::Usage;
use crate::{instance_spec, Instance, Pool};

use super::*;

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Runs one engine step on an instance: reserve it under the lock (`check` may refuse,
    /// e.g. on quota; `claim` marks it claimed at once, so a concurrent pass already plans its
    /// replacement), run `work` unlocked, then record the outcome. If the instance's record was
    /// removed meanwhile, the VM is discarded and the step reports it.
    pub(super) fn step(
        &self, id: &InstanceId, purpose: Purpose,
        check: impl FnOnce(&State, &Instance) -> Result<()>,
        work: impl FnOnce(&Instance) -> Result<VmStatus>,
    ) -> Result<Instance> {
        let before = self.reserve(id, purpose, check)?;
        if purpose.is_claim() {
            self.changed();
        }
        let outcome = work(&before);
        let mut s = self.lock();
        s.busy.remove(id);
        let Some(rec) = s.find_mut(id) else {
            drop(s);
            self.discard_owned(&before.name);
            return Err(FleetError::InstanceRemoved(id.clone()).into());
        };
        let result = match outcome {
            Ok(status) => {
                rec.state = status.state;
                rec.since = status.since;
                Ok(rec.clone())
            }
            Err(e) => {
                if purpose.is_claim() {
                    rec.claimed = before.claimed;
                    rec.holder = before.holder.clone();
                }
                Err(e)
            }
        };
        drop(s);
        self.changed();
        result
    }

    /// Marks an idle instance busy once `check` passes (and claimed, with `claim`), returning it
    /// as it was; `E_BUSY` if another step has it.
    pub(super) fn reserve(
        &self, id: &InstanceId, purpose: Purpose,
        check: impl FnOnce(&State, &Instance) -> Result<()>,
    ) -> Result<Instance> {
        let mut s = self.lock();
        let i = s.find(id).cloned().ok_or_else(|| FleetError::InstanceNotFound(id.clone()))?;
        if s.busy.contains_key(id) {
            return Err(FleetError::InstanceBusy(id.clone()).into());
        }
        check(&s, &i)?;
        s.busy.insert(id.clone(), i.name.clone());
        if purpose.is_claim() {
            let reserved = s.find_mut(id).expect("found above");
            reserved.claimed = true;
            reserved.holder = purpose.holder();
        }
        Ok(i)
    }

    /// Creates an instance of `pool` and brings it to `target`: cloned from the pool's base
    /// snapshot when there is a current one, otherwise booted (and then saved as the new base).
    /// The quota is checked and the instance reserved first, so a refusal creates nothing and
    /// concurrent creations cannot overshoot; a failure on the way removes what was made.
    /// Returns the instance and whether it was cloned.
    pub(super) fn create(
        &self, pool_id: &PoolId, target: VmState, purpose: Purpose,
    ) -> Result<(Instance, bool)> {
        // A name taken by a VM the fleet did not make is skipped (never touched): try the next
        // ordinal, a few times.
        let mut attempts = 0;
        loop {
            match self.create_once(pool_id, target, purpose) {
                Err(Error::VmExists(_)) if attempts < 8 => attempts += 1,
                other => return other,
            }
        }
    }

    pub(super) fn create_once(
        &self, pool_id: &PoolId, target: VmState, purpose: Purpose,
    ) -> Result<(Instance, bool)> {
        let (pool, reserved, base) = {
            let mut s = self.lock();
            let pool = s.pool(pool_id)?.clone();
            let (vcpus, memory) = (pool.template.machine.vcpus, pool.template.machine.memory_mib);
            let disk = disk_mib(&pool.template);
            s.check_quota(&pool, Usage::of_vm(target, vcpus, memory, disk))?;
            let mut ordinal = s
                .instances
                .iter()
                .filter(|i| i.pool == pool.id)
                .map(|i| i.ordinal + 1)
                .max()
                .unwrap_or(0)
                .max(s.ordinal_floor.get(&pool.id).copied().unwrap_or(0));
            let name = loop {
                let name = instance_name(&pool.id, ordinal)?;
                if !s.retired.contains(&name) {
                    break name;
                }
                ordinal += 1;
            };
            let id = s.fresh_id();
            let now = self.clock.now();
            let reserved = Instance {
                id: id.clone(),
                pool: pool.id.clone(),
                name,
                ordinal,
                // In flight: counted toward running by quotas until the step settles it.
                state: VmState::Starting,
                since: now,
                created_at: now,
                claimed: purpose.is_claim(),
                vcpus: pool.template.machine.vcpus,
                memory_mib: pool.template.machine.memory_mib,
                disk_mib: disk,
                holder: purpose.holder(),
                activity: None,
            };
            s.instances.push(reserved.clone());
            s.busy.insert(id, reserved.name.clone());
            let base = s
                .bases
                .get(&pool.id)
                .filter(|b| b.template == pool.template && !pool.policy.cold_boot)
                .map(|b| b.snapshot.clone());
            (pool, reserved, base)
        };
        // Recorded before the engine hears of it: a registry saved from now on names this
        // VM, so a crash never leaves a VM the fleet made but does not know it owns.
        self.changed();
        let id = reserved.id.clone();
        let made = self.make(&pool, &reserved, target, base.as_ref());
        let mut s = self.lock();
        s.busy.remove(&id);
        let gone = s.find(&id).is_none();
        match made {
            Ok((status, cloned)) if !gone => {
                s.note(&id, &status);
                let made = s.find(&id).expect("checked").clone();
                drop(s);
                self.changed();
                Ok((made, cloned))
            }
            Err(Made::NotOurs(e)) => {
                // Another VM has the name: never touch it; the next creation takes the next
                // ordinal.
                s.instances.retain(|i| i.id != id);
                s.ordinal_floor.insert(pool.id.clone(), reserved.ordinal + 1);
                drop(s);
                self.changed();
                Err(e)
            }
            outcome => {
                // Leave nothing half made: no process, no overlay, no record. Until the VM is
                // really gone it stays retired, so a later pass finishes the job.
                s.instances.retain(|i| i.id != id);
                s.retired.insert(reserved.name.clone());
                drop(s);
                self.changed();
                self.discard_owned(&reserved.name);
                match outcome {
                    Err(Made::Failed(e)) | Err(Made::NotOurs(e)) => Err(e),
                    Ok(_) => {
                        Err(FleetError::PoolRemoved { pool: pool.id.clone(), instance: id }.into())
                    }
                }
            }
        }
    }

    /// Discards a retired VM now, and forgets it once it is gone (a later pass retries if it
    /// is not).
    pub(super) fn discard_owned(&self, name: &VmName) {
        if self.discard(name).is_ok() {
            self.lock().retired.remove(name);
            self.changed();
        }
    }

    /// The engine half of [`Fleet::create`]: define, clone or boot, then bring to `target`.
    pub(super) fn make(
        &self, pool: &Pool, i: &Instance, target: VmState, base: Option<&SnapshotId>,
    ) -> std::result::Result<(VmStatus, bool), Made> {
        match self.engine.define(&instance_spec(pool, &i.name)) {
            Ok(_) => {}
            Err(e @ Error::VmExists(_)) => return Err(Made::NotOurs(e)),
            Err(e) => return Err(Made::Failed(e)),
        }
        self.bring_up(pool, i, target, base).map_err(Made::Failed)
    }

    /// The rest of [`Fleet::make`], once the VM is defined (and so the fleet's to discard).
    pub(super) fn bring_up(
        &self, pool: &Pool, i: &Instance, target: VmState, base: Option<&SnapshotId>,
    ) -> Result<(VmStatus, bool)> {
        let cancel = CancelToken::new();
        if target == VmState::Spare {
            return self.make_spare(pool, i, base).map(|status| (status, true));
        }
        let mut cloned = false;
        if let Some(base) = base {
            // An instance made for the sleeping set is saved right away: memory of its own
            // makes that save (and so its later wake) cheap.
            let restored = if target == VmState::Sleeping {
                self.engine.restore_unshared(&i.name, base, &cancel)
            } else {
                self.engine.restore(&i.name, base, &cancel)
            };
            match restored {
                Ok(_) => cloned = true,
                // A base the engine no longer takes (deleted, or written by another QEMU):
                // forget it and boot; the boot below retakes it.
                Err(Error::SnapshotMismatch { .. } | Error::SnapshotNotFound(_)) => {
                    self.lock().bases.remove(&pool.id);
                    let _ = self.engine.delete_snapshot(base);
                }
                Err(e) => return Err(e),
            }
        }
        if !cloned {
            self.engine.start(&i.name, &cancel)?;
            if !pool.policy.cold_boot {
                let base = self.take_base(pool, &i.name)?;
                // The instance that became the base runs on as its first clone (sharing its
                // pages); one for the sleeping set gets memory of its own, as clones for it do.
                if target == VmState::Sleeping {
                    self.engine.restore_unshared(&i.name, &base, &cancel)?;
                } else {
                    self.engine.restore(&i.name, &base, &cancel)?;
                }
            }
        }
        let status = match target {
            VmState::Paused => match self.engine.status(&i.name)? {
                s if s.state == VmState::Paused => s,
                _ => self.engine.pause(&i.name)?,
            },
            VmState::Sleeping => {
                let snap = sleep_snapshot(&i.name)?;
                let _ = self.engine.delete_snapshot(&snap);
                self.engine.save(&i.name, &snap, SaveMode::Sleep, &cancel)?;
                self.engine.status(&i.name)?
            }
            _ => match self.engine.status(&i.name)? {
                s if s.state == VmState::Paused => self.engine.resume(&i.name)?,
                s => s,
            },
        };
        Ok((status, cloned))
    }

    /// Makes defined instance `i` a spare for the pool's base snapshot. With no base yet (the
    /// pool's first instance), `i` boots and is saved as the base first, then stopped.
    fn make_spare(&self, pool: &Pool, i: &Instance, base: Option<&SnapshotId>) -> Result<VmStatus> {
        let cancel = CancelToken::new();
        let base = match base {
            Some(base) => base.clone(),
            None => {
                self.engine.start(&i.name, &cancel)?;
                let base = self.take_base(pool, &i.name)?;
                self.engine.stop(&i.name, StopMode::Force, &cancel)?;
                base
            }
        };
        match self.engine.prepare_restore(&i.name, &base, &cancel) {
            // A base the engine no longer takes: forget it; the next creation boots a new one.
            Err(e @ (Error::SnapshotMismatch { .. } | Error::SnapshotNotFound(_))) => {
                self.lock().bases.remove(&pool.id);
                let _ = self.engine.delete_snapshot(&base);
                Err(e)
            }
            other => other,
        }
    }

    /// Saves a freshly booted instance as its pool's base snapshot and returns its id. The
    /// instance is put to sleep on it: a sleep hands the engine the VM's memory as it is (for
    /// QEMU a rename of its RAM file, ~15 ms) where keeping the VM would copy it (~60–120 ms
    /// for a booted 256 MiB guest); the caller restores the instance from the base if it is to
    /// run on. A stale base (older template) is deleted first, and the pool's spares with it:
    /// they wait for it (and an engine keeps a snapshot a spare waits for).
    pub(super) fn take_base(&self, pool: &Pool, vm: &VmName) -> Result<SnapshotId> {
        let snapshot = base_snapshot(&pool.id)?;
        let spares: Vec<InstanceId> = self
            .lock()
            .instances
            .iter()
            .filter(|i| i.pool == pool.id && i.state == VmState::Spare && !i.claimed)
            .map(|i| i.id.clone())
            .collect();
        for spare in spares {
            let _ = self.remove(&spare);
        }
        let _ = self.engine.delete_snapshot(&snapshot);
        self.lock().bases.remove(&pool.id);
        self.engine.save(vm, &snapshot, SaveMode::Sleep, &CancelToken::new())?;
        self.lock().bases.insert(
            pool.id.clone(),
            Base {
                pool: pool.id.clone(),
                snapshot: snapshot.clone(),
                template: pool.template.clone(),
            },
        );
        Ok(snapshot)
    }

    /// Stops (forcefully: the instance is being discarded) and deletes a VM and its sleep
    /// snapshot. A VM already gone is fine.
    pub(super) fn discard(&self, name: &VmName) -> Result<()> {
        match self.engine.stop(name, StopMode::Force, &CancelToken::new()) {
            Ok(_) | Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.engine.undefine(name) {
            Ok(()) | Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(snap) = sleep_snapshot(name) {
            let _ = self.engine.delete_snapshot(&snap);
        }
        Ok(())
    }

    pub(super) fn resume(&self, id: &InstanceId, purpose: Purpose) -> Result<Instance> {
        self.step(id, purpose, room_to_run(VmState::Paused), |i| self.engine.resume(&i.name))
    }

    pub(super) fn wake(&self, id: &InstanceId, purpose: Purpose) -> Result<Instance> {
        self.step(id, purpose, room_to_run(VmState::Sleeping), |i| {
            // The state lives on in the running guest; the snapshot goes (an engine may give
            // its memory to the VM, so the next sleep is cheap again).
            self.engine.wake(&i.name, &sleep_snapshot(&i.name)?, &CancelToken::new())
        })
    }

    /// A spare's claim: its QEMU loads the pool's base and runs. It is counted as running
    /// from here, with its vCPUs and the rest of its memory.
    pub(super) fn wake_spare(&self, id: &InstanceId, purpose: Purpose) -> Result<Instance> {
        self.step(id, purpose, room_to_run(VmState::Spare), |i| {
            self.engine.restore(&i.name, &base_snapshot(&i.pool)?, &CancelToken::new())
        })
    }

    pub(super) fn pause(&self, id: &InstanceId) -> Result<Instance> {
        self.step(id, Purpose::Pool, |_, _| Ok(()), |i| self.engine.pause(&i.name))
    }

    pub(super) fn sleep(&self, id: &InstanceId) -> Result<Instance> {
        self.step(
            id,
            Purpose::Pool,
            |_, _| Ok(()),
            |i| {
                let snap = sleep_snapshot(&i.name)?;
                // A leftover from an interrupted earlier sleep would block the save.
                let _ = self.engine.delete_snapshot(&snap);
                self.engine.save(&i.name, &snap, SaveMode::Sleep, &CancelToken::new())?;
                self.engine.status(&i.name)
            },
        )
    }

    /// Stops and deletes an instance, and drops its record.
    pub(super) fn remove(&self, id: &InstanceId) -> Result<()> {
        let i = self.reserve(id, Purpose::Pool, |_, _| Ok(()))?;
        let done = self.discard(&i.name);
        let mut s = self.lock();
        s.busy.remove(id);
        if done.is_ok() {
            s.instances.retain(|x| &x.id != id);
        }
        drop(s);
        self.changed();
        done
    }
}

/// The check of a step that makes an instance in state `from` run: its pool's quota has room
/// for what running adds ([`Usage::growth`]).
fn room_to_run(from: VmState) -> impl FnOnce(&State, &Instance) -> Result<()> {
    move |s, i| {
        let usage = Usage::growth(from, VmState::Running, i.vcpus, i.memory_mib, i.disk_mib);
        s.check_quota(s.pool(&i.pool)?, usage)
    }
}

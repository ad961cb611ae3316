//! [`Snapshots`] for the fake: memory snapshots kept in memory, with the spec they were taken
//! from so that a restore into a different VM is checked.

use crate::cancel::CancelToken;
use crate::contracts::*;
use crate::error::{Error, Result};
use crate::ids::{SnapshotId, VmName};
use crate::lifecycle::{Cause, VmState};

use super::{lock, refuse, status_of, FakeEngine, FakeSnapshot};

impl Snapshots for FakeEngine {
    fn save(
        &self, vm: &VmName, id: &SnapshotId, mode: SaveMode, cancel: &CancelToken,
    ) -> Result<SnapshotInfo> {
        self.enter()?;
        self.require(Capability::MemorySnapshots, "memory snapshots")?;
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        if inner.snapshots.contains_key(id) {
            return Err(Error::SnapshotExists(id.clone()));
        }
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(refuse(vm, state, VmState::Saving));
        }
        cancel.check()?;
        if state == VmState::Running {
            self.step(&mut inner, vm, VmState::Pausing, Cause::User)?;
            self.step(&mut inner, vm, VmState::Paused, Cause::Engine)?;
        }
        self.step(&mut inner, vm, VmState::Saving, Cause::User)?;
        let spec = inner.vm(vm)?.spec.clone();
        let info = SnapshotInfo {
            id: id.clone(),
            vm: vm.clone(),
            size_bytes: u64::from(spec.machine.memory_mib) << 20,
            layout: SnapshotLayout::Stream,
            created_at: self.config.clock.now(),
            engine_version: self.config.engine_version.clone(),
            tenant: spec.tenant.clone(),
            pool: spec.pool.clone(),
        };
        inner.snapshots.insert(id.clone(), FakeSnapshot { info: info.clone(), spec });
        match mode {
            SaveMode::KeepPaused => self.step(&mut inner, vm, VmState::Paused, Cause::Engine)?,
            SaveMode::Sleep => {
                self.step(&mut inner, vm, VmState::Sleeping, Cause::Engine)?;
                inner.vm_mut(vm)?.sleeping_on = Some(id.clone());
            }
        }
        Ok(info)
    }

    fn restore(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus> {
        self.booting();
        self.enter()?;
        self.require(Capability::MemorySnapshots, "memory snapshots")?;
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        let via = match state {
            VmState::Spare => {
                let prepared = inner.vm(vm)?.spare_for.clone();
                if prepared.as_ref() != Some(id) {
                    return Err(spare_mismatch(vm, id, prepared.as_ref()));
                }
                VmState::Waking
            }
            VmState::Sleeping => VmState::Waking,
            VmState::Defined | VmState::Stopped => VmState::Starting,
            other => return Err(refuse(vm, other, VmState::Waking)),
        };
        if state != VmState::Spare {
            check_restore(&inner, vm, id)?;
        }
        cancel.check()?;
        self.step(&mut inner, vm, via, Cause::User)?;
        self.step(&mut inner, vm, VmState::Running, Cause::Engine)?;
        let fake = inner.vm_mut(vm)?;
        fake.sleeping_on = None;
        fake.spare_for = None;
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn prepare_restore(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        self.enter()?;
        self.require(Capability::MemorySnapshots, "memory snapshots")?;
        let mut inner = lock(&self.inner);
        match inner.vm(vm)?.machine.state() {
            VmState::Defined | VmState::Stopped => {}
            other => return Err(refuse(vm, other, VmState::Starting)),
        }
        check_restore(&inner, vm, id)?;
        cancel.check()?;
        self.step(&mut inner, vm, VmState::Starting, Cause::User)?;
        self.step(&mut inner, vm, VmState::Spare, Cause::Engine)?;
        inner.vm_mut(vm)?.spare_for = Some(id.clone());
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotInfo>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner
            .snapshots
            .values()
            .filter(|s| vm.is_none_or(|vm| s.info.vm == *vm))
            .map(|s| s.info.clone())
            .collect())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        if !inner.snapshots.contains_key(id) {
            return Err(Error::SnapshotNotFound(id.clone()));
        }
        let user = inner.vms.iter().find(|(_, vm)| {
            (vm.sleeping_on.as_ref() == Some(id) && vm.machine.state() == VmState::Sleeping)
                || vm.spare_for.as_ref() == Some(id)
        });
        if let Some((name, _)) = user {
            return Err(Error::SnapshotInUse { snapshot: id.clone(), vm: name.clone() });
        }
        inner.snapshots.remove(id);
        Ok(())
    }
}

/// Whether snapshot `id` exists and may be restored into `vm` (its own, or a clone's).
fn check_restore(inner: &super::Inner, vm: &VmName, id: &SnapshotId) -> Result<()> {
    let fake = inner.vm(vm)?;
    let snapshot = inner.snapshots.get(id).ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
    if let Some(reason) = snapshot.info.clone_refusal(vm, &fake.spec) {
        return Err(Error::SnapshotMismatch { snapshot: id.clone(), reason });
    }
    if snapshot.spec.clone_template() != fake.spec.clone_template() {
        return Err(Error::SnapshotMismatch {
            snapshot: id.clone(),
            reason: format!(
                "taken from {}, whose spec differs from {vm}'s in more than name, tenant and pool",
                snapshot.info.vm
            ),
        });
    }
    Ok(())
}

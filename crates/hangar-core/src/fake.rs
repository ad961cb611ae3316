//! In-memory implementations of every contract, shipped in the product.
//!
//! [`FakeEngine`] is the reference behaviour of the contracts: the conformance suite runs against
//! it first, so a failure here means the contract itself is wrong. It is thread-safe and has
//! knobs for the situations real engines produce rarely: an injected [`Clock`], a guest that
//! ignores graceful stops, failing the Nth call with a chosen error, a simulated crash, and
//! capability toggles. It also backs tests of everything above the engine layer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cancel::CancelToken;
use crate::clock::{Clock, ManualClock, Timestamp};
use crate::contracts::*;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{DeviceName, SnapshotId, VmName, VolumeId};
use crate::lifecycle::{
    Cause, InvalidTransition, LifecycleObserver, Observers, StateMachine, TransitionEvent, VmState,
};
use crate::spec::{DiskFormat, NicSpec, VmSpec};

/// Settings fixed when a [`FakeEngine`] is built.
#[derive(Clone)]
pub struct FakeConfig {
    /// The clock stamping events and measuring stop timeouts.
    pub clock: Arc<dyn Clock>,
    /// What the engine claims to support.
    pub capabilities: CapabilitySet,
    /// How many events the stream retains before older ones are dropped (and reported as a gap).
    pub event_capacity: usize,
    /// The engine version recorded in snapshots.
    pub engine_version: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            clock: Arc::new(ManualClock::default()),
            capabilities: CapabilitySet::all(),
            event_capacity: 4096,
            engine_version: "fake-1".to_string(),
        }
    }
}

struct FakeVm {
    spec: VmSpec,
    machine: StateMachine,
    nics: Vec<NicSpec>,
    reason: Option<String>,
    sleeping_on: Option<SnapshotId>,
}

struct FakeSnapshot {
    info: SnapshotInfo,
    spec: VmSpec,
}

struct FakeVolume {
    size_mib: u64,
    format: DiskFormat,
    base: Option<VolumeId>,
    snapshots: BTreeSet<SnapshotId>,
}

#[derive(Default)]
struct Inner {
    vms: BTreeMap<VmName, FakeVm>,
    snapshots: BTreeMap<SnapshotId, FakeSnapshot>,
    volumes: BTreeMap<VolumeId, FakeVolume>,
    events: VecDeque<Event>,
    last_seq: u64,
    history: Vec<TransitionEvent>,
}

/// An in-memory engine implementing every contract.
pub struct FakeEngine {
    config: FakeConfig,
    capabilities: Mutex<CapabilitySet>,
    observers: Observers,
    inner: Mutex<Inner>,
    calls: AtomicU64,
    injected: Mutex<BTreeMap<u64, ErrorCode>>,
    ignore_graceful_stop: AtomicBool,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new(FakeConfig::default())
    }
}

impl FakeEngine {
    /// A fake with the given settings.
    pub fn new(config: FakeConfig) -> Self {
        Self {
            capabilities: Mutex::new(config.capabilities.clone()),
            config,
            observers: Observers::default(),
            inner: Mutex::new(Inner::default()),
            calls: AtomicU64::new(0),
            injected: Mutex::new(BTreeMap::new()),
            ignore_graceful_stop: AtomicBool::new(false),
        }
    }

    /// Knob: the guest ignores graceful stop requests (stops then escalate after the timeout).
    pub fn set_ignore_graceful_stop(&self, ignore: bool) {
        self.ignore_graceful_stop.store(ignore, Ordering::SeqCst)
    }

    /// Knob: the `n`th contract call from now on (1 = the next one) fails with `code` and has no
    /// effect.
    pub fn fail_call(&self, n: u64, code: ErrorCode) {
        let at = self.calls.load(Ordering::SeqCst) + n;
        lock(&self.injected).insert(at, code);
    }

    /// Knob: disarms every fault injected with [`FakeEngine::fail_call`] that has not fired.
    pub fn clear_faults(&self) {
        lock(&self.injected).clear();
    }

    /// Knob: replaces the capability set.
    pub fn set_capabilities(&self, capabilities: CapabilitySet) {
        *lock(&self.capabilities) = capabilities;
    }

    /// Knob: the engine process dies under the VM (state `failed`, cause `fault`).
    pub fn crash(&self, vm: &VmName, reason: &str) -> Result<VmStatus> {
        let mut inner = lock(&self.inner);
        let state = inner.vm(vm)?.machine.state();
        if !state.can_transition_to(VmState::Failed) {
            return Err(InvalidTransition {
                vm: vm.clone(),
                from: state,
                to: VmState::Failed,
            }
            .into());
        }
        self.step(&mut inner, vm, VmState::Failed, Cause::Fault)?;
        let fake = inner.vm_mut(vm)?;
        fake.reason = Some(reason.to_string());
        Ok(status_of(vm, fake))
    }

    /// Knob: the guest powers itself off (running → stopping → stopped, cause `engine`).
    pub fn guest_poweroff(&self, vm: &VmName) -> Result<VmStatus> {
        let mut inner = lock(&self.inner);
        self.step(&mut inner, vm, VmState::Stopping, Cause::Engine)?;
        self.step(&mut inner, vm, VmState::Stopped, Cause::Engine)?;
        Ok(status_of(vm, inner.vm(vm)?))
    }

    /// Contract calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every transition of every VM, in the order they happened (the machines' own records).
    pub fn history(&self) -> Vec<TransitionEvent> {
        lock(&self.inner).history.clone()
    }

    /// One VM's spec (with its NICs as they are now), if it exists.
    pub fn spec(&self, vm: &VmName) -> Option<VmSpec> {
        let inner = lock(&self.inner);
        let v = inner.vms.get(vm)?;
        Some(VmSpec {
            nics: v.nics.clone(),
            ..v.spec.clone()
        })
    }

    /// Every VM's state and spec, by name: what a control layer counts for quotas.
    pub fn specs(&self) -> Vec<(VmState, VmSpec)> {
        let inner = lock(&self.inner);
        inner
            .vms
            .values()
            .map(|v| {
                (
                    v.machine.state(),
                    VmSpec {
                        nics: v.nics.clone(),
                        ..v.spec.clone()
                    },
                )
            })
            .collect()
    }

    /// The clock the fake uses.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.config.clock.clone()
    }

    /// Counts a contract call and fails it if a fault was injected for it.
    fn enter(&self) -> Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match lock(&self.injected).remove(&n) {
            Some(code) => Err(Error::Injected { code, call: n }),
            None => Ok(()),
        }
    }

    fn require(&self, c: Capability, what: &str) -> Result<()> {
        if lock(&self.capabilities).has(c) {
            Ok(())
        } else {
            Err(Error::Unsupported(what.to_string()))
        }
    }

    /// One legal move of one VM, recorded in its machine, the engine history and the event stream.
    fn step(&self, inner: &mut Inner, vm: &VmName, to: VmState, cause: Cause) -> Result<()> {
        let fake = inner.vm_mut(vm)?;
        let event = fake.machine.transition(to, cause, None)?;
        if to != VmState::Failed {
            fake.reason = None;
        }
        inner.record(event, self.config.event_capacity);
        Ok(())
    }

    fn push_engine_event(&self, inner: &mut Inner, vm: &VmName, message: &str) {
        inner.last_seq += 1;
        let event = Event {
            seq: inner.last_seq,
            kind: EventKind::Engine {
                vm: vm.clone(),
                at: self.config.clock.now(),
                message: message.to_string(),
            },
        };
        inner.push_event(event, self.config.event_capacity);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the fake's maps half-updated in a way that
    // matters to tests, so recover rather than cascade the panic.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn status_of(name: &VmName, vm: &FakeVm) -> VmStatus {
    VmStatus {
        name: name.clone(),
        state: vm.machine.state(),
        since: vm
            .machine
            .history()
            .last()
            .map(|e| e.at)
            .unwrap_or(Timestamp(0)),
        reason: vm.reason.clone(),
    }
}

fn refuse(vm: &VmName, from: VmState, to: VmState) -> Error {
    InvalidTransition {
        vm: vm.clone(),
        from,
        to,
    }
    .into()
}

impl Inner {
    fn vm(&self, name: &VmName) -> Result<&FakeVm> {
        self.vms
            .get(name)
            .filter(|vm| vm.machine.state() != VmState::Deleted)
            .ok_or_else(|| Error::VmNotFound(name.clone()))
    }

    fn vm_mut(&mut self, name: &VmName) -> Result<&mut FakeVm> {
        self.vms
            .get_mut(name)
            .filter(|vm| vm.machine.state() != VmState::Deleted)
            .ok_or_else(|| Error::VmNotFound(name.clone()))
    }

    fn record(&mut self, event: TransitionEvent, capacity: usize) {
        self.history.push(event.clone());
        self.last_seq += 1;
        let event = Event {
            seq: self.last_seq,
            kind: EventKind::Transition(event),
        };
        self.push_event(event, capacity);
    }

    fn push_event(&mut self, event: Event, capacity: usize) {
        self.events.push_back(event);
        while self.events.len() > capacity.max(1) {
            self.events.pop_front();
        }
    }
}

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
        };
        inner.vms.insert(spec.name.clone(), vm);
        Ok(status_of(&spec.name, inner.vm(&spec.name)?))
    }

    fn start(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
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
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Failed => {
                self.step(&mut inner, vm, VmState::Stopping, Cause::User)?;
                if let StopMode::Graceful { timeout } = mode {
                    let honoured = lock(&self.capabilities).has(Capability::GracefulStop)
                        && !self.ignore_graceful_stop.load(Ordering::SeqCst);
                    if !honoured {
                        // The guest did not react: wait out the timeout, then force.
                        self.config.clock.sleep(timeout);
                        escalated = true;
                    }
                }
                let cause = if escalated || mode == StopMode::Force {
                    Cause::User
                } else {
                    Cause::Engine
                };
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
        self.enter()?;
        self.require(Capability::Pause, "pause")?;
        let mut inner = lock(&self.inner);
        match inner.vm(vm)?.machine.state() {
            VmState::Paused => {}
            VmState::Running => {
                self.step(&mut inner, vm, VmState::Pausing, Cause::User)?;
                self.step(&mut inner, vm, VmState::Paused, Cause::Engine)?;
            }
            other => return Err(refuse(vm, other, VmState::Pausing)),
        }
        Ok(status_of(vm, inner.vm(vm)?))
    }

    fn resume(&self, vm: &VmName) -> Result<VmStatus> {
        self.enter()?;
        self.require(Capability::Pause, "resume")?;
        let mut inner = lock(&self.inner);
        match inner.vm(vm)?.machine.state() {
            VmState::Running => {}
            VmState::Paused => {
                self.step(&mut inner, vm, VmState::Resuming, Cause::User)?;
                self.step(&mut inner, vm, VmState::Running, Cause::Engine)?;
            }
            other => return Err(refuse(vm, other, VmState::Resuming)),
        }
        Ok(status_of(vm, inner.vm(vm)?))
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

impl Snapshots for FakeEngine {
    fn save(
        &self,
        vm: &VmName,
        id: &SnapshotId,
        mode: SaveMode,
        cancel: &CancelToken,
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
            created_at: self.config.clock.now(),
            engine_version: self.config.engine_version.clone(),
            tenant: spec.tenant.clone(),
            pool: spec.pool.clone(),
        };
        inner.snapshots.insert(
            id.clone(),
            FakeSnapshot {
                info: info.clone(),
                spec,
            },
        );
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
        self.enter()?;
        self.require(Capability::MemorySnapshots, "memory snapshots")?;
        let mut inner = lock(&self.inner);
        let (state, template, spec) = {
            let fake = inner.vm(vm)?;
            (
                fake.machine.state(),
                fake.spec.clone_template(),
                fake.spec.clone(),
            )
        };
        let snapshot = inner
            .snapshots
            .get(id)
            .ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        if let Some(reason) = snapshot.info.clone_refusal(vm, &spec) {
            return Err(Error::SnapshotMismatch {
                snapshot: id.clone(),
                reason,
            });
        }
        if snapshot.spec.clone_template() != template {
            return Err(Error::SnapshotMismatch {
                snapshot: id.clone(),
                reason: format!(
                    "taken from {}, whose spec differs from {vm}'s in more than name, tenant and pool",
                    snapshot.info.vm
                ),
            });
        }
        let via = match state {
            VmState::Sleeping => VmState::Waking,
            VmState::Defined | VmState::Stopped => VmState::Starting,
            other => return Err(refuse(vm, other, VmState::Waking)),
        };
        cancel.check()?;
        self.step(&mut inner, vm, via, Cause::User)?;
        self.step(&mut inner, vm, VmState::Running, Cause::Engine)?;
        inner.vm_mut(vm)?.sleeping_on = None;
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
            vm.sleeping_on.as_ref() == Some(id) && vm.machine.state() == VmState::Sleeping
        });
        if let Some((name, _)) = user {
            return Err(Error::SnapshotInUse {
                snapshot: id.clone(),
                vm: name.clone(),
            });
        }
        inner.snapshots.remove(id);
        Ok(())
    }
}

fn volume_info(id: &VolumeId, v: &FakeVolume) -> VolumeInfo {
    VolumeInfo {
        id: id.clone(),
        size_mib: v.size_mib,
        format: v.format,
        base: v.base.clone(),
        snapshots: v.snapshots.iter().cloned().collect(),
    }
}

impl Inner {
    fn volume(&mut self, id: &VolumeId) -> Result<&mut FakeVolume> {
        self.volumes
            .get_mut(id)
            .ok_or_else(|| Error::DiskNotFound(id.clone()))
    }
}

impl Disks for FakeEngine {
    fn create_volume(&self, id: &VolumeId, source: &VolumeSource) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        if inner.volumes.contains_key(id) {
            return Err(Error::DiskExists(id.clone()));
        }
        let volume = match source {
            VolumeSource::Blank { size_mib } => {
                if *size_mib == 0 {
                    return Err(Error::InvalidArgument {
                        what: "size_mib".into(),
                        reason: "must be at least 1".into(),
                    });
                }
                FakeVolume {
                    size_mib: *size_mib,
                    format: DiskFormat::Qcow2,
                    base: None,
                    snapshots: BTreeSet::new(),
                }
            }
            VolumeSource::Overlay { base } => FakeVolume {
                size_mib: inner.volume(base)?.size_mib,
                format: DiskFormat::Qcow2,
                base: Some(base.clone()),
                snapshots: BTreeSet::new(),
            },
            // The fake reads no files: an image's size is unknown and recorded as 0.
            VolumeSource::ImageFile { .. } => FakeVolume {
                size_mib: 0,
                format: DiskFormat::Qcow2,
                base: None,
                snapshots: BTreeSet::new(),
            },
        };
        let info = volume_info(id, &volume);
        inner.volumes.insert(id.clone(), volume);
        Ok(info)
    }

    fn resize_volume(&self, id: &VolumeId, size_mib: u64) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if size_mib < volume.size_mib {
            return Err(Error::InvalidArgument {
                what: "size_mib".into(),
                reason: format!(
                    "{size_mib} MiB is smaller than the current {} MiB; volumes only grow",
                    volume.size_mib
                ),
            });
        }
        volume.size_mib = size_mib;
        Ok(volume_info(id, volume))
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        let count = inner.volume(id)?.snapshots.len();
        if count > 0 {
            return Err(Error::DiskHasSnapshots {
                disk: id.clone(),
                count,
            });
        }
        if let Some((overlay, _)) = inner
            .volumes
            .iter()
            .find(|(_, v)| v.base.as_ref() == Some(id))
        {
            return Err(Error::DiskInUse {
                disk: id.clone(),
                user: format!("overlay {overlay}"),
            });
        }
        inner.volumes.remove(id);
        Ok(())
    }

    fn snapshot_volume(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::DiskSnapshots, "disk snapshots")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if !volume.snapshots.insert(snapshot.clone()) {
            return Err(Error::SnapshotExists(snapshot.clone()));
        }
        Ok(volume_info(id, volume))
    }

    fn delete_volume_snapshot(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::DiskSnapshots, "disk snapshots")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if !volume.snapshots.remove(snapshot) {
            return Err(Error::SnapshotNotFound(snapshot.clone()));
        }
        Ok(volume_info(id, volume))
    }

    fn volume(&self, id: &VolumeId) -> Result<VolumeInfo> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        Ok(volume_info(id, volume))
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner
            .volumes
            .iter()
            .map(|(id, v)| volume_info(id, v))
            .collect())
    }
}

impl FakeEngine {
    fn check_nic_change(&self, inner: &Inner, vm: &VmName) -> Result<()> {
        let state = inner.vm(vm)?.machine.state();
        let live = !matches!(
            state,
            VmState::Defined | VmState::Stopped | VmState::Failed | VmState::Sleeping
        );
        if live && !lock(&self.capabilities).has(Capability::NicHotplug) {
            return Err(Error::Unsupported(format!(
                "changing NICs while the VM is {state}"
            )));
        }
        Ok(())
    }
}

impl Nics for FakeEngine {
    fn attach_nic(&self, vm: &VmName, nic: &NicSpec) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        self.check_nic_change(&inner, vm)?;
        let fake = inner.vm_mut(vm)?;
        if fake.nics.iter().any(|n| n.name == nic.name) {
            return Err(Error::NicExists {
                vm: vm.clone(),
                nic: nic.name.to_string(),
            });
        }
        fake.nics.push(nic.clone());
        Ok(())
    }

    fn detach_nic(&self, vm: &VmName, nic: &DeviceName) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        self.check_nic_change(&inner, vm)?;
        let fake = inner.vm_mut(vm)?;
        let before = fake.nics.len();
        fake.nics.retain(|n| n.name != *nic);
        if fake.nics.len() == before {
            return Err(Error::NicNotFound {
                vm: vm.clone(),
                nic: nic.to_string(),
            });
        }
        Ok(())
    }

    fn list_nics(&self, vm: &VmName) -> Result<Vec<NicSpec>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner.vm(vm)?.nics.clone())
    }
}

impl Events for FakeEngine {
    fn events_since(&self, after: u64, limit: usize) -> Result<EventPage> {
        self.enter()?;
        let inner = lock(&self.inner);
        let oldest = inner.events.front().map(|e| e.seq);
        let gap = match oldest {
            Some(oldest) if after + 1 < oldest => Some(Gap {
                from: after + 1,
                to: oldest - 1,
            }),
            _ => None,
        };
        let events = inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect();
        Ok(EventPage { events, gap })
    }
}

impl Capabilities for FakeEngine {
    fn capabilities(&self) -> CapabilitySet {
        lock(&self.capabilities).clone()
    }
}

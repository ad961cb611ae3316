//! In-memory implementations of every contract, shipped in the product.
//!
//! [`FakeEngine`] is the reference behaviour of the contracts: the conformance suite runs against
//! it first, so a failure here means the contract itself is wrong. It is thread-safe and has
//! knobs for the situations real engines produce rarely: an injected [`Clock`], a guest that
//! ignores graceful stops, failing the Nth call with a chosen error, a simulated crash, and
//! capability toggles. It also backs tests of everything above the engine layer.
//!
//! This module holds the engine, its settings, its knobs and the in-memory state; each
//! contract is implemented in its own module: `lifecycle`, `snapshots`, `disks`, `nics`,
//! `events` and `guest`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::{Clock, ManualClock, Timestamp};
use crate::contracts::*;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{SnapshotId, VmName, VolumeId};
use crate::lifecycle::{
    Cause, InvalidTransition, Observers, StateMachine, TransitionEvent, VmState,
};
use crate::spec::{DiskFormat, NicSpec, VmSpec};

mod disks;
mod events;
mod guest;
mod lifecycle;
mod nics;
mod snapshots;

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
    /// The snapshot this VM is a spare for, while it is one.
    spare_for: Option<SnapshotId>,
    /// The guest's files, by absolute path (what `write_file` put there).
    files: BTreeMap<String, FakeFile>,
    /// The guest's network as last configured.
    network: Option<GuestNetwork>,
}

/// A file in a fake guest.
#[derive(Clone)]
struct FakeFile {
    bytes: Vec<u8>,
    mode: u32,
    mtime: i64,
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
pub(crate) struct Inner {
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
    on_boot: Mutex<Option<BootHook>>,
}

/// What [`FakeEngine::on_boot`] runs.
type BootHook = Arc<dyn Fn() + Send + Sync>;

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
            on_boot: Mutex::new(None),
        }
    }

    /// Knob: `hook` runs as every `start` and `restore` begins, before the engine does
    /// anything (and holding none of its locks), so a test can hold a caller in the middle of
    /// a boot.
    pub fn on_boot(&self, hook: impl Fn() + Send + Sync + 'static) {
        *lock(&self.on_boot) = Some(Arc::new(hook));
    }

    /// Runs the [`FakeEngine::on_boot`] hook, if any.
    fn booting(&self) {
        let hook = lock(&self.on_boot).clone();
        if let Some(hook) = hook {
            hook();
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
            return Err(
                InvalidTransition { vm: vm.clone(), from: state, to: VmState::Failed }.into()
            );
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
        Some(VmSpec { nics: v.nics.clone(), ..v.spec.clone() })
    }

    /// Every VM's state and spec, by name: what a control layer counts for quotas.
    pub fn specs(&self) -> Vec<(VmState, VmSpec)> {
        let inner = lock(&self.inner);
        inner
            .vms
            .values()
            .map(|v| (v.machine.state(), VmSpec { nics: v.nics.clone(), ..v.spec.clone() }))
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

    /// Pausing or resuming (`verb`): `from` → `via` → `to`; a VM already at `to` is left alone.
    fn switch_vcpus(
        &self, vm: &VmName, [from, via, to]: [VmState; 3], verb: &str,
    ) -> Result<VmStatus> {
        self.enter()?;
        self.require(Capability::Pause, verb)?;
        let mut inner = lock(&self.inner);
        match inner.vm(vm)?.machine.state() {
            s if s == to => {}
            s if s == from => {
                self.step(&mut inner, vm, via, Cause::User)?;
                self.step(&mut inner, vm, to, Cause::Engine)?;
            }
            other => return Err(refuse(vm, other, via)),
        }
        Ok(status_of(vm, inner.vm(vm)?))
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
        since: vm.machine.history().last().map(|e| e.at).unwrap_or(Timestamp(0)),
        reason: vm.reason.clone(),
    }
}

fn refuse(vm: &VmName, from: VmState, to: VmState) -> Error {
    InvalidTransition { vm: vm.clone(), from, to }.into()
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
        let event = Event { seq: self.last_seq, kind: EventKind::Transition(event) };
        self.push_event(event, capacity);
    }

    fn push_event(&mut self, event: Event, capacity: usize) {
        self.events.push_back(event);
        while self.events.len() > capacity.max(1) {
            self.events.pop_front();
        }
    }
}

impl Capabilities for FakeEngine {
    fn capabilities(&self) -> CapabilitySet {
        lock(&self.capabilities).clone()
    }
}

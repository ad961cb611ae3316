//! The engine itself: its options, its store access and the state machine steps every
//! operation is made of.

use crate::error::QemuError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::clock::{Clock, SystemClock};
use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::{VmName, VolumeId};
use hangar_core::lifecycle::{
    current_operation, Cause, Observers, StateMachine, TransitionEvent, VmState,
};
use hangar_core::spec::{DiskFormat, VmSpec};
use hangar_plan::probe::SystemProbe;
use hangar_plan::{HostFacts, HostProbe, Plan};
use hangar_spec::CanonicalSpec;
use hangar_store::{
    SnapshotRecord, Store, StoreError, StoredEvent, VmLock, VmRecord, VolumeRecord,
};

use crate::console::{self};
use crate::qmp::QmpSession;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long a guest may take from spawn to `HANGAR_READY` before it is killed and `failed`.
    pub boot_timeout: Duration,
    /// Extra kernel arguments appended to every built-in-image VM this engine defines (tests use
    /// `hangar.ignore_poweroff=1` to get a guest that ignores graceful stops).
    pub extra_cmdline: Option<String>,
    /// Stop every VM and delete the home directory when the engine is dropped (tests).
    pub ephemeral: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            // TCG boots take ~3 s alone, far longer when many boot at once on 2 CPUs.
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: None,
            ephemeral: false,
        }
    }
}

/// A step of a boot, reported to progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Creating the runtime directory, overlays and blank disks.
    Disks,
    /// Starting QEMU and connecting to its control socket.
    Engine,
    /// Waiting for the guest to report ready (or the snapshot to load).
    Boot,
    /// The guest is up.
    Ready,
}

impl Phase {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Disks => "disks",
            Phase::Engine => "engine",
            Phase::Boot => "boot",
            Phase::Ready => "ready",
        }
    }
}

/// Per-call start settings.
#[derive(Default)]
pub struct StartOptions<'a> {
    /// Return once the vCPUs run instead of waiting for the guest to report ready.
    pub no_wait: bool,
    /// Overrides the engine's boot timeout.
    pub timeout: Option<Duration>,
    /// Told about each phase as it begins.
    pub progress: Option<&'a dyn Fn(Phase)>,
}

impl StartOptions<'_> {
    pub(crate) fn phase(&self, p: Phase) {
        if let Some(f) = self.progress {
            f(p)
        }
    }
}

/// How long QEMU gets to exit after QMP `quit` before it is signalled.
pub(crate) const QUIT_GRACE: Duration = Duration::from_secs(3);
/// How long QEMU gets after SIGTERM before SIGKILL.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(3);
/// Deadline for the QMP socket to appear and answer after spawn.
pub(crate) const QMP_CONNECT: Duration = Duration::from_secs(10);
/// Deadline for a memory snapshot to be written or loaded.
pub(crate) const MIGRATION_DEADLINE: Duration = Duration::from_secs(300);

/// Real QEMU behind the `hangar-core` contracts.
pub struct QemuEngine {
    pub(crate) home: PathBuf,
    pub(crate) facts: HostFacts,
    pub(crate) store: Mutex<Store>,
    pub(crate) observers: Observers,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: EngineOptions,
    /// QMP runtime; an `Option` only so `Drop` can shut it down without blocking (the engine
    /// may be dropped inside another runtime, as in `hangard`).
    pub(crate) rt: Option<tokio::runtime::Runtime>,
    /// When each running QEMU last answered a refresh's fault check (see
    /// [`FAULT_CHECK_INTERVAL`]).
    pub(crate) fault_checked:
        Mutex<std::collections::HashMap<hangar_store::ProcessIdentity, std::time::Instant>>,
}

/// How long a running QEMU's answer to "are you in a fatal state?" stands for later
/// refreshes. One request reads a VM's record several times (the API's checks, the step
/// itself, the fleet's note), and each check is a QMP session of its own (~1–2 ms); a fault
/// (QEMU's `internal-error`, a guest panic) is then seen at most this much later.
pub(crate) const FAULT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

impl QemuEngine {
    /// Opens the engine over `home` (state store, runtime dirs, images), probing the host.
    pub fn open(home: &Path, options: EngineOptions) -> Result<QemuEngine> {
        let facts = SystemProbe { home: home.to_path_buf() }.probe();
        let engine = Self::with_facts(home, facts, options)?;
        if let Some(version) = &engine.facts.qemu.version {
            hangar_plan::probe::remember_qemu_version(
                home,
                Path::new(&engine.facts.qemu.binary),
                version,
            );
        }
        Ok(engine)
    }

    /// Opens the engine with given host facts.
    pub fn with_facts(home: &Path, facts: HostFacts, options: EngineOptions) -> Result<QemuEngine> {
        let store = Store::open_in(home).map_err(QemuError::Store)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(QemuError::Runtime)?;
        Ok(QemuEngine {
            home: home.to_path_buf(),
            facts,
            store: Mutex::new(store),
            observers: Observers::default(),
            clock: Arc::new(SystemClock),
            options,
            rt: Some(rt),
            fault_checked: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The host facts plans are made with.
    pub fn facts(&self) -> &HostFacts {
        &self.facts
    }

    /// Hangar's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    pub(crate) fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    pub(crate) fn db<T>(
        &self, f: impl FnOnce(&Store) -> std::result::Result<T, StoreError>,
    ) -> Result<T> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&store).map_err(QemuError::Store)?)
    }

    pub(crate) fn lock(&self, vm: &VmName) -> Result<VmLock> {
        Ok(VmLock::acquire(&self.home, vm).map_err(QemuError::Store)?)
    }

    /// A VM's record after refreshing it against reality.
    pub fn record(&self, vm: &VmName) -> Result<VmRecord> {
        let rec = self.db(|s| s.get_vm(vm))?.ok_or_else(|| Error::VmNotFound(vm.clone()))?;
        self.refresh(rec)
    }

    /// Every VM's record as stored, without refreshing any against its process (cheap: one
    /// store read; what quota checks count).
    pub fn records(&self) -> Result<Vec<VmRecord>> {
        self.db(|s| s.list_vms())
    }

    /// The plan a VM runs.
    pub fn plan_of(rec: &VmRecord) -> Result<Plan> {
        Ok(serde_json::from_str(&rec.plan_json)
            .map_err(|source| QemuError::PlanUnreadable { vm: rec.name().to_string(), source })?)
    }

    /// A VM's full transition history (this incarnation).
    pub fn history(&self, vm: &VmName) -> Result<Vec<TransitionEvent>> {
        let all = self.db(|s| s.transitions(vm))?;
        let start = all.iter().rposition(|e| e.from.is_none()).unwrap_or(0);
        Ok(all[start..].to_vec())
    }

    pub(crate) fn machine(&self, rec: &VmRecord) -> StateMachine {
        StateMachine::restore(
            rec.name().clone(),
            rec.state,
            vec![],
            self.clock.clone(),
            self.observers.clone(),
        )
    }

    /// One legal move, persisted with its transition in one transaction.
    pub(crate) fn step(&self, rec: &mut VmRecord, to: VmState, cause: Cause) -> Result<()> {
        let event = self.machine(rec).transition(to, cause, current_operation())?;
        self.commit(rec, &event)
    }

    /// Reconciles the record with observed reality, regardless of the table.
    pub(crate) fn force(&self, rec: &mut VmRecord, to: VmState) -> Result<()> {
        let event = self.machine(rec).force(to, current_operation())?;
        self.commit(rec, &event)
    }

    pub(crate) fn commit(&self, rec: &mut VmRecord, event: &TransitionEvent) -> Result<()> {
        rec.state = event.to;
        rec.updated_at = event.at;
        if event.to != VmState::Failed {
            rec.reason = None;
        }
        self.db(|s| s.commit_transition(rec, event))
    }

    /// Appends an engine event to the event stream. Best effort: failing to report what
    /// happened must not fail what happened.
    pub(crate) fn engine_event(&self, rec: &VmRecord, message: String) {
        let at = self.clock.now();
        let _ = self.db(|s| s.record_engine_event(rec.name(), rec.state, at, &message));
    }

    pub(crate) fn save(&self, rec: &mut VmRecord) -> Result<()> {
        rec.updated_at = self.clock.now();
        self.db(|s| s.update_vm(rec))
    }

    pub(crate) fn qmp(&self, plan: &Plan) -> Result<QmpSession<'_>> {
        QmpSession::connect(self.rt(), Path::new(&plan.qmp_socket), Duration::from_secs(2))
    }

    pub(crate) fn console_log(plan: &Plan) -> Option<PathBuf> {
        plan.serial.log.as_ref().map(PathBuf::from)
    }

    pub(crate) fn last_console(plan: &Plan) -> String {
        let lines = Self::console_log(plan).map(|p| console::last_lines(&p, 8)).unwrap_or_default();
        if lines.is_empty() {
            let qemu_log = Path::new(&plan.runtime_dir).join("qemu.log");
            console::last_lines(&qemu_log, 4).join(" | ")
        } else {
            lines.join(" | ")
        }
    }

    pub(crate) fn status_of(rec: &VmRecord) -> VmStatus {
        VmStatus {
            name: rec.name().clone(),
            state: rec.state,
            since: rec.updated_at,
            reason: rec.reason.clone(),
        }
    }

    /// Plans `spec` on this host, its bridge NICs holding their leases (taken now if new;
    /// leases of NICs it no longer has are released).
    pub(crate) fn replan(&self, spec: VmSpec) -> Result<(CanonicalSpec, Plan)> {
        let canonical = CanonicalSpec::new(spec);
        let facts = self.facts_for(&canonical.spec, hangar_net::Leasing::Take)?;
        let plan = hangar_plan::plan(&canonical, &facts).map_err(QemuError::Plan)?;
        Ok((canonical, plan))
    }

    /// The host facts with what `spec`'s bridge NICs get from their networks. With
    /// [`Leasing::Take`](hangar_net::Leasing) every spec is checked (a NIC that left bridge mode
    /// gives its lease back; a user NIC's forward may not take a host port a bridge NIC
    /// publishes).
    pub fn facts_for(&self, spec: &VmSpec, leasing: hangar_net::Leasing) -> Result<HostFacts> {
        let mut facts = self.facts.clone();
        let bridged = spec.nics.iter().any(|n| n.mode == hangar_core::spec::NicMode::Bridge);
        if bridged || leasing == hangar_net::Leasing::Take {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            facts.nic_networks = hangar_net::nic_networks(&store, spec, leasing, self.clock.now())?;
        }
        Ok(facts)
    }

    /// Releases leases whose VM has no record (its define was killed between leasing and
    /// recording): only those whose VM lock is free, so a define in progress keeps its own.
    /// How many were released.
    pub fn sweep_leases(&self) -> Result<usize> {
        let leases = self.db(|s| s.leases(None))?;
        let mut released = 0;
        let vms: std::collections::BTreeSet<VmName> = leases.into_iter().map(|l| l.vm).collect();
        for vm in vms {
            let Some(_lock) = VmLock::try_acquire(&self.home, &vm).map_err(QemuError::Store)?
            else {
                continue;
            };
            if self.db(|s| s.get_vm(&vm))?.is_none() {
                released += self.with_store(|s| hangar_net::release(s, &vm))?;
            }
        }
        Ok(released)
    }

    /// Runs `f` with the store (for `hangar-net`'s record keeping).
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&store)
    }

    pub(crate) fn volume_path(&self, id: &VolumeId, format: DiskFormat) -> PathBuf {
        self.home.join("volumes").join(format!("{id}.{}", format.as_str()))
    }

    pub(crate) fn volume_record(&self, id: &VolumeId) -> Result<VolumeRecord> {
        self.db(|s| s.get_volume(id))?.ok_or_else(|| Error::DiskNotFound(id.clone()))
    }
}

impl Drop for QemuEngine {
    fn drop(&mut self) {
        self.drop_ephemeral();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl QemuEngine {
    fn drop_ephemeral(&mut self) {
        if !self.options.ephemeral {
            return;
        }
        if let Ok(vms) = self.db(|s| s.list_vms()) {
            for mut rec in vms {
                let Ok(plan) = Self::plan_of(&rec) else {
                    continue;
                };
                self.reap(&mut rec, &plan);
            }
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

pub(crate) fn info(rec: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        id: rec.id.clone(),
        vm: rec.vm.clone(),
        size_bytes: rec.size_bytes,
        layout: rec.layout,
        created_at: rec.created_at,
        engine_version: rec.engine_version.clone(),
        tenant: rec.tenant.clone(),
        pool: rec.pool.clone(),
    }
}

pub(crate) fn volume_info(v: &VolumeRecord) -> VolumeInfo {
    VolumeInfo {
        id: v.id.clone(),
        size_mib: v.size_mib,
        format: v.format,
        base: v.base.clone(),
        snapshots: v.snapshots.clone(),
    }
}

pub(crate) fn refuse(vm: &VmName, from: VmState, to: VmState) -> Error {
    hangar_core::lifecycle::InvalidTransition { vm: vm.clone(), from, to }.into()
}

impl Events for QemuEngine {
    fn events_since(&self, after: u64, limit: usize) -> Result<EventPage> {
        let events = self
            .db(|s| s.events_since(after, limit))?
            .into_iter()
            .map(|(seq, e)| Event {
                seq,
                kind: match e {
                    StoredEvent::Transition(t) => EventKind::Transition(t),
                    StoredEvent::Engine { vm, at, message } => {
                        EventKind::Engine { vm, at, message }
                    }
                },
            })
            .collect();
        Ok(EventPage { events, gap: None })
    }
}

impl Capabilities for QemuEngine {
    fn capabilities(&self) -> CapabilitySet {
        CapabilitySet::all().without(Capability::NicHotplug)
    }
}

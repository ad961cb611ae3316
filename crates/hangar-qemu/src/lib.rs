//! The QEMU engine adapter.
//!
//! [`QemuEngine`] implements every `hangar-core` contract with real QEMU processes: it runs the
//! plan's argv (never a shell), detached in its own session so VMs outlive the `hangar` process
//! that started them; controls them over QMP; creates overlays and blank disks with `qemu-img`;
//! and records everything in the state store so any later `hangar` invocation reconnects.
//!
//! **Observed reality wins:** every read refreshes a VM against its process (PID *and* start
//! time) and QMP before answering; a QEMU that died while nobody watched is reported `failed`
//! with the reason and the last console lines (or `stopped` after a clean guest power-off).
//!
//! Guest protocol: the built-in image's init (`hangar-init`) prints `HANGAR_READY` on the
//! console when the guest is up, and powers off on the ACPI power button (QMP
//! `system_powerdown`). See [`console`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::contracts::*;
use hangar_core::error::{Coded, Error, ErrorCode, Result};
use hangar_core::ids::{DeviceName, SnapshotId, VmName, VolumeId};
use hangar_core::lifecycle::{
    current_operation, Cause, LifecycleObserver, Observers, StateMachine, TransitionEvent, VmState,
};
use hangar_core::spec::{BootSource, DiskFormat, NicSpec, VmSpec};
use hangar_plan::probe::SystemProbe;
use hangar_plan::{Creation, HostFacts, HostProbe, Plan};
use hangar_spec::CanonicalSpec;
use hangar_store::{
    FrozenDisk, ProcessIdentity, SnapshotRecord, Store, StoreError, StoredEvent, VmLock, VmRecord,
    VolumeRecord,
};

pub mod confine;
pub mod console;
mod control;
pub mod img;
pub mod process;

use confine::Launch;
use console::{LogTail, Marker};
use control::Control;
use std::os::unix::fs::OpenOptionsExt;

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
    fn phase(&self, p: Phase) {
        if let Some(f) = self.progress {
            f(p)
        }
    }
}

/// How long QEMU gets to exit after QMP `quit` before it is signalled.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// How long QEMU gets after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// Deadline for the QMP socket to appear and answer after spawn.
const QMP_CONNECT: Duration = Duration::from_secs(10);
/// Deadline for a memory snapshot to be written or loaded.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(300);

/// Real QEMU behind the `hangar-core` contracts.
pub struct QemuEngine {
    home: PathBuf,
    facts: HostFacts,
    store: Mutex<Store>,
    observers: Observers,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    /// QMP runtime; an `Option` only so `Drop` can shut it down without blocking (the engine
    /// may be dropped inside another runtime, as in `hangard`).
    rt: Option<tokio::runtime::Runtime>,
}

fn store_err(e: StoreError) -> Error {
    Error::Backend {
        code: e.code(),
        message: e.to_string(),
    }
}

fn img_err(e: img::ImgError) -> Error {
    Error::EngineFailed(e.to_string())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Backend {
        code: ErrorCode::Io,
        message: format!("{what} {}: {e}", path.display()),
    }
}

impl QemuEngine {
    /// Opens the engine over `home` (state store, runtime dirs, images), probing the host.
    pub fn open(home: &Path, options: EngineOptions) -> Result<QemuEngine> {
        let facts = SystemProbe {
            home: home.to_path_buf(),
        }
        .probe();
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
        let store = Store::open_in(home).map_err(store_err)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::EngineUnavailable(format!("cannot start the QMP runtime: {e}")))?;
        Ok(QemuEngine {
            home: home.to_path_buf(),
            facts,
            store: Mutex::new(store),
            observers: Observers::default(),
            clock: Arc::new(SystemClock),
            options,
            rt: Some(rt),
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

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("the runtime lives until drop")
    }

    fn db<T>(&self, f: impl FnOnce(&Store) -> std::result::Result<T, StoreError>) -> Result<T> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&store).map_err(store_err)
    }

    fn lock(&self, vm: &VmName) -> Result<VmLock> {
        VmLock::acquire(&self.home, vm).map_err(store_err)
    }

    /// A VM's record after refreshing it against reality.
    pub fn record(&self, vm: &VmName) -> Result<VmRecord> {
        let rec = self
            .db(|s| s.get_vm(vm))?
            .ok_or_else(|| Error::VmNotFound(vm.clone()))?;
        self.refresh(rec)
    }

    /// Every VM's record as stored, without refreshing any against its process (cheap: one
    /// store read; what quota checks count).
    pub fn records(&self) -> Result<Vec<VmRecord>> {
        self.db(|s| s.list_vms())
    }

    /// The plan a VM runs.
    pub fn plan_of(rec: &VmRecord) -> Result<Plan> {
        serde_json::from_str(&rec.plan_json).map_err(|e| Error::Backend {
            code: ErrorCode::StoreCorrupt,
            message: format!("stored plan of {} is unreadable: {e}", rec.name()),
        })
    }

    /// A VM's full transition history (this incarnation).
    pub fn history(&self, vm: &VmName) -> Result<Vec<TransitionEvent>> {
        let all = self.db(|s| s.transitions(vm))?;
        let start = all.iter().rposition(|e| e.from.is_none()).unwrap_or(0);
        Ok(all[start..].to_vec())
    }

    fn machine(&self, rec: &VmRecord) -> StateMachine {
        StateMachine::restore(
            rec.name().clone(),
            rec.state,
            vec![],
            self.clock.clone(),
            self.observers.clone(),
        )
    }

    /// One legal move, persisted with its transition in one transaction.
    fn step(&self, rec: &mut VmRecord, to: VmState, cause: Cause) -> Result<()> {
        let event = self
            .machine(rec)
            .transition(to, cause, current_operation())?;
        self.commit(rec, &event)
    }

    /// Reconciles the record with observed reality, regardless of the table.
    fn force(&self, rec: &mut VmRecord, to: VmState) -> Result<()> {
        let event = self.machine(rec).force(to, current_operation())?;
        self.commit(rec, &event)
    }

    fn commit(&self, rec: &mut VmRecord, event: &TransitionEvent) -> Result<()> {
        rec.state = event.to;
        rec.updated_at = event.at;
        if event.to != VmState::Failed {
            rec.reason = None;
        }
        self.db(|s| s.commit_transition(rec, event, false))
    }

    /// Appends an engine event to the event stream. Best effort: failing to report what
    /// happened must not fail what happened.
    fn engine_event(&self, rec: &VmRecord, message: String) {
        let at = self.clock.now();
        let _ = self.db(|s| s.record_engine_event(rec.name(), rec.state, at, &message));
    }

    fn save(&self, rec: &mut VmRecord) -> Result<()> {
        rec.updated_at = self.clock.now();
        self.db(|s| s.update_vm(rec))
    }

    fn control(&self, plan: &Plan) -> Result<Control<'_>> {
        Control::connect(
            self.rt(),
            Path::new(&plan.qmp_socket),
            Duration::from_secs(2),
        )
    }

    fn console_log(plan: &Plan) -> Option<PathBuf> {
        plan.serial.log.as_ref().map(PathBuf::from)
    }

    fn last_console(plan: &Plan) -> String {
        let lines = Self::console_log(plan)
            .map(|p| console::last_lines(&p, 8))
            .unwrap_or_default();
        if lines.is_empty() {
            let qemu_log = Path::new(&plan.runtime_dir).join("qemu.log");
            console::last_lines(&qemu_log, 4).join(" | ")
        } else {
            lines.join(" | ")
        }
    }

    /// Observed reality wins: a VM whose QEMU is gone is `stopped` (clean guest power-off) or
    /// `failed` (anything else); a running QEMU that reports an internal error is `failed`.
    fn refresh(&self, mut rec: VmRecord) -> Result<VmRecord> {
        let plan = Self::plan_of(&rec)?;
        if let Some(p) = rec.process.filter(|p| process::alive(*p)) {
            Self::upkeep(&plan, p);
        }
        match rec.process {
            Some(p) if !process::alive(p) => {
                let clean = Self::console_log(&plan)
                    .map(|log| {
                        console::last_lines(&log, 20).iter().any(|l| {
                            matches!(
                                console::parse_marker(l),
                                Some(Marker::PowerOff) | Some(Marker::Exit { .. })
                            ) || l.contains("reboot: Power down")
                        })
                    })
                    .unwrap_or(false);
                // Read before the cgroup goes with the rest of the runtime state.
                let oom_note = Self::oom_note(&plan);
                rec.process = None;
                self.cleanup_runtime(&plan);
                if clean && rec.state == VmState::Running {
                    self.step(&mut rec, VmState::Stopping, Cause::Engine)?;
                    self.step(&mut rec, VmState::Stopped, Cause::Engine)?;
                } else if !matches!(
                    rec.state,
                    VmState::Stopped | VmState::Failed | VmState::Sleeping
                ) {
                    rec.reason = Some(format!(
                        "QEMU (pid {}) exited while nobody was watching{}; last output: {}",
                        p.pid,
                        oom_note.unwrap_or_default(),
                        Self::last_console(&plan)
                    ));
                    self.force(&mut rec, VmState::Failed)?;
                } else {
                    self.save(&mut rec)?;
                }
            }
            Some(_) if rec.state.is_in_flight() => {
                // Only when nobody holds the VM's lock: the command that owned this operation
                // died (a killed daemon or CLI). Otherwise it is still at work; leave it be.
                if let Some(_lock) =
                    VmLock::try_acquire(&self.home, rec.name()).map_err(store_err)?
                {
                    self.adopt(&mut rec, &plan)?;
                }
            }
            Some(_) if rec.state == VmState::Running => {
                if let Ok(ctl) = self.control(&plan) {
                    if let Ok(status) = ctl.status() {
                        if status.is_fatal() {
                            rec.reason = Some(format!(
                                "QEMU reports {}; last output: {}",
                                status.name(),
                                Self::last_console(&plan)
                            ));
                            self.step(&mut rec, VmState::Failed, Cause::Engine)?;
                        }
                    }
                }
            }
            None if matches!(
                rec.state,
                VmState::Starting
                    | VmState::Running
                    | VmState::Pausing
                    | VmState::Paused
                    | VmState::Resuming
                    | VmState::Saving
                    | VmState::Waking
                    | VmState::Stopping
            ) =>
            {
                // Someone holding the lock may be between spawning QEMU and recording it.
                let Some(_lock) = VmLock::try_acquire(&self.home, rec.name()).map_err(store_err)?
                else {
                    return Ok(rec);
                };
                // The owner may have died between spawning QEMU and recording its PID: find that
                // QEMU by its standard output (this VM's qemu.log, a path unique to the VM)
                // before declaring it gone, so it is adopted rather than orphaned.
                let found = process::find_by_output(&Path::new(&plan.runtime_dir).join("qemu.log"));
                match found {
                    Some(p) => {
                        rec.process = Some(p);
                        self.save(&mut rec)?;
                        if rec.state.is_in_flight() {
                            self.adopt(&mut rec, &plan)?;
                        }
                    }
                    None => {
                        rec.reason = Some(format!(
                            "no QEMU process while {}: an earlier command was interrupted",
                            rec.state
                        ));
                        self.force(&mut rec, VmState::Failed)?;
                    }
                }
            }
            _ => {}
        }
        Ok(rec)
    }

    /// Finishes or rolls back an operation whose owner died, given its live QEMU: a boot whose
    /// guest became ready is finished; one still booting is left for a later refresh until its
    /// timeout; a stop is completed; pause, resume, save and wake settle on what QMP reports.
    /// What a live QEMU needs now and then: its console log rotated, and (after a restart of
    /// an older Hangar, or if someone moved it) its cgroup found again.
    fn upkeep(plan: &Plan, p: ProcessIdentity) {
        if let Some(log) = Self::console_log(plan) {
            let _ = console::rotate(&log, console::LOG_ROTATE_BYTES);
        }
        if let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) {
            if !confine::is_in_cgroup(cg, p.pid) {
                let _ = confine::join_cgroup(cg, p.pid);
            }
        }
    }

    /// `": killed by its cgroup's out-of-memory killer …"` when that is why QEMU is gone.
    fn oom_note(plan: &Plan) -> Option<String> {
        let cg = plan.confinement.as_ref()?.cgroup.as_ref()?;
        let (kills, peak) = confine::oom_kills(cg)?;
        (kills > 0).then(|| {
            format!(
                ": killed by the out-of-memory killer of its cgroup (limit {} MiB{}: guest RAM + QEMU's overhead)",
                cg.memory_max_bytes >> 20,
                peak.map(|p| format!(", peak {} MiB", p >> 20)).unwrap_or_default()
            )
        })
    }

    /// Rotates the console logs of every running VM (hangard calls this every second).
    pub fn rotate_logs(&self) -> Result<()> {
        for rec in self.db(|s| s.list_vms())? {
            if let (Some(p), Ok(plan)) = (rec.process, Self::plan_of(&rec)) {
                if process::alive(p) {
                    Self::upkeep(&plan, p);
                }
            }
        }
        Ok(())
    }

    /// How a VM's QEMU is confined, and what its cgroup says now (for `hangar inspect`).
    pub fn confinement(&self, vm: &VmName) -> Result<Option<serde_json::Value>> {
        let rec = self.record(vm)?;
        let plan = Self::plan_of(&rec)?;
        Ok(plan.confinement.as_ref().map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            if let (Some(cg), Some(obj)) = (&c.cgroup, v.as_object_mut()) {
                obj.insert("cgroup_now".into(), confine::read_cgroup(cg));
            }
            v
        }))
    }

    fn adopt(&self, rec: &mut VmRecord, plan: &Plan) -> Result<()> {
        let before = rec.state;
        let pid = rec.process.map(|p| p.pid);
        self.settle_orphan(rec, plan)?;
        if rec.state != before {
            let pid = pid.map(|p| format!(" (QEMU pid {p})")).unwrap_or_default();
            self.engine_event(
                rec,
                format!(
                    "settled a {before} whose command was interrupted{pid}: now {}",
                    rec.state
                ),
            );
        }
        Ok(())
    }

    fn settle_orphan(&self, rec: &mut VmRecord, plan: &Plan) -> Result<()> {
        let status = self.control(plan).and_then(|c| c.status()).ok();
        if status.as_ref().is_some_and(|s| s.is_fatal()) {
            self.shut_down(rec, plan, StopMode::Force);
            self.cleanup_runtime(plan);
            rec.process = None;
            rec.reason = Some(format!(
                "found {} after an interrupted {}; last output: {}",
                status.map(|s| s.name()).unwrap_or_default(),
                rec.state,
                Self::last_console(plan)
            ));
            return self.force(rec, VmState::Failed);
        }
        let running = status.as_ref().map(|s| s.is_running());
        match rec.state {
            VmState::Starting => {
                let ready = Self::console_log(plan).is_some_and(|log| {
                    LogTail::from(rec.boot_log_offset.unwrap_or(0))
                        .read_lines(&log)
                        .iter()
                        .any(|l| matches!(console::parse_marker(l), Some(Marker::Ready { .. })))
                });
                if ready {
                    self.step(rec, VmState::Running, Cause::Reconciler)?;
                } else if self.clock.now().since(rec.updated_at) > self.options.boot_timeout {
                    self.shut_down(rec, plan, StopMode::Force);
                    self.cleanup_runtime(plan);
                    rec.process = None;
                    rec.reason = Some(format!("boot did not finish within {:?} after its command was interrupted; last output: {}", self.options.boot_timeout, Self::last_console(plan)));
                    self.step(rec, VmState::Failed, Cause::Reconciler)?;
                }
            }
            VmState::Stopping => {
                self.shut_down(rec, plan, StopMode::Force);
                self.cleanup_runtime(plan);
                rec.process = None;
                self.step(rec, VmState::Stopped, Cause::Reconciler)?;
            }
            VmState::Pausing | VmState::Resuming | VmState::Saving | VmState::Waking => {
                match running {
                    Some(true) => self.force(rec, VmState::Running)?,
                    Some(false) if rec.state == VmState::Waking => {
                        // Loaded but never continued: finish the wake (if QMP refuses, a later
                        // refresh tries again; it must not fall through to `paused`).
                        let continued = self.control(plan).and_then(|c| c.cont()).is_ok();
                        if continued {
                            self.step(rec, VmState::Running, Cause::Reconciler)?;
                        }
                    }
                    Some(false) => self.force(rec, VmState::Paused)?,
                    // QMP did not answer: leave it for a later refresh.
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn status_of(rec: &VmRecord) -> VmStatus {
        VmStatus {
            name: rec.name().clone(),
            state: rec.state,
            since: rec.updated_at,
            reason: rec.reason.clone(),
        }
    }

    /// Creates the runtime directory, the plan file and every disk the plan declares (existing
    /// disks of a stopped VM are kept: they are its state).
    fn prepare_runtime(&self, plan: &Plan) -> Result<()> {
        // Directories first, each made private and reached without a symlink; then nothing in
        // the runtime directory may be a symlink (QEMU, running as root, opens files there).
        for creation in &plan.creates {
            if let Creation::Dir { path } = creation {
                self.own_dir(Path::new(path))?;
            }
        }
        hangar_store::home::no_symlink_in(Path::new(&plan.runtime_dir)).map_err(store_err)?;
        for creation in &plan.creates {
            match creation {
                Creation::Dir { .. } => {}
                Creation::Overlay {
                    path,
                    backing,
                    backing_format,
                    ..
                } => {
                    let path = Path::new(path);
                    if !path.exists() {
                        if !Path::new(backing).exists() {
                            return Err(Error::InvalidArgument {
                                what: "disk source".into(),
                                reason: format!("{backing} does not exist"),
                            });
                        }
                        img::create_overlay(path, Path::new(backing), *backing_format).map_err(
                            |e| {
                                let _ = std::fs::remove_file(path);
                                img_err(e)
                            },
                        )?;
                    }
                }
                Creation::Disk {
                    path,
                    format,
                    size_mib,
                    ..
                } => {
                    let path = Path::new(path);
                    if !path.exists() {
                        img::create_blank(path, *format, *size_mib).map_err(|e| {
                            let _ = std::fs::remove_file(path);
                            img_err(e)
                        })?;
                    }
                }
                Creation::Tap { ifname, .. } => {
                    return Err(Error::Unsupported(format!(
                        "tap networking ({ifname}) is not implemented yet"
                    )));
                }
                Creation::File { .. } | Creation::Socket { .. } => {}
            }
        }
        let plan_path = Path::new(&plan.runtime_dir).join("plan.json");
        let tmp = plan_path.with_extension("json.tmp");
        std::fs::write(&tmp, plan.to_json())
            .and_then(|_| std::fs::rename(&tmp, &plan_path))
            .map_err(|e| io_err("cannot write", &plan_path, e))?;
        Ok(())
    }

    /// A directory of Hangar's: under the home, made private with no symlink on the way;
    /// elsewhere (a runtime dir from host facts), made as asked.
    fn own_dir(&self, dir: &Path) -> Result<PathBuf> {
        match dir.strip_prefix(&self.home) {
            Ok(rel) => hangar_store::home::state_dir(&self.home, rel).map_err(store_err),
            Err(_) => std::fs::create_dir_all(dir)
                .map(|()| dir.to_path_buf())
                .map_err(|e| io_err("cannot create", dir, e)),
        }
    }

    /// Removes what only a running QEMU uses: sockets, the pid file and its cgroup (made
    /// again at the next start; an empty cgroup would outlive a home deleted by hand).
    fn cleanup_runtime(&self, plan: &Plan) {
        let dir = Path::new(&plan.runtime_dir);
        for f in ["qmp.sock", "console.sock", "pid"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        if let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) {
            confine::remove_cgroup(cg);
        }
    }

    /// Host admission: refuses (`E_HOST_CAPACITY`) a VM whose memory (RAM plus QEMU's
    /// overhead) is more than the host has available now, or whose new disks (blank disks not
    /// made yet, plus `copied_bytes` of disks to copy) are more than the free disk.
    fn admit(&self, spec: &VmSpec, plan: &Plan, copied_bytes: u64) -> Result<()> {
        let Some(cap) = hangar_plan::probe::capacity(&self.home) else {
            return Ok(());
        };
        let overhead = self.facts.confinement.memory_overhead_mib;
        let memory = u64::from(spec.machine.memory_mib) + overhead;
        if memory > cap.memory_available_mib {
            return Err(Error::Backend {
                code: ErrorCode::HostCapacity,
                message: format!(
                    "{} needs {memory} MiB of memory ({} MiB RAM + {overhead} MiB for QEMU) but the host has {} MiB available",
                    spec.name, spec.machine.memory_mib, cap.memory_available_mib
                ),
            });
        }
        let blank: u64 = plan
            .creates
            .iter()
            .filter_map(|c| match c {
                Creation::Disk { path, size_mib, .. } if !Path::new(path).exists() => {
                    Some(*size_mib)
                }
                _ => None,
            })
            .sum();
        let disk = blank + copied_bytes.div_ceil(1 << 20);
        if disk > cap.disk_free_mib {
            return Err(Error::Backend {
                code: ErrorCode::HostCapacity,
                message: format!(
                    "{} needs {disk} MiB of new disk but the host has {} MiB free under {}",
                    spec.name,
                    cap.disk_free_mib,
                    self.home.display()
                ),
            });
        }
        Ok(())
    }

    /// Gives the plan's QEMU a uid no other VM here has: the one derived from its name, or,
    /// if another VM's name hashes to the same, the next free one (kept in the stored plan).
    fn unique_user(&self, plan: &mut Plan) -> Result<()> {
        let Some(c) = plan.confinement.as_mut() else {
            return Ok(());
        };
        let Some(mut uid) = c.uid else {
            return Ok(());
        };
        let taken: std::collections::HashSet<u32> = self
            .db(|s| s.list_vms())?
            .iter()
            .filter_map(|r| Self::plan_of(r).ok()?.confinement?.uid)
            .collect();
        while taken.contains(&uid) {
            uid = hangar_plan::QEMU_UID_BASE
                + (uid - hangar_plan::QEMU_UID_BASE + 1) % hangar_plan::QEMU_UID_SPAN;
        }
        c.uid = Some(uid);
        c.gid = Some(uid);
        Ok(())
    }

    /// An empty file in the VM's runtime directory that its QEMU may write a memory snapshot
    /// to (the directory is root's, so QEMU cannot swap the file for a link).
    fn state_file_for_qemu(&self, plan: &Plan) -> Result<PathBuf> {
        let out = Path::new(&plan.runtime_dir).join("save.state");
        let _ = std::fs::remove_file(&out);
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&out)
            .map_err(|e| io_err("cannot create", &out, e))?;
        if let Some((uid, gid)) = plan
            .confinement
            .as_ref()
            .and_then(|c| Some((c.uid?, c.gid?)))
        {
            rustix::fs::fchown(
                &file,
                Some(rustix::process::Uid::from_raw(uid)),
                Some(rustix::process::Gid::from_raw(gid)),
            )
            .map_err(|e| io_err("cannot give to the VM's user", &out, e.into()))?;
        }
        Ok(out)
    }

    /// Before a VM moves: lets the QEMU group into the state directory and refuses inputs
    /// the VM's QEMU user could not read, naming the field.
    fn check_reachable(&self, rec: &VmRecord, plan: &Plan) -> Result<()> {
        let Some((uid, gid, groups)) = plan
            .confinement
            .as_ref()
            .and_then(|c| Some((c.uid?, c.gid?, &c.groups)))
        else {
            return Ok(());
        };
        if let Some(group) = groups.first() {
            let runtime = Path::new(&plan.runtime_dir);
            if let Some(parent) = runtime.parent() {
                self.own_dir(parent)?;
            }
            confine::open_home_to_qemu(&self.home, runtime, *group)?;
        }
        let mut gids = groups.clone();
        gids.push(gid);
        for (field, file) in read_only_inputs(&rec.spec, plan) {
            if !confine::can_read(Path::new(&file), uid, &gids) {
                return Err(Error::InvalidArgument {
                    what: field,
                    reason: format!(
                        "{file} cannot be read by the VM's QEMU (uid {uid}, group {group}): make it and its directories readable by that group (chgrp {group} FILE; chmod g+r FILE) or by everyone",
                        group = hangar_plan::probe::QEMU_GROUP,
                    ),
                });
            }
        }
        Ok(())
    }

    /// Gets everything ready for a confined QEMU (its runtime directory laid out for its user,
    /// its cgroup made with the plan's limits) and says how to launch it.
    fn confine(&self, plan: &Plan) -> Result<Launch> {
        let Some(c) = &plan.confinement else {
            return Ok(Launch::default());
        };
        if let (Some(uid), Some(gid)) = (c.uid, c.gid) {
            confine::own_runtime(plan, uid, gid)?;
        }
        let procs = match &c.cgroup {
            Some(cg) => confine::setup_cgroup(cg)?,
            None => Vec::new(),
        };
        Ok(Launch::of(Some(c), procs))
    }

    /// Spawns QEMU from the plan and waits until the guest is up (or, with `incoming`, until
    /// the memory snapshot is loaded and the vCPUs run).
    fn boot(
        &self,
        rec: &mut VmRecord,
        plan: &Plan,
        incoming: Option<&Path>,
        opts: &StartOptions<'_>,
        cancel: &CancelToken,
    ) -> Result<()> {
        if self.facts.qemu.version.is_none() {
            return Err(Error::EngineUnavailable(format!(
                "{} was not found; run scripts/setup",
                plan.argv[0]
            )));
        }
        if let BootSource::Image { image, .. } = &rec.spec.boot {
            let kernel = Path::new(&self.facts.image_dir).join(image).join("vmlinuz");
            if !kernel.exists() {
                return Err(Error::EngineUnavailable(format!(
                    "the built-in image {image:?} is not installed ({} missing); run scripts/setup",
                    kernel.display()
                )));
            }
        }
        opts.phase(Phase::Disks);
        self.prepare_runtime(plan)?;
        self.cleanup_runtime(plan);
        opts.phase(Phase::Engine);
        let console_path = Self::console_log(plan);
        let boot_log_offset = console_path.as_deref().map(console::len).unwrap_or(0);
        let mut tail = LogTail::from(boot_log_offset);
        let mut argv = plan.argv.clone();
        let mut launch = self.confine(plan)?;
        launch = launch.pass(
            hangar_plan::QMP_FD,
            confine::listen(Path::new(&plan.qmp_socket))?,
        );
        if let Some(socket) = &plan.serial.socket {
            launch = launch.pass(hangar_plan::CONSOLE_FD, confine::listen(Path::new(socket))?);
        }
        if let Some(state) = incoming {
            // Opened here and handed over: snapshots are root's and QEMU may not open them.
            let file = std::fs::File::options()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(state)
                .map_err(|e| io_err("cannot open", state, e))?;
            launch = launch.pass(hangar_plan::INCOMING_FD, file.into());
            argv.extend([
                "-add-fd".into(),
                format!("fd={},set=1", hangar_plan::INCOMING_FD),
                "-incoming".into(),
                "file:/dev/fdset/1".into(),
            ]);
        }
        let started = Instant::now();
        let qemu_log = Path::new(&plan.runtime_dir).join("qemu.log");
        let p = process::spawn_detached(&argv, &qemu_log, launch)
            .map_err(|e| Error::EngineFailed(format!("cannot start {}: {e}", argv[0])))?;
        let pid_file = Path::new(&plan.runtime_dir).join("pid");
        let _ = std::fs::write(&pid_file, format!("{} {}\n", p.pid, p.start_time));
        rec.process = Some(p);
        rec.boot_log_offset = Some(boot_log_offset);
        self.save(rec)?;

        // The socket is ours and already listening: the connection waits in its backlog until
        // QEMU accepts, and a QEMU that refuses its arguments and exits resets it at once
        // (said then, not after the connect deadline).
        let socket = Path::new(&plan.qmp_socket);
        let ctl = match Control::connect_while(self.rt(), socket, QMP_CONNECT, || process::alive(p))
        {
            Some(Ok(ctl)) => ctl,
            Some(Err(e)) if process::alive(p) => {
                return Err(Error::EngineFailed(format!(
                    "QEMU did not answer on its control socket: {e}; {}",
                    Self::last_console(plan)
                )))
            }
            // Gone: its connection was reset as it exited, or it exited while we waited.
            Some(Err(_)) | None => {
                return Err(Error::EngineFailed(format!(
                    "QEMU exited during start-up: {}",
                    Self::last_console(plan)
                )))
            }
        };
        let timeout = opts.timeout.unwrap_or(self.options.boot_timeout);
        let deadline = started + timeout;
        opts.phase(Phase::Boot);
        if incoming.is_some() {
            ctl.wait_incoming_done(deadline)?;
            ctl.cont()?;
        } else if opts.no_wait {
            ctl.wait_running(deadline)?;
        } else {
            self.wait_ready(&ctl, p, plan, &mut tail, deadline, timeout, cancel)?;
        }
        rec.boot_ms = Some(started.elapsed().as_millis() as u64);
        opts.phase(Phase::Ready);
        Ok(())
    }

    /// Waits for `HANGAR_READY` after the tail's offset, watching the process and QMP.
    #[allow(clippy::too_many_arguments)]
    fn wait_ready(
        &self,
        ctl: &Control<'_>,
        p: ProcessIdentity,
        plan: &Plan,
        tail: &mut LogTail,
        deadline: Instant,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<()> {
        let Some(log) = Self::console_log(plan) else {
            // No console: the best available signal is QEMU running the vCPUs.
            return ctl.wait_running(deadline);
        };
        let mut last_status_check = Instant::now();
        loop {
            for line in tail.read_lines(&log) {
                if let Some(Marker::Ready { .. }) = console::parse_marker(&line) {
                    return Ok(());
                }
            }
            cancel.check()?;
            if !process::alive(p) {
                return Err(Error::EngineFailed(format!(
                    "QEMU exited during boot{}; last output: {}",
                    Self::oom_note(plan).unwrap_or_default(),
                    Self::last_console(plan)
                )));
            }
            if last_status_check.elapsed() > Duration::from_millis(250) {
                last_status_check = Instant::now();
                if let Ok(status) = ctl.status() {
                    if status.is_fatal() {
                        return Err(Error::EngineFailed(format!(
                            "QEMU reports {} during boot; last output: {}",
                            status.name(),
                            Self::last_console(plan)
                        )));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout.as_millis() as u64));
            }
            // The console is a plain file QEMU appends to; a short poll interval keeps
            // readiness latency low without inotify plumbing.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The stop ladder: guest power-off (graceful only) → QMP quit → SIGTERM → SIGKILL, always
    /// aimed at the exact process. Returns whether escalation past the guest was needed.
    fn shut_down(&self, rec: &VmRecord, plan: &Plan, mode: StopMode) -> bool {
        let Some(p) = rec.process.filter(|p| process::alive(*p)) else {
            return false;
        };
        let ctl = self.control(plan).ok();
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

    fn check_snapshot_fits(&self, rec: &VmRecord, snap: &SnapshotRecord) -> Result<()> {
        if let Some(reason) = info(snap).clone_refusal(rec.name(), &rec.spec) {
            return Err(Error::SnapshotMismatch {
                snapshot: snap.id.clone(),
                reason,
            });
        }
        let version = format!(
            "qemu-{}",
            self.facts.qemu.version.as_deref().unwrap_or("unknown")
        );
        if snap.spec_hash != rec.spec_hash {
            // Not the same spec: only a clone (same spec but for name, tenant and pool) fits.
            let reason = match &snap.clone_hash {
                None => Some(format!(
                    "taken from spec {} (before clones were supported), but {} has spec {}",
                    snap.spec_hash,
                    rec.name(),
                    rec.spec_hash
                )),
                Some(h) if *h != clone_hash(&rec.spec) => Some(format!(
                    "taken from {}, whose spec differs from {}'s in more than name, tenant and pool",
                    snap.vm,
                    rec.name()
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                return Err(Error::SnapshotMismatch {
                    snapshot: snap.id.clone(),
                    reason,
                });
            }
        }
        if snap.engine_version != version {
            return Err(Error::SnapshotMismatch {
                snapshot: snap.id.clone(),
                reason: format!(
                    "written by {} but this host runs {version}",
                    snap.engine_version
                ),
            });
        }
        if !Path::new(&snap.path).exists() {
            return Err(Error::SnapshotMismatch {
                snapshot: snap.id.clone(),
                reason: format!("its state file {} is missing", snap.path),
            });
        }
        Ok(())
    }

    fn replan(&self, spec: VmSpec) -> Result<(CanonicalSpec, Plan)> {
        let canonical = CanonicalSpec::new(spec);
        let plan = hangar_plan::plan(&canonical, &self.facts).map_err(|e| Error::Backend {
            code: e.code(),
            message: e.to_string(),
        })?;
        Ok((canonical, plan))
    }

    fn volume_path(&self, id: &VolumeId, format: DiskFormat) -> PathBuf {
        self.home
            .join("volumes")
            .join(format!("{id}.{}", format.as_str()))
    }

    fn volume_record(&self, id: &VolumeId) -> Result<VolumeRecord> {
        self.db(|s| s.get_volume(id))?
            .ok_or_else(|| Error::DiskNotFound(id.clone()))
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
            for rec in vms {
                let Ok(plan) = Self::plan_of(&rec) else {
                    continue;
                };
                let _ = self.shut_down(&rec, &plan, StopMode::Force);
                self.cleanup_runtime(&plan);
            }
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Checks that every host file the spec names exists, naming the field of the first that
/// does not (before anything is made or spawned).
fn check_inputs(spec: &VmSpec) -> Result<()> {
    let missing = |field: String, file: &str| {
        if Path::new(file).exists() {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                what: field,
                reason: format!("{file} does not exist"),
            })
        }
    };
    if let BootSource::Kernel { kernel, initrd, .. } = &spec.boot {
        missing("boot.kernel".into(), kernel)?;
        if let Some(initrd) = initrd {
            missing("boot.initrd".into(), initrd)?;
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if let hangar_core::spec::DiskSource::Base { source } = &disk.source {
            missing(format!("disk[{i}].source"), source)?;
        }
    }
    Ok(())
}

/// Moves a file, copying it where a rename cannot (another filesystem).
fn move_file(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            std::fs::copy(from, to)
                .and_then(|_| std::fs::remove_file(from))
                .map_err(|e| {
                    let _ = std::fs::remove_file(to);
                    io_err("cannot move to", to, e)
                })
        }
        Err(e) => Err(io_err("cannot move", from, e)),
    }
}

/// The files a VM's QEMU opens by path and only reads: its kernel and initrd, read-only disks
/// and the bases of its overlays, each with the spec field that names it.
fn read_only_inputs(spec: &VmSpec, plan: &Plan) -> Vec<(String, String)> {
    let mut files = Vec::new();
    match &spec.boot {
        BootSource::Kernel { kernel, initrd, .. } => {
            files.push(("boot.kernel".to_string(), kernel.clone()));
            if let Some(initrd) = initrd {
                files.push(("boot.initrd".to_string(), initrd.clone()));
            }
        }
        BootSource::Image { .. } => {
            let arg = |flag: &str| {
                let i = plan.argv.iter().position(|a| a == flag)?;
                plan.argv.get(i + 1).cloned()
            };
            files.extend(arg("-kernel").map(|k| ("boot.image".to_string(), k)));
            files.extend(arg("-initrd").map(|k| ("boot.image".to_string(), k)));
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if let hangar_core::spec::DiskSource::Base { source } = &disk.source {
            files.push((format!("disk[{i}].source"), source.clone()));
        }
    }
    files
}

/// The hash of a spec without what tells clones apart: snapshots restore across equal ones.
fn clone_hash(spec: &VmSpec) -> String {
    CanonicalSpec::new(spec.clone_template()).hash.0
}

/// A plan's writable disks: (disk name, file).
fn writable_disks(plan: &Plan) -> impl Iterator<Item = (&str, &str)> {
    plan.creates.iter().filter_map(|c| match c {
        Creation::Overlay { path, disk, .. } | Creation::Disk { path, disk, .. } => {
            Some((disk.as_str(), path.as_str()))
        }
        _ => None,
    })
}

/// Where a snapshot's frozen disks live, beside its state file.
fn frozen_dir(state_file: &Path) -> PathBuf {
    state_file.with_extension("disks")
}

/// Copies a paused VM's writable disks beside the snapshot's state file, so the snapshot can be
/// restored later (into this VM or a clone) with the disks its memory expects.
fn freeze_disks(plan: &Plan, state_file: &Path) -> Result<Vec<FrozenDisk>> {
    let dir = frozen_dir(state_file);
    let mut frozen = Vec::new();
    for (disk, file) in writable_disks(plan) {
        let from = Path::new(file);
        if !from.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let to = dir.join(from.file_name().unwrap_or(disk.as_ref()));
        std::fs::copy(from, &to).map_err(|e| io_err("cannot copy disk to", &to, e))?;
        frozen.push(FrozenDisk {
            disk: disk.to_string(),
            path: to.display().to_string(),
        });
    }
    Ok(frozen)
}

/// Puts a snapshot's frozen disks in place of the VM's writable disks (each VM gets its own
/// copy). A writable disk the snapshot has no copy of is an error for a clone: its memory would
/// not match the disk.
fn thaw_disks(snap: &SnapshotRecord, plan: &Plan, clone: bool) -> Result<()> {
    for (disk, file) in writable_disks(plan) {
        let to = Path::new(file);
        match snap.disks.iter().find(|f| f.disk == disk) {
            Some(f) => {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
                }
                let tmp = to.with_extension("thaw.tmp");
                std::fs::copy(&f.path, &tmp)
                    .and_then(|_| std::fs::rename(&tmp, to))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        io_err("cannot copy frozen disk to", to, e)
                    })?;
            }
            None if clone => {
                return Err(Error::SnapshotMismatch {
                    snapshot: snap.id.clone(),
                    reason: format!("it holds no copy of disk {disk}, so it cannot seed a clone"),
                })
            }
            None => {}
        }
    }
    Ok(())
}

fn info(rec: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        id: rec.id.clone(),
        vm: rec.vm.clone(),
        size_bytes: rec.size_bytes,
        created_at: rec.created_at,
        engine_version: rec.engine_version.clone(),
        tenant: rec.tenant.clone(),
        pool: rec.pool.clone(),
    }
}

fn volume_info(v: &VolumeRecord) -> VolumeInfo {
    VolumeInfo {
        id: v.id.clone(),
        size_mib: v.size_mib,
        format: v.format,
        base: v.base.clone(),
        snapshots: v.snapshots.clone(),
    }
}

fn refuse(vm: &VmName, from: VmState, to: VmState) -> Error {
    hangar_core::lifecycle::InvalidTransition {
        vm: vm.clone(),
        from,
        to,
    }
    .into()
}

impl QemuEngine {
    /// Boots a defined or stopped VM, with progress and per-call settings.
    pub fn start_with(
        &self,
        vm: &VmName,
        opts: &StartOptions<'_>,
        cancel: &CancelToken,
    ) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        cancel.check()?;
        match rec.state {
            VmState::Running => return Ok(Self::status_of(&rec)),
            VmState::Defined | VmState::Stopped => {}
            other => return Err(refuse(vm, other, VmState::Starting)),
        }
        let plan = Self::plan_of(&rec)?;
        // A missing input is the caller's to fix: refused before the VM moves at all.
        check_inputs(&rec.spec)?;
        self.check_reachable(&rec, &plan)?;
        self.admit(&rec.spec, &plan, 0)?;
        self.step(&mut rec, VmState::Starting, Cause::User)?;
        match self.boot(&mut rec, &plan, None, opts, cancel) {
            Ok(()) => self.step(&mut rec, VmState::Running, Cause::Engine)?,
            Err(e) => {
                self.shut_down(&rec, &plan, StopMode::Force);
                self.cleanup_runtime(&plan);
                rec.process = None;
                rec.reason = Some(match e {
                    // Other boot errors already quote the console.
                    Error::Timeout(_) | Error::Cancelled => {
                        format!(
                            "boot failed: {e}; last output: {}",
                            Self::last_console(&plan)
                        )
                    }
                    _ => format!("boot failed: {e}"),
                });
                self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                return Err(e);
            }
        }
        Ok(Self::status_of(&rec))
    }

    /// The stop ladder behind [`Lifecycle::stop`].
    pub fn stop_vm(
        &self,
        vm: &VmName,
        mode: StopMode,
        cancel: &CancelToken,
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
                self.step(&mut rec, VmState::Stopped, Cause::User)?;
            }
            VmState::Running | VmState::Paused | VmState::Starting | VmState::Failed => {
                let before = rec.state;
                self.step(&mut rec, VmState::Stopping, Cause::User)?;
                rec.state = before; // the ladder needs to know whether the vCPUs were paused
                escalated = self.shut_down(&rec, &plan, mode);
                rec.state = VmState::Stopping;
                self.cleanup_runtime(&plan);
                rec.process = None;
                let cause = if escalated || mode == StopMode::Force {
                    Cause::User
                } else {
                    Cause::Engine
                };
                self.step(&mut rec, VmState::Stopped, cause)?;
            }
            other => return Err(refuse(vm, other, VmState::Stopping)),
        }
        Ok(StopOutcome {
            status: Self::status_of(&rec),
            escalated,
            took: started.elapsed(),
        })
    }
}

impl Lifecycle for QemuEngine {
    fn define(&self, spec: &VmSpec) -> Result<VmStatus> {
        let mut spec = spec.clone();
        if let (Some(extra), BootSource::Image { cmdline, .. }) =
            (&self.options.extra_cmdline, &mut spec.boot)
        {
            *cmdline = if cmdline.is_empty() {
                extra.clone()
            } else {
                format!("{cmdline} {extra}")
            };
        }
        let _lock = self.lock(&spec.name)?;
        let (canonical, mut plan) = self.replan(spec)?;
        if let Some(existing) = self.db(|s| s.get_vm(&canonical.spec.name))? {
            return if existing.spec_hash == canonical.hash.0 {
                Ok(Self::status_of(&self.refresh(existing)?))
            } else {
                Err(Error::VmExists(canonical.spec.name.clone()))
            };
        }
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
        self.db(|s| s.commit_transition(&rec, &event, true))?;
        Ok(Self::status_of(&rec))
    }

    fn start(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        self.start_with(vm, &StartOptions::default(), cancel)
    }

    fn stop(&self, vm: &VmName, mode: StopMode, cancel: &CancelToken) -> Result<StopOutcome> {
        self.stop_vm(vm, mode, cancel)
    }

    fn pause(&self, vm: &VmName) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        match rec.state {
            VmState::Paused => {}
            VmState::Running => {
                let plan = Self::plan_of(&rec)?;
                self.step(&mut rec, VmState::Pausing, Cause::User)?;
                match self.control(&plan).and_then(|c| c.stop()) {
                    Ok(()) => self.step(&mut rec, VmState::Paused, Cause::Engine)?,
                    Err(e) => {
                        rec.reason = Some(format!("pause failed: {e}"));
                        self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                        return Err(e);
                    }
                }
            }
            other => return Err(refuse(vm, other, VmState::Pausing)),
        }
        Ok(Self::status_of(&rec))
    }

    fn resume(&self, vm: &VmName) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        match rec.state {
            VmState::Running => {}
            VmState::Paused => {
                let plan = Self::plan_of(&rec)?;
                self.step(&mut rec, VmState::Resuming, Cause::User)?;
                match self.control(&plan).and_then(|c| c.cont()) {
                    Ok(()) => self.step(&mut rec, VmState::Running, Cause::Engine)?,
                    Err(e) => {
                        rec.reason = Some(format!("resume failed: {e}"));
                        self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                        return Err(e);
                    }
                }
            }
            other => return Err(refuse(vm, other, VmState::Resuming)),
        }
        Ok(Self::status_of(&rec))
    }

    fn reboot(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        cancel.check()?;
        if rec.state != VmState::Running {
            return Err(refuse(vm, rec.state, VmState::Running));
        }
        let plan = Self::plan_of(&rec)?;
        let p = rec
            .process
            .ok_or_else(|| Error::EngineFailed("no QEMU process".into()))?;
        let mut tail = LogTail::from(
            Self::console_log(&plan)
                .as_deref()
                .map(console::len)
                .unwrap_or(0),
        );
        let ctl = self.control(&plan)?;
        let started = Instant::now();
        // The firmware and early boot may reset again: keep `reset` until the guest is back.
        ctl.set_reboot_action(true)?;
        let rebooted = ctl.reset().and_then(|()| {
            let timeout = self.options.boot_timeout;
            self.wait_ready(
                &ctl,
                p,
                &plan,
                &mut tail,
                started + timeout,
                timeout,
                cancel,
            )
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
        self.shut_down(&rec, &plan, StopMode::Force);
        rec.process = None;
        self.step(&mut rec, VmState::Deleted, Cause::User)?;
        let dir = Path::new(&plan.runtime_dir);
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io_err("cannot remove", dir, e))?;
        }
        if let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) {
            confine::remove_cgroup(cg);
        }
        self.db(|s| s.delete_vm(vm))
    }

    fn status(&self, vm: &VmName) -> Result<VmStatus> {
        Ok(Self::status_of(&self.record(vm)?))
    }

    fn list(&self) -> Result<Vec<VmStatus>> {
        let records = self.db(|s| s.list_vms())?;
        records
            .into_iter()
            .map(|r| self.refresh(r).map(|r| Self::status_of(&r)))
            .collect()
    }

    fn observe(&self, observer: Arc<dyn LifecycleObserver>) {
        self.observers.register(observer)
    }
}

impl Snapshots for QemuEngine {
    fn save(
        &self,
        vm: &VmName,
        id: &SnapshotId,
        mode: SaveMode,
        cancel: &CancelToken,
    ) -> Result<SnapshotInfo> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if self.db(|s| s.get_snapshot(id))?.is_some() {
            return Err(Error::SnapshotExists(id.clone()));
        }
        if !matches!(rec.state, VmState::Running | VmState::Paused) {
            return Err(refuse(vm, rec.state, VmState::Saving));
        }
        cancel.check()?;
        let plan = Self::plan_of(&rec)?;
        let ctl = self.control(&plan)?;
        if rec.state == VmState::Running {
            self.step(&mut rec, VmState::Pausing, Cause::User)?;
            ctl.stop()?;
            self.step(&mut rec, VmState::Paused, Cause::Engine)?;
        }
        self.step(&mut rec, VmState::Saving, Cause::User)?;
        let dir = self.own_dir(&self.home.join("snapshots"))?;
        // Named after the VM too: two VMs saving under one id at once never share a file
        // (the store's record decides which of them gets the id; the other removes its own).
        let path = dir.join(format!("{id}@{vm}.state"));
        let tmp = dir.join(format!("{id}@{vm}.state.tmp"));
        for f in [&path, &tmp, &frozen_dir(&path)] {
            hangar_store::home::no_symlink(f).map_err(store_err)?;
        }
        // QEMU writes the state into a file of its own in its runtime directory (it may not
        // open anything under snapshots/), which Hangar then moves there and takes back.
        let written = self
            .state_file_for_qemu(&plan)
            .and_then(|out| {
                ctl.migrate_to_file(&out, Instant::now() + MIGRATION_DEADLINE)
                    .and_then(|()| move_file(&out, &tmp))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&out);
                    })
            })
            .and_then(|()| confine::take_back(&tmp))
            .and_then(|()| {
                std::fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename", &tmp, e))
            })
            .and_then(|()| freeze_disks(&plan, &path));
        let disks = match written {
            Ok(disks) => disks,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir_all(frozen_dir(&path));
                self.step(&mut rec, VmState::Paused, Cause::Fault)?;
                return Err(e);
            }
        };
        let record = SnapshotRecord {
            id: id.clone(),
            vm: vm.clone(),
            path: path.display().to_string(),
            spec_hash: rec.spec_hash.clone(),
            clone_hash: Some(clone_hash(&rec.spec)),
            disks,
            engine_version: format!(
                "qemu-{}",
                self.facts.qemu.version.as_deref().unwrap_or("unknown")
            ),
            size_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            created_at: self.clock.now(),
            tenant: rec.spec.tenant.clone(),
            pool: rec.spec.pool.clone(),
        };
        if let Err(e) = self.db(|s| s.insert_snapshot(&record)) {
            // Another VM took the id meanwhile: its files are its own; remove ours.
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir_all(frozen_dir(&path));
            self.step(&mut rec, VmState::Paused, Cause::Fault)?;
            return Err(e);
        }
        match mode {
            SaveMode::KeepPaused => self.step(&mut rec, VmState::Paused, Cause::Engine)?,
            SaveMode::Sleep => {
                let _ = ctl.quit();
                if let Some(p) = rec.process {
                    if !process::wait_exit(p, QUIT_GRACE) {
                        process::terminate(p, TERM_GRACE);
                    }
                }
                self.cleanup_runtime(&plan);
                rec.process = None;
                rec.sleeping_on = Some(id.clone());
                self.step(&mut rec, VmState::Sleeping, Cause::Engine)?;
            }
        }
        Ok(info(&record))
    }

    fn restore(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        let snap = self
            .db(|s| s.get_snapshot(id))?
            .ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        let via = match rec.state {
            VmState::Sleeping => VmState::Waking,
            VmState::Defined | VmState::Stopped => VmState::Starting,
            other => return Err(refuse(vm, other, VmState::Waking)),
        };
        self.check_snapshot_fits(&rec, &snap)?;
        check_inputs(&rec.spec)?;
        let thawed_bytes: u64 = snap
            .disks
            .iter()
            .filter_map(|d| std::fs::metadata(&d.path).ok())
            .map(|m| m.len())
            .sum();
        let plan = Self::plan_of(&rec)?;
        self.check_reachable(&rec, &plan)?;
        self.admit(&rec.spec, &plan, thawed_bytes)?;
        cancel.check()?;
        // A VM sleeping on this snapshot has not touched its disks since the save; any other
        // restore (a clone, or rolling a VM back) needs the disks as they were at the save.
        let untouched = via == VmState::Waking && rec.sleeping_on.as_ref() == Some(id);
        let clone = snap.spec_hash != rec.spec_hash || snap.vm != *vm;
        self.step(&mut rec, via, Cause::User)?;
        let thawed = if untouched {
            Ok(())
        } else {
            thaw_disks(&snap, &plan, clone)
        };
        match thawed.and_then(|()| {
            self.boot(
                &mut rec,
                &plan,
                Some(Path::new(&snap.path)),
                &StartOptions::default(),
                cancel,
            )
        }) {
            Ok(()) => {
                rec.sleeping_on = None;
                self.step(&mut rec, VmState::Running, Cause::Engine)?;
            }
            Err(e) => {
                self.shut_down(&rec, &plan, StopMode::Force);
                self.cleanup_runtime(&plan);
                rec.process = None;
                rec.reason = Some(format!("restore from {id} failed: {e}"));
                self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                return Err(e);
            }
        }
        Ok(Self::status_of(&rec))
    }

    fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .db(|s| s.list_snapshots(vm))?
            .iter()
            .map(info)
            .collect())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let snap = self
            .db(|s| s.get_snapshot(id))?
            .ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        let user = self
            .db(|s| s.list_vms())?
            .into_iter()
            .find(|r| r.state == VmState::Sleeping && r.sleeping_on.as_ref() == Some(id));
        if let Some(user) = user {
            return Err(Error::SnapshotInUse {
                snapshot: id.clone(),
                vm: user.name().clone(),
            });
        }
        let _ = std::fs::remove_file(&snap.path);
        let _ = std::fs::remove_dir_all(frozen_dir(Path::new(&snap.path)));
        self.db(|s| s.delete_snapshot(id))
    }
}

impl Disks for QemuEngine {
    fn create_volume(&self, id: &VolumeId, source: &VolumeSource) -> Result<VolumeInfo> {
        if self.db(|s| s.get_volume(id))?.is_some() {
            return Err(Error::DiskExists(id.clone()));
        }
        let dir = self.home.join("volumes");
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let path = self.volume_path(id, DiskFormat::Qcow2);
        let (base, result) = match source {
            VolumeSource::Blank { size_mib } => {
                if *size_mib == 0 {
                    return Err(Error::InvalidArgument {
                        what: "size_mib".into(),
                        reason: "must be at least 1".into(),
                    });
                }
                (None, img::create_blank(&path, DiskFormat::Qcow2, *size_mib))
            }
            VolumeSource::Overlay { base } => {
                let b = self.volume_record(base)?;
                (
                    Some(base.clone()),
                    img::create_overlay(&path, Path::new(&b.path), b.format),
                )
            }
            VolumeSource::ImageFile { path: file, format } => {
                (None, img::create_overlay(&path, Path::new(file), *format))
            }
        };
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(img_err(e));
        }
        let size_mib = img::virtual_size_mib(&path).map_err(img_err)?;
        let record = VolumeRecord {
            id: id.clone(),
            path: path.display().to_string(),
            size_mib,
            format: DiskFormat::Qcow2,
            base,
            snapshots: vec![],
        };
        if let Err(e) = self.db(|s| s.insert_volume(&record)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(volume_info(&record))
    }

    fn resize_volume(&self, id: &VolumeId, size_mib: u64) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if size_mib < v.size_mib {
            return Err(Error::InvalidArgument {
                what: "size_mib".into(),
                reason: format!(
                    "{size_mib} MiB is smaller than the current {} MiB; volumes only grow",
                    v.size_mib
                ),
            });
        }
        img::resize(Path::new(&v.path), v.format, size_mib).map_err(img_err)?;
        v.size_mib = img::virtual_size_mib(Path::new(&v.path)).map_err(img_err)?;
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        let v = self.volume_record(id)?;
        if !v.snapshots.is_empty() {
            return Err(Error::DiskHasSnapshots {
                disk: id.clone(),
                count: v.snapshots.len(),
            });
        }
        if let Some(overlay) = self
            .db(|s| s.list_volumes())?
            .into_iter()
            .find(|o| o.base.as_ref() == Some(id))
        {
            return Err(Error::DiskInUse {
                disk: id.clone(),
                user: format!("overlay {}", overlay.id),
            });
        }
        std::fs::remove_file(&v.path)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| io_err("cannot remove", Path::new(&v.path), e))?;
        self.db(|s| s.delete_volume(id))
    }

    fn snapshot_volume(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if v.snapshots.contains(snapshot) {
            return Err(Error::SnapshotExists(snapshot.clone()));
        }
        img::snapshot_create(Path::new(&v.path), snapshot.as_str()).map_err(img_err)?;
        v.snapshots.push(snapshot.clone());
        v.snapshots.sort();
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn delete_volume_snapshot(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if !v.snapshots.contains(snapshot) {
            return Err(Error::SnapshotNotFound(snapshot.clone()));
        }
        img::snapshot_delete(Path::new(&v.path), snapshot.as_str()).map_err(img_err)?;
        v.snapshots.retain(|s| s != snapshot);
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn volume(&self, id: &VolumeId) -> Result<VolumeInfo> {
        Ok(volume_info(&self.volume_record(id)?))
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(self
            .db(|s| s.list_volumes())?
            .iter()
            .map(volume_info)
            .collect())
    }
}

impl QemuEngine {
    fn change_nics(
        &self,
        vm: &VmName,
        change: impl FnOnce(&mut Vec<NicSpec>) -> Result<()>,
    ) -> Result<()> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if !matches!(rec.state, VmState::Defined | VmState::Stopped) {
            return Err(Error::Unsupported(format!(
                "changing NICs while the VM is {} (no hotplug)",
                rec.state
            )));
        }
        let mut spec = rec.spec.clone();
        change(&mut spec.nics)?;
        let (canonical, mut plan) = self.replan(spec)?;
        // The VM keeps the user it was given at define.
        if let (Some(new), Some(old)) =
            (plan.confinement.as_mut(), Self::plan_of(&rec)?.confinement)
        {
            (new.uid, new.gid) = (old.uid, old.gid);
        }
        rec.spec = canonical.spec;
        rec.spec_hash = canonical.hash.0;
        rec.plan_json = plan.to_json();
        self.save(&mut rec)
    }
}

impl Nics for QemuEngine {
    fn attach_nic(&self, vm: &VmName, nic: &NicSpec) -> Result<()> {
        self.change_nics(vm, |nics| {
            if nics.iter().any(|n| n.name == nic.name) {
                return Err(Error::NicExists {
                    vm: vm.clone(),
                    nic: nic.name.to_string(),
                });
            }
            nics.push(nic.clone());
            Ok(())
        })
    }

    fn detach_nic(&self, vm: &VmName, nic: &DeviceName) -> Result<()> {
        self.change_nics(vm, |nics| {
            let before = nics.len();
            nics.retain(|n| n.name != *nic);
            if nics.len() == before {
                return Err(Error::NicNotFound {
                    vm: vm.clone(),
                    nic: nic.to_string(),
                });
            }
            Ok(())
        })
    }

    fn list_nics(&self, vm: &VmName) -> Result<Vec<NicSpec>> {
        Ok(self.record(vm)?.spec.nics)
    }
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

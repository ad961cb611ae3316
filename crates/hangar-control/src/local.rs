//! [`Local`]: operations carried out on this host, journaled in the store.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_api::{ErrorBody, EventView, Operation, OperationRequest, OperationResult, VmView};
use hangar_core::cancel::CancelToken;
use hangar_core::clock::{Clock, SystemClock, Timestamp};
use hangar_core::contracts::{SaveMode, SnapshotInfo, StopMode};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::{OperationId, SnapshotId, VmName};
use hangar_core::lifecycle::{with_operation, VmState};
use hangar_core::spec::VmSpec;
use hangar_fleet::{Admission, Admit, Fleet};
use hangar_hostfs::AllowedRoots;
use hangar_qemu::{process, EngineOptions, QemuEngine};
use hangar_store::{OperationRecord, OperationStatus, ProcessIdentity, Store};

use crate::backend::{Backend, Start};
use crate::{Control, Result};

/// Operations on this host, through the engine, journaled in the store.
pub struct Local {
    engine: Arc<dyn Backend>,
    /// Hangar's home: the journal is its state store.
    home: std::path::PathBuf,
    /// Where a spec's host files may come from.
    roots: AllowedRoots,
    /// Tenants and their quotas: every VM of a tenant is admitted through it.
    fleet: Arc<Fleet<dyn Backend>>,
    /// A connection of its own, so journal writes never wait behind a long engine call.
    journal: Mutex<Store>,
    /// This process, recorded as the owner of the operations it runs.
    me: Option<ProcessIdentity>,
}

/// Room in a tenant's quotas, held while an operation runs.
type Held = Admission<dyn Backend>;

/// A request that passed its checks and is journaled, ready to be carried out.
pub struct Pending {
    record: OperationRecord,
    request: OperationRequest,
    prepared: Prepared,
    /// Room in the VM's tenant's quotas, held until the operation has ended.
    _admission: Option<Held>,
}

impl Pending {
    /// The operation as journaled (status `running`).
    pub fn operation(&self) -> Operation {
        to_operation(&self.record, self.request.clone())
    }
}

/// A request with its names parsed and its spec validated.
enum Prepared {
    Create(Box<VmSpec>),
    Start {
        vm: VmName,
        no_wait: bool,
        timeout: Option<Duration>,
    },
    Stop {
        vm: VmName,
        mode: StopMode,
    },
    Pause(VmName),
    Resume(VmName),
    Reboot(VmName),
    Delete {
        vm: VmName,
        force: bool,
    },
    SnapshotSave {
        vm: VmName,
        id: SnapshotId,
        mode: SaveMode,
    },
    SnapshotRestore {
        vm: VmName,
        id: SnapshotId,
    },
    SnapshotDelete(SnapshotId),
}

/// Default graceful-stop timeout, when a request names none.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 30;

/// The longest timeout a request may ask for (a day): durations from requests are bounded
/// so no deadline arithmetic can overflow.
pub const MAX_TIMEOUT_S: u64 = 86_400;

fn timeout(seconds: Option<u64>) -> Result<Option<Duration>> {
    match seconds {
        Some(s) if s > MAX_TIMEOUT_S => {
            let mut e = ErrorBody::new(
                ErrorCode::InvalidArgument,
                format!("timeout_s {s} is longer than the {MAX_TIMEOUT_S} s a request may ask for"),
            );
            e.path = Some("timeout_s".into());
            e.hint = format!("give at most {MAX_TIMEOUT_S} seconds");
            Err(e)
        }
        s => Ok(s.map(Duration::from_secs)),
    }
}

fn vm_name(s: &str) -> Result<VmName> {
    VmName::new(s).map_err(|e| Error::InvalidName(e).into())
}

fn snapshot_id(s: &str) -> Result<SnapshotId> {
    SnapshotId::new(s).map_err(|e| Error::InvalidName(e).into())
}

/// The roots under `home` plus `allow`, as an error body when an extra root is unusable.
pub fn allowed_roots(home: &Path, allow: &[std::path::PathBuf]) -> Result<AllowedRoots> {
    AllowedRoots::new(home, allow).map_err(|e| {
        let mut body = ErrorBody::new(ErrorCode::PathNotAllowed, e.to_string());
        body.hint = "allow a directory of images or kernels, outside /proc, /sys, /dev and Hangar's state (its images and volumes are allowed already)".into();
        body
    })
}

/// [`Local::check_paths`] with explicit roots (what the daemon checks pool templates with).
pub fn check_paths(roots: &AllowedRoots, spec: &VmSpec) -> Result<()> {
    let denied = match roots.check_spec(spec) {
        Ok(()) => return Ok(()),
        Err(denied) => denied,
    };
    use hangar_core::error::Coded;
    let first = &denied[0];
    Err(ErrorBody {
        code: first.code().as_str().to_string(),
        message: first.to_string(),
        path: Some(first.field.clone()),
        hint: first.hint().unwrap_or_default(),
        errors: denied
            .iter()
            .map(|d| {
                serde_json::json!({
                    "code": d.code().as_str(),
                    "path": d.field,
                    "message": d.to_string(),
                    "hint": d.hint().unwrap_or_default(),
                })
            })
            .collect(),
        operation: None,
    })
}

fn store_failure(e: hangar_store::StoreError) -> ErrorBody {
    use hangar_core::error::Coded;
    ErrorBody::new(e.code(), e.to_string())
}

/// A fresh operation id: `op-` + the time in hex + 32 random bits.
fn new_operation_id(now: Timestamp) -> OperationId {
    let mut random = [0u8; 4];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .is_ok();
    if !filled {
        // Uniqueness then rests on the time and this process id.
        random = (std::process::id() ^ now.0 as u32).to_le_bytes();
    }
    OperationId::new(format!("op-{:x}-{:08x}", now.0, u32::from_le_bytes(random)))
        .expect("generated ids are valid names")
}

fn to_operation(rec: &OperationRecord, request: OperationRequest) -> Operation {
    Operation {
        id: rec.id.to_string(),
        kind: rec.kind,
        target: rec.target.clone(),
        status: rec.status,
        progress: rec.progress.clone(),
        request,
        result: rec
            .result_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok()),
        error: rec
            .error_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok()),
        created_at: rec.created_at.0,
        updated_at: rec.updated_at.0,
    }
}

fn decode(rec: &OperationRecord) -> Result<Operation> {
    let request: OperationRequest = serde_json::from_str(&rec.request_json).map_err(|e| {
        ErrorBody::new(
            ErrorCode::StoreCorrupt,
            format!("operation {} has an unreadable request: {e}", rec.id),
        )
    })?;
    Ok(to_operation(rec, request))
}

impl Local {
    /// Opens the engine over `home` and settles operations left by dead processes (those that
    /// can be settled now; see [`Local::recover`]). Specs may name host files under `home`'s
    /// images and volumes and under `allow` (see [`AllowedRoots`]); quotas are read from the
    /// fleet registry in the store.
    pub fn open(home: &Path, allow: &[std::path::PathBuf]) -> Result<Local> {
        let engine: Arc<dyn Backend> = Arc::new(QemuEngine::open(home, EngineOptions::default())?);
        let roots = allowed_roots(home, allow)?;
        let fleet = crate::fleet::open(engine.clone(), home, false)?;
        let local = Local::new(engine, home, roots, fleet)?;
        local.recover();
        Ok(local)
    }

    /// Wraps an engine (any [`Backend`]: QEMU, or the fake) with the home whose store holds
    /// the journal, the roots specs may name files under and the fleet whose tenants' quotas
    /// every tenant VM is admitted against.
    pub fn new(
        engine: Arc<dyn Backend>,
        home: &Path,
        roots: AllowedRoots,
        fleet: Arc<Fleet<dyn Backend>>,
    ) -> Result<Local> {
        let journal = Store::open_in(home).map_err(store_failure)?;
        Ok(Local {
            engine,
            home: home.to_path_buf(),
            roots,
            fleet,
            journal: Mutex::new(journal),
            me: process::identify(std::process::id()),
        })
    }

    /// The roots specs may name host files under.
    pub fn roots(&self) -> &AllowedRoots {
        &self.roots
    }

    /// Checks every host file `spec` names against the allowed roots: `E_PATH_NOT_ALLOWED`
    /// (or `E_INVALID_ARGUMENT` for a missing file) naming the first bad field, with every
    /// problem in `errors`.
    pub fn check_paths(&self, spec: &VmSpec) -> Result<()> {
        check_paths(&self.roots, spec)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Backend> {
        &self.engine
    }

    /// Hangar's home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn journal<T>(
        &self,
        f: impl FnOnce(&Store) -> std::result::Result<T, hangar_store::StoreError>,
    ) -> Result<T> {
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        f(&store).map_err(store_failure)
    }

    fn now(&self) -> Timestamp {
        SystemClock.now()
    }

    fn view(&self, vm: &VmName) -> std::result::Result<VmView, Error> {
        self.engine.view(vm)
    }

    fn prepare(&self, request: &OperationRequest) -> Result<(Prepared, String, Option<Held>)> {
        use OperationRequest as R;
        let admit = |spec: &VmSpec, to: Admit| -> Result<Option<Held>> {
            Ok(Some(self.fleet.admit(spec, to)?))
        };
        let (prepared, target) = match request {
            R::Create { spec, base_dir } => {
                let text = serde_json::to_string(spec).expect("JSON values serialise");
                let base = Path::new(base_dir.as_deref().unwrap_or("/"));
                if !base.is_absolute() {
                    let mut e = ErrorBody::new(
                        ErrorCode::InvalidArgument,
                        format!("base_dir {base:?} is not absolute"),
                    );
                    e.path = Some("base_dir".into());
                    e.hint = "send the absolute directory of the spec file, or omit it".into();
                    return Err(e);
                }
                let spec = hangar_spec::parse(&text, hangar_spec::Format::Json, base)?;
                if spec.spec.pool.is_some() {
                    let mut e = ErrorBody::new(
                        ErrorCode::InvalidArgument,
                        "a VM cannot join a pool by naming it: pool instances are made by the pool",
                    );
                    e.path = Some("pool".into());
                    e.hint =
                        "remove `pool` from the spec; `hangar pool create` makes instances".into();
                    return Err(e);
                }
                self.check_paths(&spec.spec)?;
                let admission = admit(&spec.spec, Admit::Define)?;
                let name = spec.spec.name.to_string();
                return Ok((Prepared::Create(Box::new(spec.spec)), name, admission));
            }
            R::Start {
                vm,
                no_wait,
                timeout_s,
            } => (
                Prepared::Start {
                    vm: vm_name(vm)?,
                    no_wait: *no_wait,
                    timeout: timeout(*timeout_s)?,
                },
                vm,
            ),
            R::Stop {
                vm,
                force,
                timeout_s,
            } => (
                Prepared::Stop {
                    vm: vm_name(vm)?,
                    mode: if *force {
                        StopMode::Force
                    } else {
                        StopMode::Graceful {
                            timeout: timeout(*timeout_s)?
                                .unwrap_or(Duration::from_secs(DEFAULT_STOP_TIMEOUT_S)),
                        }
                    },
                },
                vm,
            ),
            R::Pause { vm } => (Prepared::Pause(vm_name(vm)?), vm),
            R::Resume { vm } => (Prepared::Resume(vm_name(vm)?), vm),
            R::Reboot { vm } => (Prepared::Reboot(vm_name(vm)?), vm),
            R::Delete { vm, force } => (
                Prepared::Delete {
                    vm: vm_name(vm)?,
                    force: *force,
                },
                vm,
            ),
            R::SnapshotSave { vm, id, sleep } => (
                Prepared::SnapshotSave {
                    vm: vm_name(vm)?,
                    id: snapshot_id(id)?,
                    mode: if *sleep {
                        SaveMode::Sleep
                    } else {
                        SaveMode::KeepPaused
                    },
                },
                vm,
            ),
            R::SnapshotRestore { vm, id } => (
                Prepared::SnapshotRestore {
                    vm: vm_name(vm)?,
                    id: snapshot_id(id)?,
                },
                vm,
            ),
            R::SnapshotDelete { id } => {
                let id = snapshot_id(id)?;
                // An unknown snapshot is refused before anything is journaled, like a VM.
                if !self.engine.list_snapshots(None)?.iter().any(|s| s.id == id) {
                    return Err(Error::SnapshotNotFound(id).into());
                }
                let target = id.to_string();
                return Ok((Prepared::SnapshotDelete(id), target, None));
            }
        };
        // An unknown VM is refused before anything is journaled.
        let spec = self.engine.spec(&vm_name(target)?)?;
        let mut prepared = prepared;
        // A tenant's snapshots live in its namespace, like its VMs: `s1` of a VM of tenant
        // acme is `acme--s1`, so tenants can neither collide nor reach each other's.
        if let Prepared::SnapshotSave { id, .. } | Prepared::SnapshotRestore { id, .. } =
            &mut prepared
        {
            match &spec.tenant {
                Some(tenant) => *id = snapshot_id(&hangar_core::ids::qualify(tenant, id.as_str()))?,
                // Outside every tenant, `tenant--…` ids are reserved like VM names.
                None if hangar_core::ids::tenant_prefix(id.as_str()).is_some() => {
                    let mut e = ErrorBody::new(
                        ErrorCode::InvalidName,
                        format!(
                            "snapshot id {id:?} has the form TENANT--ID, reserved for snapshots of that tenant's VMs"
                        ),
                    );
                    e.path = Some("id".into());
                    e.hint = "use single hyphens in the id".into();
                    return Err(e);
                }
                None => {}
            }
        }
        let admission = match &prepared {
            Prepared::Start { .. } | Prepared::SnapshotRestore { .. } => {
                // Files are checked again before every boot: the roots may have changed.
                self.check_paths(&spec)?;
                admit(&spec, Admit::Run)?
            }
            Prepared::Resume(_) => admit(&spec, Admit::Run)?,
            Prepared::SnapshotSave {
                mode: SaveMode::Sleep,
                ..
            } => admit(&spec, Admit::Sleep)?,
            _ => None,
        };
        Ok((prepared, target.clone(), admission))
    }

    /// Checks `request` and journals it as a running operation owned by this process. Nothing
    /// is touched yet; [`Local::execute`] carries it out.
    pub fn begin(&self, request: OperationRequest) -> Result<Pending> {
        let (prepared, target, admission) = self.prepare(&request)?;
        let now = self.now();
        let record = OperationRecord {
            id: new_operation_id(now),
            kind: request.kind(),
            target,
            request_json: serde_json::to_string(&request).expect("requests serialise"),
            status: OperationStatus::Running,
            progress: None,
            result_json: None,
            error_json: None,
            owner: self.me,
            created_at: now,
            updated_at: now,
        };
        self.journal(|s| s.insert_operation(&record))?;
        Ok(Pending {
            record,
            request,
            prepared,
            _admission: admission,
        })
    }

    /// Carries out a journaled operation and records how it ended. Engine transitions made on
    /// the way name the operation.
    pub fn execute(&self, pending: Pending, progress: &dyn Fn(&str)) -> Operation {
        let Pending {
            mut record,
            request,
            prepared,
            _admission,
        } = pending;
        let started = Instant::now();
        let report = |phase: &str| {
            let mut update = record.clone();
            update.progress = Some(phase.to_string());
            update.updated_at = self.now();
            // Progress is advisory: a failed write must not fail the operation.
            let _ = self.journal(|s| s.update_operation(&update));
            progress(phase);
        };
        // A panic (a bug) fails this operation, recorded like any failure; the caller (the
        // daemon, with other operations in flight) goes on.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_operation(&record.id, || self.carry_out(&prepared, &report))
        }))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            eprintln!("hangar: BUG: operation {} panicked: {message}", record.id);
            Err(Error::EngineFailed(format!(
                "internal error (a bug): {message}"
            )))
        });
        record.updated_at = self.now();
        match outcome {
            Ok(mut result) => {
                result.took_ms = started.elapsed().as_millis() as u64;
                record.status = OperationStatus::Succeeded;
                record.progress = Some("done".into());
                record.result_json =
                    Some(serde_json::to_string(&result).expect("results serialise"));
            }
            Err(e) => {
                let mut body = ErrorBody::from(e);
                body.operation = Some(record.id.to_string());
                record.status = OperationStatus::Failed;
                record.error_json = Some(serde_json::to_string(&body).expect("errors serialise"));
            }
        }
        if let Err(e) = self.journal(|s| s.update_operation(&record)) {
            // The engine state is right; only the journal lags. The next recovery settles the
            // operation from what the VM shows.
            eprintln!("hangar: could not record the end of {}: {e}", record.id);
        }
        to_operation(&record, request)
    }

    fn carry_out(
        &self,
        prepared: &Prepared,
        progress: &dyn Fn(&str),
    ) -> std::result::Result<OperationResult, Error> {
        let engine = &self.engine;
        let cancel = CancelToken::new();
        let mut result = OperationResult::default();
        let vm = match prepared {
            Prepared::Create(spec) => {
                engine.define(spec)?;
                Some(&spec.name)
            }
            Prepared::Start {
                vm,
                no_wait,
                timeout,
            } => {
                let start = Start {
                    no_wait: *no_wait,
                    timeout: *timeout,
                    progress,
                };
                engine.start_with(vm, &start, &cancel)?;
                Some(vm)
            }
            Prepared::Stop { vm, mode } => {
                let outcome = engine.stop(vm, *mode, &cancel)?;
                result.escalated = Some(outcome.escalated);
                Some(vm)
            }
            Prepared::Pause(vm) => {
                engine.pause(vm)?;
                Some(vm)
            }
            Prepared::Resume(vm) => {
                engine.resume(vm)?;
                Some(vm)
            }
            Prepared::Reboot(vm) => {
                engine.reboot(vm, &cancel)?;
                Some(vm)
            }
            Prepared::Delete { vm, force } => {
                if *force {
                    engine.stop(vm, StopMode::Force, &cancel)?;
                }
                engine.undefine(vm)?;
                None
            }
            Prepared::SnapshotSave { vm, id, mode } => {
                result.snapshot = Some(engine.save(vm, id, *mode, &cancel)?);
                Some(vm)
            }
            Prepared::SnapshotRestore { vm, id } => {
                engine.restore(vm, id, &cancel)?;
                Some(vm)
            }
            Prepared::SnapshotDelete(id) => {
                engine.delete_snapshot(id)?;
                None
            }
        };
        if let Some(vm) = vm {
            result.vm = Some(self.view(vm)?);
        }
        Ok(result)
    }

    /// Journals and carries out `request` on this thread.
    pub fn run_here(
        &self,
        request: OperationRequest,
        progress: &dyn Fn(&str),
    ) -> Result<Operation> {
        let pending = self.begin(request)?;
        let op = self.execute(pending, progress);
        match &op.error {
            Some(e) if op.status != OperationStatus::Succeeded => Err(e.clone()),
            _ => Ok(op),
        }
    }

    /// Settles every running operation whose owner process is gone: one whose goal the VM now
    /// shows (the engine's own recovery finished it: a boot that completed, a stop that was
    /// carried through) is marked succeeded; any other is marked rolled back with
    /// `E_INTERRUPTED`, its VM left in the consistent state the engine settled on. One whose
    /// VM is still settling (a guest still booting under an adopted QEMU) stays running for a
    /// later call. Returns the operations settled now.
    pub fn recover(&self) -> Vec<Operation> {
        let Ok(running) = self.journal(|s| s.list_operations(true, 10_000)) else {
            return vec![];
        };
        let mut settled = Vec::new();
        for mut record in running {
            if record.owner.is_some_and(process::alive) {
                continue;
            }
            let verdict = match decode(&record) {
                Ok(op) => self.settle(&op.request),
                Err(e) => Some(Err(e)),
            };
            let Some(verdict) = verdict else { continue };
            record.updated_at = self.now();
            match verdict {
                Ok(vm) => {
                    record.status = OperationStatus::Succeeded;
                    record.progress = Some("done (settled after its owner died)".into());
                    let result = OperationResult {
                        vm,
                        ..OperationResult::default()
                    };
                    record.result_json =
                        Some(serde_json::to_string(&result).expect("results serialise"));
                }
                Err(mut body) => {
                    body.operation = Some(record.id.to_string());
                    record.status = OperationStatus::RolledBack;
                    record.error_json =
                        Some(serde_json::to_string(&body).expect("errors serialise"));
                }
            }
            if self.journal(|s| s.update_operation(&record)).is_ok() {
                if let Ok(op) = decode(&record) {
                    settled.push(op);
                }
            }
        }
        settled
    }

    /// Whether an orphaned request's goal holds now: `Some(Ok(view))` if it does,
    /// `Some(Err(why))` if it does not, `None` while its VM is still settling.
    fn settle(&self, request: &OperationRequest) -> Option<Result<Option<VmView>>> {
        use OperationRequest as R;
        let interrupted = |what: String| {
            Some(Err(ErrorBody::new(
                ErrorCode::Interrupted,
                format!("interrupted before it finished; {what}"),
            )))
        };
        let snapshot_exists = |id: &str| {
            self.engine
                .list_snapshots(None)
                .map(|all| all.iter().any(|s| s.id.as_str() == id))
        };
        let (vm, goal) = match request {
            R::Create { spec, .. } => (
                spec.get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default(),
                None,
            ),
            R::Start { vm, .. } | R::Resume { vm } | R::Reboot { vm } => {
                (vm.as_str(), Some(VmState::Running))
            }
            R::SnapshotRestore { vm, .. } => (vm.as_str(), Some(VmState::Running)),
            R::Stop { vm, .. } => (vm.as_str(), Some(VmState::Stopped)),
            R::Pause { vm } => (vm.as_str(), Some(VmState::Paused)),
            R::Delete { vm, .. } => (vm.as_str(), Some(VmState::Deleted)),
            R::SnapshotSave { vm, id, .. } => {
                return match snapshot_exists(id) {
                    Ok(true) => Some(Ok(VmName::new(vm.as_str())
                        .ok()
                        .and_then(|v| self.view(&v).ok()))),
                    Ok(false) => self.settled_vm(vm).and_then(|state| {
                        interrupted(format!("no snapshot {id} was recorded; {vm} is {state}"))
                    }),
                    Err(e) => Some(Err(e.into())),
                };
            }
            R::SnapshotDelete { id } => {
                return match snapshot_exists(id) {
                    Ok(false) => Some(Ok(None)),
                    Ok(true) => interrupted(format!("snapshot {id} still exists")),
                    Err(e) => Some(Err(e.into())),
                };
            }
        };
        let state = self.settled_vm(vm)?;
        let reached = match goal {
            None => state != "absent",
            Some(VmState::Deleted) => state == "absent",
            Some(goal) => state == goal.as_str(),
        };
        if reached {
            Some(Ok(VmName::new(vm).ok().and_then(|v| self.view(&v).ok())))
        } else {
            interrupted(format!("{vm} is {state}"))
        }
    }

    /// A VM's state once no command works on it (`absent` if it does not exist), or `None`
    /// while it is still in flight.
    fn settled_vm(&self, vm: &str) -> Option<String> {
        let Ok(name) = VmName::new(vm) else {
            return Some("absent".into());
        };
        match self.engine.status(&name) {
            Ok(s) if s.state.is_in_flight() => None,
            Ok(s) => Some(s.state.as_str().to_string()),
            Err(Error::VmNotFound(_)) => Some("absent".into()),
            Err(_) => None,
        }
    }
}

impl Control for Local {
    fn list(&self) -> Result<Vec<VmView>> {
        let names: Vec<VmName> = self.engine.list()?.into_iter().map(|s| s.name).collect();
        names
            .iter()
            .map(|n| self.view(n).map_err(ErrorBody::from))
            .collect()
    }

    fn get(&self, vm: &str) -> Result<VmView> {
        Ok(self.view(&vm_name(vm)?)?)
    }

    fn run(&self, request: OperationRequest, progress: &dyn Fn(&str)) -> Result<Operation> {
        self.run_here(request, progress)
    }

    fn operation(&self, id: &str) -> Result<Operation> {
        let not_found =
            || ErrorBody::new(ErrorCode::OperationNotFound, format!("no operation {id:?}"));
        let id = OperationId::new(id).map_err(|_| not_found())?;
        let record = self
            .journal(|s| s.get_operation(&id))?
            .ok_or_else(not_found)?;
        decode(&record)
    }

    fn operations(&self, limit: usize) -> Result<Vec<Operation>> {
        self.journal(|s| s.list_operations(false, limit))?
            .iter()
            .map(decode)
            .collect()
    }

    fn snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let vm = vm.map(vm_name).transpose()?;
        Ok(self.engine.list_snapshots(vm.as_ref())?)
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<EventView>> {
        Ok(self
            .engine
            .events_since(after, limit)?
            .events
            .iter()
            .map(EventView::from_event)
            .collect())
    }

    fn describe(&self) -> String {
        format!("local ({})", self.home.display())
    }
}

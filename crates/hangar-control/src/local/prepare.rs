//! Checking a request before anything is journaled: names parsed, the spec validated, host
//! files checked against the allowed roots, room in the tenant's quotas held.

use std::path::Path;
use std::time::Duration;

use hangar_api::{ErrorBody, OperationRequest};
use hangar_core::contracts::{SaveMode, StopMode};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::spec::VmSpec;
use hangar_fleet::Admit;
use hangar_hostfs::AllowedRoots;
use hangar_store::{OperationRecord, OperationStatus};

use crate::Result;

use super::*;

/// A request with its names parsed and its spec validated.
pub(super) enum Prepared {
    Create(Box<VmSpec>),
    Start { vm: VmName, no_wait: bool, timeout: Option<Duration> },
    Stop { vm: VmName, mode: StopMode },
    Pause(VmName),
    Resume(VmName),
    Reboot(VmName),
    Delete { vm: VmName, force: bool },
    SnapshotSave { vm: VmName, id: SnapshotId, mode: SaveMode },
    SnapshotRestore { vm: VmName, id: SnapshotId },
    SnapshotDelete(SnapshotId),
}

pub(super) fn timeout(seconds: Option<u64>) -> Result<Option<Duration>> {
    match seconds {
        Some(s) if s > MAX_TIMEOUT_S => {
            let mut e = ErrorBody::new(
                ErrorCode::InvalidArgument,
                format!("timeout_s {s} is longer than the {MAX_TIMEOUT_S} s a request may ask for"),
            );
            e.path = Some("timeout_s".into());
            e.hint = format!("give at most {MAX_TIMEOUT_S} seconds");
            Err(e.into())
        }
        s => Ok(s.map(Duration::from_secs)),
    }
}

pub(super) fn vm_name(s: &str) -> Result<VmName> {
    VmName::new(s).map_err(|e| Error::InvalidName(e).into())
}

pub(super) fn snapshot_id(s: &str) -> Result<SnapshotId> {
    SnapshotId::new(s).map_err(|e| Error::InvalidName(e).into())
}

/// The roots under `home` plus `allow`, as an error body when an extra root is unusable.
pub fn allowed_roots(home: &Path, allow: &[std::path::PathBuf]) -> Result<AllowedRoots> {
    AllowedRoots::new(home, allow).map_err(|e| {
        let mut body = ErrorBody::new(ErrorCode::PathNotAllowed, e.to_string());
        body.hint = "allow a directory of images or kernels, outside /proc, /sys, /dev and Hangar's state (its images and volumes are allowed already)".into();
        body.into()
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
    }
    .into())
}

impl Local {
    pub(super) fn prepare(
        &self, request: &OperationRequest,
    ) -> Result<(Prepared, String, Option<Held>)> {
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
                    return Err(e.into());
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
                    return Err(e.into());
                }
                self.check_paths(&spec.spec)?;
                let admission = admit(&spec.spec, Admit::Define)?;
                let name = spec.spec.name.to_string();
                return Ok((Prepared::Create(Box::new(spec.spec)), name, admission));
            }
            R::Start { vm, no_wait, timeout_s } => (
                Prepared::Start {
                    vm: vm_name(vm)?,
                    no_wait: *no_wait,
                    timeout: timeout(*timeout_s)?,
                },
                vm,
            ),
            R::Stop { vm, force, timeout_s } => (
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
            R::Delete { vm, force } => (Prepared::Delete { vm: vm_name(vm)?, force: *force }, vm),
            R::SnapshotSave { vm, id, sleep } => (
                Prepared::SnapshotSave {
                    vm: vm_name(vm)?,
                    id: snapshot_id(id)?,
                    mode: if *sleep { SaveMode::Sleep } else { SaveMode::KeepPaused },
                },
                vm,
            ),
            R::SnapshotRestore { vm, id } => {
                (Prepared::SnapshotRestore { vm: vm_name(vm)?, id: snapshot_id(id)? }, vm)
            }
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
                    return Err(e.into());
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
            Prepared::SnapshotSave { mode: SaveMode::Sleep, .. } => admit(&spec, Admit::Sleep)?,
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
        Ok(Pending { record, request, prepared, _admission: admission })
    }
}

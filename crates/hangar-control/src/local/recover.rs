//! Settling the operations a dead process left running.

use hangar_api::{ErrorBody, Operation, OperationRequest, OperationResult, VmView};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::VmName;
use hangar_core::lifecycle::VmState;
use hangar_qemu::process;
use hangar_store::OperationStatus;

use super::*;

impl Local {
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
                Err(e) => Some(Err(e.into())),
            };
            let Some(verdict) = verdict else { continue };
            record.updated_at = self.now();
            match verdict {
                Ok(vm) => {
                    record.status = OperationStatus::Succeeded;
                    record.progress = Some("done (settled after its owner died)".into());
                    let result = OperationResult { vm, ..OperationResult::default() };
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
    pub(super) fn settle(
        &self, request: &OperationRequest,
    ) -> Option<std::result::Result<Option<VmView>, ErrorBody>> {
        use OperationRequest as R;
        let interrupted = |what: String| {
            Some(Err(ErrorBody::new(
                ErrorCode::Interrupted,
                format!("interrupted before it finished; {what}"),
            )))
        };
        let snapshot_exists = |id: &str| {
            self.engine.list_snapshots(None).map(|all| all.iter().any(|s| s.id.as_str() == id))
        };
        let (vm, goal) = match request {
            R::Create { spec, .. } => {
                (spec.get("name").and_then(|n| n.as_str()).unwrap_or_default(), None)
            }
            R::Start { vm, .. } | R::Resume { vm } | R::Reboot { vm } => {
                (vm.as_str(), Some(VmState::Running))
            }
            R::SnapshotRestore { vm, .. } => (vm.as_str(), Some(VmState::Running)),
            R::Stop { vm, .. } => (vm.as_str(), Some(VmState::Stopped)),
            R::Pause { vm } => (vm.as_str(), Some(VmState::Paused)),
            R::Delete { vm, .. } => (vm.as_str(), Some(VmState::Deleted)),
            R::SnapshotSave { vm, id, .. } => {
                return match snapshot_exists(id) {
                    Ok(true) => {
                        Some(Ok(VmName::new(vm.as_str()).ok().and_then(|v| self.view(&v).ok())))
                    }
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
    pub(super) fn settled_vm(&self, vm: &str) -> Option<String> {
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

//! Carrying a journaled operation out on the engine and recording how it ended.

use std::time::Instant;

use hangar_api::{ErrorBody, Operation, OperationRequest, OperationResult};
use hangar_core::cancel::CancelToken;
use hangar_core::contracts::StopMode;
use hangar_core::error::Error;
use hangar_core::lifecycle::with_operation;
use hangar_store::{OperationRecord, OperationStatus};

use crate::backend::Start;
use crate::Result;

use super::*;

/// A request that passed its checks and is journaled, ready to be carried out.
pub struct Pending {
    pub(super) record: OperationRecord,
    pub(super) request: OperationRequest,
    pub(super) prepared: Prepared,
    /// Room in the VM's tenant's quotas, held until the operation has ended.
    pub(super) _admission: Option<Held>,
}

impl Pending {
    /// The operation as journaled (status `running`).
    pub fn operation(&self) -> Operation {
        to_operation(&self.record, self.request.clone())
    }
}

impl Local {
    /// Carries out a journaled operation and records how it ended. Engine transitions made on
    /// the way name the operation.
    pub fn execute(&self, pending: Pending, progress: &dyn Fn(&str)) -> Operation {
        let Pending { mut record, request, prepared, _admission } = pending;
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
            Err(Error::EngineFailed(format!("internal error (a bug): {message}")))
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

    pub(super) fn carry_out(
        &self, prepared: &Prepared, progress: &dyn Fn(&str),
    ) -> std::result::Result<OperationResult, Error> {
        let engine = &self.engine;
        let cancel = CancelToken::new();
        let mut result = OperationResult::default();
        let vm = match prepared {
            Prepared::Create(spec) => {
                engine.define(spec)?;
                Some(&spec.name)
            }
            Prepared::Start { vm, no_wait, timeout } => {
                let start = Start { no_wait: *no_wait, timeout: *timeout, progress };
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
        &self, request: OperationRequest, progress: &dyn Fn(&str),
    ) -> Result<Operation> {
        let pending = self.begin(request)?;
        let op = self.execute(pending, progress);
        match &op.error {
            Some(e) if op.status != OperationStatus::Succeeded => Err(e.clone().into()),
            _ => Ok(op),
        }
    }
}

//! The `operations` table: the journal of long-running operations.

use hangar_core::ids::OperationId;
use rusqlite::{params, Row};

use crate::error::Result;
use crate::records::{process_columns, OperationRecord, ProcessIdentity};
use crate::row::Fields;
use crate::store::Store;

const OPERATION_COLUMNS: &str = "SELECT id, kind, target, request_json, status, progress, result_json, error_json, owner_pid, owner_start_time, created_at, updated_at FROM operations";

/// Reads an `operations` row (selected with [`OPERATION_COLUMNS`]). The request, result and
/// error must be JSON; an owner is recorded only when both its pid and start time are.
fn decode(row: &Row<'_>) -> Result<OperationRecord> {
    let f = Fields::new(row, "operations", "id");
    let owner = match (f.opt_pid("owner_pid")?, f.opt_u64("owner_start_time")?) {
        (Some(pid), Some(start_time)) => Some(ProcessIdentity { pid, start_time }),
        _ => None,
    };
    Ok(OperationRecord {
        id: f.parse("id")?,
        kind: f.parse("kind")?,
        target: f.get("target")?,
        request_json: f.json_text("request_json")?,
        status: f.parse("status")?,
        progress: f.get("progress")?,
        result_json: f.opt_json_text("result_json")?,
        error_json: f.opt_json_text("error_json")?,
        owner,
        created_at: f.timestamp("created_at")?,
        updated_at: f.timestamp("updated_at")?,
    })
}

impl Store {
    /// Journals a new operation.
    pub fn insert_operation(&self, op: &OperationRecord) -> Result<()> {
        let (pid, start) = process_columns(op.owner);
        self.insert(
            "operations",
            &op.id,
            "INSERT INTO operations (id, kind, target, request_json, status, progress, result_json, error_json, owner_pid, owner_start_time, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![op.id.as_str(), op.kind.as_str(), op.target, op.request_json, op.status.as_str(), op.progress, op.result_json, op.error_json, pid, start, op.created_at.0 as i64, op.updated_at.0 as i64],
        )
    }

    /// Records an operation's progress, status, result or error.
    pub fn update_operation(&self, op: &OperationRecord) -> Result<()> {
        let (pid, start) = process_columns(op.owner);
        self.execute(
            "UPDATE operations SET status = ?2, progress = ?3, result_json = ?4, error_json = ?5, owner_pid = ?6, owner_start_time = ?7, updated_at = ?8 WHERE id = ?1",
            params![op.id.as_str(), op.status.as_str(), op.progress, op.result_json, op.error_json, pid, start, op.updated_at.0 as i64],
        )?;
        Ok(())
    }

    /// One operation.
    pub fn get_operation(&self, id: &OperationId) -> Result<Option<OperationRecord>> {
        self.one(&format!("{OPERATION_COLUMNS} WHERE id = ?1"), [id.as_str()], decode)
    }

    /// The newest `limit` operations, newest first; only running ones with `running_only`.
    pub fn list_operations(
        &self, running_only: bool, limit: usize,
    ) -> Result<Vec<OperationRecord>> {
        let filter = if running_only { "WHERE status = 'running'" } else { "" };
        self.all(
            &format!("{OPERATION_COLUMNS} {filter} ORDER BY created_at DESC, id DESC LIMIT ?1"),
            [limit as i64],
            decode,
        )
    }
}

#[cfg(test)]
mod tests {
    use hangar_core::clock::Timestamp;
    use hangar_core::error::{Coded, ErrorCode};

    use super::*;
    use crate::{OperationStatus, StoreError};

    fn operation() -> OperationRecord {
        OperationRecord {
            id: OperationId::new("op-1").unwrap(),
            kind: hangar_core::operation::OperationKind::Start,
            target: "a".into(),
            request_json: r#"{"vm":"a"}"#.into(),
            status: OperationStatus::Running,
            progress: Some("booting".into()),
            result_json: None,
            error_json: None,
            owner: Some(ProcessIdentity { pid: 7, start_time: 1234 }),
            created_at: Timestamp(10),
            updated_at: Timestamp(11),
        }
    }

    /// Reading `operations/op-1` back, alone and in a list, fails as corrupt naming `detail`.
    fn assert_corrupt(store: &Store, detail: &str) {
        for err in [
            store.get_operation(&OperationId::new("op-1").unwrap()).unwrap_err(),
            store.list_operations(false, 10).unwrap_err(),
        ] {
            assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{err}");
            assert!(
                matches!(&err, StoreError::Corrupt { table: "operations", key, .. } if key == "op-1"),
                "{err}"
            );
            assert!(err.to_string().contains(detail), "{err}");
        }
    }

    #[test]
    fn operations_round_trip_and_negative_integers_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let op = operation();
        store.insert_operation(&op).unwrap();
        assert_eq!(store.get_operation(&op.id).unwrap(), Some(op.clone()));
        assert_eq!(store.list_operations(true, 10).unwrap(), vec![op.clone()]);
        for (column, bad) in [("owner_start_time", -1), ("created_at", -10), ("updated_at", -11)] {
            store.execute_raw(&format!("UPDATE operations SET {column} = {bad}")).unwrap();
            assert_corrupt(&store, &format!("{column}: {bad} is negative"));
            store
                .execute_raw("UPDATE operations SET owner_start_time = 1234, created_at = 10, updated_at = 11")
                .unwrap();
            assert_eq!(store.get_operation(&op.id).unwrap(), Some(op.clone()));
        }
        store.execute_raw("UPDATE operations SET owner_pid = -7").unwrap();
        assert_corrupt(&store, "owner_pid: -7 is not a process id");
        store.execute_raw("UPDATE operations SET owner_pid = 7, status = 'paused'").unwrap();
        assert_corrupt(&store, "status: unknown status \"paused\"");
        store
            .execute_raw("UPDATE operations SET status = 'running', result_json = '{oops'")
            .unwrap();
        assert_corrupt(&store, "result_json: not JSON");
    }
}

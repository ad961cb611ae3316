//! The `vms` table (one row per VM) and the `transitions` table: every VM's history and the
//! event stream (a `transitions` row with a `message` is an engine event, not a state change).

use hangar_core::clock::Timestamp;
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{TransitionEvent, VmState};
use hangar_core::spec::VmSpec;
use rusqlite::{params, Row};

use crate::error::{corrupt, Result};
use crate::records::{process_columns, ProcessIdentity, StoredEvent, VmRecord};
use crate::row::Fields;
use crate::store::Store;

/// Reads a `vms` row (selected with `*`).
fn decode(row: &Row<'_>) -> Result<VmRecord> {
    let f = Fields::new(row, "vms", "name");
    let name: String = f.get("name")?;
    let spec: VmSpec = f.json("spec_json")?;
    if spec.name.as_str() != name {
        return Err(f.corrupt(format!("spec names a different VM ({})", spec.name)));
    }
    let process = match (f.opt_pid("pid")?, f.opt_u64("pid_start_time")?) {
        (Some(pid), Some(start_time)) if pid > 0 => Some(ProcessIdentity { pid, start_time }),
        (None, None) => None,
        other => return Err(f.corrupt(format!("bad process identity {other:?}"))),
    };
    Ok(VmRecord {
        spec,
        spec_hash: f.get("spec_hash")?,
        plan_json: f.get("plan_json")?,
        state: f.parse("state")?,
        reason: f.get("reason")?,
        runtime_dir: f.get("runtime_dir")?,
        process,
        boot_ms: f.opt_u64("boot_ms")?,
        sleeping_on: f.opt_parse("sleeping_on")?,
        boot_log_offset: f.opt_u64("boot_log_offset")?,
        created_at: f.timestamp("created_at")?,
        updated_at: f.timestamp("updated_at")?,
    })
}

const EVENT_COLUMNS: &str =
    "SELECT seq, vm, from_state, to_state, at, cause, operation, message FROM transitions";

/// Reads a `transitions` row (selected with [`EVENT_COLUMNS`]) as a numbered event: a
/// transition, or an engine event when it has a `message`. Every column is validated either
/// way.
fn decode_event(row: &Row<'_>) -> Result<(u64, StoredEvent)> {
    let f = Fields::new(row, "transitions", "seq");
    let seq = f.u64("seq")?;
    let transition = TransitionEvent {
        vm: f.parse("vm")?,
        from: f.opt_parse("from_state")?,
        to: f.parse("to_state")?,
        at: f.timestamp("at")?,
        cause: f.parse("cause")?,
        operation: f.opt_parse("operation")?,
    };
    let event = match f.get::<Option<String>>("message")? {
        Some(message) => StoredEvent::Engine { vm: transition.vm, at: transition.at, message },
        None => StoredEvent::Transition(transition),
    };
    Ok((seq, event))
}

impl Store {
    /// Inserts a new VM; `Exists` if the name is taken.
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        let spec_json = serde_json::to_string(&vm.spec).expect("specs serialise");
        let (pid, start) = process_columns(vm.process);
        self.insert(
            "vms",
            vm.name(),
            "INSERT INTO vms (name, spec_json, spec_hash, plan_json, state, reason, runtime_dir, pid, pid_start_time, boot_ms, sleeping_on, boot_log_offset, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![vm.name().as_str(), spec_json, vm.spec_hash, vm.plan_json, vm.state.as_str(), vm.reason,
                    vm.runtime_dir, pid, start, vm.boot_ms.map(|b| b as i64), vm.sleeping_on.as_ref().map(|s| s.as_str()),
                    vm.boot_log_offset.map(|o| o as i64), vm.created_at.0 as i64, vm.updated_at.0 as i64],
        )
    }

    /// Replaces a VM's record (matched by name).
    pub fn update_vm(&self, vm: &VmRecord) -> Result<()> {
        let spec_json = serde_json::to_string(&vm.spec).expect("specs serialise");
        let (pid, start) = process_columns(vm.process);
        self.execute(
            "UPDATE vms SET spec_json=?2, spec_hash=?3, plan_json=?4, state=?5, reason=?6, runtime_dir=?7,
             pid=?8, pid_start_time=?9, boot_ms=?10, sleeping_on=?11, boot_log_offset=?12, updated_at=?13 WHERE name=?1",
            params![vm.name().as_str(), spec_json, vm.spec_hash, vm.plan_json, vm.state.as_str(), vm.reason,
                    vm.runtime_dir, pid, start, vm.boot_ms.map(|b| b as i64), vm.sleeping_on.as_ref().map(|s| s.as_str()),
                    vm.boot_log_offset.map(|o| o as i64), vm.updated_at.0 as i64],
        )?;
        Ok(())
    }

    /// One VM, if recorded.
    pub fn get_vm(&self, name: &VmName) -> Result<Option<VmRecord>> {
        self.one("SELECT * FROM vms WHERE name = ?1", [name.as_str()], decode)
    }

    /// Every VM, sorted by name.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        self.all("SELECT * FROM vms ORDER BY name", [], decode)
    }

    /// Removes a VM's record. Its transitions stay: they are the append-only event stream (a
    /// later VM of the same name starts a new history with a move from "(new)"). Removing a
    /// missing VM is not an error.
    pub fn delete_vm(&self, name: &VmName) -> Result<()> {
        self.execute("DELETE FROM vms WHERE name = ?1", [name.as_str()])?;
        Ok(())
    }

    /// Records a new VM with its first transition (`defined`), in one transaction.
    pub fn define_vm(&self, vm: &VmRecord, event: &TransitionEvent) -> Result<()> {
        self.in_transaction(|| self.insert_vm(vm).and_then(|()| self.record_transition(event)))
    }

    /// Updates a VM and appends a transition in one transaction.
    pub fn commit_transition(&self, vm: &VmRecord, event: &TransitionEvent) -> Result<()> {
        self.in_transaction(|| self.update_vm(vm).and_then(|()| self.record_transition(event)))
    }

    pub(crate) fn in_transaction(&self, work: impl FnOnce() -> Result<()>) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
        match work() {
            Ok(()) => self.conn.execute_batch("COMMIT").map_err(|e| self.err(e)),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Events with sequence numbers greater than `after`, oldest first: the event stream.
    pub fn events_since(&self, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>> {
        self.all(
            &format!("{EVENT_COLUMNS} WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            params![after as i64, limit as i64],
            decode_event,
        )
    }

    /// Appends an engine event (something the engine observed that is not a state change) to
    /// the event stream; it never appears in a VM's history.
    pub fn record_engine_event(
        &self, vm: &VmName, state: VmState, at: Timestamp, message: &str,
    ) -> Result<()> {
        self.execute(
            "INSERT INTO transitions (vm, from_state, to_state, at, cause, message) VALUES (?1, ?2, ?2, ?3, 'engine', ?4)",
            params![vm.as_str(), state.as_str(), at.0 as i64, message],
        )?;
        Ok(())
    }

    /// Records an event about something other than one VM (a reconcile pass): an engine event
    /// whose subject is `subject` (for example `fleet`), so it reaches every event reader.
    pub fn record_note(&self, subject: &VmName, at: Timestamp, message: &str) -> Result<()> {
        self.record_engine_event(subject, VmState::Defined, at, message)
    }

    /// Appends a transition to a VM's history.
    pub fn record_transition(&self, e: &TransitionEvent) -> Result<()> {
        self.execute(
            "INSERT INTO transitions (vm, from_state, to_state, at, cause, operation) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.vm.as_str(), e.from.map(VmState::as_str), e.to.as_str(), e.at.0 as i64, e.cause.as_str(),
                    e.operation.as_ref().map(|o| o.as_str())],
        )?;
        Ok(())
    }

    /// A VM's history, oldest first.
    pub fn transitions(&self, vm: &VmName) -> Result<Vec<TransitionEvent>> {
        self.all(
            &format!("{EVENT_COLUMNS} WHERE vm = ?1 AND message IS NULL ORDER BY seq"),
            [vm.as_str()],
            |row| match decode_event(row)? {
                (_, StoredEvent::Transition(t)) => Ok(t),
                (seq, StoredEvent::Engine { .. }) => Err(corrupt(
                    "transitions",
                    &seq.to_string(),
                    "an engine event where a transition was expected",
                )),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use hangar_core::error::{Coded, ErrorCode};
    use hangar_core::spec::VmSpec;

    use super::*;
    use crate::StoreError;

    fn record(name: &str) -> VmRecord {
        VmRecord {
            spec: VmSpec::new(VmName::new(name).unwrap()),
            spec_hash: "sha256:00".into(),
            plan_json: "{}".into(),
            state: VmState::Running,
            reason: None,
            runtime_dir: format!("/run/{name}"),
            process: Some(ProcessIdentity { pid: 42, start_time: 99 }),
            boot_ms: Some(3300),
            sleeping_on: None,
            boot_log_offset: Some(7),
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
        }
    }

    /// Reading `vms/a` fails as corrupt, naming the table, the key and `column`.
    fn assert_corrupt_column(store: &Store, column: &str) {
        let name = VmName::new("a").unwrap();
        for err in [store.get_vm(&name).unwrap_err(), store.list_vms().unwrap_err()] {
            assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{err}");
            assert!(
                matches!(&err, StoreError::Corrupt { table: "vms", key, .. } if key == "a"),
                "{err}"
            );
            assert!(err.to_string().contains("vms/a"), "{err}");
            assert!(err.to_string().contains(column), "{err}");
        }
    }

    #[test]
    fn negative_vm_integers_are_corrupt_not_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let good = record("a");
        store.insert_vm(&good).unwrap();
        for (column, bad) in [
            ("boot_ms", -5),
            ("boot_log_offset", -1),
            ("created_at", -1),
            ("updated_at", -2),
            ("pid_start_time", -3),
        ] {
            store
                .execute_raw(&format!("UPDATE vms SET {column} = {bad} WHERE name = 'a'"))
                .unwrap();
            assert_corrupt_column(&store, column);
            assert!(store
                .get_vm(&VmName::new("a").unwrap())
                .unwrap_err()
                .to_string()
                .contains(&format!("{column}: {bad} is negative")));
            store.update_vm(&good).unwrap();
            store.execute_raw("UPDATE vms SET created_at = 1 WHERE name = 'a'").unwrap();
            assert_eq!(store.get_vm(&VmName::new("a").unwrap()).unwrap(), Some(good.clone()));
        }
        // A pid beyond u32 is not truncated into some other process.
        store.execute_raw("UPDATE vms SET pid = 4294967338 WHERE name = 'a'").unwrap();
        assert_corrupt_column(&store, "pid");
    }

    #[test]
    fn negative_transition_times_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let vm = VmName::new("a").unwrap();
        store.record_engine_event(&vm, VmState::Defined, Timestamp(3), "noticed").unwrap();
        store.execute_raw("UPDATE transitions SET at = -3").unwrap();
        let err = store.events_since(0, 10).unwrap_err();
        assert_eq!(err.code(), ErrorCode::StoreCorrupt);
        assert!(err.to_string().contains("transitions/1"), "{err}");
        assert!(err.to_string().contains("at: -3 is negative"), "{err}");
    }
}

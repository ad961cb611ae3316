//! Hangar's embedded state store.
//!
//! One SQLite database (`$HANGAR_HOME/state.db`, WAL mode) records every VM's spec, plan, state,
//! process identity and runtime paths, the full transition history, memory snapshots and disk
//! volumes. Every row read back is validated (states parse, JSON deserialises, names are valid);
//! a row that fails is reported as [`StoreError::Corrupt`] naming the table and key, never used.
//!
//! Concurrent `hangar` processes are serialised per VM by [`VmLock`] (an `flock` on
//! `$HANGAR_HOME/locks/<name>.lock`); SQLite's own locking (with a busy timeout) covers the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_core::access::Scope;
use hangar_core::clock::Timestamp;
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::ids::{OperationId, PoolId, SnapshotId, TenantId, VmName, VolumeId};
use hangar_core::lifecycle::{Cause, TransitionEvent, VmState};
use hangar_core::spec::{DiskFormat, VmSpec};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

pub mod home;
mod lock;

pub use lock::VmLock;

/// Current schema version (SQLite `user_version`).
const SCHEMA_VERSION: i64 = 5;

const MIGRATION_1: &str = "
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    runtime_dir TEXT NOT NULL,
    pid INTEGER,
    pid_start_time INTEGER,
    boot_ms INTEGER,
    sleeping_on TEXT,
    boot_log_offset INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vm TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at INTEGER NOT NULL,
    cause TEXT NOT NULL,
    operation TEXT
);
CREATE INDEX transitions_vm ON transitions(vm, seq);
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    vm TEXT NOT NULL,
    path TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size_mib INTEGER NOT NULL,
    format TEXT NOT NULL,
    base TEXT,
    snapshots_json TEXT NOT NULL
);
";

/// Version 2: the operations journal, API tokens, and engine events in the event stream (a
/// `transitions` row with a `message` is an engine event, not a state change).
const MIGRATION_2: &str = "
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    request_json TEXT NOT NULL,
    status TEXT NOT NULL,
    progress TEXT,
    result_json TEXT,
    error_json TEXT,
    owner_pid INTEGER,
    owner_start_time INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX operations_status ON operations(status);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
ALTER TABLE transitions ADD COLUMN message TEXT;
";

/// Version 3: the fleet registry (tenants, pools, instances) as one JSON document, written in
/// one transaction so a reader never sees half a registry. Its meaning belongs to
/// `hangar-fleet`; the store checks it is JSON.
const MIGRATION_3: &str = "
CREATE TABLE fleet (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    registry_json TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Version 4: what a memory snapshot needs to be restored into another VM (a clone): the hash
/// of its source's spec without name, tenant and pool, and copies of the source's writable
/// disks frozen at save time. Older rows have neither and restore only into their own spec.
const MIGRATION_4: &str = "
ALTER TABLE snapshots ADD COLUMN clone_hash TEXT;
ALTER TABLE snapshots ADD COLUMN disks_json TEXT;
";

/// Version 5: ownership. A token carries a scope (`admin`, or `tenant:<id>:<role>`; tokens
/// made before scopes existed could do everything, so they become `admin`), and a snapshot
/// records the tenant and pool of the VM it was taken from.
const MIGRATION_5: &str = "
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE snapshots ADD COLUMN tenant TEXT;
ALTER TABLE snapshots ADD COLUMN pool TEXT;
";

/// Every migration, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_4,
    MIGRATION_5,
];

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state store {path}: {message}")]
    Unavailable {
        /// The database path.
        path: String,
        /// What SQLite or the filesystem said.
        message: String,
    },
    /// A stored row fails validation.
    #[error("state store record {table}/{key} is invalid: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Primary key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// An insert found the key taken.
    #[error("{table}/{key} already exists")]
    Exists {
        /// Table.
        table: &'static str,
        /// Primary key.
        key: String,
    },
}

impl Coded for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable { .. } => ErrorCode::StoreUnavailable,
            StoreError::Corrupt { .. } => ErrorCode::StoreCorrupt,
            StoreError::Exists { table: "vms", .. } => ErrorCode::VmExists,
            StoreError::Exists {
                table: "snapshots", ..
            } => ErrorCode::SnapshotExists,
            StoreError::Exists {
                table: "volumes", ..
            } => ErrorCode::DiskExists,
            // Generated ids (operations, tokens): a clash is a bug or a replay, not user input.
            StoreError::Exists { .. } => ErrorCode::InvalidArgument,
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A running engine process, identified so that a recycled PID is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

/// Everything Hangar knows about one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    /// Its normalised spec.
    pub spec: VmSpec,
    /// The spec's canonical hash.
    pub spec_hash: String,
    /// The plan it runs, as JSON (validated by the engine adapter that wrote it).
    pub plan_json: String,
    /// Current state.
    pub state: VmState,
    /// Why it is in that state, when not obvious.
    pub reason: Option<String>,
    /// Its runtime directory.
    pub runtime_dir: String,
    /// The engine process, while there is one.
    pub process: Option<ProcessIdentity>,
    /// Milliseconds from spawn to guest-ready of the last boot.
    pub boot_ms: Option<u64>,
    /// The memory snapshot a `sleeping` VM will wake from.
    pub sleeping_on: Option<SnapshotId>,
    /// Length of the console log when the current QEMU was spawned: its boot's output starts
    /// there (lets a restarted daemon finish a boot whose waiter died).
    pub boot_log_offset: Option<u64>,
    /// When it was defined.
    pub created_at: Timestamp,
    /// When the record last changed.
    pub updated_at: Timestamp,
}

impl VmRecord {
    /// The VM's name.
    pub fn name(&self) -> &VmName {
        &self.spec.name
    }
}

/// A memory snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Its id.
    pub id: SnapshotId,
    /// The VM it was taken from.
    pub vm: VmName,
    /// The state file.
    pub path: String,
    /// spec_hash of the VM when taken.
    pub spec_hash: String,
    /// Hash of that spec without name, tenant and pool: VMs with the same clone hash can be
    /// restored from it. `None` for snapshots written before schema version 4.
    pub clone_hash: Option<String>,
    /// The source's writable disks, copied when the snapshot was taken.
    pub disks: Vec<FrozenDisk>,
    /// Engine version that wrote it.
    pub engine_version: String,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// When it was taken.
    pub created_at: Timestamp,
    /// The tenant of the VM it was taken from (its owner).
    pub tenant: Option<TenantId>,
    /// The pool of the VM it was taken from.
    pub pool: Option<PoolId>,
}

/// A writable disk of a snapshot's source VM, frozen at save time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenDisk {
    /// The disk's name in the spec (the same in every clone).
    pub disk: String,
    /// The frozen copy.
    pub path: String,
}

/// A disk volume managed through the `Disks` contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Its id.
    pub id: VolumeId,
    /// The image file.
    pub path: String,
    /// Virtual size.
    pub size_mib: u64,
    /// Format.
    pub format: DiskFormat,
    /// The volume it overlays.
    pub base: Option<VolumeId>,
    /// Internal disk snapshots.
    pub snapshots: Vec<SnapshotId>,
}

/// One entry of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEvent {
    /// A lifecycle transition.
    Transition(TransitionEvent),
    /// Something the engine observed that is not a state change.
    Engine {
        /// The VM concerned.
        vm: VmName,
        /// When.
        at: Timestamp,
        /// What happened, in the engine's words.
        message: String,
    },
}

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Accepted and being carried out.
    Running,
    /// Done; the result is recorded.
    Succeeded,
    /// Ended with an error; the error is recorded and nothing was left half done.
    Failed,
    /// Its owner died before it finished and the recovery undid or abandoned it.
    RolledBack,
}

impl OperationStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Running => "running",
            OperationStatus::Succeeded => "succeeded",
            OperationStatus::Failed => "failed",
            OperationStatus::RolledBack => "rolled_back",
        }
    }

    /// Whether it will change no more.
    pub fn is_terminal(self) -> bool {
        self != OperationStatus::Running
    }
}

/// A journaled operation. The store keeps its request, result and error as JSON; their
/// meaning belongs to `hangar-control`, the store only checks they are JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// Id.
    pub id: OperationId,
    /// What it does (`start`, `stop`, …).
    pub kind: String,
    /// What it acts on (a VM name, a snapshot id).
    pub target: String,
    /// The request, as JSON.
    pub request_json: String,
    /// Status.
    pub status: OperationStatus,
    /// The phase it last reported.
    pub progress: Option<String>,
    /// The result, as JSON, once succeeded.
    pub result_json: Option<String>,
    /// The error, as JSON, once failed or rolled back.
    pub error_json: Option<String>,
    /// The process carrying it out; recovery only touches operations whose owner is gone.
    pub owner: Option<ProcessIdentity>,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
}

/// An API token: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id (appears in the audit log).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// What it may reach.
    pub scope: Scope,
    /// Created.
    pub created_at: Timestamp,
}

/// The state store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn corrupt(table: &'static str, key: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

fn parse_state(table: &'static str, key: &str, s: &str) -> Result<VmState> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| corrupt(table, key, format!("unknown state {s:?}")))
}

fn state_str(s: VmState) -> &'static str {
    s.as_str()
}

fn cause_str(c: Cause) -> &'static str {
    match c {
        Cause::User => "user",
        Cause::Reconciler => "reconciler",
        Cause::Engine => "engine",
        Cause::Fault => "fault",
    }
}

impl Store {
    /// Opens (creating if needed) `state.db` in `home`.
    pub fn open_in(home: &Path) -> Result<Store> {
        home::prepare_home(home)?;
        for file in ["state.db", "state.db-wal", "state.db-shm"] {
            home::no_symlink(&home.join(file))?;
        }
        Self::open(&home.join("state.db"))
    }

    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store> {
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // Processes opening a brand-new store together can get SQLITE_BUSY from the switch to
        // WAL without the busy handler being consulted: retry the whole setup, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut attempt = 0u32;
        let (conn, version) = loop {
            match Self::init(path) {
                Ok(opened) => break opened,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20)) * 5));
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::Unavailable {
                path: path.display().to_string(),
                message: format!(
                    "schema version {version} is newer than this Hangar ({SCHEMA_VERSION})"
                ),
            });
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens the connection, sets it up and migrates a new database (exactly once, even with
    /// several processes racing: the version is re-checked under the write lock). Returns the
    /// schema version found.
    fn init(path: &Path) -> rusqlite::Result<(Connection, i64)> {
        let conn = Connection::open(path)?;
        // Private whatever the umask: the state directory is open to the QEMU group. SQLite
        // gives its -wal and -shm files the database's mode, so this comes before WAL.
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            if let Ok(meta) = std::fs::symlink_metadata(&file) {
                use std::os::unix::fs::PermissionsExt;
                if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version >= SCHEMA_VERSION {
            return Ok((conn, version));
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let migrated = conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .and_then(|found| {
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                    conn.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))?;
                }
                Ok(())
            })
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = migrated {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok((conn, SCHEMA_VERSION))
    }

    /// Every row `sql` returns, each read by `read` and validated (a row that fails validation
    /// fails the whole read, naming itself).
    fn all<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        read: impl FnMut(&Row<'_>) -> rusqlite::Result<Result<T>>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(params, read).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(e))??);
        }
        Ok(out)
    }

    /// The outcome of an INSERT: a taken primary key is `Exists`, not a store failure.
    fn inserted(
        &self,
        r: rusqlite::Result<usize>,
        table: &'static str,
        key: impl ToString,
    ) -> Result<()> {
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists {
                    table,
                    key: key.to_string(),
                })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Unavailable {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Inserts a new VM; `Exists` if the name is taken.
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<()> {
        let spec_json = serde_json::to_string(&vm.spec).expect("specs serialise");
        let (pid, start) = split_process(vm.process);
        let r = self.conn.execute(
            "INSERT INTO vms (name, spec_json, spec_hash, plan_json, state, reason, runtime_dir, pid, pid_start_time, boot_ms, sleeping_on, boot_log_offset, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![vm.name().as_str(), spec_json, vm.spec_hash, vm.plan_json, state_str(vm.state), vm.reason,
                    vm.runtime_dir, pid, start, vm.boot_ms.map(|b| b as i64), vm.sleeping_on.as_ref().map(|s| s.as_str()),
                    vm.boot_log_offset.map(|o| o as i64), vm.created_at.0 as i64, vm.updated_at.0 as i64],
        );
        self.inserted(r, "vms", vm.name().to_string())
    }

    /// Replaces a VM's record (matched by name).
    pub fn update_vm(&self, vm: &VmRecord) -> Result<()> {
        let spec_json = serde_json::to_string(&vm.spec).expect("specs serialise");
        let (pid, start) = split_process(vm.process);
        self.conn
            .execute(
                "UPDATE vms SET spec_json=?2, spec_hash=?3, plan_json=?4, state=?5, reason=?6, runtime_dir=?7,
                 pid=?8, pid_start_time=?9, boot_ms=?10, sleeping_on=?11, boot_log_offset=?12, updated_at=?13 WHERE name=?1",
                params![vm.name().as_str(), spec_json, vm.spec_hash, vm.plan_json, state_str(vm.state), vm.reason,
                        vm.runtime_dir, pid, start, vm.boot_ms.map(|b| b as i64), vm.sleeping_on.as_ref().map(|s| s.as_str()),
                        vm.boot_log_offset.map(|o| o as i64), vm.updated_at.0 as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn vm_from_row(row: &Row<'_>) -> rusqlite::Result<Result<VmRecord>> {
        let name: String = row.get("name")?;
        let spec_json: String = row.get("spec_json")?;
        let state: String = row.get("state")?;
        let pid: Option<i64> = row.get("pid")?;
        let start: Option<i64> = row.get("pid_start_time")?;
        let boot_ms: Option<i64> = row.get("boot_ms")?;
        let sleeping_on: Option<String> = row.get("sleeping_on")?;
        let boot_log_offset: Option<i64> = row.get("boot_log_offset")?;
        let record = (|| {
            let spec: VmSpec = serde_json::from_str(&spec_json)
                .map_err(|e| corrupt("vms", &name, format!("spec: {e}")))?;
            if spec.name.as_str() != name {
                return Err(corrupt(
                    "vms",
                    &name,
                    format!("spec names a different VM ({})", spec.name),
                ));
            }
            let process = match (pid, start) {
                (Some(pid), Some(start)) if pid > 0 && start >= 0 => Some(ProcessIdentity {
                    pid: pid as u32,
                    start_time: start as u64,
                }),
                (None, None) => None,
                other => {
                    return Err(corrupt(
                        "vms",
                        &name,
                        format!("bad process identity {other:?}"),
                    ))
                }
            };
            Ok(VmRecord {
                spec,
                spec_hash: row.get("spec_hash").map_err(|e| corrupt("vms", &name, e))?,
                plan_json: row.get("plan_json").map_err(|e| corrupt("vms", &name, e))?,
                state: parse_state("vms", &name, &state)?,
                reason: row.get("reason").map_err(|e| corrupt("vms", &name, e))?,
                runtime_dir: row
                    .get("runtime_dir")
                    .map_err(|e| corrupt("vms", &name, e))?,
                process,
                boot_ms: boot_ms.map(|b| b.max(0) as u64),
                sleeping_on: sleeping_on
                    .map(SnapshotId::new)
                    .transpose()
                    .map_err(|e| corrupt("vms", &name, e))?,
                boot_log_offset: boot_log_offset.map(|o| o.max(0) as u64),
                created_at: Timestamp(
                    row.get::<_, i64>("created_at")
                        .map_err(|e| corrupt("vms", &name, e))?
                        .max(0) as u64,
                ),
                updated_at: Timestamp(
                    row.get::<_, i64>("updated_at")
                        .map_err(|e| corrupt("vms", &name, e))?
                        .max(0) as u64,
                ),
            })
        })();
        Ok(record)
    }

    /// One VM, if recorded.
    pub fn get_vm(&self, name: &VmName) -> Result<Option<VmRecord>> {
        self.conn
            .query_row(
                "SELECT * FROM vms WHERE name = ?1",
                [name.as_str()],
                Self::vm_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    /// Every VM, sorted by name.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        self.all("SELECT * FROM vms ORDER BY name", [], Self::vm_from_row)
    }

    /// Removes a VM's record. Its transitions stay: they are the append-only event stream (a
    /// later VM of the same name starts a new history with a move from "(new)"). Removing a
    /// missing VM is not an error.
    pub fn delete_vm(&self, name: &VmName) -> Result<()> {
        self.conn
            .execute("DELETE FROM vms WHERE name = ?1", [name.as_str()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Updates a VM and appends a transition in one transaction.
    pub fn commit_transition(
        &self,
        vm: &VmRecord,
        event: &TransitionEvent,
        insert: bool,
    ) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        let result = if insert {
            self.insert_vm(vm)
        } else {
            self.update_vm(vm)
        }
        .and_then(|_| self.record_transition(event));
        match result {
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
            read_event_row,
        )
    }

    /// Appends an engine event (something the engine observed that is not a state change) to
    /// the event stream; it never appears in a VM's history.
    pub fn record_engine_event(
        &self,
        vm: &VmName,
        state: VmState,
        at: Timestamp,
        message: &str,
    ) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO transitions (vm, from_state, to_state, at, cause, message) VALUES (?1, ?2, ?2, ?3, 'engine', ?4)",
                params![vm.as_str(), state_str(state), at.0 as i64, message],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records an event about something other than one VM (a reconcile pass): an engine event
    /// whose subject is `subject` (for example `fleet`), so it reaches every event reader.
    pub fn record_note(&self, subject: &VmName, at: Timestamp, message: &str) -> Result<()> {
        self.record_engine_event(subject, VmState::Defined, at, message)
    }

    /// Appends a transition to a VM's history.
    pub fn record_transition(&self, e: &TransitionEvent) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO transitions (vm, from_state, to_state, at, cause, operation) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![e.vm.as_str(), e.from.map(state_str), state_str(e.to), e.at.0 as i64, cause_str(e.cause),
                        e.operation.as_ref().map(|o| o.as_str().to_string())],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A VM's history, oldest first.
    pub fn transitions(&self, vm: &VmName) -> Result<Vec<TransitionEvent>> {
        self.all(
            &format!("{EVENT_COLUMNS} WHERE vm = ?1 AND message IS NULL ORDER BY seq"),
            [vm.as_str()],
            |r| {
                read_event_row(r).map(|event| match event? {
                    (_, StoredEvent::Transition(t)) => Ok(t),
                    (seq, StoredEvent::Engine { .. }) => Err(corrupt(
                        "transitions",
                        &seq.to_string(),
                        "an engine event where a transition was expected",
                    )),
                })
            },
        )
    }

    /// Records a snapshot.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO snapshots (id, vm, path, spec_hash, engine_version, size_bytes, created_at, clone_hash, disks_json, tenant, pool) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![s.id.as_str(), s.vm.as_str(), s.path, s.spec_hash, s.engine_version, s.size_bytes as i64, s.created_at.0 as i64, s.clone_hash, serde_json::to_string(&s.disks).expect("disks serialise"),
                    s.tenant.as_ref().map(|t| t.as_str().to_string()), s.pool.as_ref().map(|p| p.as_str().to_string())],
        );
        self.inserted(r, "snapshots", s.id.to_string())
    }

    fn snapshot_from_row(row: &Row<'_>) -> rusqlite::Result<Result<SnapshotRecord>> {
        let id: String = row.get("id")?;
        let vm: String = row.get("vm")?;
        let path: String = row.get("path")?;
        let spec_hash: String = row.get("spec_hash")?;
        let engine_version: String = row.get("engine_version")?;
        let size: i64 = row.get("size_bytes")?;
        let created: i64 = row.get("created_at")?;
        let clone_hash: Option<String> = row.get("clone_hash")?;
        let disks: Option<String> = row.get("disks_json")?;
        let tenant: Option<String> = row.get("tenant")?;
        let pool: Option<String> = row.get("pool")?;
        Ok((|| {
            Ok(SnapshotRecord {
                tenant: tenant
                    .map(TenantId::new)
                    .transpose()
                    .map_err(|e| corrupt("snapshots", &id, e))?,
                pool: pool
                    .map(PoolId::new)
                    .transpose()
                    .map_err(|e| corrupt("snapshots", &id, e))?,
                clone_hash,
                disks: match disks {
                    Some(json) => {
                        serde_json::from_str(&json).map_err(|e| corrupt("snapshots", &id, e))?
                    }
                    None => Vec::new(),
                },
                id: SnapshotId::new(id.clone()).map_err(|e| corrupt("snapshots", &id, e))?,
                vm: VmName::new(vm).map_err(|e| corrupt("snapshots", &id, e))?,
                path,
                spec_hash,
                engine_version,
                size_bytes: u64::try_from(size).map_err(|e| corrupt("snapshots", &id, e))?,
                created_at: Timestamp(created.max(0) as u64),
            })
        })())
    }

    /// One snapshot.
    pub fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.conn
            .query_row(
                "SELECT * FROM snapshots WHERE id = ?1",
                [id.as_str()],
                Self::snapshot_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    /// Snapshots, optionally of one VM, sorted by id.
    pub fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotRecord>> {
        self.all(
            "SELECT * FROM snapshots WHERE (?1 IS NULL OR vm = ?1) ORDER BY id",
            [vm.map(|v| v.as_str())],
            Self::snapshot_from_row,
        )
    }

    /// Removes a snapshot record.
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.conn
            .execute("DELETE FROM snapshots WHERE id = ?1", [id.as_str()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records a volume.
    pub fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO volumes (id, path, size_mib, format, base, snapshots_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.id.as_str(), v.path, v.size_mib as i64, v.format.as_str(), v.base.as_ref().map(|b| b.as_str()),
                    serde_json::to_string(&v.snapshots).expect("ids serialise")],
        );
        self.inserted(r, "volumes", v.id.to_string())
    }

    /// Replaces a volume's record.
    pub fn update_volume(&self, v: &VolumeRecord) -> Result<()> {
        self.conn
            .execute(
                "UPDATE volumes SET path=?2, size_mib=?3, format=?4, base=?5, snapshots_json=?6 WHERE id=?1",
                params![v.id.as_str(), v.path, v.size_mib as i64, v.format.as_str(), v.base.as_ref().map(|b| b.as_str()),
                        serde_json::to_string(&v.snapshots).expect("ids serialise")],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn volume_from_row(row: &Row<'_>) -> rusqlite::Result<Result<VolumeRecord>> {
        let id: String = row.get("id")?;
        let path: String = row.get("path")?;
        let size: i64 = row.get("size_mib")?;
        let format: String = row.get("format")?;
        let base: Option<String> = row.get("base")?;
        let snaps: String = row.get("snapshots_json")?;
        Ok((|| {
            Ok(VolumeRecord {
                id: VolumeId::new(id.clone()).map_err(|e| corrupt("volumes", &id, e))?,
                path,
                size_mib: u64::try_from(size).map_err(|e| corrupt("volumes", &id, e))?,
                format: match format.as_str() {
                    "qcow2" => DiskFormat::Qcow2,
                    "raw" => DiskFormat::Raw,
                    other => {
                        return Err(corrupt("volumes", &id, format!("unknown format {other:?}")))
                    }
                },
                base: base
                    .map(VolumeId::new)
                    .transpose()
                    .map_err(|e| corrupt("volumes", &id, e))?,
                snapshots: serde_json::from_str(&snaps).map_err(|e| corrupt("volumes", &id, e))?,
            })
        })())
    }

    /// One volume.
    pub fn get_volume(&self, id: &VolumeId) -> Result<Option<VolumeRecord>> {
        self.conn
            .query_row(
                "SELECT * FROM volumes WHERE id = ?1",
                [id.as_str()],
                Self::volume_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    /// Every volume, sorted by id.
    pub fn list_volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.all(
            "SELECT * FROM volumes ORDER BY id",
            [],
            Self::volume_from_row,
        )
    }

    /// Removes a volume record.
    pub fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        self.conn
            .execute("DELETE FROM volumes WHERE id = ?1", [id.as_str()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Journals a new operation.
    pub fn insert_operation(&self, op: &OperationRecord) -> Result<()> {
        let (pid, start) = split_process(op.owner);
        let r = self.conn.execute(
            "INSERT INTO operations (id, kind, target, request_json, status, progress, result_json, error_json, owner_pid, owner_start_time, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![op.id.as_str(), op.kind, op.target, op.request_json, op.status.as_str(), op.progress, op.result_json, op.error_json, pid, start, op.created_at.0 as i64, op.updated_at.0 as i64],
        );
        self.inserted(r, "operations", op.id.to_string())
    }

    /// Records an operation's progress, status, result or error.
    pub fn update_operation(&self, op: &OperationRecord) -> Result<()> {
        let (pid, start) = split_process(op.owner);
        self.conn
            .execute(
                "UPDATE operations SET status = ?2, progress = ?3, result_json = ?4, error_json = ?5, owner_pid = ?6, owner_start_time = ?7, updated_at = ?8 WHERE id = ?1",
                params![op.id.as_str(), op.status.as_str(), op.progress, op.result_json, op.error_json, pid, start, op.updated_at.0 as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// One operation.
    pub fn get_operation(&self, id: &OperationId) -> Result<Option<OperationRecord>> {
        self.conn
            .query_row(
                &format!("{OPERATION_COLUMNS} WHERE id = ?1"),
                [id.as_str()],
                read_operation_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .map(decode_operation)
            .transpose()
    }

    /// The newest `limit` operations, newest first; only running ones with `running_only`.
    pub fn list_operations(
        &self,
        running_only: bool,
        limit: usize,
    ) -> Result<Vec<OperationRecord>> {
        let filter = if running_only {
            "WHERE status = 'running'"
        } else {
            ""
        };
        self.all(
            &format!("{OPERATION_COLUMNS} {filter} ORDER BY created_at DESC, id DESC LIMIT ?1"),
            [limit as i64],
            |r| read_operation_row(r).map(decode_operation),
        )
    }

    /// Stores a new token.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO tokens (id, name, sha256, created_at, scope) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                t.id,
                t.name,
                t.sha256,
                t.created_at.0 as i64,
                t.scope.to_string()
            ],
        );
        self.inserted(r, "tokens", t.id.clone())
    }

    /// The token whose secret hashes to `sha256`, if any.
    pub fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>> {
        self.conn
            .query_row(
                "SELECT id, name, sha256, created_at, scope FROM tokens WHERE sha256 = ?1",
                [sha256],
                read_token_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .transpose()
    }

    /// Every token, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.all(
            "SELECT id, name, sha256, created_at, scope FROM tokens ORDER BY created_at, id",
            [],
            read_token_row,
        )
    }

    /// Revokes a token; false if there was none with that id.
    pub fn delete_token(&self, id: &str) -> Result<bool> {
        let n = self
            .conn
            .execute("DELETE FROM tokens WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Replaces the fleet registry (a JSON document; see `hangar-fleet`'s `Registry`).
    pub fn save_fleet(&self, registry_json: &str, at: Timestamp) -> Result<()> {
        serde_json::from_str::<serde_json::Value>(registry_json)
            .map_err(|e| corrupt("fleet", "1", format!("refusing to store non-JSON: {e}")))?;
        self.conn
            .execute(
                "INSERT INTO fleet (id, registry_json, updated_at) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET registry_json = excluded.registry_json, updated_at = excluded.updated_at",
                params![registry_json, at.0 as i64],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The fleet registry, if one was saved; validated as JSON.
    pub fn load_fleet(&self) -> Result<Option<String>> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT registry_json FROM fleet WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(j) = &json {
            serde_json::from_str::<serde_json::Value>(j)
                .map_err(|e| corrupt("fleet", "1", format!("registry is not JSON: {e}")))?;
        }
        Ok(json)
    }

    /// Runs raw SQL (tests use it to corrupt rows on purpose).
    #[doc(hidden)]
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }
}

const EVENT_COLUMNS: &str =
    "SELECT seq, vm, from_state, to_state, at, cause, operation, message FROM transitions";

/// One row of the event stream: a transition, or an engine event (a row with a `message`).
fn read_event_row(r: &Row<'_>) -> rusqlite::Result<Result<(u64, StoredEvent)>> {
    let seq: i64 = r.get(0)?;
    let message: Option<String> = r.get(7)?;
    let transition = decode_transition(
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    );
    Ok(transition.map(|t| {
        let event = match message {
            Some(message) => StoredEvent::Engine {
                vm: t.vm,
                at: t.at,
                message,
            },
            None => StoredEvent::Transition(t),
        };
        (seq.max(0) as u64, event)
    }))
}

const OPERATION_COLUMNS: &str = "SELECT id, kind, target, request_json, status, progress, result_json, error_json, owner_pid, owner_start_time, created_at, updated_at FROM operations";

type OperationRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    i64,
    i64,
);

fn read_operation_row(r: &Row<'_>) -> rusqlite::Result<OperationRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
    ))
}

fn decode_operation(row: OperationRow) -> Result<OperationRecord> {
    let (
        id,
        kind,
        target,
        request_json,
        status,
        progress,
        result_json,
        error_json,
        pid,
        start,
        created,
        updated,
    ) = row;
    let bad = |detail: String| corrupt("operations", &id, detail);
    let status: OperationStatus = serde_json::from_value(serde_json::Value::String(status.clone()))
        .map_err(|_| bad(format!("unknown status {status:?}")))?;
    for (field, json) in [
        ("request_json", Some(&request_json)),
        ("result_json", result_json.as_ref()),
        ("error_json", error_json.as_ref()),
    ] {
        if let Some(json) = json {
            serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| bad(format!("{field} is not JSON: {e}")))?;
        }
    }
    let owner = match (pid, start) {
        (Some(pid), Some(start)) => Some(ProcessIdentity {
            pid: u32::try_from(pid).map_err(|_| bad(format!("owner pid {pid}")))?,
            start_time: start.max(0) as u64,
        }),
        _ => None,
    };
    Ok(OperationRecord {
        id: hangar_core::ids::OperationId::new(id.clone()).map_err(|e| bad(e.to_string()))?,
        kind,
        target,
        request_json,
        status,
        progress,
        result_json,
        error_json,
        owner,
        created_at: Timestamp(created.max(0) as u64),
        updated_at: Timestamp(updated.max(0) as u64),
    })
}

fn read_token_row(r: &Row<'_>) -> rusqlite::Result<Result<TokenRecord>> {
    let id: String = r.get(0)?;
    let scope: String = r.get(4)?;
    let created: i64 = r.get(3)?;
    let (name, sha256) = (r.get(1)?, r.get(2)?);
    Ok((|| {
        Ok(TokenRecord {
            scope: scope.parse().map_err(|e| corrupt("tokens", &id, e))?,
            created_at: Timestamp(u64::try_from(created).map_err(|e| corrupt("tokens", &id, e))?),
            name,
            sha256,
            id,
        })
    })())
}

fn split_process(p: Option<ProcessIdentity>) -> (Option<i64>, Option<i64>) {
    match p {
        Some(p) => (Some(i64::from(p.pid)), Some(p.start_time as i64)),
        None => (None, None),
    }
}

fn decode_transition(
    name: String,
    from: Option<String>,
    to: String,
    at: i64,
    cause: String,
    op: Option<String>,
) -> Result<TransitionEvent> {
    let key = format!("{name}@{at}");
    let cause = match cause.as_str() {
        "user" => Cause::User,
        "reconciler" => Cause::Reconciler,
        "engine" => Cause::Engine,
        "fault" => Cause::Fault,
        other => {
            return Err(corrupt(
                "transitions",
                &key,
                format!("unknown cause {other:?}"),
            ))
        }
    };
    Ok(TransitionEvent {
        vm: VmName::new(name).map_err(|e| corrupt("transitions", &key, e))?,
        from: from
            .map(|f| parse_state("transitions", &key, &f))
            .transpose()?,
        to: parse_state("transitions", &key, &to)?,
        at: Timestamp(at.max(0) as u64),
        cause,
        operation: op
            .map(hangar_core::ids::OperationId::new)
            .transpose()
            .map_err(|e| corrupt("transitions", &key, e))?,
    })
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn a_version_1_store_migrates_in_place_keeping_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{MIGRATION_1} PRAGMA user_version = 1;"))
                .unwrap();
            conn.execute(
                "INSERT INTO transitions (vm, from_state, to_state, at, cause) VALUES ('old', NULL, 'defined', 5, 'user')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let events = store.events_since(0, 10).unwrap();
        assert!(
            matches!(&events[..], [(1, StoredEvent::Transition(t))] if t.vm.as_str() == "old"),
            "{events:?}"
        );
        assert!(store.list_operations(false, 10).unwrap().is_empty());
        // Engine events join the stream but never a VM's history.
        let old = VmName::new("old").unwrap();
        store
            .record_engine_event(&old, VmState::Defined, Timestamp(6), "noticed")
            .unwrap();
        assert_eq!(store.events_since(1, 10).unwrap().len(), 1);
        assert_eq!(store.transitions(&old).unwrap().len(), 1);
        // Version 3: the fleet registry round-trips, and a damaged one is refused, not used.
        assert_eq!(store.load_fleet().unwrap(), None);
        store.save_fleet(r#"{"pools":[]}"#, Timestamp(7)).unwrap();
        store.save_fleet(r#"{"pools":[1]}"#, Timestamp(8)).unwrap();
        assert_eq!(
            store.load_fleet().unwrap().as_deref(),
            Some(r#"{"pools":[1]}"#)
        );
        assert!(store.save_fleet("{not json", Timestamp(9)).is_err());
        store
            .execute_raw("UPDATE fleet SET registry_json = '{broken' WHERE id = 1")
            .unwrap();
        assert!(matches!(
            store.load_fleet(),
            Err(StoreError::Corrupt { table: "fleet", .. })
        ));
        drop(store);
        // Opening again migrates nothing.
        Store::open(&path).unwrap();
    }

    #[test]
    fn tokens_made_before_scopes_become_admin_and_a_bad_scope_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..4].iter().enumerate() {
                conn.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO tokens (id, name, sha256, created_at) VALUES ('tok-1', 'ci', 'abc', 5)",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let token = store.token_by_hash("abc").unwrap().unwrap();
        assert_eq!(token.scope, Scope::Admin);
        store
            .execute_raw("UPDATE tokens SET scope = 'tenant:acme:god' WHERE id = 'tok-1'")
            .unwrap();
        assert!(matches!(
            store.token_by_hash("abc"),
            Err(StoreError::Corrupt {
                table: "tokens",
                ..
            })
        ));
    }
}

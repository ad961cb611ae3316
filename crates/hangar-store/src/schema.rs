//! The database file and its schema: opening `state.db`, and the migrations that take any
//! older schema to the current one, exactly once even when several processes open a new store
//! together.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::error::{corrupt, Result, StoreError};
use crate::home;
use crate::store::Store;

/// Current schema version (SQLite `user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 7;

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

/// Version 6: networks (a subnet behind one host bridge) and the address leases of the NICs on
/// them. An address is leased once per network (the primary key), a NIC holds one lease.
const MIGRATION_6: &str = "
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    tenant TEXT,
    subnet TEXT NOT NULL,
    nat INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE leases (
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    vm TEXT NOT NULL,
    nic TEXT NOT NULL,
    mac TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (network, address),
    UNIQUE (vm, nic)
);
";

/// Version 7: how a snapshot stores guest RAM (`stream`, or `mapped`: a RAM file beside a
/// device-state stream). Older rows are `stream` (NULL).
const MIGRATION_7: &str = "
ALTER TABLE snapshots ADD COLUMN layout TEXT;
ALTER TABLE snapshots ADD COLUMN ram_path TEXT;
";

/// Every migration, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 7] =
    [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5, MIGRATION_6, MIGRATION_7];

// Each migration moves the version by one.
const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// Why setting up the connection failed.
enum InitError {
    /// SQLite said no.
    Sqlite(rusqlite::Error),
    /// The database records a negative schema version.
    NegativeVersion(i64),
}

impl From<rusqlite::Error> for InitError {
    fn from(e: rusqlite::Error) -> Self {
        InitError::Sqlite(e)
    }
}

/// The schema version `conn`'s database records (`user_version`, 0 for a new file).
fn user_version(conn: &Connection) -> std::result::Result<u32, InitError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    u32::try_from(version).map_err(|_| InitError::NegativeVersion(version))
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
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempt = 0u32;
        let (conn, version) = loop {
            match Self::init(path) {
                Ok(opened) => break opened,
                Err(InitError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(20)) * 5));
                }
                Err(InitError::Sqlite(e)) => return Err(unavailable(e)),
                Err(InitError::NegativeVersion(version)) => {
                    return Err(corrupt(
                        "schema",
                        "user_version",
                        format!("{}: schema version {version} is negative", path.display()),
                    ))
                }
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
        Ok(Store { conn, path: path.to_path_buf() })
    }

    /// Opens the connection, sets it up and migrates a new database (exactly once, even with
    /// several processes racing: the version is re-checked under the write lock). Returns the
    /// schema version found.
    fn init(path: &Path) -> std::result::Result<(Connection, i64), InitError> {
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
        let version = i64::from(user_version(&conn)?);
        if version >= SCHEMA_VERSION {
            return Ok((conn, version));
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let migrated = user_version(&conn)
            .and_then(|found| {
                for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
                    conn.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1))?;
                }
                Ok(())
            })
            .and_then(|()| conn.execute_batch("COMMIT").map_err(InitError::from));
        if let Err(e) = migrated {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        Ok((conn, SCHEMA_VERSION))
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;
    use crate::StoredEvent;
    use hangar_core::access::Scope;
    use hangar_core::clock::Timestamp;
    use hangar_core::error::{Coded, ErrorCode};
    use hangar_core::ids::VmName;
    use hangar_core::lifecycle::VmState;

    #[test]
    fn a_version_1_store_migrates_in_place_keeping_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!("{MIGRATION_1} PRAGMA user_version = 1;")).unwrap();
            conn.execute(
                "INSERT INTO transitions (vm, from_state, to_state, at, cause) VALUES ('old', NULL, 'defined', 5, 'user')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let version: i64 =
            store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let events = store.events_since(0, 10).unwrap();
        assert!(
            matches!(&events[..], [(1, StoredEvent::Transition(t))] if t.vm.as_str() == "old"),
            "{events:?}"
        );
        assert!(store.list_operations(false, 10).unwrap().is_empty());
        // Engine events join the stream but never a VM's history.
        let old = VmName::new("old").unwrap();
        store.record_engine_event(&old, VmState::Defined, Timestamp(6), "noticed").unwrap();
        assert_eq!(store.events_since(1, 10).unwrap().len(), 1);
        assert_eq!(store.transitions(&old).unwrap().len(), 1);
        // Version 3: the fleet registry round-trips, and a damaged one is refused, not used.
        assert_eq!(store.load_fleet().unwrap(), None);
        store.save_fleet(r#"{"pools":[]}"#, Timestamp(7)).unwrap();
        store.save_fleet(r#"{"pools":[1]}"#, Timestamp(8)).unwrap();
        assert_eq!(store.load_fleet().unwrap().as_deref(), Some(r#"{"pools":[1]}"#));
        assert!(store.save_fleet("{not json", Timestamp(9)).is_err());
        store.execute_raw("UPDATE fleet SET registry_json = '{broken' WHERE id = 1").unwrap();
        assert!(matches!(store.load_fleet(), Err(StoreError::Corrupt { table: "fleet", .. })));
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
                conn.execute_batch(&format!("{sql} PRAGMA user_version = {};", i + 1)).unwrap();
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
            Err(StoreError::Corrupt { table: "tokens", .. })
        ));
    }

    #[test]
    fn a_negative_schema_version_is_corrupt_not_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Store::open(&path).unwrap().execute_raw("PRAGMA user_version = -1").unwrap();
        let err = Store::open(&path).unwrap_err();
        assert_eq!(err.code(), ErrorCode::StoreCorrupt);
        assert!(
            matches!(&err, StoreError::Corrupt { table: "schema", key, .. } if key == "user_version"),
            "{err}"
        );
        assert!(err.to_string().contains("-1 is negative"), "{err}");
    }
}

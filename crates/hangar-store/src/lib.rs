//! Hangar's embedded state store.
//!
//! One SQLite database (`$HANGAR_HOME/state.db`, WAL mode) records every VM's spec, plan, state,
//! process identity and runtime paths, the full transition history, memory snapshots and disk
//! volumes. Every row read back is validated (states parse, JSON deserialises, names are valid,
//! counts and times are not negative); a row that fails is reported as [`StoreError::Corrupt`]
//! naming the table, the key and, where one is at fault, the column, never used.
//!
//! Concurrent `hangar` processes are serialised per VM by [`VmLock`] (an `flock` on
//! `$HANGAR_HOME/locks/<name>.lock`); SQLite's own locking (with a busy timeout) covers the rest.
//!
//! The code is laid out by concern: [`Store`] and what its tables share (`store`), the schema
//! and its migrations (`schema`), the record types (`records`), reading a row back (`row`), and
//! one module per table (`vms` with the transitions and events, `snapshots`, `volumes`,
//! `operations`, `tokens`, `fleet`).

mod error;
mod fleet;
pub mod home;
mod lock;
mod networks;
mod operations;
mod records;
mod row;
mod schema;
mod snapshots;
mod store;
mod tokens;
mod vms;
mod volumes;

pub use error::{Result, StoreError};
pub use lock::{SharedLock, VmLock};
pub use networks::{Leased, NetworkCreated};
pub use records::{
    FrozenDisk, OperationRecord, OperationStatus, ProcessIdentity, SnapshotRecord, StoredEvent,
    TokenRecord, VmRecord, VolumeRecord,
};
pub use store::Store;

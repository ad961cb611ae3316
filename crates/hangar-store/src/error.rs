//! What can go wrong in the store, and the error codes it maps to.

use hangar_core::error::{Coded, ErrorCode};

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
        /// The table the row is in (`vms`, `snapshots`, …; `files` for a path under the state
        /// directory, `schema` for the database's schema version).
        table: &'static str,
        /// The row's primary key (a VM name, an id, a sequence number), or the path or setting.
        key: String,
        /// What is wrong, naming the column when one column is at fault.
        detail: String,
    },
    /// An insert found the key taken.
    #[error("{table}/{key} already exists")]
    Exists {
        /// The table inserted into.
        table: &'static str,
        /// The primary key that is taken.
        key: String,
    },
}

impl Coded for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable { .. } => ErrorCode::StoreUnavailable,
            StoreError::Corrupt { .. } => ErrorCode::StoreCorrupt,
            StoreError::Exists { table: "vms", .. } => ErrorCode::VmExists,
            StoreError::Exists { table: "snapshots", .. } => ErrorCode::SnapshotExists,
            StoreError::Exists { table: "volumes", .. } => ErrorCode::DiskExists,
            StoreError::Exists { table: "networks", .. } => ErrorCode::NetworkExists,
            // Generated ids (operations, tokens): a clash is a bug or a replay, not user input.
            StoreError::Exists { .. } => ErrorCode::InvalidArgument,
        }
    }
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A [`StoreError::Corrupt`] for the row `key` of `table`.
pub(crate) fn corrupt(table: &'static str, key: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt { table, key: key.to_string(), detail: detail.to_string() }
}

//! The crate's error type.

use std::path::PathBuf;

use hangar_core::error::{Coded, ErrorCode};

/// Why an audit-log operation failed.
///
/// A *verification* finding (a tampered or torn line) is not an error: [`crate::verify`] returns
/// it inside an `Ok(`[`crate::VerifyReport`]`)`. Errors are for operations that could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened, locked, read, written or synced (`E_IO`).
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The audit log's path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The tail of the log is not a valid entry, so [`crate::AuditLog`] refuses to build on it
    /// (`E_STORE_CORRUPT`). Run [`crate::verify`] for the first bad line.
    #[error("audit log {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The audit log's path.
        path: PathBuf,
        /// What is wrong, one sentence.
        reason: String,
    },
    /// The entry to append is malformed (empty field, bad result code, too long)
    /// (`E_INVALID_ARGUMENT`). Nothing was written.
    #[error("audit entry rejected: {reason}")]
    InvalidEntry {
        /// What is wrong, one sentence.
        reason: String,
    },
}

impl Coded for AuditError {
    fn code(&self) -> ErrorCode {
        match self {
            AuditError::Io { .. } => ErrorCode::Io,
            AuditError::Corrupt { .. } => ErrorCode::StoreCorrupt,
            AuditError::InvalidEntry { .. } => ErrorCode::InvalidArgument,
        }
    }
}

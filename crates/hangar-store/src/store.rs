//! The [`Store`] handle and what every table's code shares: running a statement, telling a
//! taken key from a failure, and reading rows back through each table's `decode`.

use std::path::PathBuf;

use rusqlite::{Connection, Row};

use crate::error::{Result, StoreError};

/// The state store: one connection to `state.db`. Opened by [`Store::open_in`] or
/// [`Store::open`]; each table's methods live in the module named after it.
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// A failure of SQLite itself (not of a row's contents).
    pub(crate) fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Unavailable { path: self.path.display().to_string(), message: e.to_string() }
    }

    /// Runs one statement; returns how many rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: impl rusqlite::Params) -> Result<usize> {
        self.conn.execute(sql, params).map_err(|e| self.err(e))
    }

    /// Runs an INSERT into `table`: a taken primary key is `Exists`, not a store failure.
    pub(crate) fn insert(
        &self, table: &'static str, key: impl ToString, sql: &str, params: impl rusqlite::Params,
    ) -> Result<()> {
        match self.conn.execute(sql, params) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::Exists { table, key: key.to_string() })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// The first row `sql` returns, if any, read by `decode`.
    pub(crate) fn one<T>(
        &self, sql: &str, params: impl rusqlite::Params, decode: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err(e))?;
        match rows.next().map_err(|e| self.err(e))? {
            Some(row) => decode(row).map(Some),
            None => Ok(None),
        }
    }

    /// Every row `sql` returns, each read by `decode` (a row that fails validation fails the
    /// whole read, naming itself).
    pub(crate) fn all<T>(
        &self, sql: &str, params: impl rusqlite::Params, decode: impl Fn(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(decode(row)?);
        }
        Ok(out)
    }

    /// Runs raw SQL (tests use it to corrupt rows on purpose).
    #[doc(hidden)]
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }
}

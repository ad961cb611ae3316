//! Reading a stored row back.
//!
//! Every table has one `decode(row) -> Result<Record>`, which reads its columns through
//! [`Fields`]; [`Store::one`](crate::Store::one) and [`Store::all`](crate::Store::all) run it
//! over a query's rows. `Fields` checks each value as it reads it (its SQLite type, its sign,
//! its syntax, its JSON) and reports a failure as [`StoreError::Corrupt`] naming the table,
//! the row's key and the column: a stored value is never clamped or guessed at.

use std::fmt::Display;
use std::str::FromStr;

use hangar_core::clock::Timestamp;
use rusqlite::types::{FromSql, ValueRef};
use rusqlite::Row;
use serde::de::DeserializeOwned;

use crate::error::{corrupt, Result, StoreError};

/// One row of one table, being read.
pub(crate) struct Fields<'a, 'r> {
    row: &'a Row<'r>,
    table: &'static str,
    key: String,
}

impl<'a, 'r> Fields<'a, 'r> {
    /// Starts reading a row of `table` whose primary key is in `key_column`.
    pub(crate) fn new(row: &'a Row<'r>, table: &'static str, key_column: &str) -> Self {
        // The key only names the row in errors: whatever is there is shown as it is (reading
        // the key column as a value is checked by `decode`).
        let key = match row.get_ref(key_column) {
            Ok(ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
            Ok(ValueRef::Integer(i)) => i.to_string(),
            Ok(ValueRef::Real(r)) => r.to_string(),
            Ok(ValueRef::Blob(b)) => format!("<{} byte blob>", b.len()),
            Ok(ValueRef::Null) => "NULL".to_string(),
            Err(_) => "?".to_string(),
        };
        Fields { row, table, key }
    }

    /// The row as a whole is invalid.
    pub(crate) fn corrupt(&self, detail: impl Display) -> StoreError {
        corrupt(self.table, &self.key, detail)
    }

    /// `column` of this row is invalid.
    pub(crate) fn bad(&self, column: &str, detail: impl Display) -> StoreError {
        self.corrupt(format!("{column}: {detail}"))
    }

    /// `column` as SQLite holds it (a wrong type or a NULL where none is allowed is corrupt).
    pub(crate) fn get<T: FromSql>(&self, column: &str) -> Result<T> {
        self.row.get(column).map_err(|e| self.bad(column, e))
    }

    /// An unsigned integer column (a count, a size, a time): negative is corrupt.
    pub(crate) fn u64(&self, column: &str) -> Result<u64> {
        let value: i64 = self.get(column)?;
        self.unsigned(column, value)
    }

    /// A nullable unsigned integer column.
    pub(crate) fn opt_u64(&self, column: &str) -> Result<Option<u64>> {
        self.get::<Option<i64>>(column)?.map(|value| self.unsigned(column, value)).transpose()
    }

    fn unsigned(&self, column: &str, value: i64) -> Result<u64> {
        u64::try_from(value).map_err(|_| self.bad(column, format!("{value} is negative")))
    }

    /// A nullable process id column: it must fit a `u32` (whether it may be 0 is the
    /// table's business).
    pub(crate) fn opt_pid(&self, column: &str) -> Result<Option<u32>> {
        self.get::<Option<i64>>(column)?
            .map(|value| {
                u32::try_from(value)
                    .map_err(|_| self.bad(column, format!("{value} is not a process id")))
            })
            .transpose()
    }

    /// A time column (milliseconds since the epoch).
    pub(crate) fn timestamp(&self, column: &str) -> Result<Timestamp> {
        self.u64(column).map(Timestamp)
    }

    /// A text column holding a value's `FromStr` form (a name, an id, a state).
    pub(crate) fn parse<T>(&self, column: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text: String = self.get(column)?;
        text.parse().map_err(|e| self.bad(column, e))
    }

    /// A nullable text column holding a value's `FromStr` form.
    pub(crate) fn opt_parse<T>(&self, column: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get::<Option<String>>(column)?
            .map(|text| text.parse().map_err(|e| self.bad(column, e)))
            .transpose()
    }

    /// A text column holding JSON for a value the store reads.
    pub(crate) fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T> {
        let text: String = self.get(column)?;
        serde_json::from_str(&text).map_err(|e| self.bad(column, e))
    }

    /// A nullable text column holding JSON for a value the store reads.
    pub(crate) fn opt_json<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>> {
        self.get::<Option<String>>(column)?
            .map(|text| serde_json::from_str(&text).map_err(|e| self.bad(column, e)))
            .transpose()
    }

    /// A text column holding JSON whose meaning belongs to another crate: kept as text, checked
    /// to be JSON.
    pub(crate) fn json_text(&self, column: &str) -> Result<String> {
        let text: String = self.get(column)?;
        self.check_json(column, &text)?;
        Ok(text)
    }

    /// A nullable text column holding JSON kept as text.
    pub(crate) fn opt_json_text(&self, column: &str) -> Result<Option<String>> {
        let text: Option<String> = self.get(column)?;
        if let Some(text) = &text {
            self.check_json(column, text)?;
        }
        Ok(text)
    }

    fn check_json(&self, column: &str, text: &str) -> Result<()> {
        serde_json::from_str::<serde_json::Value>(text)
            .map(drop)
            .map_err(|e| self.bad(column, format!("not JSON: {e}")))
    }
}

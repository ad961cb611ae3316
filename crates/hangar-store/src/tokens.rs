//! The `tokens` table: API tokens, kept as the SHA-256 of their secret.

use rusqlite::{params, Row};

use crate::error::Result;
use crate::records::TokenRecord;
use crate::row::Fields;
use crate::store::Store;

const TOKEN_COLUMNS: &str = "SELECT id, name, sha256, created_at, scope FROM tokens";

/// Reads a `tokens` row (selected with [`TOKEN_COLUMNS`]).
fn decode(row: &Row<'_>) -> Result<TokenRecord> {
    let f = Fields::new(row, "tokens", "id");
    Ok(TokenRecord {
        id: f.get("id")?,
        name: f.get("name")?,
        sha256: f.get("sha256")?,
        scope: f.parse("scope")?,
        created_at: f.timestamp("created_at")?,
    })
}

impl Store {
    /// Stores a new token.
    pub fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        self.insert(
            "tokens",
            &t.id,
            "INSERT INTO tokens (id, name, sha256, created_at, scope) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.id, t.name, t.sha256, t.created_at.0 as i64, t.scope.to_string()],
        )
    }

    /// The token whose secret hashes to `sha256`, if any.
    pub fn token_by_hash(&self, sha256: &str) -> Result<Option<TokenRecord>> {
        self.one(&format!("{TOKEN_COLUMNS} WHERE sha256 = ?1"), [sha256], decode)
    }

    /// Every token, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.all(&format!("{TOKEN_COLUMNS} ORDER BY created_at, id"), [], decode)
    }

    /// Revokes a token; false if there was none with that id.
    pub fn delete_token(&self, id: &str) -> Result<bool> {
        let n = self.execute("DELETE FROM tokens WHERE id = ?1", [id])?;
        Ok(n > 0)
    }
}

//! The `fleet` table: the fleet registry (tenants, pools, instances) as one JSON document in
//! one row. Its meaning belongs to `hangar-fleet`; the store checks it is JSON.

use hangar_core::clock::Timestamp;
use rusqlite::{params, Row};

use crate::error::{corrupt, Result};
use crate::row::Fields;
use crate::store::Store;

/// Reads the `fleet` row's registry (selected with `id` and `registry_json`).
fn decode(row: &Row<'_>) -> Result<String> {
    Fields::new(row, "fleet", "id").json_text("registry_json")
}

impl Store {
    /// Replaces the fleet registry (a JSON document; see `hangar-fleet`'s `Registry`).
    pub fn save_fleet(&self, registry_json: &str, at: Timestamp) -> Result<()> {
        serde_json::from_str::<serde_json::Value>(registry_json)
            .map_err(|e| corrupt("fleet", "1", format!("refusing to store non-JSON: {e}")))?;
        self.execute(
            "INSERT INTO fleet (id, registry_json, updated_at) VALUES (1, ?1, ?2) ON CONFLICT(id) DO UPDATE SET registry_json = excluded.registry_json, updated_at = excluded.updated_at",
            params![registry_json, at.0 as i64],
        )?;
        Ok(())
    }

    /// The fleet registry, if one was saved; validated as JSON.
    pub fn load_fleet(&self) -> Result<Option<String>> {
        self.one("SELECT id, registry_json FROM fleet WHERE id = 1", [], decode)
    }
}

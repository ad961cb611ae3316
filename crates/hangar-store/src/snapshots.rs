//! The `snapshots` table: memory snapshots on disk.

use hangar_core::contracts::SnapshotLayout;
use hangar_core::ids::{SnapshotId, VmName};
use rusqlite::{params, Row};

use crate::error::Result;
use crate::records::SnapshotRecord;
use crate::row::Fields;
use crate::store::Store;

/// Reads a `snapshots` row (selected with `*`). Rows from before schema version 4 have no
/// frozen disks.
fn decode(row: &Row<'_>) -> Result<SnapshotRecord> {
    let f = Fields::new(row, "snapshots", "id");
    Ok(SnapshotRecord {
        id: f.parse("id")?,
        vm: f.parse("vm")?,
        path: f.get("path")?,
        spec_hash: f.get("spec_hash")?,
        clone_hash: f.get("clone_hash")?,
        disks: f.opt_json("disks_json")?.unwrap_or_default(),
        engine_version: f.get("engine_version")?,
        size_bytes: f.u64("size_bytes")?,
        layout: match f.get::<Option<String>>("layout")? {
            None => SnapshotLayout::Stream,
            Some(name) => SnapshotLayout::from_name(&name)
                .ok_or_else(|| f.bad("layout", format!("`{name}` is not a snapshot layout")))?,
        },
        ram_path: f.get("ram_path")?,
        created_at: f.timestamp("created_at")?,
        tenant: f.opt_parse("tenant")?,
        pool: f.opt_parse("pool")?,
    })
}

impl Store {
    /// Records a snapshot.
    pub fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<()> {
        self.insert(
            "snapshots",
            &s.id,
            "INSERT INTO snapshots (id, vm, path, spec_hash, engine_version, size_bytes, created_at, clone_hash, disks_json, tenant, pool, layout, ram_path) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![s.id.as_str(), s.vm.as_str(), s.path, s.spec_hash, s.engine_version, s.size_bytes as i64, s.created_at.0 as i64, s.clone_hash, serde_json::to_string(&s.disks).expect("disks serialise"),
                    s.tenant.as_ref().map(|t| t.as_str()), s.pool.as_ref().map(|p| p.as_str()), s.layout.as_str(), s.ram_path],
        )
    }

    /// One snapshot.
    pub fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.one("SELECT * FROM snapshots WHERE id = ?1", [id.as_str()], decode)
    }

    /// Snapshots, optionally of one VM, sorted by id.
    pub fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotRecord>> {
        self.all(
            "SELECT * FROM snapshots WHERE (?1 IS NULL OR vm = ?1) ORDER BY id",
            [vm.map(|v| v.as_str())],
            decode,
        )
    }

    /// Removes a snapshot record.
    pub fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.execute("DELETE FROM snapshots WHERE id = ?1", [id.as_str()])?;
        Ok(())
    }
}

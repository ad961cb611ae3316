//! The `snapshots` table: memory snapshots on disk.

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
            "INSERT INTO snapshots (id, vm, path, spec_hash, engine_version, size_bytes, created_at, clone_hash, disks_json, tenant, pool) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![s.id.as_str(), s.vm.as_str(), s.path, s.spec_hash, s.engine_version, s.size_bytes as i64, s.created_at.0 as i64, s.clone_hash, serde_json::to_string(&s.disks).expect("disks serialise"),
                    s.tenant.as_ref().map(|t| t.as_str()), s.pool.as_ref().map(|p| p.as_str())],
        )
    }

    /// One snapshot.
    pub fn get_snapshot(&self, id: &SnapshotId) -> Result<Option<SnapshotRecord>> {
        self.one(
            "SELECT * FROM snapshots WHERE id = ?1",
            [id.as_str()],
            decode,
        )
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

#[cfg(test)]
mod tests {
    use hangar_core::clock::Timestamp;
    use hangar_core::error::{Coded, ErrorCode};

    use super::*;
    use crate::StoreError;

    #[test]
    fn a_negative_snapshot_time_or_size_is_corrupt_not_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let snap = SnapshotRecord {
            id: SnapshotId::new("s1").unwrap(),
            vm: VmName::new("a").unwrap(),
            path: "/x/s1.state".into(),
            spec_hash: "sha256:1".into(),
            clone_hash: None,
            disks: vec![],
            engine_version: "qemu-10.0.2".into(),
            size_bytes: 64 << 20,
            created_at: Timestamp(5),
            tenant: None,
            pool: None,
        };
        store.insert_snapshot(&snap).unwrap();
        assert_eq!(store.get_snapshot(&snap.id).unwrap(), Some(snap.clone()));
        for (column, bad) in [("created_at", -5), ("size_bytes", -1)] {
            store
                .execute_raw(&format!("UPDATE snapshots SET {column} = {bad}"))
                .unwrap();
            for err in [
                store.get_snapshot(&snap.id).unwrap_err(),
                store.list_snapshots(None).unwrap_err(),
            ] {
                assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{err}");
                assert!(
                    matches!(&err, StoreError::Corrupt { table: "snapshots", key, .. } if key == "s1"),
                    "{err}"
                );
                assert!(
                    err.to_string()
                        .contains(&format!("{column}: {bad} is negative")),
                    "{err}"
                );
            }
            store.delete_snapshot(&snap.id).unwrap();
            store.insert_snapshot(&snap).unwrap();
        }
    }
}

//! The `volumes` table: disk volumes managed through the `Disks` contract.

use hangar_core::ids::VolumeId;
use rusqlite::{params, Row};

use crate::error::Result;
use crate::records::VolumeRecord;
use crate::row::Fields;
use crate::store::Store;

/// Reads a `volumes` row (selected with `*`).
fn decode(row: &Row<'_>) -> Result<VolumeRecord> {
    let f = Fields::new(row, "volumes", "id");
    Ok(VolumeRecord {
        id: f.parse("id")?,
        path: f.get("path")?,
        size_mib: f.u64("size_mib")?,
        format: f.parse("format")?,
        base: f.opt_parse("base")?,
        snapshots: f.json("snapshots_json")?,
    })
}

impl Store {
    /// Records a volume.
    pub fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        self.insert(
            "volumes",
            &v.id,
            "INSERT INTO volumes (id, path, size_mib, format, base, snapshots_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![v.id.as_str(), v.path, v.size_mib as i64, v.format.as_str(), v.base.as_ref().map(|b| b.as_str()),
                    serde_json::to_string(&v.snapshots).expect("ids serialise")],
        )
    }

    /// Replaces a volume's record.
    pub fn update_volume(&self, v: &VolumeRecord) -> Result<()> {
        self.execute(
            "UPDATE volumes SET path=?2, size_mib=?3, format=?4, base=?5, snapshots_json=?6 WHERE id=?1",
            params![v.id.as_str(), v.path, v.size_mib as i64, v.format.as_str(), v.base.as_ref().map(|b| b.as_str()),
                    serde_json::to_string(&v.snapshots).expect("ids serialise")],
        )?;
        Ok(())
    }

    /// One volume.
    pub fn get_volume(&self, id: &VolumeId) -> Result<Option<VolumeRecord>> {
        self.one("SELECT * FROM volumes WHERE id = ?1", [id.as_str()], decode)
    }

    /// Every volume, sorted by id.
    pub fn list_volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.all("SELECT * FROM volumes ORDER BY id", [], decode)
    }

    /// Removes a volume record.
    pub fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        self.execute("DELETE FROM volumes WHERE id = ?1", [id.as_str()])?;
        Ok(())
    }
}

//! The `Disks` contract: volumes made with qemu-img.

use crate::error::QemuError;
use std::path::Path;

use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::{SnapshotId, VolumeId};
use hangar_core::spec::DiskFormat;
use hangar_store::VolumeRecord;

use crate::engine::*;
use crate::img;

impl Disks for QemuEngine {
    fn create_volume(&self, id: &VolumeId, source: &VolumeSource) -> Result<VolumeInfo> {
        if self.db(|s| s.get_volume(id))?.is_some() {
            return Err(Error::DiskExists(id.clone()));
        }
        let dir = self.home.join("volumes");
        std::fs::create_dir_all(&dir).map_err(|e| QemuError::io("cannot create", &dir, e))?;
        let path = self.volume_path(id, DiskFormat::Qcow2);
        let (base, result) = match source {
            VolumeSource::Blank { size_mib } => {
                if *size_mib == 0 {
                    return Err(Error::InvalidArgument {
                        what: "size_mib".into(),
                        reason: "must be at least 1".into(),
                    });
                }
                (None, img::create_blank(&path, DiskFormat::Qcow2, *size_mib))
            }
            VolumeSource::Overlay { base } => {
                let b = self.volume_record(base)?;
                (Some(base.clone()), img::create_overlay(&path, Path::new(&b.path), b.format))
            }
            VolumeSource::ImageFile { path: file, format } => {
                (None, img::create_overlay(&path, Path::new(file), *format))
            }
        };
        if let Err(e) = result {
            let _ = std::fs::remove_file(&path);
            return Err(QemuError::Img(e).into());
        }
        let size_mib = img::virtual_size_mib(&path).map_err(QemuError::Img)?;
        let record = VolumeRecord {
            id: id.clone(),
            path: path.display().to_string(),
            size_mib,
            format: DiskFormat::Qcow2,
            base,
            snapshots: vec![],
        };
        if let Err(e) = self.db(|s| s.insert_volume(&record)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(volume_info(&record))
    }

    fn resize_volume(&self, id: &VolumeId, size_mib: u64) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if size_mib < v.size_mib {
            return Err(Error::InvalidArgument {
                what: "size_mib".into(),
                reason: format!(
                    "{size_mib} MiB is smaller than the current {} MiB; volumes only grow",
                    v.size_mib
                ),
            });
        }
        img::resize(Path::new(&v.path), v.format, size_mib).map_err(QemuError::Img)?;
        v.size_mib = img::virtual_size_mib(Path::new(&v.path)).map_err(QemuError::Img)?;
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        let v = self.volume_record(id)?;
        if !v.snapshots.is_empty() {
            return Err(Error::DiskHasSnapshots { disk: id.clone(), count: v.snapshots.len() });
        }
        if let Some(overlay) =
            self.db(|s| s.list_volumes())?.into_iter().find(|o| o.base.as_ref() == Some(id))
        {
            return Err(Error::DiskInUse {
                disk: id.clone(),
                user: format!("overlay {}", overlay.id),
            });
        }
        std::fs::remove_file(&v.path)
            .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            .map_err(|e| QemuError::io("cannot remove", Path::new(&v.path), e))?;
        self.db(|s| s.delete_volume(id))
    }

    fn snapshot_volume(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if v.snapshots.contains(snapshot) {
            return Err(Error::SnapshotExists(snapshot.clone()));
        }
        img::snapshot_create(Path::new(&v.path), snapshot.as_str()).map_err(QemuError::Img)?;
        v.snapshots.push(snapshot.clone());
        v.snapshots.sort();
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn delete_volume_snapshot(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        let mut v = self.volume_record(id)?;
        if !v.snapshots.contains(snapshot) {
            return Err(Error::SnapshotNotFound(snapshot.clone()));
        }
        img::snapshot_delete(Path::new(&v.path), snapshot.as_str()).map_err(QemuError::Img)?;
        v.snapshots.retain(|s| s != snapshot);
        self.db(|s| s.update_volume(&v))?;
        Ok(volume_info(&v))
    }

    fn volume(&self, id: &VolumeId) -> Result<VolumeInfo> {
        Ok(volume_info(&self.volume_record(id)?))
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        Ok(self.db(|s| s.list_volumes())?.iter().map(volume_info).collect())
    }
}

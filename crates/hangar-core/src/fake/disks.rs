//! [`Disks`] for the fake: volumes (blank, overlay, image file) and their snapshots, as records
//! only; no file is read or written.

use std::collections::BTreeSet;

use crate::contracts::*;
use crate::error::{Error, Result};
use crate::ids::{SnapshotId, VolumeId};
use crate::spec::DiskFormat;

use super::{lock, FakeEngine, FakeVolume, Inner};

fn volume_info(id: &VolumeId, v: &FakeVolume) -> VolumeInfo {
    VolumeInfo {
        id: id.clone(),
        size_mib: v.size_mib,
        format: v.format,
        base: v.base.clone(),
        snapshots: v.snapshots.iter().cloned().collect(),
    }
}

impl Inner {
    fn volume(&mut self, id: &VolumeId) -> Result<&mut FakeVolume> {
        self.volumes.get_mut(id).ok_or_else(|| Error::DiskNotFound(id.clone()))
    }
}

impl Disks for FakeEngine {
    fn create_volume(&self, id: &VolumeId, source: &VolumeSource) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        if inner.volumes.contains_key(id) {
            return Err(Error::DiskExists(id.clone()));
        }
        let volume = match source {
            VolumeSource::Blank { size_mib } => {
                if *size_mib == 0 {
                    return Err(Error::InvalidArgument {
                        what: "size_mib".into(),
                        reason: "must be at least 1".into(),
                    });
                }
                FakeVolume {
                    size_mib: *size_mib,
                    format: DiskFormat::Qcow2,
                    base: None,
                    snapshots: BTreeSet::new(),
                }
            }
            VolumeSource::Overlay { base } => FakeVolume {
                size_mib: inner.volume(base)?.size_mib,
                format: DiskFormat::Qcow2,
                base: Some(base.clone()),
                snapshots: BTreeSet::new(),
            },
            // The fake reads no files: an image's size is unknown and recorded as 0.
            VolumeSource::ImageFile { .. } => FakeVolume {
                size_mib: 0,
                format: DiskFormat::Qcow2,
                base: None,
                snapshots: BTreeSet::new(),
            },
        };
        let info = volume_info(id, &volume);
        inner.volumes.insert(id.clone(), volume);
        Ok(info)
    }

    fn resize_volume(&self, id: &VolumeId, size_mib: u64) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if size_mib < volume.size_mib {
            return Err(Error::InvalidArgument {
                what: "size_mib".into(),
                reason: format!(
                    "{size_mib} MiB is smaller than the current {} MiB; volumes only grow",
                    volume.size_mib
                ),
            });
        }
        volume.size_mib = size_mib;
        Ok(volume_info(id, volume))
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<()> {
        self.enter()?;
        self.require(Capability::Volumes, "volumes")?;
        let mut inner = lock(&self.inner);
        let count = inner.volume(id)?.snapshots.len();
        if count > 0 {
            return Err(Error::DiskHasSnapshots { disk: id.clone(), count });
        }
        if let Some((overlay, _)) = inner.volumes.iter().find(|(_, v)| v.base.as_ref() == Some(id))
        {
            return Err(Error::DiskInUse { disk: id.clone(), user: format!("overlay {overlay}") });
        }
        inner.volumes.remove(id);
        Ok(())
    }

    fn snapshot_volume(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::DiskSnapshots, "disk snapshots")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if !volume.snapshots.insert(snapshot.clone()) {
            return Err(Error::SnapshotExists(snapshot.clone()));
        }
        Ok(volume_info(id, volume))
    }

    fn delete_volume_snapshot(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo> {
        self.enter()?;
        self.require(Capability::DiskSnapshots, "disk snapshots")?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        if !volume.snapshots.remove(snapshot) {
            return Err(Error::SnapshotNotFound(snapshot.clone()));
        }
        Ok(volume_info(id, volume))
    }

    fn volume(&self, id: &VolumeId) -> Result<VolumeInfo> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        let volume = inner.volume(id)?;
        Ok(volume_info(id, volume))
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner.volumes.iter().map(|(id, v)| volume_info(id, v)).collect())
    }
}

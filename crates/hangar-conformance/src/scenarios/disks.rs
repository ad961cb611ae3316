//! `Disks`: volumes, their snapshots and overlays.

use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::ids::{SnapshotId, VolumeId};

use crate::Ctx;

use super::*;

pub(super) fn vol(s: &str) -> VolumeId {
    VolumeId::new(s).unwrap()
}

pub(super) fn d01_volume_lifecycle(ctx: &Ctx<'_>) -> Check {
    let (base, top) = (vol("conf-d01-base"), vol("conf-d01-top"));
    let info =
        ok(ctx.engine.create_volume(&base, &VolumeSource::Blank { size_mib: 64 }), "create blank")?;
    ensure!(info.size_mib == 64, "blank volume is {} MiB", info.size_mib);
    let info = ok(
        ctx.engine.create_volume(&top, &VolumeSource::Overlay { base: base.clone() }),
        "create overlay",
    )?;
    ensure!(info.base.as_ref() == Some(&base), "overlay base is {:?}", info.base);
    let info = ok(ctx.engine.resize_volume(&top, 128), "grow")?;
    ensure!(info.size_mib == 128, "grown volume is {} MiB", info.size_mib);
    expect_code(ctx.engine.resize_volume(&top, 32), ErrorCode::InvalidArgument, "shrink")?;
    ensure!(ok(ctx.engine.volume(&top), "volume")?.size_mib == 128, "refused shrink changed size");
    ok(ctx.engine.delete_volume(&top), "delete overlay")?;
    ok(ctx.engine.delete_volume(&base), "delete base")?;
    ensure!(ok(ctx.engine.list_volumes(), "list")?.is_empty(), "volumes left behind");
    Ok(())
}

pub(super) fn d02_disk_with_snapshots(ctx: &Ctx<'_>) -> Check {
    let v = vol("conf-d02");
    let snap = SnapshotId::new("conf-d02-snap").unwrap();
    ok(ctx.engine.create_volume(&v, &VolumeSource::Blank { size_mib: 16 }), "create")?;
    ok(ctx.engine.snapshot_volume(&v, &snap), "snapshot")?;
    expect_code(ctx.engine.delete_volume(&v), ErrorCode::DiskHasSnapshots, "delete")?;
    let info = ok(ctx.engine.volume(&v), "volume after refused delete")?;
    ensure!(info.snapshots == vec![snap.clone()], "snapshots now {:?}", info.snapshots);
    ok(ctx.engine.delete_volume_snapshot(&v, &snap), "delete snapshot")?;
    ok(ctx.engine.delete_volume(&v), "delete")
}

pub(super) fn d03_base_in_use(ctx: &Ctx<'_>) -> Check {
    let (base, top) = (vol("conf-d03-base"), vol("conf-d03-top"));
    ok(ctx.engine.create_volume(&base, &VolumeSource::Blank { size_mib: 16 }), "create")?;
    ok(ctx.engine.create_volume(&top, &VolumeSource::Overlay { base: base.clone() }), "overlay")?;
    expect_code(ctx.engine.delete_volume(&base), ErrorCode::DiskInUse, "delete base")?;
    ok(ctx.engine.volume(&base), "base still there")?;
    ok(ctx.engine.delete_volume(&top), "delete overlay")?;
    ok(ctx.engine.delete_volume(&base), "delete base")
}

pub(super) fn d04_volume_ids(ctx: &Ctx<'_>) -> Check {
    let v = vol("conf-d04");
    ok(ctx.engine.create_volume(&v, &VolumeSource::Blank { size_mib: 16 }), "create")?;
    expect_code(
        ctx.engine.create_volume(&v, &VolumeSource::Blank { size_mib: 32 }),
        ErrorCode::DiskExists,
        "create again",
    )?;
    ensure!(
        ok(ctx.engine.volume(&v), "volume")?.size_mib == 16,
        "duplicate create changed the volume"
    );
    ok(ctx.engine.delete_volume(&v), "delete")?;
    expect_code(ctx.engine.delete_volume(&v), ErrorCode::DiskNotFound, "delete missing")?;
    expect_code(
        ctx.engine.create_volume(&vol("conf-d04-top"), &VolumeSource::Overlay { base: v }),
        ErrorCode::DiskNotFound,
        "overlay of a missing base",
    )
}

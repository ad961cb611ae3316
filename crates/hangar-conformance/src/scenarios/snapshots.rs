//! `Snapshots`: save, restore, sleep and wake, ids, and clones across VMs.

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::ids::SnapshotId;
use hangar_core::lifecycle::VmState;

use crate::Ctx;

use VmState::*;

use super::*;

pub(super) fn s01_snapshot_round_trip(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s01")?;
    let id = SnapshotId::new("conf-s01-snap").unwrap();
    let info = ok(ctx.engine.save(&vm, &id, SaveMode::KeepPaused, &CancelToken::new()), "save")?;
    ensure!(info.id == id && info.vm == vm, "snapshot info {info:?}");
    ensure!(info.size_bytes > 0, "snapshot has no bytes");
    expect_state(ctx, &vm, Paused, "save (keep paused)")?;
    let listed = ok(ctx.engine.list_snapshots(Some(&vm)), "list snapshots")?;
    ensure!(listed == vec![info.clone()], "listed {listed:?}");
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    ok(ctx.engine.restore(&vm, &id, &CancelToken::new()), "restore")?;
    expect_state(ctx, &vm, Running, "restore")?;
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")?;
    let listed = ok(ctx.engine.list_snapshots(None), "list snapshots")?;
    ensure!(listed.iter().all(|s| s.id != id), "deleted snapshot still listed");
    Ok(())
}

pub(super) fn s02_save_needs_a_guest(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-s02");
    ok(ctx.engine.define(&ctx.spec("conf-s02")), "define")?;
    let id = SnapshotId::new("conf-s02-snap").unwrap();
    refused(ctx, &rec, &vm, "save a defined VM", || {
        ctx.engine.save(&vm, &id, SaveMode::KeepPaused, &CancelToken::new())
    })?;
    let listed = ok(ctx.engine.list_snapshots(None), "list")?;
    ensure!(listed.is_empty(), "a refused save left {listed:?}");
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn s03_restore_missing(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-s03");
    ok(ctx.engine.define(&ctx.spec("conf-s03")), "define")?;
    let missing = SnapshotId::new("conf-nope").unwrap();
    expect_code(
        ctx.engine.restore(&vm, &missing, &CancelToken::new()),
        ErrorCode::SnapshotNotFound,
        "restore",
    )?;
    expect_state(ctx, &vm, Defined, "failed restore")?;
    expect_code(ctx.engine.delete_snapshot(&missing), ErrorCode::SnapshotNotFound, "delete")?;
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn s04_sleep_wake(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s04")?;
    let id = SnapshotId::new("conf-s04-snap").unwrap();
    ok(ctx.engine.save(&vm, &id, SaveMode::Sleep, &CancelToken::new()), "save")?;
    expect_state(ctx, &vm, Sleeping, "save (sleep)")?;
    expect_code(ctx.engine.delete_snapshot(&id), ErrorCode::SnapshotInUse, "delete in use")?;
    ok(ctx.engine.restore(&vm, &id, &CancelToken::new()), "wake")?;
    expect_state(ctx, &vm, Running, "wake")?;
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&id), "delete after wake")
}

pub(super) fn s06_restore_into_a_clone(ctx: &Ctx<'_>) -> Check {
    let source = running(ctx, "conf-s06")?;
    let id = SnapshotId::new("conf-s06-base").unwrap();
    let c = CancelToken::new();
    ok(ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c), "save")?;
    // Same spec under another name: a clone.
    let clone = name("conf-s06-clone");
    ok(ctx.engine.define(&ctx.spec("conf-s06-clone")), "define clone")?;
    ok(ctx.engine.restore(&clone, &id, &c), "restore into the clone")?;
    expect_state(ctx, &clone, Running, "clone restore")?;
    // The source is untouched by the clone.
    expect_state(ctx, &source, Paused, "source after the clone restore")?;
    // Different hardware: refused, and the VM stays as it was.
    let other = name("conf-s06-other");
    let mut spec = ctx.spec("conf-s06-other");
    spec.machine.memory_mib += 64;
    ok(ctx.engine.define(&spec), "define a different VM")?;
    expect_code(
        ctx.engine.restore(&other, &id, &c),
        ErrorCode::SnapshotMismatch,
        "restore into a VM with more memory",
    )?;
    expect_state(ctx, &other, Defined, "refused restore")?;
    ok(ctx.engine.undefine(&other), "undefine")?;
    teardown(ctx, &clone)?;
    teardown(ctx, &source)?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")
}

pub(super) fn s08_restore_unshared_is_a_restore(ctx: &Ctx<'_>) -> Check {
    let source = running(ctx, "conf-s08")?;
    let id = SnapshotId::new("conf-s08-base").unwrap();
    let c = CancelToken::new();
    ok(ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c), "save")?;
    let clone = name("conf-s08-clone");
    ok(ctx.engine.define(&ctx.spec("conf-s08-clone")), "define clone")?;
    ok(ctx.engine.restore_unshared(&clone, &id, &c), "restore unshared into the clone")?;
    expect_state(ctx, &clone, Running, "unshared restore")?;
    expect_state(ctx, &source, Paused, "source after the unshared restore")?;
    // What it is for: saved again at once, and woken from that.
    let again = SnapshotId::new("conf-s08-sleep").unwrap();
    ok(ctx.engine.save(&clone, &again, SaveMode::Sleep, &c), "sleep the clone")?;
    expect_state(ctx, &clone, Sleeping, "sleep after an unshared restore")?;
    ok(ctx.engine.restore(&clone, &again, &c), "wake")?;
    expect_state(ctx, &clone, Running, "wake")?;
    // The same refusals as a restore, and the VM left as it was.
    let other = name("conf-s08-other");
    let mut spec = ctx.spec("conf-s08-other");
    spec.machine.memory_mib += 64;
    ok(ctx.engine.define(&spec), "define a different VM")?;
    expect_code(
        ctx.engine.restore_unshared(&other, &id, &c),
        ErrorCode::SnapshotMismatch,
        "unshared restore into a VM with more memory",
    )?;
    expect_state(ctx, &other, Defined, "refused unshared restore")?;
    let missing = SnapshotId::new("conf-s08-nope").unwrap();
    expect_code(
        ctx.engine.restore_unshared(&other, &missing, &c),
        ErrorCode::SnapshotNotFound,
        "unshared restore of a missing snapshot",
    )?;
    ok(ctx.engine.undefine(&other), "undefine")?;
    teardown(ctx, &clone)?;
    teardown(ctx, &source)?;
    ok(ctx.engine.delete_snapshot(&again), "delete the clone's snapshot")?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")
}

pub(super) fn s09_a_spare_restores_its_snapshot_only(ctx: &Ctx<'_>) -> Check {
    let source = running(ctx, "conf-s09")?;
    let id = SnapshotId::new("conf-s09-base").unwrap();
    let c = CancelToken::new();
    ok(ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c), "save")?;
    let spare = name("conf-s09-spare");
    ok(ctx.engine.define(&ctx.spec("conf-s09-spare")), "define the spare")?;
    let status = ok(ctx.engine.prepare_restore(&spare, &id, &c), "prepare a spare")?;
    ensure!(status.state == Spare, "prepare_restore gave {}", status.state);
    expect_state(ctx, &spare, Spare, "prepare_restore")?;
    expect_code(
        ctx.engine.prepare_restore(&spare, &id, &c),
        ErrorCode::InvalidTransition,
        "preparing a spare twice",
    )?;
    // What it waits for cannot go, and nothing else is restored into it.
    expect_code(
        ctx.engine.delete_snapshot(&id),
        ErrorCode::SnapshotInUse,
        "deleting the snapshot a spare waits for",
    )?;
    let other = SnapshotId::new("conf-s09-other").unwrap();
    ok(ctx.engine.save(&source, &other, SaveMode::KeepPaused, &c), "save another")?;
    expect_code(
        ctx.engine.restore(&spare, &other, &c),
        ErrorCode::SnapshotMismatch,
        "a spare restoring another snapshot",
    )?;
    expect_state(ctx, &spare, Spare, "a refused restore")?;
    ok(ctx.engine.restore(&spare, &id, &c), "restore the spare")?;
    expect_state(ctx, &spare, Running, "restoring a spare")?;
    // A spare is stopped like any VM, and is then an ordinary stopped VM.
    let second = name("conf-s09-second");
    ok(ctx.engine.define(&ctx.spec("conf-s09-second")), "define a second spare")?;
    ok(ctx.engine.prepare_restore(&second, &id, &c), "prepare a second spare")?;
    stop_to_stopped(ctx, &second, StopMode::Force)?;
    ok(ctx.engine.restore(&second, &other, &c), "restore the stopped spare from another")?;
    expect_state(ctx, &second, Running, "restoring a stopped spare")?;
    for vm in [&second, &spare, &source] {
        teardown(ctx, vm)?;
    }
    ok(ctx.engine.delete_snapshot(&other), "delete the other snapshot")?;
    ok(ctx.engine.delete_snapshot(&id), "delete the snapshot")
}

pub(super) fn s07_clones_stay_in_their_tenant_and_pool(ctx: &Ctx<'_>) -> Check {
    let tenant = |t: &str| Some(hangar_core::ids::TenantId::new(t).unwrap());
    let pool = |p: &str| Some(hangar_core::ids::PoolId::new(p).unwrap());
    let c = CancelToken::new();
    let mut spec = ctx.spec("conf-s07-src");
    spec.tenant = tenant("acme");
    spec.pool = pool("web");
    let source = spec.name.clone();
    ok(ctx.engine.define(&spec), "define the source")?;
    ok(ctx.engine.start(&source, &c), "start the source")?;
    let id = SnapshotId::new("conf-s07-base").unwrap();
    let info = ok(ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c), "save")?;
    ensure!(
        info.tenant == spec.tenant && info.pool == spec.pool,
        "the snapshot records its source's tenant and pool, got {:?} / {:?}",
        info.tenant,
        info.pool
    );
    // Same hardware, but another tenant, another pool, or no pool: all refused, and the VM
    // is left as it was.
    let mut refused = Vec::new();
    for (n, t, p) in [
        ("conf-s07-tenant", tenant("beta"), pool("web")),
        ("conf-s07-pool", tenant("acme"), pool("api")),
        ("conf-s07-plain", tenant("acme"), None),
    ] {
        let mut other = ctx.spec(n);
        other.tenant = t;
        other.pool = p;
        ok(ctx.engine.define(&other), "define")?;
        expect_code(ctx.engine.restore(&other.name, &id, &c), ErrorCode::SnapshotMismatch, n)?;
        expect_state(ctx, &other.name, Defined, "refused restore")?;
        refused.push(other.name);
    }
    // The same tenant and pool: a clone.
    let mut sibling = ctx.spec("conf-s07-sibling");
    sibling.tenant = tenant("acme");
    sibling.pool = pool("web");
    ok(ctx.engine.define(&sibling), "define a sibling")?;
    ok(ctx.engine.restore(&sibling.name, &id, &c), "restore into a sibling of the same pool")?;
    expect_state(ctx, &sibling.name, Running, "sibling restore")?;
    for vm in refused {
        ok(ctx.engine.undefine(&vm), "undefine")?;
    }
    teardown(ctx, &sibling.name)?;
    teardown(ctx, &source)?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")
}

pub(super) fn s05_snapshot_ids_unique(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s05")?;
    let id = SnapshotId::new("conf-s05-snap").unwrap();
    let c = CancelToken::new();
    ok(ctx.engine.save(&vm, &id, SaveMode::KeepPaused, &c), "save")?;
    expect_code(
        ctx.engine.save(&vm, &id, SaveMode::KeepPaused, &c),
        ErrorCode::SnapshotExists,
        "second save under the same id",
    )?;
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&id), "delete")
}

pub(super) fn s10_a_wake_consumes_its_snapshot(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s10")?;
    let c = CancelToken::new();
    // Twice: after a wake, the VM sleeps and wakes again, and each snapshot is gone after.
    for id in ["conf-s10-sleep", "conf-s10-again"] {
        let id = SnapshotId::new(id).unwrap();
        ok(ctx.engine.save(&vm, &id, SaveMode::Sleep, &c), "sleep")?;
        expect_state(ctx, &vm, Sleeping, "sleep")?;
        let status = ok(ctx.engine.wake(&vm, &id, &c), "wake")?;
        ensure!(status.state == Running, "wake gave {}", status.state);
        expect_state(ctx, &vm, Running, "wake")?;
        let listed = ok(ctx.engine.list_snapshots(None), "list snapshots")?;
        ensure!(listed.iter().all(|s| s.id != id), "{id} still listed after the wake: {listed:?}");
    }
    // A VM that is not sleeping on the snapshot is refused, and the snapshot is kept.
    let kept = SnapshotId::new("conf-s10-kept").unwrap();
    ok(ctx.engine.save(&vm, &kept, SaveMode::KeepPaused, &c), "save")?;
    ensure!(ctx.engine.wake(&vm, &kept, &c).is_err(), "a paused VM was woken from a snapshot");
    expect_state(ctx, &vm, Paused, "refused wake")?;
    let listed = ok(ctx.engine.list_snapshots(None), "list snapshots")?;
    ensure!(listed.iter().any(|s| s.id == kept), "a refused wake deleted its snapshot");
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&kept), "delete")
}

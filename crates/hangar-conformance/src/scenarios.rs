//! The scenarios. Each is a plain function over the contracts; ids are stable and append-only.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::ids::{DeviceName, SnapshotId, VmName, VolumeId};
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent, VmState};
use hangar_core::spec::{NicMode, NicSpec};

use crate::{skip, Ctx, Knobs, Scenario};

use Capability::*;
use VmState::*;

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

fn ok<T>(result: hangar_core::Result<T>, what: &str) -> Result<T, String> {
    result.map_err(|e| format!("{what}: unexpected error {} ({e})", e.code()))
}

fn expect_code<T: Debug>(result: hangar_core::Result<T>, code: ErrorCode, what: &str) -> Check {
    match result {
        Ok(v) => Err(format!("{what}: expected {code}, got Ok({v:?})")),
        Err(e) if e.code() == code => Ok(()),
        Err(e) => Err(format!("{what}: expected {code}, got {} ({e})", e.code())),
    }
}

fn name(s: &str) -> VmName {
    VmName::new(s).expect("valid scenario name")
}

fn state(ctx: &Ctx<'_>, vm: &VmName) -> Result<VmState, String> {
    Ok(ok(ctx.engine.status(vm), "status")?.state)
}

fn expect_state(ctx: &Ctx<'_>, vm: &VmName, want: VmState, after: &str) -> Check {
    let got = state(ctx, vm)?;
    ensure!(got == want, "after {after}: expected {want}, got {got}");
    Ok(())
}

fn graceful(ctx: &Ctx<'_>) -> StopMode {
    StopMode::Graceful {
        timeout: ctx.harness.graceful_timeout(),
    }
}

/// Defines and starts a VM from the harness spec.
fn running(ctx: &Ctx<'_>, n: &str) -> Result<VmName, String> {
    let vm = name(n);
    ok(ctx.engine.define(&ctx.spec(n)), "define")?;
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    expect_state(ctx, &vm, Running, "start")?;
    Ok(vm)
}

/// Stops (force) and undefines, so real engines leave nothing behind.
fn teardown(ctx: &Ctx<'_>, vm: &VmName) -> Check {
    ok(
        ctx.engine.stop(vm, StopMode::Force, &CancelToken::new()),
        "teardown stop",
    )?;
    ok(ctx.engine.undefine(vm), "teardown undefine")
}

#[derive(Default)]
struct Recorder(Mutex<Vec<TransitionEvent>>);

impl Recorder {
    fn moves(&self) -> Vec<(Option<VmState>, VmState)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.from, e.to))
            .collect()
    }
}

impl LifecycleObserver for Recorder {
    fn on_transition(&self, event: &TransitionEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

fn recorder(ctx: &Ctx<'_>) -> Arc<Recorder> {
    let r = Arc::new(Recorder::default());
    ctx.engine.observe(r.clone());
    r
}

/// Asserts that `op` fails with `E_INVALID_TRANSITION` and that neither the state nor the
/// transition record changed.
fn refused<T: Debug>(
    ctx: &Ctx<'_>,
    rec: &Recorder,
    vm: &VmName,
    what: &str,
    op: impl FnOnce() -> hangar_core::Result<T>,
) -> Check {
    let before = (state(ctx, vm)?, rec.moves().len());
    expect_code(op(), ErrorCode::InvalidTransition, what)?;
    let after = (state(ctx, vm)?, rec.moves().len());
    ensure!(
        before == after,
        "{what}: refused but changed something: {before:?} -> {after:?}"
    );
    Ok(())
}

fn l01_round_trip(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-l01");
    let status = ok(ctx.engine.define(&ctx.spec("conf-l01")), "define")?;
    ensure!(status.state == Defined, "define gave {}", status.state);
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    expect_state(ctx, &vm, Running, "start")?;
    let outcome = ok(
        ctx.engine.stop(&vm, graceful(ctx), &CancelToken::new()),
        "stop",
    )?;
    ensure!(
        outcome.status.state == Stopped,
        "stop gave {}",
        outcome.status.state
    );
    ok(ctx.engine.undefine(&vm), "undefine")?;
    expect_code(
        ctx.engine.status(&vm),
        ErrorCode::VmNotFound,
        "status after undefine",
    )?;
    let listed = ok(ctx.engine.list(), "list")?;
    ensure!(
        listed.iter().all(|s| s.name != vm),
        "undefined VM still listed"
    );
    Ok(())
}

fn l02_define_idempotent(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l02");
    let vm = running(ctx, "conf-l02")?;
    let again = ok(ctx.engine.define(&spec), "second define")?;
    ensure!(
        again.state == Running,
        "re-define changed state to {}",
        again.state
    );
    let count = ok(ctx.engine.list(), "list")?
        .iter()
        .filter(|s| s.name == vm)
        .count();
    ensure!(count == 1, "VM listed {count} times");
    teardown(ctx, &vm)
}

fn l03_define_conflict(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l03");
    let vm = spec.name.clone();
    ok(ctx.engine.define(&spec), "define")?;
    let mut other = spec.clone();
    other.machine.memory_mib += 64;
    expect_code(
        ctx.engine.define(&other),
        ErrorCode::VmExists,
        "conflicting define",
    )?;
    expect_state(ctx, &vm, Defined, "conflicting define")?;
    // The original spec is still the one on record: defining it again is a no-op.
    ok(ctx.engine.define(&spec), "re-define original")?;
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l04_start_idempotent(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-l04")?;
    let moves = rec.moves().len();
    ok(ctx.engine.start(&vm, &CancelToken::new()), "second start")?;
    expect_state(ctx, &vm, Running, "second start")?;
    ensure!(rec.moves().len() == moves, "second start made transitions");
    teardown(ctx, &vm)
}

fn l05_stop_idempotent(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l05");
    ok(ctx.engine.define(&ctx.spec("conf-l05")), "define")?;
    let before = rec.moves().len();
    let outcome = ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop defined",
    )?;
    ensure!(
        outcome.status.state == Defined,
        "stop of a defined VM moved it to {}",
        outcome.status.state
    );
    ensure!(
        rec.moves().len() == before,
        "stop of a defined VM made transitions"
    );
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    let before = rec.moves().len();
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "second stop",
    )?;
    expect_state(ctx, &vm, Stopped, "second stop")?;
    ensure!(rec.moves().len() == before, "second stop made transitions");
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l06_pause_resume(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-l06")?;
    ok(ctx.engine.pause(&vm), "pause")?;
    expect_state(ctx, &vm, Paused, "pause")?;
    let n = rec.moves().len();
    ok(ctx.engine.pause(&vm), "second pause")?;
    ensure!(rec.moves().len() == n, "second pause made transitions");
    ok(ctx.engine.resume(&vm), "resume")?;
    expect_state(ctx, &vm, Running, "resume")?;
    let n = rec.moves().len();
    ok(ctx.engine.resume(&vm), "second resume")?;
    ensure!(rec.moves().len() == n, "second resume made transitions");
    teardown(ctx, &vm)
}

fn l07_illegal_transitions(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l07");
    ok(ctx.engine.define(&ctx.spec("conf-l07")), "define")?;
    let caps = ctx.engine.capabilities();
    if caps.has(Pause) {
        refused(ctx, &rec, &vm, "pause a defined VM", || {
            ctx.engine.pause(&vm)
        })?;
        refused(ctx, &rec, &vm, "resume a defined VM", || {
            ctx.engine.resume(&vm)
        })?;
    }
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    refused(ctx, &rec, &vm, "undefine a running VM", || {
        ctx.engine.undefine(&vm)
    })?;
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    if caps.has(Pause) {
        refused(ctx, &rec, &vm, "pause a stopped VM", || {
            ctx.engine.pause(&vm)
        })?;
    }
    if caps.has(Reboot) {
        refused(ctx, &rec, &vm, "reboot a stopped VM", || {
            ctx.engine.reboot(&vm, &CancelToken::new())
        })?;
    }
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l08_graceful_stop(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l08")?;
    let outcome = ok(
        ctx.engine.stop(&vm, graceful(ctx), &CancelToken::new()),
        "stop",
    )?;
    ensure!(
        outcome.status.state == Stopped,
        "stop gave {}",
        outcome.status.state
    );
    ensure!(
        !outcome.escalated,
        "a cooperative guest's stop was escalated"
    );
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l09_graceful_stop_escalates(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l09")?;
    let timeout = ctx.harness.graceful_timeout();
    let outcome = ok(
        ctx.engine
            .stop(&vm, StopMode::Graceful { timeout }, &CancelToken::new()),
        "stop",
    )?;
    ensure!(
        outcome.status.state == Stopped,
        "stop gave {}",
        outcome.status.state
    );
    ensure!(
        outcome.escalated,
        "an ignored graceful stop was not escalated"
    );
    ensure!(
        outcome.took >= timeout,
        "escalated after {:?}, before the {timeout:?} timeout",
        outcome.took
    );
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l10_force_stop(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l10")?;
    let outcome = ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    ensure!(
        outcome.status.state == Stopped,
        "force stop gave {}",
        outcome.status.state
    );
    ensure!(!outcome.escalated, "a forced stop reports escalation");
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l11_reboot(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l11")?;
    let status = ok(ctx.engine.reboot(&vm, &CancelToken::new()), "reboot")?;
    ensure!(
        status.state == Running,
        "reboot left the VM {}",
        status.state
    );
    expect_state(ctx, &vm, Running, "reboot")?;
    teardown(ctx, &vm)
}

fn l12_undefine_missing(ctx: &Ctx<'_>) -> Check {
    expect_code(
        ctx.engine.undefine(&name("conf-missing")),
        ErrorCode::VmNotFound,
        "undefine",
    )
}

fn l13_missing_vm(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-missing");
    let c = CancelToken::new();
    expect_code(ctx.engine.start(&vm, &c), ErrorCode::VmNotFound, "start")?;
    expect_code(
        ctx.engine.stop(&vm, StopMode::Force, &c),
        ErrorCode::VmNotFound,
        "stop",
    )?;
    expect_code(ctx.engine.status(&vm), ErrorCode::VmNotFound, "status")?;
    if ctx.engine.capabilities().has(Pause) {
        expect_code(ctx.engine.pause(&vm), ErrorCode::VmNotFound, "pause")?;
        expect_code(ctx.engine.resume(&vm), ErrorCode::VmNotFound, "resume")?;
    }
    Ok(())
}

fn l14_list(ctx: &Ctx<'_>) -> Check {
    let a = name("conf-l14-a");
    ok(ctx.engine.define(&ctx.spec("conf-l14-a")), "define a")?;
    let b = running(ctx, "conf-l14-b")?;
    let listed: Vec<_> = ok(ctx.engine.list(), "list")?
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect();
    let want = vec![(a.clone(), Defined), (b.clone(), Running)];
    ensure!(listed == want, "list gave {listed:?}, expected {want:?}");
    ok(ctx.engine.undefine(&a), "undefine a")?;
    let listed: Vec<_> = ok(ctx.engine.list(), "list")?
        .into_iter()
        .map(|s| s.name)
        .collect();
    ensure!(
        listed == vec![b.clone()],
        "after undefine list gave {listed:?}"
    );
    teardown(ctx, &b)
}

fn l15_restart(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l15")?;
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    ok(ctx.engine.start(&vm, &CancelToken::new()), "restart")?;
    expect_state(ctx, &vm, Running, "restart")?;
    teardown(ctx, &vm)
}

fn l16_cancelled_start(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l16");
    ok(ctx.engine.define(&ctx.spec("conf-l16")), "define")?;
    let before = rec.moves().len();
    let cancel = CancelToken::new();
    cancel.cancel();
    expect_code(
        ctx.engine.start(&vm, &cancel),
        ErrorCode::Cancelled,
        "cancelled start",
    )?;
    expect_state(ctx, &vm, Defined, "cancelled start")?;
    ensure!(
        rec.moves().len() == before,
        "a cancelled start made transitions"
    );
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn l17_name_reuse(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l17");
    ok(ctx.engine.define(&spec), "define")?;
    ok(ctx.engine.undefine(&spec.name), "undefine")?;
    let mut other = spec.clone();
    other.machine.memory_mib += 64;
    let status = ok(
        ctx.engine.define(&other),
        "define a new spec under the freed name",
    )?;
    ensure!(status.state == Defined, "redefined VM is {}", status.state);
    ok(ctx.engine.undefine(&spec.name), "undefine")
}

fn o01_observers_in_order(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-o01")?;
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    ok(ctx.engine.undefine(&vm), "undefine")?;
    let want = vec![
        (None, Defined),
        (Some(Defined), Starting),
        (Some(Starting), Running),
        (Some(Running), Stopping),
        (Some(Stopping), Stopped),
        (Some(Stopped), Deleted),
    ];
    let got = rec.moves();
    ensure!(got == want, "observer saw {got:?}, expected {want:?}");
    let events = rec.0.lock().unwrap().clone();
    ensure!(
        events.iter().all(|e| e.vm == vm),
        "events name the wrong VM"
    );
    ensure!(
        events.windows(2).all(|w| w[0].at <= w[1].at),
        "event timestamps go backwards"
    );
    Ok(())
}

struct Panicker;
impl LifecycleObserver for Panicker {
    fn on_transition(&self, _: &TransitionEvent) {
        panic!("conformance: this observer always panics");
    }
}

fn o02_panicking_observer(ctx: &Ctx<'_>) -> Check {
    ctx.engine.observe(Arc::new(Panicker));
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-o02")?;
    ensure!(
        rec.moves().len() == 3,
        "observer after a panicking one saw {:?}",
        rec.moves()
    );
    teardown(ctx, &vm)
}

fn s01_snapshot_round_trip(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s01")?;
    let id = SnapshotId::new("conf-s01-snap").unwrap();
    let info = ok(
        ctx.engine
            .save(&vm, &id, SaveMode::KeepPaused, &CancelToken::new()),
        "save",
    )?;
    ensure!(info.id == id && info.vm == vm, "snapshot info {info:?}");
    ensure!(info.size_bytes > 0, "snapshot has no bytes");
    expect_state(ctx, &vm, Paused, "save (keep paused)")?;
    let listed = ok(ctx.engine.list_snapshots(Some(&vm)), "list snapshots")?;
    ensure!(listed == vec![info.clone()], "listed {listed:?}");
    ok(
        ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()),
        "stop",
    )?;
    ok(ctx.engine.restore(&vm, &id, &CancelToken::new()), "restore")?;
    expect_state(ctx, &vm, Running, "restore")?;
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")?;
    let listed = ok(ctx.engine.list_snapshots(None), "list snapshots")?;
    ensure!(
        listed.iter().all(|s| s.id != id),
        "deleted snapshot still listed"
    );
    Ok(())
}

fn s02_save_needs_a_guest(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-s02");
    ok(ctx.engine.define(&ctx.spec("conf-s02")), "define")?;
    let id = SnapshotId::new("conf-s02-snap").unwrap();
    refused(ctx, &rec, &vm, "save a defined VM", || {
        ctx.engine
            .save(&vm, &id, SaveMode::KeepPaused, &CancelToken::new())
    })?;
    let listed = ok(ctx.engine.list_snapshots(None), "list")?;
    ensure!(listed.is_empty(), "a refused save left {listed:?}");
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn s03_restore_missing(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-s03");
    ok(ctx.engine.define(&ctx.spec("conf-s03")), "define")?;
    let missing = SnapshotId::new("conf-nope").unwrap();
    expect_code(
        ctx.engine.restore(&vm, &missing, &CancelToken::new()),
        ErrorCode::SnapshotNotFound,
        "restore",
    )?;
    expect_state(ctx, &vm, Defined, "failed restore")?;
    expect_code(
        ctx.engine.delete_snapshot(&missing),
        ErrorCode::SnapshotNotFound,
        "delete",
    )?;
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn s04_sleep_wake(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-s04")?;
    let id = SnapshotId::new("conf-s04-snap").unwrap();
    ok(
        ctx.engine
            .save(&vm, &id, SaveMode::Sleep, &CancelToken::new()),
        "save",
    )?;
    expect_state(ctx, &vm, Sleeping, "save (sleep)")?;
    expect_code(
        ctx.engine.delete_snapshot(&id),
        ErrorCode::SnapshotInUse,
        "delete in use",
    )?;
    ok(ctx.engine.restore(&vm, &id, &CancelToken::new()), "wake")?;
    expect_state(ctx, &vm, Running, "wake")?;
    teardown(ctx, &vm)?;
    ok(ctx.engine.delete_snapshot(&id), "delete after wake")
}

fn s06_restore_into_a_clone(ctx: &Ctx<'_>) -> Check {
    let source = running(ctx, "conf-s06")?;
    let id = SnapshotId::new("conf-s06-base").unwrap();
    let c = CancelToken::new();
    ok(
        ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c),
        "save",
    )?;
    // Same spec under another name: a clone.
    let clone = name("conf-s06-clone");
    ok(
        ctx.engine.define(&ctx.spec("conf-s06-clone")),
        "define clone",
    )?;
    ok(
        ctx.engine.restore(&clone, &id, &c),
        "restore into the clone",
    )?;
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

fn s07_clones_stay_in_their_tenant_and_pool(ctx: &Ctx<'_>) -> Check {
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
    let info = ok(
        ctx.engine.save(&source, &id, SaveMode::KeepPaused, &c),
        "save",
    )?;
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
        expect_code(
            ctx.engine.restore(&other.name, &id, &c),
            ErrorCode::SnapshotMismatch,
            n,
        )?;
        expect_state(ctx, &other.name, Defined, "refused restore")?;
        refused.push(other.name);
    }
    // The same tenant and pool: a clone.
    let mut sibling = ctx.spec("conf-s07-sibling");
    sibling.tenant = tenant("acme");
    sibling.pool = pool("web");
    ok(ctx.engine.define(&sibling), "define a sibling")?;
    ok(
        ctx.engine.restore(&sibling.name, &id, &c),
        "restore into a sibling of the same pool",
    )?;
    expect_state(ctx, &sibling.name, Running, "sibling restore")?;
    for vm in refused {
        ok(ctx.engine.undefine(&vm), "undefine")?;
    }
    teardown(ctx, &sibling.name)?;
    teardown(ctx, &source)?;
    ok(ctx.engine.delete_snapshot(&id), "delete snapshot")
}

fn s05_snapshot_ids_unique(ctx: &Ctx<'_>) -> Check {
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

fn vol(s: &str) -> VolumeId {
    VolumeId::new(s).unwrap()
}

fn d01_volume_lifecycle(ctx: &Ctx<'_>) -> Check {
    let (base, top) = (vol("conf-d01-base"), vol("conf-d01-top"));
    let info = ok(
        ctx.engine
            .create_volume(&base, &VolumeSource::Blank { size_mib: 64 }),
        "create blank",
    )?;
    ensure!(info.size_mib == 64, "blank volume is {} MiB", info.size_mib);
    let info = ok(
        ctx.engine
            .create_volume(&top, &VolumeSource::Overlay { base: base.clone() }),
        "create overlay",
    )?;
    ensure!(
        info.base.as_ref() == Some(&base),
        "overlay base is {:?}",
        info.base
    );
    let info = ok(ctx.engine.resize_volume(&top, 128), "grow")?;
    ensure!(
        info.size_mib == 128,
        "grown volume is {} MiB",
        info.size_mib
    );
    expect_code(
        ctx.engine.resize_volume(&top, 32),
        ErrorCode::InvalidArgument,
        "shrink",
    )?;
    ensure!(
        ok(ctx.engine.volume(&top), "volume")?.size_mib == 128,
        "refused shrink changed size"
    );
    ok(ctx.engine.delete_volume(&top), "delete overlay")?;
    ok(ctx.engine.delete_volume(&base), "delete base")?;
    ensure!(
        ok(ctx.engine.list_volumes(), "list")?.is_empty(),
        "volumes left behind"
    );
    Ok(())
}

fn d02_disk_with_snapshots(ctx: &Ctx<'_>) -> Check {
    let v = vol("conf-d02");
    let snap = SnapshotId::new("conf-d02-snap").unwrap();
    ok(
        ctx.engine
            .create_volume(&v, &VolumeSource::Blank { size_mib: 16 }),
        "create",
    )?;
    ok(ctx.engine.snapshot_volume(&v, &snap), "snapshot")?;
    expect_code(
        ctx.engine.delete_volume(&v),
        ErrorCode::DiskHasSnapshots,
        "delete",
    )?;
    let info = ok(ctx.engine.volume(&v), "volume after refused delete")?;
    ensure!(
        info.snapshots == vec![snap.clone()],
        "snapshots now {:?}",
        info.snapshots
    );
    ok(
        ctx.engine.delete_volume_snapshot(&v, &snap),
        "delete snapshot",
    )?;
    ok(ctx.engine.delete_volume(&v), "delete")
}

fn d03_base_in_use(ctx: &Ctx<'_>) -> Check {
    let (base, top) = (vol("conf-d03-base"), vol("conf-d03-top"));
    ok(
        ctx.engine
            .create_volume(&base, &VolumeSource::Blank { size_mib: 16 }),
        "create",
    )?;
    ok(
        ctx.engine
            .create_volume(&top, &VolumeSource::Overlay { base: base.clone() }),
        "overlay",
    )?;
    expect_code(
        ctx.engine.delete_volume(&base),
        ErrorCode::DiskInUse,
        "delete base",
    )?;
    ok(ctx.engine.volume(&base), "base still there")?;
    ok(ctx.engine.delete_volume(&top), "delete overlay")?;
    ok(ctx.engine.delete_volume(&base), "delete base")
}

fn d04_volume_ids(ctx: &Ctx<'_>) -> Check {
    let v = vol("conf-d04");
    ok(
        ctx.engine
            .create_volume(&v, &VolumeSource::Blank { size_mib: 16 }),
        "create",
    )?;
    expect_code(
        ctx.engine
            .create_volume(&v, &VolumeSource::Blank { size_mib: 32 }),
        ErrorCode::DiskExists,
        "create again",
    )?;
    ensure!(
        ok(ctx.engine.volume(&v), "volume")?.size_mib == 16,
        "duplicate create changed the volume"
    );
    ok(ctx.engine.delete_volume(&v), "delete")?;
    expect_code(
        ctx.engine.delete_volume(&v),
        ErrorCode::DiskNotFound,
        "delete missing",
    )?;
    expect_code(
        ctx.engine
            .create_volume(&vol("conf-d04-top"), &VolumeSource::Overlay { base: v }),
        ErrorCode::DiskNotFound,
        "overlay of a missing base",
    )
}

fn n01_nics(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-n01");
    ok(ctx.engine.define(&ctx.spec("conf-n01")), "define")?;
    let before = ok(ctx.engine.list_nics(&vm), "list")?.len();
    let nic = NicSpec {
        name: DeviceName::new("conf-net9").unwrap(),
        mode: NicMode::User,
        forward: vec![],
    };
    ok(ctx.engine.attach_nic(&vm, &nic), "attach")?;
    expect_code(
        ctx.engine.attach_nic(&vm, &nic),
        ErrorCode::NicExists,
        "attach twice",
    )?;
    let nics = ok(ctx.engine.list_nics(&vm), "list")?;
    ensure!(
        nics.len() == before + 1 && nics.last() == Some(&nic),
        "nics now {nics:?}"
    );
    ok(ctx.engine.detach_nic(&vm, &nic.name), "detach")?;
    expect_code(
        ctx.engine.detach_nic(&vm, &nic.name),
        ErrorCode::NicNotFound,
        "detach twice",
    )?;
    ok(ctx.engine.undefine(&vm), "undefine")
}

fn e01_events_without_gaps(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let start = {
        // Position the cursor at the current end so only this scenario's events count.
        let mut cursor = EventCursor::after(0);
        while !ok(cursor.next_page(ctx.engine, 1000), "drain")?
            .events
            .is_empty()
        {}
        cursor.position()
    };
    let vm = running(ctx, "conf-e01")?;
    teardown(ctx, &vm)?;
    let mut cursor = EventCursor::after(start);
    let mut seen = Vec::new();
    let mut expected_seq = start + 1;
    loop {
        let page = ok(cursor.next_page(ctx.engine, 2), "events")?;
        if let Some(gap) = page.gap {
            return Err(format!("unexpected gap {gap:?} reading fresh events"));
        }
        if page.events.is_empty() {
            break;
        }
        for e in page.events {
            ensure!(
                e.seq == expected_seq,
                "seq {} where {expected_seq} was due",
                e.seq
            );
            expected_seq += 1;
            if let EventKind::Transition(t) = e.kind {
                seen.push(t);
            }
        }
    }
    let observed = rec.0.lock().unwrap().clone();
    ensure!(
        seen == observed,
        "stream transitions {seen:?} differ from observed {observed:?}"
    );
    ensure!(!seen.is_empty(), "no transition events");
    Ok(())
}

fn e02_event_positions(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-e02")?;
    let mut cursor = EventCursor::after(0);
    loop {
        let page = ok(cursor.next_page(ctx.engine, 1000), "events")?;
        if let (Some(gap), Some(first)) = (page.gap, page.events.first()) {
            ensure!(
                gap.from <= gap.to && first.seq == gap.to + 1,
                "inconsistent gap {gap:?}"
            );
        }
        if page.events.is_empty() {
            break;
        }
    }
    let end = cursor.position();
    ensure!(end > 0, "no events after a start");
    let beyond = ok(
        ctx.engine.events_since(end + 100, 10),
        "read beyond the end",
    )?;
    ensure!(
        beyond.events.is_empty() && beyond.gap.is_none(),
        "read beyond end gave {beyond:?}"
    );
    let at_end = ok(ctx.engine.events_since(end, 10), "read at the end")?;
    ensure!(
        at_end.events.is_empty(),
        "read at end gave {:?}",
        at_end.events
    );
    teardown(ctx, &vm)
}

fn c01_missing_capabilities_are_refused(ctx: &Ctx<'_>) -> Check {
    let caps = ctx.engine.capabilities();
    let missing: Vec<_> = Capability::ALL.iter().filter(|c| !caps.has(**c)).collect();
    if missing.is_empty() {
        return Err(skip("the engine has every capability; no refusal to check"));
    }
    let vm = running(ctx, "conf-c01")?;
    let c = CancelToken::new();
    for cap in missing {
        let code = |r: hangar_core::Result<()>| {
            expect_code(r, ErrorCode::Unsupported, &format!("{cap:?}"))
        };
        match cap {
            Pause => code(ctx.engine.pause(&vm).map(|_| ()))?,
            Reboot => code(ctx.engine.reboot(&vm, &c).map(|_| ()))?,
            MemorySnapshots => code(
                ctx.engine
                    .save(
                        &vm,
                        &SnapshotId::new("conf-c01").unwrap(),
                        SaveMode::KeepPaused,
                        &c,
                    )
                    .map(|_| ()),
            )?,
            Volumes => code(
                ctx.engine
                    .create_volume(&vol("conf-c01"), &VolumeSource::Blank { size_mib: 1 })
                    .map(|_| ()),
            )?,
            NicHotplug => code(ctx.engine.attach_nic(
                &vm,
                &NicSpec {
                    name: DeviceName::new("conf-hot").unwrap(),
                    mode: NicMode::User,
                    forward: vec![],
                },
            ))?,
            // Observable only through other operations: a stop must still work (by force).
            GracefulStop | DiskSnapshots => {}
        }
    }
    expect_state(ctx, &vm, Running, "refused operations")?;
    teardown(ctx, &vm)
}

const NONE: Knobs = Knobs {
    ignore_graceful_stop: false,
};

/// Every scenario, in id order. Append-only: never renumber.
pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "CONF-L-01",
        title: "define → start → stop → undefine round trip",
        requires: &[GracefulStop],
        knobs: NONE,
        run: l01_round_trip,
    },
    Scenario {
        id: "CONF-L-02",
        title: "define is idempotent for the same spec",
        requires: &[],
        knobs: NONE,
        run: l02_define_idempotent,
    },
    Scenario {
        id: "CONF-L-03",
        title: "define with a different spec under a taken name is E_VM_EXISTS",
        requires: &[],
        knobs: NONE,
        run: l03_define_conflict,
    },
    Scenario {
        id: "CONF-L-04",
        title: "start of a running VM is a no-op",
        requires: &[],
        knobs: NONE,
        run: l04_start_idempotent,
    },
    Scenario {
        id: "CONF-L-05",
        title: "stop of a VM that is not running is a no-op",
        requires: &[],
        knobs: NONE,
        run: l05_stop_idempotent,
    },
    Scenario {
        id: "CONF-L-06",
        title: "pause/resume round trip; both idempotent",
        requires: &[Pause],
        knobs: NONE,
        run: l06_pause_resume,
    },
    Scenario {
        id: "CONF-L-07",
        title: "illegal moves return E_INVALID_TRANSITION and change nothing",
        requires: &[],
        knobs: NONE,
        run: l07_illegal_transitions,
    },
    Scenario {
        id: "CONF-L-08",
        title: "a cooperative guest stops gracefully without escalation",
        requires: &[GracefulStop],
        knobs: NONE,
        run: l08_graceful_stop,
    },
    Scenario {
        id: "CONF-L-09",
        title: "a graceful stop the guest ignores escalates to force after the timeout",
        requires: &[],
        knobs: Knobs {
            ignore_graceful_stop: true,
        },
        run: l09_graceful_stop_escalates,
    },
    Scenario {
        id: "CONF-L-10",
        title: "force stop",
        requires: &[],
        knobs: NONE,
        run: l10_force_stop,
    },
    Scenario {
        id: "CONF-L-11",
        title: "reboot keeps the VM running",
        requires: &[Reboot],
        knobs: NONE,
        run: l11_reboot,
    },
    Scenario {
        id: "CONF-L-12",
        title: "undefine of a missing VM is E_VM_NOT_FOUND",
        requires: &[],
        knobs: NONE,
        run: l12_undefine_missing,
    },
    Scenario {
        id: "CONF-L-13",
        title: "every operation on a missing VM is E_VM_NOT_FOUND",
        requires: &[],
        knobs: NONE,
        run: l13_missing_vm,
    },
    Scenario {
        id: "CONF-L-14",
        title: "list shows every live VM, sorted, with its state",
        requires: &[],
        knobs: NONE,
        run: l14_list,
    },
    Scenario {
        id: "CONF-L-15",
        title: "a stopped VM starts again",
        requires: &[],
        knobs: NONE,
        run: l15_restart,
    },
    Scenario {
        id: "CONF-L-16",
        title: "a cancelled start is E_CANCELLED and changes nothing",
        requires: &[],
        knobs: NONE,
        run: l16_cancelled_start,
    },
    Scenario {
        id: "CONF-L-17",
        title: "an undefined VM's name can be reused with another spec",
        requires: &[],
        knobs: NONE,
        run: l17_name_reuse,
    },
    Scenario {
        id: "CONF-O-01",
        title: "observers see every transition exactly once, in order",
        requires: &[],
        knobs: NONE,
        run: o01_observers_in_order,
    },
    Scenario {
        id: "CONF-O-02",
        title: "a panicking observer is contained",
        requires: &[],
        knobs: NONE,
        run: o02_panicking_observer,
    },
    Scenario {
        id: "CONF-S-01",
        title: "memory snapshot save/restore round trip",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s01_snapshot_round_trip,
    },
    Scenario {
        id: "CONF-S-02",
        title: "saving a VM that is not running is refused and leaves no snapshot",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s02_save_needs_a_guest,
    },
    Scenario {
        id: "CONF-S-03",
        title: "restore/delete of a missing snapshot is E_SNAPSHOT_NOT_FOUND",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s03_restore_missing,
    },
    Scenario {
        id: "CONF-S-04",
        title: "sleep and wake; a snapshot in use cannot be deleted",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s04_sleep_wake,
    },
    Scenario {
        id: "CONF-S-05",
        title: "snapshot ids are unique",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s05_snapshot_ids_unique,
    },
    Scenario {
        id: "CONF-S-06",
        title:
            "a snapshot restores into a clone (same spec, other name); other hardware is refused",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s06_restore_into_a_clone,
    },
    Scenario {
        id: "CONF-S-07",
        title: "a snapshot never seeds a clone in another tenant or another pool",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s07_clones_stay_in_their_tenant_and_pool,
    },
    Scenario {
        id: "CONF-D-01",
        title: "volume create, overlay, grow, refuse shrink, delete",
        requires: &[Volumes],
        knobs: NONE,
        run: d01_volume_lifecycle,
    },
    Scenario {
        id: "CONF-D-02",
        title: "deleting a disk that has snapshots is refused",
        requires: &[Volumes, DiskSnapshots],
        knobs: NONE,
        run: d02_disk_with_snapshots,
    },
    Scenario {
        id: "CONF-D-03",
        title: "deleting the base of an overlay is refused",
        requires: &[Volumes],
        knobs: NONE,
        run: d03_base_in_use,
    },
    Scenario {
        id: "CONF-D-04",
        title: "volume ids are unique; missing volumes are E_DISK_NOT_FOUND",
        requires: &[Volumes],
        knobs: NONE,
        run: d04_volume_ids,
    },
    Scenario {
        id: "CONF-N-01",
        title: "attach/detach NICs; duplicates and missing ones are coded errors",
        requires: &[],
        knobs: NONE,
        run: n01_nics,
    },
    Scenario {
        id: "CONF-E-01",
        title: "the event stream has no gaps and matches the observers",
        requires: &[],
        knobs: NONE,
        run: e01_events_without_gaps,
    },
    Scenario {
        id: "CONF-E-02",
        title: "event positions: gaps are consistent, reads past the end are empty",
        requires: &[],
        knobs: NONE,
        run: e02_event_positions,
    },
    Scenario {
        id: "CONF-C-01",
        title: "operations needing a missing capability are E_UNSUPPORTED",
        requires: &[],
        knobs: NONE,
        run: c01_missing_capabilities_are_refused,
    },
];

//! `Lifecycle`: define, start, stop (graceful, escalating, forced), pause, reboot, undefine,
//! listing, and the state machine's refusals.

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::lifecycle::VmState;

use crate::Ctx;

use Capability::*;
use VmState::*;

use super::*;

pub(super) fn l01_round_trip(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-l01");
    let status = ok(ctx.engine.define(&ctx.spec("conf-l01")), "define")?;
    ensure!(status.state == Defined, "define gave {}", status.state);
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    expect_state(ctx, &vm, Running, "start")?;
    stop_to_stopped(ctx, &vm, graceful(ctx))?;
    ok(ctx.engine.undefine(&vm), "undefine")?;
    expect_code(ctx.engine.status(&vm), ErrorCode::VmNotFound, "status after undefine")?;
    let listed = ok(ctx.engine.list(), "list")?;
    ensure!(listed.iter().all(|s| s.name != vm), "undefined VM still listed");
    Ok(())
}

pub(super) fn l02_define_idempotent(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l02");
    let vm = running(ctx, "conf-l02")?;
    let again = ok(ctx.engine.define(&spec), "second define")?;
    ensure!(again.state == Running, "re-define changed state to {}", again.state);
    let count = ok(ctx.engine.list(), "list")?.iter().filter(|s| s.name == vm).count();
    ensure!(count == 1, "VM listed {count} times");
    teardown(ctx, &vm)
}

pub(super) fn l03_define_conflict(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l03");
    let vm = spec.name.clone();
    ok(ctx.engine.define(&spec), "define")?;
    let mut other = spec.clone();
    other.machine.memory_mib += 64;
    expect_code(ctx.engine.define(&other), ErrorCode::VmExists, "conflicting define")?;
    expect_state(ctx, &vm, Defined, "conflicting define")?;
    // The original spec is still the one on record: defining it again is a no-op.
    ok(ctx.engine.define(&spec), "re-define original")?;
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l04_start_idempotent(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-l04")?;
    let moves = rec.moves().len();
    ok(ctx.engine.start(&vm, &CancelToken::new()), "second start")?;
    expect_state(ctx, &vm, Running, "second start")?;
    ensure!(rec.moves().len() == moves, "second start made transitions");
    teardown(ctx, &vm)
}

pub(super) fn l05_stop_idempotent(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l05");
    ok(ctx.engine.define(&ctx.spec("conf-l05")), "define")?;
    let before = rec.moves().len();
    let outcome = ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop defined")?;
    ensure!(
        outcome.status.state == Defined,
        "stop of a defined VM moved it to {}",
        outcome.status.state
    );
    ensure!(rec.moves().len() == before, "stop of a defined VM made transitions");
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    let before = rec.moves().len();
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "second stop")?;
    expect_state(ctx, &vm, Stopped, "second stop")?;
    ensure!(rec.moves().len() == before, "second stop made transitions");
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l06_pause_resume(ctx: &Ctx<'_>) -> Check {
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

pub(super) fn l07_illegal_transitions(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l07");
    ok(ctx.engine.define(&ctx.spec("conf-l07")), "define")?;
    let caps = ctx.engine.capabilities();
    if caps.has(Pause) {
        refused(ctx, &rec, &vm, "pause a defined VM", || ctx.engine.pause(&vm))?;
        refused(ctx, &rec, &vm, "resume a defined VM", || ctx.engine.resume(&vm))?;
    }
    ok(ctx.engine.start(&vm, &CancelToken::new()), "start")?;
    refused(ctx, &rec, &vm, "undefine a running VM", || ctx.engine.undefine(&vm))?;
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    if caps.has(Pause) {
        refused(ctx, &rec, &vm, "pause a stopped VM", || ctx.engine.pause(&vm))?;
    }
    if caps.has(Reboot) {
        refused(ctx, &rec, &vm, "reboot a stopped VM", || {
            ctx.engine.reboot(&vm, &CancelToken::new())
        })?;
    }
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l08_graceful_stop(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l08")?;
    let outcome = stop_to_stopped(ctx, &vm, graceful(ctx))?;
    ensure!(!outcome.escalated, "a cooperative guest's stop was escalated");
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l09_graceful_stop_escalates(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l09")?;
    let timeout = ctx.harness.graceful_timeout();
    let outcome = stop_to_stopped(ctx, &vm, StopMode::Graceful { timeout })?;
    ensure!(outcome.escalated, "an ignored graceful stop was not escalated");
    ensure!(
        outcome.took >= timeout,
        "escalated after {:?}, before the {timeout:?} timeout",
        outcome.took
    );
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l10_force_stop(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l10")?;
    let outcome = ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    ensure!(outcome.status.state == Stopped, "force stop gave {}", outcome.status.state);
    ensure!(!outcome.escalated, "a forced stop reports escalation");
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l11_reboot(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l11")?;
    let status = ok(ctx.engine.reboot(&vm, &CancelToken::new()), "reboot")?;
    ensure!(status.state == Running, "reboot left the VM {}", status.state);
    expect_state(ctx, &vm, Running, "reboot")?;
    teardown(ctx, &vm)
}

pub(super) fn l12_undefine_missing(ctx: &Ctx<'_>) -> Check {
    expect_code(ctx.engine.undefine(&name("conf-missing")), ErrorCode::VmNotFound, "undefine")
}

pub(super) fn l13_missing_vm(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-missing");
    let c = CancelToken::new();
    expect_code(ctx.engine.start(&vm, &c), ErrorCode::VmNotFound, "start")?;
    expect_code(ctx.engine.stop(&vm, StopMode::Force, &c), ErrorCode::VmNotFound, "stop")?;
    expect_code(ctx.engine.status(&vm), ErrorCode::VmNotFound, "status")?;
    if ctx.engine.capabilities().has(Pause) {
        expect_code(ctx.engine.pause(&vm), ErrorCode::VmNotFound, "pause")?;
        expect_code(ctx.engine.resume(&vm), ErrorCode::VmNotFound, "resume")?;
    }
    Ok(())
}

pub(super) fn l14_list(ctx: &Ctx<'_>) -> Check {
    let a = name("conf-l14-a");
    ok(ctx.engine.define(&ctx.spec("conf-l14-a")), "define a")?;
    let b = running(ctx, "conf-l14-b")?;
    let listed: Vec<_> =
        ok(ctx.engine.list(), "list")?.into_iter().map(|s| (s.name, s.state)).collect();
    let want = vec![(a.clone(), Defined), (b.clone(), Running)];
    ensure!(listed == want, "list gave {listed:?}, expected {want:?}");
    ok(ctx.engine.undefine(&a), "undefine a")?;
    let listed: Vec<_> = ok(ctx.engine.list(), "list")?.into_iter().map(|s| s.name).collect();
    ensure!(listed == vec![b.clone()], "after undefine list gave {listed:?}");
    teardown(ctx, &b)
}

pub(super) fn l15_restart(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-l15")?;
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    ok(ctx.engine.start(&vm, &CancelToken::new()), "restart")?;
    expect_state(ctx, &vm, Running, "restart")?;
    teardown(ctx, &vm)
}

pub(super) fn l16_cancelled_start(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = name("conf-l16");
    ok(ctx.engine.define(&ctx.spec("conf-l16")), "define")?;
    let before = rec.moves().len();
    let cancel = CancelToken::new();
    cancel.cancel();
    expect_code(ctx.engine.start(&vm, &cancel), ErrorCode::Cancelled, "cancelled start")?;
    expect_state(ctx, &vm, Defined, "cancelled start")?;
    ensure!(rec.moves().len() == before, "a cancelled start made transitions");
    ok(ctx.engine.undefine(&vm), "undefine")
}

pub(super) fn l17_name_reuse(ctx: &Ctx<'_>) -> Check {
    let spec = ctx.spec("conf-l17");
    ok(ctx.engine.define(&spec), "define")?;
    ok(ctx.engine.undefine(&spec.name), "undefine")?;
    let mut other = spec.clone();
    other.machine.memory_mib += 64;
    let status = ok(ctx.engine.define(&other), "define a new spec under the freed name")?;
    ensure!(status.state == Defined, "redefined VM is {}", status.state);
    ok(ctx.engine.undefine(&spec.name), "undefine")
}

//! The scenarios, one module per contract, and the table of them. Each is a plain function
//! over the contracts; ids are stable and append-only.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent, VmState};

use crate::{Ctx, Knobs, Scenario};

use capabilities::*;
use disks::*;
use events::*;
use guest::*;
use lifecycle::*;
use nics::*;
use observers::*;
use snapshots::*;

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

// After `ensure!`: a macro is visible only in what follows its definition.
mod capabilities;
mod disks;
mod events;
mod guest;
mod lifecycle;
mod nics;
mod observers;
mod snapshots;

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
    StopMode::Graceful { timeout: ctx.harness.graceful_timeout() }
}

/// Stops `vm` with `mode`; the outcome must leave it stopped.
fn stop_to_stopped(ctx: &Ctx<'_>, vm: &VmName, mode: StopMode) -> Result<StopOutcome, String> {
    let outcome = ok(ctx.engine.stop(vm, mode, &CancelToken::new()), "stop")?;
    ensure!(outcome.status.state == Stopped, "stop gave {}", outcome.status.state);
    Ok(outcome)
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
    ok(ctx.engine.stop(vm, StopMode::Force, &CancelToken::new()), "teardown stop")?;
    ok(ctx.engine.undefine(vm), "teardown undefine")
}

#[derive(Default)]
struct Recorder(Mutex<Vec<TransitionEvent>>);

impl Recorder {
    fn moves(&self) -> Vec<(Option<VmState>, VmState)> {
        self.0.lock().unwrap().iter().map(|e| (e.from, e.to)).collect()
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
    ctx: &Ctx<'_>, rec: &Recorder, vm: &VmName, what: &str,
    op: impl FnOnce() -> hangar_core::Result<T>,
) -> Check {
    let before = (state(ctx, vm)?, rec.moves().len());
    expect_code(op(), ErrorCode::InvalidTransition, what)?;
    let after = (state(ctx, vm)?, rec.moves().len());
    ensure!(before == after, "{what}: refused but changed something: {before:?} -> {after:?}");
    Ok(())
}

const NONE: Knobs = Knobs { ignore_graceful_stop: false };

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
        knobs: Knobs { ignore_graceful_stop: true },
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
        id: "CONF-S-08",
        title: "an unshared restore is a restore: same outcome and refusals, and saves again",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s08_restore_unshared_is_a_restore,
    },
    Scenario {
        id: "CONF-S-09",
        title: "a spare waits for one snapshot: restored from it, refused any other, stopped",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s09_a_spare_restores_its_snapshot_only,
    },
    Scenario {
        id: "CONF-S-10",
        title: "a wake consumes the snapshot it wakes from; the VM sleeps and wakes again",
        requires: &[MemorySnapshots],
        knobs: NONE,
        run: s10_a_wake_consumes_its_snapshot,
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
    Scenario {
        id: "CONF-G-01",
        title: "exec: exit codes, signals, 127 for a missing program, stdout and stdin",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g01_exec_codes_and_output,
    },
    Scenario {
        id: "CONF-G-02",
        title: "files written and read back keep their bytes, mode and mtime",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g02_files_keep_bytes_mode_and_mtime,
    },
    Scenario {
        id: "CONF-G-03",
        title: "guest info names the agent, kernel and root filesystem; sync answers",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g03_info_and_sync,
    },
    Scenario {
        id: "CONF-G-04",
        title: "no agent unless the VM runs: E_AGENT_UNAVAILABLE, E_VM_NOT_FOUND",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g04_no_agent_unless_running,
    },
    Scenario {
        id: "CONF-G-05",
        title: "a directory written as a tar stream reads back the same; no merging into one",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g05_directories_round_trip_whole,
    },
    Scenario {
        id: "CONF-G-06",
        title: "network configuration: a bad NIC refused; an address and hostname show inside",
        requires: &[GuestAgent],
        knobs: NONE,
        run: g06_network_configuration_shows_in_the_guest,
    },
];

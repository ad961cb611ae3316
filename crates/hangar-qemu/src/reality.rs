//! Observed reality wins: refreshing a VM's record against its process and QMP, adopting
//! the operations of commands that died, and the upkeep of live QEMUs.

use crate::error::QemuError;
use std::path::Path;

use hangar_core::error::Result;
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{Cause, VmState};
use hangar_plan::Plan;
use hangar_store::{ProcessIdentity, VmLock, VmRecord};

use crate::confine::{self};
use crate::console::{self, LogTail, Marker};
use crate::engine::*;
use crate::process;

impl QemuEngine {
    /// Observed reality wins: a VM whose QEMU is gone is `stopped` (clean guest power-off) or
    /// `failed` (anything else); a running QEMU that reports an internal error is `failed`.
    pub(crate) fn refresh(&self, mut rec: VmRecord) -> Result<VmRecord> {
        let plan = Self::plan_of(&rec)?;
        let seen = match rec.process {
            None => Seen::NoProcess,
            Some(p) if process::alive(p) => {
                Self::upkeep(&plan, p);
                Seen::Alive
            }
            Some(_) => Seen::Exited { clean: Self::powered_off(&plan) },
        };
        let verdict = verdict(rec.state, seen);
        match verdict {
            Verdict::Unchanged => {}
            Verdict::PoweredOff | Verdict::Died | Verdict::Forget => {
                let pid = rec.process.map(|p| p.pid).unwrap_or_default();
                // Read before the cgroup goes with the rest of the runtime state.
                let oom_note = Self::oom_note(&plan);
                rec.process = None;
                self.cleanup_runtime(&plan);
                match verdict {
                    Verdict::PoweredOff => {
                        self.step(&mut rec, VmState::Stopping, Cause::Engine)?;
                        self.step(&mut rec, VmState::Stopped, Cause::Engine)?;
                    }
                    Verdict::Died => {
                        rec.reason = Some(format!(
                            "QEMU (pid {pid}) exited while nobody was watching{}; last output: {}",
                            oom_note.unwrap_or_default(),
                            Self::last_console(&plan)
                        ));
                        self.force(&mut rec, VmState::Failed)?;
                    }
                    _ => self.save(&mut rec)?,
                }
            }
            Verdict::SettleInterrupted => {
                // Only when nobody holds the VM's lock: the command that owned this operation
                // died (a killed daemon or CLI). Otherwise it is still at work; leave it be.
                if let Some(_lock) =
                    VmLock::try_acquire(&self.home, rec.name()).map_err(QemuError::Store)?
                {
                    self.adopt(&mut rec, &plan)?;
                }
            }
            Verdict::WatchForFault if self.fault_checked_lately(rec.process) => {}
            Verdict::WatchForFault => {
                if let Ok(status) = self.qmp(&plan).and_then(|ctl| ctl.status()) {
                    if let Some(p) = rec.process {
                        let mut checked =
                            self.fault_checked.lock().unwrap_or_else(|p| p.into_inner());
                        checked.retain(|_, at| at.elapsed() < FAULT_CHECK_INTERVAL);
                        checked.insert(p, std::time::Instant::now());
                    }
                    if status.is_fatal() {
                        rec.reason = Some(format!(
                            "QEMU reports {}; last output: {}",
                            status.name(),
                            Self::last_console(&plan)
                        ));
                        self.step(&mut rec, VmState::Failed, Cause::Engine)?;
                    }
                }
            }
            Verdict::LookForOrphan => {
                // Someone holding the lock may be between spawning QEMU and recording it.
                let Some(_lock) =
                    VmLock::try_acquire(&self.home, rec.name()).map_err(QemuError::Store)?
                else {
                    return Ok(rec);
                };
                // The owner may have died between spawning QEMU and recording its PID: find that
                // QEMU by its standard output (this VM's qemu.log, a path unique to the VM)
                // before declaring it gone, so it is adopted rather than orphaned.
                let found = process::find_by_output(&Path::new(&plan.runtime_dir).join("qemu.log"));
                match found {
                    Some(p) => {
                        rec.process = Some(p);
                        self.save(&mut rec)?;
                        if rec.state.is_in_flight() {
                            self.adopt(&mut rec, &plan)?;
                        }
                    }
                    None => {
                        rec.reason = Some(format!(
                            "no QEMU process while {}: an earlier command was interrupted",
                            rec.state
                        ));
                        self.force(&mut rec, VmState::Failed)?;
                    }
                }
            }
        }
        Ok(rec)
    }

    /// Whether this QEMU answered a fault check less than [`FAULT_CHECK_INTERVAL`] ago.
    fn fault_checked_lately(&self, p: Option<ProcessIdentity>) -> bool {
        p.is_some_and(|p| {
            self.fault_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&p)
                .is_some_and(|at| at.elapsed() < FAULT_CHECK_INTERVAL)
        })
    }

    /// Whether the guest's last console lines say it powered off (or exited) on purpose.
    fn powered_off(plan: &Plan) -> bool {
        Self::console_log(plan).is_some_and(|log| {
            console::last_lines(&log, 20).iter().any(|l| {
                matches!(
                    console::parse_marker(l),
                    Some(Marker::PowerOff) | Some(Marker::Exit { .. })
                ) || l.contains("reboot: Power down")
            })
        })
    }

    /// What a live QEMU needs now and then: its console log rotated, and (after a restart of
    /// an older Hangar, or if someone moved it) its cgroup found again.
    pub(crate) fn upkeep(plan: &Plan, p: ProcessIdentity) {
        if let Some(log) = Self::console_log(plan) {
            let _ = console::rotate(&log, console::LOG_ROTATE_BYTES);
        }
        if let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) {
            confine::ensure_in_cgroup(cg, p.pid);
        }
    }

    /// `": killed by its cgroup's out-of-memory killer …"` when that is why QEMU is gone.
    pub(crate) fn oom_note(plan: &Plan) -> Option<String> {
        let cg = plan.confinement.as_ref()?.cgroup.as_ref()?;
        let (kills, peak) = confine::oom_kills(cg)?;
        (kills > 0).then(|| {
            format!(
                ": killed by the out-of-memory killer of its cgroup (limit {} MiB{}: guest RAM + QEMU's overhead)",
                cg.memory_max_bytes >> 20,
                peak.map(|p| format!(", peak {} MiB", p >> 20)).unwrap_or_default()
            )
        })
    }

    /// Rotates the console logs of every running VM (hangard calls this every second).
    pub fn rotate_logs(&self) -> Result<()> {
        for rec in self.db(|s| s.list_vms())? {
            if let (Some(p), Ok(plan)) = (rec.process, Self::plan_of(&rec)) {
                if process::alive(p) {
                    Self::upkeep(&plan, p);
                }
            }
        }
        Ok(())
    }

    /// How a VM's QEMU is confined, and what its cgroup says now (for `hangar inspect`).
    pub fn confinement(&self, vm: &VmName) -> Result<Option<serde_json::Value>> {
        let rec = self.record(vm)?;
        let plan = Self::plan_of(&rec)?;
        Ok(plan.confinement.as_ref().map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            if let (Some(cg), Some(obj)) = (&c.cgroup, v.as_object_mut()) {
                obj.insert("cgroup_now".into(), confine::read_cgroup(cg));
            }
            v
        }))
    }

    /// What a running VM's QEMU takes in memory (`/proc/PID/smaps_rollup`: resident, its
    /// proportional share, and how much of it is shared with other processes, e.g. clones
    /// mapping one snapshot's RAM) and which file its guest RAM is mapped from, and how (for
    /// `hangar inspect`). `None` without a live QEMU.
    pub fn memory(&self, vm: &VmName) -> Result<Option<serde_json::Value>> {
        let rec = self.record(vm)?;
        let Some(p) = rec.process.filter(|p| process::alive(*p)) else { return Ok(None) };
        let Ok(rollup) = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", p.pid)) else {
            return Ok(None);
        };
        let kib = |field: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let ram = ram_mapping(p.pid, u64::from(rec.spec.machine.memory_mib) << 20);
        Ok(Some(serde_json::json!({
            "rss_bytes": kib("Rss") << 10,
            "pss_bytes": kib("Pss") << 10,
            "shared_bytes": (kib("Shared_Clean") + kib("Shared_Dirty")) << 10,
            "private_bytes": (kib("Private_Clean") + kib("Private_Dirty")) << 10,
            "ram_file": ram.as_ref().map(|(file, _)| file),
            "ram_mapping": ram.map(|(_, shared)| if shared { "shared" } else { "private" }),
        })))
    }

    pub(crate) fn adopt(&self, rec: &mut VmRecord, plan: &Plan) -> Result<()> {
        let before = rec.state;
        let pid = rec.process.map(|p| p.pid);
        self.settle_orphan(rec, plan)?;
        if rec.state != before {
            let pid = pid.map(|p| format!(" (QEMU pid {p})")).unwrap_or_default();
            self.engine_event(
                rec,
                format!("settled a {before} whose command was interrupted{pid}: now {}", rec.state),
            );
        }
        Ok(())
    }

    /// Finishes or rolls back an operation whose owner died, given its live QEMU: a boot whose
    /// guest became ready is finished; one still booting is left for a later refresh until its
    /// timeout; a stop is completed; pause, resume, save and wake settle on what QMP reports.
    pub(crate) fn settle_orphan(&self, rec: &mut VmRecord, plan: &Plan) -> Result<()> {
        let status = self.qmp(plan).and_then(|c| c.status()).ok();
        let qmp = status.as_ref().map(|s| {
            if s.is_fatal() {
                QmpSeen::Fatal
            } else if s.is_running() {
                QmpSeen::Running
            } else {
                QmpSeen::Paused
            }
        });
        let guest_ready = rec.state == VmState::Starting
            && Self::console_log(plan).is_some_and(|log| {
                LogTail::from(rec.boot_log_offset.unwrap_or(0))
                    .read_lines(&log)
                    .iter()
                    .any(|l| matches!(console::parse_marker(l), Some(Marker::Ready { .. })))
            });
        let overdue = self.clock.now().since(rec.updated_at) > self.options.boot_timeout;
        match settlement(rec.state, qmp, guest_ready, overdue) {
            Settlement::Wait => {}
            Settlement::Fail => {
                self.reap(rec, plan);
                rec.reason = Some(format!(
                    "found {} after an interrupted {}; last output: {}",
                    status.map(|s| s.name()).unwrap_or_default(),
                    rec.state,
                    Self::last_console(plan)
                ));
                self.force(rec, VmState::Failed)?;
            }
            Settlement::Booted => self.step(rec, VmState::Running, Cause::Reconciler)?,
            Settlement::BootTimedOut => {
                self.reap(rec, plan);
                rec.reason = Some(format!("boot did not finish within {:?} after its command was interrupted; last output: {}", self.options.boot_timeout, Self::last_console(plan)));
                self.step(rec, VmState::Failed, Cause::Reconciler)?;
            }
            Settlement::FinishStop => {
                self.reap(rec, plan);
                self.step(rec, VmState::Stopped, Cause::Reconciler)?;
            }
            Settlement::Running => self.force(rec, VmState::Running)?,
            Settlement::Paused => self.force(rec, VmState::Paused)?,
            Settlement::FinishWake => {
                // A waker that died between the spawn and the cgroup join (restores join while
                // QEMU starts) left it outside its cgroups, guest not yet running: it runs only
                // once it is in them. If QMP refuses, a later refresh tries again; it must not
                // fall to `paused`.
                if self.in_its_cgroup(rec, plan)
                    && self.qmp(plan).and_then(|c| self.finish_wake(rec, &c)).is_ok()
                {
                    self.step(rec, VmState::Running, Cause::Reconciler)?;
                }
            }
        }
        Ok(())
    }
}

impl QemuEngine {
    /// Whether `rec`'s QEMU is in its cgroups, joining them if not (true when the plan has
    /// none).
    pub(crate) fn in_its_cgroup(&self, rec: &VmRecord, plan: &Plan) -> bool {
        let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) else {
            return true;
        };
        rec.process.is_some_and(|p| confine::ensure_in_cgroup(cg, p.pid))
    }

    /// Runs a woken VM whose waker died: a QEMU still in its incoming migration is given what
    /// the wake had not yet sent (a mapped snapshot's restore waits, `-incoming defer`, for
    /// `x-ignore-shared` and `migrate-incoming`; either may have been sent already), and
    /// continued once the load is done. A `cont` alone would leave it waiting for ever.
    fn finish_wake(&self, rec: &VmRecord, ctl: &crate::qmp::QmpSession<'_>) -> Result<()> {
        if ctl.status()?.is_incoming() {
            let snapshot = rec.sleeping_on.as_ref().map(|id| self.db(|s| s.get_snapshot(id)));
            let mapped = matches!(snapshot, Some(Ok(Some(s))) if s.layout == hangar_core::contracts::SnapshotLayout::Mapped);
            if mapped {
                let _ = ctl.ignore_shared_ram(true);
                let _ = ctl.migrate_incoming(crate::boot::INCOMING_URI);
            }
            ctl.wait_incoming_done(std::time::Instant::now() + std::time::Duration::from_secs(60))?;
        }
        ctl.cont()
    }
}

/// What a refresh sees of a VM's QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The record names no process.
    NoProcess,
    /// The recorded process (PID and start time) is alive.
    Alive,
    /// The recorded process is gone; `clean` when the guest powered off on purpose.
    Exited { clean: bool },
}

/// What a refresh does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The record agrees with what was seen.
    Unchanged,
    /// A running guest powered itself off: `stopping` then `stopped`.
    PoweredOff,
    /// QEMU died under a VM that should have had one: `failed`, with why.
    Died,
    /// QEMU is gone from a VM that is down anyway: forget the process.
    Forget,
    /// An operation is in flight over a live QEMU: settle it if its command died.
    SettleInterrupted,
    /// A running VM: ask QMP whether QEMU hit a fatal state.
    WatchForFault,
    /// No process recorded where one should run: find it by its log or call it `failed`.
    LookForOrphan,
}

/// Decides what a refresh does from the recorded state and what was seen: no I/O, so every
/// case is unit-tested without QEMU.
pub(crate) fn verdict(state: VmState, seen: Seen) -> Verdict {
    let down = matches!(state, VmState::Stopped | VmState::Failed | VmState::Sleeping);
    match seen {
        Seen::Exited { clean: true } if state == VmState::Running => Verdict::PoweredOff,
        Seen::Exited { .. } if down => Verdict::Forget,
        Seen::Exited { .. } => Verdict::Died,
        Seen::Alive if state.is_in_flight() => Verdict::SettleInterrupted,
        Seen::Alive if state == VmState::Running => Verdict::WatchForFault,
        Seen::NoProcess
            if matches!(
                state,
                VmState::Starting
                    | VmState::Running
                    | VmState::Pausing
                    | VmState::Paused
                    | VmState::Resuming
                    | VmState::Saving
                    | VmState::Waking
                    | VmState::Spare
                    | VmState::Stopping
            ) =>
        {
            Verdict::LookForOrphan
        }
        _ => Verdict::Unchanged,
    }
}

/// What QMP says of a QEMU whose operation was interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QmpSeen {
    /// A state it cannot run on from (internal error, guest panic, shutdown, I/O error).
    Fatal,
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped (paused, or a loaded snapshot not yet continued).
    Paused,
}

/// How an interrupted operation over a live QEMU ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Nothing to conclude yet (QMP silent, or a boot still within its timeout).
    Wait,
    /// QEMU is in a fatal state: end it, `failed`.
    Fail,
    /// The guest reported ready: `running`.
    Booted,
    /// The boot outlived its timeout: end it, `failed`.
    BootTimedOut,
    /// A stop was under way: finish it.
    FinishStop,
    /// The vCPUs run: `running`.
    Running,
    /// The vCPUs are stopped: `paused`.
    Paused,
    /// A wake loaded its snapshot but was never continued: continue it.
    FinishWake,
}

/// Decides how an interrupted operation ends: no I/O, unit-tested without QEMU.
pub(crate) fn settlement(
    state: VmState, qmp: Option<QmpSeen>, guest_ready: bool, boot_overdue: bool,
) -> Settlement {
    if qmp == Some(QmpSeen::Fatal) {
        return Settlement::Fail;
    }
    match (state, qmp) {
        (VmState::Starting, _) if guest_ready => Settlement::Booted,
        (VmState::Starting, _) if boot_overdue => Settlement::BootTimedOut,
        (VmState::Stopping, _) => Settlement::FinishStop,
        (VmState::Pausing | VmState::Resuming | VmState::Saving | VmState::Waking, Some(q)) => {
            match q {
                QmpSeen::Running => Settlement::Running,
                QmpSeen::Paused if state == VmState::Waking => Settlement::FinishWake,
                _ => Settlement::Paused,
            }
        }
        _ => Settlement::Wait,
    }
}

/// The file a QEMU's guest RAM is mapped from (the mapping of exactly `size` bytes backed by a
/// file) and whether it is mapped shared (`/proc/PID/maps`).
fn ram_mapping(pid: u32, size: u64) -> Option<(String, bool)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let len = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
        let perms = fields.next()?;
        let file = fields.nth(3)?;
        (len == size && file.starts_with('/')).then(|| (file.to_string(), perms.ends_with('s')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use VmState::*;

    #[test]
    fn a_gone_qemu_is_a_stop_after_a_power_off_a_failure_otherwise_and_forgotten_when_down() {
        assert_eq!(verdict(Running, Seen::Exited { clean: true }), Verdict::PoweredOff);
        assert_eq!(verdict(Running, Seen::Exited { clean: false }), Verdict::Died);
        // A power-off is only a clean stop from `running`: anywhere else QEMU was not
        // expected to go.
        for s in [Starting, Paused, Pausing, Resuming, Saving, Waking, Stopping] {
            assert_eq!(verdict(s, Seen::Exited { clean: true }), Verdict::Died, "{s}");
        }
        for s in [Stopped, Failed, Sleeping] {
            for clean in [true, false] {
                assert_eq!(verdict(s, Seen::Exited { clean }), Verdict::Forget, "{s}");
            }
        }
    }

    #[test]
    fn a_live_qemu_is_settled_when_in_flight_and_watched_when_running() {
        for s in [Starting, Pausing, Resuming, Saving, Waking, Stopping] {
            assert!(s.is_in_flight());
            assert_eq!(verdict(s, Seen::Alive), Verdict::SettleInterrupted, "{s}");
        }
        assert_eq!(verdict(Running, Seen::Alive), Verdict::WatchForFault);
        for s in [Paused, Stopped, Defined, Failed, Sleeping] {
            assert_eq!(verdict(s, Seen::Alive), Verdict::Unchanged, "{s}");
        }
    }

    #[test]
    fn no_process_where_one_should_run_is_looked_for_and_elsewhere_is_normal() {
        for s in [Starting, Running, Pausing, Paused, Resuming, Saving, Waking, Stopping] {
            assert_eq!(verdict(s, Seen::NoProcess), Verdict::LookForOrphan, "{s}");
        }
        for s in [Defined, Stopped, Failed, Sleeping] {
            assert_eq!(verdict(s, Seen::NoProcess), Verdict::Unchanged, "{s}");
        }
    }

    #[test]
    fn an_interrupted_boot_finishes_when_ready_fails_when_overdue_and_waits_otherwise() {
        let r = Some(QmpSeen::Running);
        assert_eq!(settlement(Starting, r, true, true), Settlement::Booted);
        assert_eq!(settlement(Starting, r, false, true), Settlement::BootTimedOut);
        assert_eq!(settlement(Starting, r, false, false), Settlement::Wait);
        assert_eq!(settlement(Starting, None, false, false), Settlement::Wait);
        // A fatal QEMU fails whatever was under way, even a ready guest.
        assert_eq!(settlement(Starting, Some(QmpSeen::Fatal), true, false), Settlement::Fail);
        assert_eq!(settlement(Stopping, Some(QmpSeen::Fatal), false, false), Settlement::Fail);
    }

    #[test]
    fn interrupted_pauses_resumes_saves_and_wakes_settle_on_what_qmp_reports() {
        assert_eq!(settlement(Stopping, None, false, false), Settlement::FinishStop);
        for s in [Pausing, Resuming, Saving, Waking] {
            assert_eq!(settlement(s, Some(QmpSeen::Running), false, false), Settlement::Running);
            assert_eq!(settlement(s, None, false, true), Settlement::Wait, "{s}: QMP silent");
        }
        for s in [Pausing, Resuming, Saving] {
            assert_eq!(settlement(s, Some(QmpSeen::Paused), false, false), Settlement::Paused);
        }
        // A loaded snapshot never continued is finished, never left `paused`.
        assert_eq!(settlement(Waking, Some(QmpSeen::Paused), false, false), Settlement::FinishWake);
    }
}

//! Starting the guest's processes and learning how they ended when `hangar-init`, as PID 1,
//! reaps every process of the guest: [`Reaper`] (PID 1's wait loop and the agent's children)
//! and [`WaitPid`] (a process that is not PID 1: tests).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Condvar, Mutex};

use rustix::process::WaitStatus;

use crate::{lock, ExitOutcome};

/// Starts children and returns how they ended, whoever reaps them.
pub trait Reap: Send + Sync + 'static {
    /// Starts `cmd`, so that [`Reap::wait`] can later return its end.
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        cmd.spawn()
    }
    /// Blocks until process `pid` (started with [`Reap::spawn`]) has ended.
    fn wait(&self, pid: u32) -> ExitOutcome;
}

/// Reaps with `waitpid` on the one child: for a process that is not PID 1 (tests).
pub struct WaitPid;

impl Reap for WaitPid {
    fn wait(&self, pid: u32) -> ExitOutcome {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
        loop {
            match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
                Ok(Some((_, status))) => {
                    if let Some(outcome) = ended(status) {
                        return outcome;
                    }
                }
                Ok(None) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return ExitOutcome::Signal(9),
            }
        }
    }
}

/// Where the reaper of PID 1 hands the statuses of the agent's children: `wait` blocks until
/// [`Reaper::reap_ended`] has taken that pid's end (before or after).
/// Only the agent's own children are remembered (an orphan reparented to PID 1 is not), and
/// each until its status is taken.
#[derive(Default)]
pub struct Reaper {
    /// The agent's children: `None` while running, then how each ended. Held across every
    /// [`Reap::spawn`] and every [`Reaper::reap_ended`], so the two never overlap.
    children: Mutex<HashMap<u32, Option<ExitOutcome>>>,
    changed: Condvar,
}

impl Reaper {
    /// Takes the ends `next` yields (PID 1's non-blocking `waitpid`, until it yields `None`)
    /// while no child is being started, hands the agent's children's to their waiters, and
    /// returns the others (PID 1's own child, orphans).
    ///
    /// Why never during a start: `Command::spawn` reaps a child whose `exec` failed itself and
    /// panics when that child is already gone. A PID 1 that reaped it first panicked the
    /// agent, and PID 1's panic powers the guest off: `exec` of a missing program stopped the
    /// VM now and then (CONF-G-01 in CI, twice).
    fn reap_ended(
        &self, mut next: impl FnMut() -> Option<(u32, ExitOutcome)>,
    ) -> Vec<(u32, ExitOutcome)> {
        let mut children = lock(&self.children);
        let mut others = Vec::new();
        while let Some((pid, outcome)) = next() {
            match children.get_mut(&pid) {
                Some(slot) => *slot = Some(outcome),
                None => others.push((pid, outcome)),
            }
        }
        self.changed.notify_all();
        others
    }

    /// PID 1's wait: blocks until its own `child` has ended, reaping every process that ends
    /// meanwhile (the agent's children go to their waiters, orphans nowhere).
    pub fn wait_for(&self, child: u32) -> Result<ExitOutcome, String> {
        loop {
            // Sleep until some child has ended, without reaping it: reaping happens only in
            // `reap_ended`, which never overlaps the agent starting a child (see there why).
            let woke = rustix::process::waitid(
                rustix::process::WaitId::All,
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
            );
            match woke {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("waiting for pid {child}: {e}")),
            }
            let others = self.reap_ended(|| loop {
                match rustix::process::wait(rustix::process::WaitOptions::NOHANG) {
                    Ok(Some((pid, status))) => {
                        if let Some(outcome) = ended(status) {
                            return Some((pid.as_raw_nonzero().get().unsigned_abs(), outcome));
                        }
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    // Nothing more has ended (or no child is left).
                    Ok(None) | Err(_) => return None,
                }
            });
            // Anything else is an orphan reparented to PID 1: nobody asks how it ended.
            if let Some((_, outcome)) = others.into_iter().find(|(pid, _)| *pid == child) {
                return Ok(outcome);
            }
        }
    }
}

impl Reap for Reaper {
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        // Under the lock: PID 1 reaps only between starts (see `reap_ended`), so it finds the
        // child registered, and never takes one whose failed `exec` `spawn` reaps itself.
        let mut children = lock(&self.children);
        let child = cmd.spawn()?;
        children.insert(child.id(), None);
        Ok(child)
    }

    fn wait(&self, pid: u32) -> ExitOutcome {
        let mut children = lock(&self.children);
        loop {
            if let Some(Some(outcome)) = children.get(&pid) {
                let outcome = *outcome;
                children.remove(&pid);
                return outcome;
            }
            children = self.changed.wait(children).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// How a process ended, if `status` says it did (not merely stopped or continued).
fn ended(status: WaitStatus) -> Option<ExitOutcome> {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => Some(ExitOutcome::Code(code)),
        (None, Some(signal)) => Some(ExitOutcome::Signal(signal)),
        (None, None) => None,
    }
}

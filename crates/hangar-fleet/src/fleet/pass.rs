//! A reconcile pass: observe every instance, plan against the desired counts, act.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hangar_core::clock::Timestamp;
use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::error::{Coded, ErrorCode, Result};
use hangar_core::ids::{PoolId, VmName};
use hangar_core::lifecycle::VmState;

use crate::reconcile::{self, Action, Deferred};
use crate::Pool;

use super::*;

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Refreshes every instance's state from the engine (one `list`). An instance whose VM is
    /// gone is dropped (the plan replaces it). VMs the registry does not list are never
    /// touched, whatever their names: the fleet records an instance *before* it asks the engine
    /// for its VM (see [`Fleet::persist_with`]), so after a crash every VM it made is in the
    /// restored registry, and a VM that is not is someone else's. Instances a step is working
    /// on are left as they are.
    pub fn observe(&self) -> Result<()> {
        let listed = self.engine.list()?;
        let mut s = self.lock();
        let mut seen: BTreeMap<VmName, (VmState, Timestamp)> =
            listed.into_iter().map(|st| (st.name, (st.state, st.since))).collect();
        let State { instances, busy, retired, .. } = &mut *s;
        for i in instances.iter_mut() {
            let found = seen.remove(&i.name);
            if busy.contains_key(&i.id) {
                continue;
            }
            match found {
                Some((state, since)) => {
                    i.state = state;
                    i.since = since;
                }
                // Deleted behind our back: gone, and replaced by the plan.
                None => i.state = VmState::Deleted,
            }
        }
        instances.retain(|i| i.state != VmState::Deleted);
        // A retired VM already gone needs nothing more.
        retired.retain(|name| seen.contains_key(name) || busy.values().any(|b| b == name));
        Ok(())
    }

    /// Stops and deletes the VMs of removed pools and failed creations (see
    /// [`Registry::retired`]), except one a step is still working on (it discards its own).
    pub(super) fn discard_retired(&self, report: &mut PassReport) {
        let doomed: Vec<VmName> = {
            let s = self.lock();
            s.retired.iter().filter(|n| !s.busy.values().any(|b| b == *n)).cloned().collect()
        };
        for name in doomed {
            let result = self.discard(&name);
            report.steps.push(Step {
                action: "discard".into(),
                target: name.to_string(),
                result: outcome(&result),
            });
            match result {
                Ok(()) => {
                    self.lock().retired.remove(&name);
                    report.stopped += 1;
                }
                Err(e) => report.errors.push((e.code().as_str().into(), e.to_string())),
            }
        }
    }

    /// One reconcile pass: observe, plan, act, report. Steps that fail are reported and the
    /// pool backs off; the rest of the pass goes on. The registry is locked only to plan and
    /// around each step, never across an engine call.
    pub fn pass(&self) -> PassReport {
        let _one_at_a_time = self.passing.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut report = PassReport::default();
        if let Err(e) = self.observe() {
            report.errors.push((e.code().as_str().into(), e.to_string()));
            return report;
        }
        self.discard_retired(&mut report);
        let now = self.clock.now();
        let (plan, waiting) = {
            let s = self.lock();
            let pools: Vec<Pool> = s.pools.values().cloned().collect();
            let waiting: BTreeSet<PoolId> = s
                .backoff
                .iter()
                .filter(|(_, (_, until))| now < *until)
                .map(|(p, _)| p.clone())
                .collect();
            (reconcile::plan(&pools, &s.instances, now), waiting)
        };
        report.deferred.extend(plan.deferred);
        let mut backed_off = BTreeSet::new();
        for action in plan.actions {
            let pool = self.pool_of(&action);
            // A pool whose last creation failed waits before creating again; removing dead
            // instances and moving existing ones between states goes on regardless.
            if let (Action::Create { .. }, Some(p)) = (&action, &pool) {
                if waiting.contains(p) {
                    if backed_off.insert(p.clone()) {
                        report.deferred.push(Deferred {
                            subject: format!("pool {p}"),
                            why: "backing off after a failed creation".into(),
                        });
                    }
                    continue;
                }
            }
            match self.act(&action, &mut report) {
                Ok(()) => {
                    if let (Action::Create { .. }, Some(pool)) = (&action, pool) {
                        self.lock().backoff.remove(&pool);
                    }
                }
                Err(e) if e.code() == ErrorCode::Busy => report.deferred.push(Deferred {
                    subject: action_subject(&action),
                    why: "a claim or another step is working on it".into(),
                }),
                Err(e) => {
                    let code = e.code();
                    report.errors.push((code.as_str().into(), e.to_string()));
                    // A quota refusal costs nothing to retry and ends when usage drops: no
                    // backoff. Engine failures back off.
                    if let (Some(pool), true) = (pool, code != ErrorCode::QuotaExceeded) {
                        let mut s = self.lock();
                        let failures = s.backoff.get(&pool).map(|b| b.0 + 1).unwrap_or(1);
                        let wait = Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF);
                        s.backoff
                            .insert(pool, (failures, Timestamp(now.0 + wait.as_millis() as u64)));
                    }
                }
            }
        }
        report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.changed();
        report
    }

    pub(super) fn pool_of(&self, action: &Action) -> Option<PoolId> {
        match action {
            Action::Create { pool, .. } => Some(pool.clone()),
            Action::Resume { instance }
            | Action::Wake { instance, .. }
            | Action::Pause { instance }
            | Action::Sleep { instance }
            | Action::Remove { instance, .. } => self.lock().find(instance).map(|i| i.pool.clone()),
        }
    }

    pub(super) fn act(&self, action: &Action, report: &mut PassReport) -> Result<()> {
        let (name, target) = match action {
            Action::Create { pool, .. } => ("create", format!("pool {pool}")),
            Action::Resume { instance }
            | Action::Wake { instance, .. }
            | Action::Pause { instance }
            | Action::Sleep { instance }
            | Action::Remove { instance, .. } => {
                let vm = self.lock().find(instance).map(|i| i.name.to_string());
                let verb = match action {
                    Action::Resume { .. } => "resume",
                    Action::Wake { .. } => "wake",
                    Action::Pause { .. } => "pause",
                    Action::Sleep { .. } => "sleep",
                    _ => "remove",
                };
                (verb, vm.unwrap_or_else(|| instance.to_string()))
            }
        };
        let mut made = None;
        let result = self.act_on(action, report, &mut made);
        // A busy instance was not acted on: nothing to record.
        if result.as_ref().err().is_none_or(|e| e.code() != ErrorCode::Busy) {
            report.steps.push(Step {
                action: name.into(),
                target: made.unwrap_or(target),
                result: outcome(&result),
            });
        }
        result
    }

    pub(super) fn act_on(
        &self, action: &Action, report: &mut PassReport, made: &mut Option<String>,
    ) -> Result<()> {
        match action {
            Action::Create { pool, target } => {
                let (i, cloned) = self.create(pool, *target, Purpose::Pool)?;
                *made = Some(i.name.to_string());
                report.created += 1;
                report.cloned += u32::from(cloned);
            }
            Action::Resume { instance } => {
                self.resume(instance, Purpose::Pool)?;
                report.started += 1;
            }
            Action::Wake { instance, then_pause } => {
                self.wake(instance, Purpose::Pool)?;
                report.woken += 1;
                if *then_pause {
                    self.pause(instance)?;
                    report.warmed += 1;
                }
            }
            Action::Pause { instance } => {
                self.pause(instance)?;
                report.warmed += 1;
            }
            Action::Sleep { instance } => {
                self.sleep(instance)?;
                report.slept += 1;
            }
            Action::Remove { instance, .. } => {
                self.remove(instance)?;
                report.stopped += 1;
            }
        }
        Ok(())
    }
}

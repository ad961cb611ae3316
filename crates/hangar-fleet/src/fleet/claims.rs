//! Claims: hand out a running instance (warm, sleeping, or a fresh clone) and release it.

use std::collections::BTreeSet;
use std::time::Instant;

use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::error::{Coded, Error, ErrorCode, Result};
use hangar_core::ids::{InstanceId, PoolId};
use hangar_core::lifecycle::VmState;

use crate::error::FleetError;
use crate::{Activity, Instance};

use super::*;

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Hands out a ready instance of `pool`: from the warm set (resume) if any, else a spare
    /// (its waiting QEMU loads the base), else a sleeping one (wake), else a new one (cloned
    /// from the base snapshot when there is one). The next pass refills what was taken.
    ///
    /// Only the candidate is checked against the engine (not the whole fleet), so a claim costs
    /// the same with 3 instances or 3,000; a candidate found dead is skipped and left to the
    /// next pass to replace. The registry is never locked across an engine call, so a claim
    /// does not wait for a pass that is booting something.
    pub fn claim(&self, pool: &PoolId) -> Result<Claim> {
        Ok(self.claim_any(pool, false, true)?.expect("a claim that may create always has one"))
    }

    /// [`Fleet::claim`] that only hands out an instance already waiting (warm, spare or
    /// sleeping) and makes none: `None` when there is none. A cluster node asks this first,
    /// and passes the claim to another node before it would boot one.
    pub fn claim_waiting(&self, pool: &PoolId) -> Result<Option<Claim>> {
        self.claim_any(pool, false, false)
    }

    /// [`Fleet::claim`] for the gateway: the instance is marked with the gateway as its
    /// holder in the same reservation that marks it claimed, so the gateway finds it again
    /// (after a restart too), wakes it with [`Fleet::wake_held`], and the pool's idle policy
    /// rests it.
    pub fn claim_held(&self, pool: &PoolId) -> Result<Claim> {
        Ok(self.claim_any(pool, true, true)?.expect("a claim that may create always has one"))
    }

    /// Brings an instance `holder` holds back to running: resumes it if paused, wakes it if
    /// sleeping; a running one is returned as it is. Its claim is kept whatever happens.
    pub fn wake_held(&self, id: &InstanceId, holder: &str) -> Result<Instance> {
        let i = self.lock().find(id).cloned().ok_or_else(|| not_found_instance(id))?;
        if !i.claimed || i.holder.as_deref() != Some(holder) {
            return Err(not_found_instance(id));
        }
        match i.state {
            VmState::Running => Ok(i),
            VmState::Paused => self.resume(id, Purpose::Pool),
            VmState::Sleeping => self.wake(id, Purpose::Pool),
            // In flight (a pass is pausing or sleeping it): the caller retries.
            _ => Err(FleetError::InstanceBusy(id.clone()).into()),
        }
    }

    /// Records what the gateway saw of an instance (for its idle policy, `instance ls` and
    /// metrics). Not persisted on every call: it rides along with the next registry change.
    pub fn set_activity(&self, id: &InstanceId, activity: Activity) {
        if let Some(i) = self.lock().find_mut(id) {
            i.activity = Some(activity);
        }
    }

    fn claim_any(&self, pool: &PoolId, held: bool, create: bool) -> Result<Option<Claim>> {
        let purpose = Purpose::Claim { held };
        let started = Instant::now();
        // Spares wait for the base of the template they were made for: after a template
        // change they would hand out the old one (the next creation retakes the base and
        // removes them).
        let spares_current = {
            let s = self.lock();
            let p = s.pool(pool)?;
            s.bases.get(pool).is_some_and(|b| b.template == p.template)
        };
        let spare = || {
            if spares_current {
                self.claim_ready(pool, VmState::Spare, purpose)
            } else {
                Ok(None)
            }
        };
        let (instance, source) =
            if let Some(i) = self.claim_ready(pool, VmState::Paused, purpose)? {
                (i, ClaimSource::Warm)
            } else if let Some(i) = spare()? {
                (i, ClaimSource::Spare)
            } else if let Some(i) = self.claim_ready(pool, VmState::Sleeping, purpose)? {
                (i, ClaimSource::Sleeping)
            } else if create {
                let (i, cloned) = self.create(pool, VmState::Running, purpose)?;
                let source = if cloned { ClaimSource::Cloned } else { ClaimSource::Created };
                (i, source)
            } else {
                return Ok(None);
            };
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(Some(Claim { instance, source, took_ms, node: None }))
    }

    /// Claims the oldest unclaimed, idle instance of `pool` the registry has in `state` and
    /// the engine confirms is still in it, bringing it to running.
    pub(super) fn claim_ready(
        &self, pool: &PoolId, state: VmState, purpose: Purpose,
    ) -> Result<Option<Instance>> {
        let mut tried: BTreeSet<InstanceId> = BTreeSet::new();
        loop {
            let candidate = {
                let s = self.lock();
                s.instances
                    .iter()
                    .filter(|i| {
                        &i.pool == pool
                            && !i.claimed
                            && i.state == state
                            && !s.busy.contains_key(&i.id)
                            && !tried.contains(&i.id)
                    })
                    .min_by_key(|i| i.ordinal)
                    .map(|i| (i.id.clone(), i.name.clone()))
            };
            let Some((id, name)) = candidate else {
                return Ok(None);
            };
            tried.insert(id.clone());
            match self.engine.status(&name) {
                Ok(st) if st.state == state => {}
                Ok(st) => {
                    self.lock().note(&id, &st);
                    continue;
                }
                Err(Error::VmNotFound(_)) => {
                    self.lock().instances.retain(|i| i.id != id);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let claimed = match state {
                VmState::Paused => self.resume(&id, purpose),
                VmState::Spare => self.wake_spare(&id, purpose),
                _ => self.wake(&id, purpose),
            };
            match claimed {
                Ok(i) => return Ok(Some(i)),
                // Taken by a concurrent claim or pass step between the pick and the reserve.
                Err(e) if e.code() == ErrorCode::Busy => continue,
                // A spare of a base that is gone: it is no use to anyone.
                Err(e) if state == VmState::Spare && e.code() == ErrorCode::SnapshotMismatch => {
                    let _ = self.remove(&id);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives a claimed instance back: it is removed.
    pub fn release(&self, id: &InstanceId) -> Result<()> {
        if self.lock().find(id).is_none() {
            return Err(not_found_instance(id));
        }
        self.remove(id)
    }
}

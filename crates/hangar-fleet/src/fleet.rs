//! [`Fleet`]: the registry of tenants, pools and instances, and the executor that carries a
//! reconcile plan out through the core engine contracts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::clock::{Clock, Timestamp};
use hangar_core::contracts::{Lifecycle, SaveMode, Snapshots, StopMode};
use hangar_core::error::{Coded, Error, ErrorCode, Result};
use hangar_core::ids::{InstanceId, PoolId, SnapshotId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use serde::{Deserialize, Serialize};

use crate::quota::Usage;
use crate::reconcile::{self, Action, Deferred};
use crate::{instance_spec, Desired, Instance, Policy, Pool, Tenant};

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PassReport {
    /// Instances created (to any state).
    pub created: u32,
    /// Warm instances resumed.
    pub started: u32,
    /// Instances paused into the warm set.
    pub warmed: u32,
    /// Instances put to sleep.
    pub slept: u32,
    /// Sleeping instances woken.
    pub woken: u32,
    /// Instances stopped and removed.
    pub stopped: u32,
    /// Left alone this pass, with why.
    pub deferred: Vec<Deferred>,
    /// Failed steps: code and message (the next pass retries, after a backoff per pool).
    pub errors: Vec<(String, String)>,
    /// How long the pass took.
    pub took_ms: f64,
}

/// Where a claimed instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimSource {
    /// The warm set: one resume.
    Warm,
    /// A sleeping instance: one restore.
    Sleeping,
    /// Nothing was ready: a new instance was booted.
    Created,
}

/// A claimed instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The instance.
    pub instance: Instance,
    /// How it was obtained.
    pub source: ClaimSource,
    /// From the call to vCPUs running.
    pub took_ms: f64,
}

/// Failures back off per pool: 1 s, 2 s, 4 s … up to a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Tenants, pools and instances on one host, driven through an engine.
pub struct Fleet<E: ?Sized> {
    /// Shared: the daemon drives the same engine for plain VM operations.
    engine: Arc<E>,
    clock: Arc<dyn Clock>,
    tenants: BTreeMap<TenantId, Tenant>,
    pools: BTreeMap<PoolId, Pool>,
    instances: Vec<Instance>,
    /// Source of instance id bits (a counter mixed with the start time: unique per fleet).
    next_id: u32,
    backoff: BTreeMap<PoolId, (u32, Timestamp)>,
}

fn refuse(message: String) -> Error {
    Error::Backend {
        code: ErrorCode::InvalidArgument,
        message,
    }
}

fn sleep_snapshot(name: &VmName) -> SnapshotId {
    SnapshotId::new(format!("{name}-sleep")).expect("names make valid snapshot ids")
}

/// Everything a fleet knows that the engine does not: what to persist, and what
/// [`Fleet::restore`] takes back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    /// Tenants.
    pub tenants: Vec<Tenant>,
    /// Pools.
    pub pools: Vec<Pool>,
    /// Instances.
    pub instances: Vec<Instance>,
}

/// A stable instance id for a VM adopted without a registry entry (derived from its name, so
/// adopting it twice gives the same id).
fn adopted_id(name: &VmName) -> InstanceId {
    // FNV-1a: tiny, stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    InstanceId::from_bits(h)
}

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Picks a fleet back up from a persisted registry (which may be older than the engine's
    /// state: [`Fleet::observe`] adopts instances created after it was saved).
    pub fn restore(engine: Arc<E>, clock: Arc<dyn Clock>, registry: Registry) -> Fleet<E> {
        let mut fleet = Fleet::new(engine, clock);
        for t in registry.tenants {
            fleet.tenants.insert(t.id.clone(), t);
        }
        for p in registry.pools {
            fleet.pools.insert(p.id.clone(), p);
        }
        fleet.instances = registry.instances;
        fleet
    }

    /// What to persist.
    pub fn registry(&self) -> Registry {
        Registry {
            tenants: self.tenants.values().cloned().collect(),
            pools: self.pools.values().cloned().collect(),
            instances: self.instances.clone(),
        }
    }

    /// An empty fleet over `engine`.
    pub fn new(engine: Arc<E>, clock: Arc<dyn Clock>) -> Fleet<E> {
        let seed = (clock.now().0 as u32).wrapping_mul(2_654_435_761);
        Fleet {
            engine,
            clock,
            tenants: BTreeMap::new(),
            pools: BTreeMap::new(),
            instances: Vec::new(),
            next_id: seed,
            backoff: BTreeMap::new(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Adds or updates a tenant.
    pub fn put_tenant(&mut self, tenant: Tenant) {
        self.tenants.insert(tenant.id.clone(), tenant);
    }

    /// Removes a tenant that owns no pool.
    pub fn remove_tenant(&mut self, id: &TenantId) -> Result<()> {
        if let Some(pool) = self.pools.values().find(|p| &p.tenant == id) {
            return Err(refuse(format!(
                "tenant {id} still owns pool {}; remove its pools first",
                pool.id
            )));
        }
        self.tenants.remove(id);
        Ok(())
    }

    /// Adds a pool (its tenant must exist). Nothing is created until the next pass.
    pub fn add_pool(&mut self, pool: Pool) -> Result<()> {
        if !self.tenants.contains_key(&pool.tenant) {
            return Err(refuse(format!("no tenant {}", pool.tenant)));
        }
        if self.pools.contains_key(&pool.id) {
            return Err(refuse(format!("pool {} exists", pool.id)));
        }
        self.pools.insert(pool.id.clone(), pool);
        Ok(())
    }

    /// Changes a pool's desired counts and policy.
    pub fn scale(&mut self, pool: &PoolId, desired: Desired, policy: Option<Policy>) -> Result<()> {
        let p = self
            .pools
            .get_mut(pool)
            .ok_or_else(|| refuse(format!("no pool {pool}")))?;
        p.desired = desired;
        if let Some(policy) = policy {
            p.policy = policy;
        }
        self.backoff.remove(pool);
        Ok(())
    }

    /// Removes a pool and every one of its instances, claimed or not.
    pub fn remove_pool(&mut self, pool: &PoolId) -> Result<()> {
        let ids: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|i| &i.pool == pool)
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            self.remove(&id)?;
        }
        self.pools.remove(pool);
        Ok(())
    }

    /// Pools.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Instances (of one pool, or all), oldest first.
    pub fn instances(&self, pool: Option<&PoolId>) -> Vec<&Instance> {
        self.instances
            .iter()
            .filter(|i| pool.is_none_or(|p| &i.pool == p))
            .collect()
    }

    /// What a tenant uses now.
    pub fn usage(&self, tenant: &TenantId) -> Usage {
        Usage::of(
            self.instances
                .iter()
                .filter(|i| self.pools.get(&i.pool).is_some_and(|p| &p.tenant == tenant)),
        )
    }

    /// Refreshes every instance's state from the engine (one `list`), and adopts VMs named
    /// like a known pool's instances (`<pool>-<n>`) that the registry lacks: a process that
    /// died between creating a VM and saving the registry leaves exactly that, and adopting it
    /// is what keeps a restarted pass from creating it twice.
    pub fn observe(&mut self) -> Result<()> {
        let mut seen: BTreeMap<VmName, (VmState, Timestamp)> = self
            .engine
            .list()?
            .into_iter()
            .map(|s| (s.name, (s.state, s.since)))
            .collect();
        // Refresh what the registry knows, taking each VM out of `seen` as it is matched, so
        // what remains is exactly the VMs the registry lacks (no scan per VM: this runs every
        // pass over every instance).
        for i in &mut self.instances {
            match seen.remove(&i.name) {
                Some((state, since)) => {
                    i.state = state;
                    i.since = since;
                }
                // Deleted behind our back: gone, and replaced by the plan.
                None => i.state = VmState::Deleted,
            }
        }
        for (name, (state, since)) in seen {
            let Some((pool, ordinal)) = name
                .as_str()
                .rsplit_once('-')
                .and_then(|(p, n)| Some((PoolId::new(p).ok()?, n.parse::<u32>().ok()?)))
            else {
                continue;
            };
            let Some(p) = self.pools.get(&pool) else {
                continue;
            };
            self.instances.push(Instance {
                id: adopted_id(&name),
                vcpus: p.template.machine.vcpus,
                memory_mib: p.template.machine.memory_mib,
                pool,
                name,
                ordinal,
                state,
                since,
                created_at: since,
                claimed: false,
            });
        }
        self.instances.retain(|i| i.state != VmState::Deleted);
        Ok(())
    }

    /// One reconcile pass: observe, plan, act, report. Steps that fail are reported and the
    /// pool backs off; the rest of the pass goes on.
    pub fn pass(&mut self) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        if let Err(e) = self.observe() {
            report
                .errors
                .push((e.code().as_str().into(), e.to_string()));
            return report;
        }
        let now = self.clock.now();
        let pools: Vec<Pool> = self
            .pools
            .values()
            .filter(|p| {
                let waiting = self
                    .backoff
                    .get(&p.id)
                    .is_some_and(|(_, until)| now < *until);
                if waiting {
                    report.deferred.push(Deferred {
                        subject: format!("pool {}", p.id),
                        why: "backing off after a failed step".into(),
                    });
                }
                !waiting
            })
            .cloned()
            .collect();
        let plan = reconcile::plan(&pools, &self.instances, now);
        report.deferred.extend(plan.deferred);
        for action in plan.actions {
            let pool = self.pool_of(&action);
            let outcome = self.act(&action, &mut report);
            match outcome {
                Ok(()) => {
                    if let Some(pool) = pool {
                        self.backoff.remove(&pool);
                    }
                }
                Err(e) => {
                    report
                        .errors
                        .push((e.code().as_str().into(), e.to_string()));
                    if let Some(pool) = pool {
                        let failures = self.backoff.get(&pool).map(|b| b.0 + 1).unwrap_or(1);
                        let wait = Duration::from_secs(1 << failures.min(6)).min(MAX_BACKOFF);
                        self.backoff
                            .insert(pool, (failures, Timestamp(now.0 + wait.as_millis() as u64)));
                    }
                }
            }
        }
        report.took_ms = started.elapsed().as_secs_f64() * 1000.0;
        report
    }

    fn pool_of(&self, action: &Action) -> Option<PoolId> {
        match action {
            Action::Create { pool, .. } => Some(pool.clone()),
            Action::Resume { instance }
            | Action::Wake { instance, .. }
            | Action::Pause { instance }
            | Action::Sleep { instance }
            | Action::Remove { instance, .. } => self.find(instance).map(|i| i.pool.clone()),
        }
    }

    fn find(&self, id: &InstanceId) -> Option<&Instance> {
        self.instances.iter().find(|i| &i.id == id)
    }

    fn find_mut(&mut self, id: &InstanceId) -> Result<&mut Instance> {
        self.instances
            .iter_mut()
            .find(|i| &i.id == id)
            .ok_or_else(|| refuse(format!("no instance {id}")))
    }

    fn act(&mut self, action: &Action, report: &mut PassReport) -> Result<()> {
        match action {
            Action::Create { pool, target } => {
                self.create(pool, *target)?;
                report.created += 1;
            }
            Action::Resume { instance } => {
                self.resume(instance)?;
                report.started += 1;
            }
            Action::Wake {
                instance,
                then_pause,
            } => {
                self.wake(instance)?;
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

    fn check_quota(&self, pool: &Pool, add: Usage) -> Result<()> {
        let tenant = self
            .tenants
            .get(&pool.tenant)
            .ok_or_else(|| refuse(format!("no tenant {}", pool.tenant)))?;
        tenant
            .quotas
            .check(&tenant.id, &self.usage(&tenant.id), &add)
            .map_err(Error::from)
    }

    fn fresh_id(&mut self) -> InstanceId {
        loop {
            self.next_id = self.next_id.wrapping_add(0x9E37_79B9);
            let id = InstanceId::from_bits(self.next_id);
            if self.find(&id).is_none() {
                return id;
            }
        }
    }

    /// Creates an instance of `pool` and brings it to `target`. The quota is checked first, so
    /// a refusal creates nothing; a failure on the way removes what was made.
    fn create(&mut self, pool_id: &PoolId, target: VmState) -> Result<InstanceId> {
        let pool = self
            .pools
            .get(pool_id)
            .cloned()
            .ok_or_else(|| refuse(format!("no pool {pool_id}")))?;
        let (vcpus, memory) = (
            u64::from(pool.template.machine.vcpus),
            u64::from(pool.template.machine.memory_mib),
        );
        let holds_process = target != VmState::Sleeping;
        self.check_quota(
            &pool,
            Usage {
                instances: 1,
                running: u64::from(target == VmState::Running),
                warm: u64::from(target == VmState::Paused),
                vcpus: if holds_process { vcpus } else { 0 },
                memory_mib: if holds_process { memory } else { 0 },
            },
        )?;
        let ordinal = self
            .instances
            .iter()
            .filter(|i| i.pool == pool.id)
            .map(|i| i.ordinal + 1)
            .max()
            .unwrap_or(0);
        let name = VmName::new(format!("{}-{ordinal}", pool.id)).map_err(Error::InvalidName)?;
        let id = self.fresh_id();
        let now = self.clock.now();
        let status = self.engine.define(&instance_spec(&pool, &name))?;
        self.instances.push(Instance {
            id: id.clone(),
            pool: pool.id.clone(),
            name: name.clone(),
            ordinal,
            state: status.state,
            since: status.since,
            created_at: now,
            claimed: false,
            vcpus: pool.template.machine.vcpus,
            memory_mib: pool.template.machine.memory_mib,
        });
        let brought = self.bring_up(&id, target);
        if let Err(e) = brought {
            // Leave nothing half made: no process, no overlay, no record.
            let _ = self.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    fn bring_up(&mut self, id: &InstanceId, target: VmState) -> Result<()> {
        let name = self.find_mut(id)?.name.clone();
        let s = self.engine.start(&name, &CancelToken::new())?;
        self.note(id, s.state, s.since)?;
        match target {
            VmState::Paused => self.pause(id),
            VmState::Sleeping => self.sleep(id),
            _ => Ok(()),
        }
    }

    fn note(&mut self, id: &InstanceId, state: VmState, since: Timestamp) -> Result<()> {
        let i = self.find_mut(id)?;
        i.state = state;
        i.since = since;
        Ok(())
    }

    /// The instance, if giving it `add` keeps its tenant within quota.
    fn within_quota(
        &self,
        id: &InstanceId,
        add: impl FnOnce(&Instance) -> Usage,
    ) -> Result<Instance> {
        let i = self
            .find(id)
            .cloned()
            .ok_or_else(|| refuse(format!("no instance {id}")))?;
        let pool = self
            .pools
            .get(&i.pool)
            .ok_or_else(|| refuse(format!("no pool {}", i.pool)))?;
        self.check_quota(pool, add(&i))?;
        Ok(i)
    }

    fn resume(&mut self, id: &InstanceId) -> Result<()> {
        let i = self.within_quota(id, |_| Usage {
            running: 1,
            ..Usage::default()
        })?;
        let s = self.engine.resume(&i.name)?;
        self.note(id, s.state, s.since)
    }

    fn wake(&mut self, id: &InstanceId) -> Result<()> {
        let i = self.within_quota(id, |i| Usage {
            running: 1,
            vcpus: u64::from(i.vcpus),
            memory_mib: u64::from(i.memory_mib),
            ..Usage::default()
        })?;
        let snap = sleep_snapshot(&i.name);
        let s = self.engine.restore(&i.name, &snap, &CancelToken::new())?;
        self.note(id, s.state, s.since)?;
        // The state is in the running guest now; the file would only take disk.
        let _ = self.engine.delete_snapshot(&snap);
        Ok(())
    }

    fn pause(&mut self, id: &InstanceId) -> Result<()> {
        let name = self.find_mut(id)?.name.clone();
        let s = self.engine.pause(&name)?;
        self.note(id, s.state, s.since)
    }

    fn sleep(&mut self, id: &InstanceId) -> Result<()> {
        let name = self.find_mut(id)?.name.clone();
        let snap = sleep_snapshot(&name);
        // A leftover from an interrupted earlier sleep would block the save.
        let _ = self.engine.delete_snapshot(&snap);
        self.engine
            .save(&name, &snap, SaveMode::Sleep, &CancelToken::new())?;
        let s = self.engine.status(&name)?;
        self.note(id, s.state, s.since)
    }

    /// Stops (forcefully: the instance is being discarded) and deletes an instance.
    fn remove(&mut self, id: &InstanceId) -> Result<()> {
        let name = self.find_mut(id)?.name.clone();
        match self
            .engine
            .stop(&name, StopMode::Force, &CancelToken::new())
        {
            Ok(_) => {}
            Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.engine.undefine(&name) {
            Ok(()) | Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let _ = self.engine.delete_snapshot(&sleep_snapshot(&name));
        self.instances.retain(|i| &i.id != id);
        Ok(())
    }

    /// Hands out a ready instance of `pool`: from the warm set (resume) if any, else a sleeping
    /// one (wake), else a new one. The next pass refills what was taken.
    ///
    /// Only the candidate is checked against the engine (not the whole fleet), so a claim costs
    /// the same with 3 instances or 3,000; a candidate found dead is skipped and left to the
    /// next pass to replace.
    pub fn claim(&mut self, pool: &PoolId) -> Result<Claim> {
        let started = Instant::now();
        if !self.pools.contains_key(pool) {
            return Err(refuse(format!("no pool {pool}")));
        }
        let (id, source) = match self.verified_candidate(pool, VmState::Paused)? {
            Some(id) => {
                self.resume(&id)?;
                (id, ClaimSource::Warm)
            }
            None => match self.verified_candidate(pool, VmState::Sleeping)? {
                Some(id) => {
                    self.wake(&id)?;
                    (id, ClaimSource::Sleeping)
                }
                None => (self.create(pool, VmState::Running)?, ClaimSource::Created),
            },
        };
        let i = self.find_mut(&id)?;
        i.claimed = true;
        Ok(Claim {
            instance: i.clone(),
            source,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// The oldest unclaimed instance of `pool` the registry has in `state` and the engine
    /// confirms is still in it.
    fn verified_candidate(&mut self, pool: &PoolId, state: VmState) -> Result<Option<InstanceId>> {
        let mut candidates: Vec<(u32, InstanceId, VmName)> = self
            .instances
            .iter()
            .filter(|i| &i.pool == pool && !i.claimed && i.state == state)
            .map(|i| (i.ordinal, i.id.clone(), i.name.clone()))
            .collect();
        candidates.sort();
        for (_, id, name) in candidates {
            match self.engine.status(&name) {
                Ok(s) => {
                    self.note(&id, s.state, s.since)?;
                    if s.state == state {
                        return Ok(Some(id));
                    }
                }
                Err(Error::VmNotFound(_)) => self.instances.retain(|i| i.id != id),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Gives a claimed instance back to whoever manages it next: it is removed.
    pub fn release(&mut self, id: &InstanceId) -> Result<()> {
        self.remove(id)
    }
}

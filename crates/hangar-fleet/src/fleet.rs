//! [`Fleet`]: the registry of tenants, pools and instances, and the executor that carries a
//! reconcile plan out through the core engine contracts.
//!
//! Locking: the registry sits behind one mutex that is only ever held for bookkeeping, never
//! across an engine call (a cold boot takes seconds; a claim must not wait for it). An engine
//! step first *reserves* its instance under the lock (marks it busy, checks the quota), then
//! runs unlocked, then relocks to record the outcome. A reserved instance is skipped by every
//! other step, and an instance whose record vanished while its step ran (its pool was removed)
//! is discarded by that step. Passes are serialised by a second mutex.

use crate::error::FleetError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::clock::{Clock, Timestamp};
use hangar_core::contracts::{Lifecycle, SaveMode, Snapshots, StopMode, VmStatus};
use hangar_core::error::{Coded, Error, ErrorCode, Result};
use hangar_core::ids::{InstanceId, PoolId, SnapshotId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::VmSpec;
use serde::{Deserialize, Serialize};

use crate::quota::Usage;
use crate::reconcile::{self, Action, Deferred};
use crate::{instance_spec, Desired, Instance, Policy, Pool, Tenant};

/// What one reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PassReport {
    /// Instances created (to any state).
    pub created: u32,
    /// Of those, how many were cloned from their pool's base snapshot instead of booted.
    #[serde(default)]
    pub cloned: u32,
    /// Warm instances resumed.
    pub started: u32,
    /// Instances paused into the warm set.
    pub warmed: u32,
    /// Instances put to sleep.
    pub slept: u32,
    /// Sleeping instances woken.
    pub woken: u32,
    /// Instances stopped and removed (and VMs of removed pools discarded).
    pub stopped: u32,
    /// Left alone this pass, with why.
    pub deferred: Vec<Deferred>,
    /// Failed steps: code and message (the next pass retries, after a backoff per pool).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<String>>))]
    pub errors: Vec<(String, String)>,
    /// How long the pass took.
    pub took_ms: f64,
    /// Every engine step the pass took, in order, with its outcome (what the audit log
    /// records for the reconciler).
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One engine step of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Step {
    /// `create`, `resume`, `wake`, `pause`, `sleep`, `remove` or `discard` (a VM the fleet
    /// owns whose pool is gone).
    pub action: String,
    /// The VM (for a creation that failed before it had one: the pool).
    pub target: String,
    /// `ok`, or the error code.
    pub result: String,
}

impl PassReport {
    /// Whether the pass changed anything.
    pub fn acted(&self) -> bool {
        self.created + self.started + self.warmed + self.slept + self.woken + self.stopped > 0
    }

    /// One line for an event stream.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "reconcile pass: created {} (cloned {}), started {}, warmed {}, slept {}, woken {}, stopped {}, deferred {}, errors {} in {:.1} ms",
            self.created,
            self.cloned,
            self.started,
            self.warmed,
            self.slept,
            self.woken,
            self.stopped,
            self.deferred.len(),
            self.errors.len(),
            self.took_ms
        );
        if let Some((code, message)) = self.errors.first() {
            s.push_str(&format!("; first error {code}: {message}"));
        }
        s
    }
}

/// Where a claimed instance came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ClaimSource {
    /// The warm set: one resume.
    Warm,
    /// A sleeping instance: one restore.
    Sleeping,
    /// Nothing was ready: a new instance was restored from the pool's base snapshot.
    Cloned,
    /// Nothing was ready and there was no base snapshot: a new instance was booted.
    Created,
}

/// A claimed instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    /// The instance.
    pub instance: Instance,
    /// How it was obtained.
    pub source: ClaimSource,
    /// From the call to vCPUs running.
    pub took_ms: f64,
}

/// A pool's base snapshot: its template booted once and saved, so further instances are
/// restored (cloned) instead of booted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Base {
    /// The pool.
    pub pool: PoolId,
    /// The memory snapshot.
    pub snapshot: SnapshotId,
    /// The template it was taken from: a pool whose template no longer equals this (its
    /// canonical hash changed) has a stale base, which is deleted and retaken.
    pub template: VmSpec,
}

/// Failures back off per pool: 1 s, 2 s, 4 s … up to a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
    /// Base snapshots, one per pool at most.
    #[serde(default)]
    pub bases: Vec<Base>,
    /// VMs the fleet made that no longer belong to any instance (their pool was removed, or
    /// their creation failed) and that it still has to stop and delete. Kept until they are
    /// gone, so a crash in between never leaves one running for good. This list and
    /// `instances` are the fleet's ownership record: it never touches a VM on neither.
    #[serde(default)]
    pub retired: Vec<VmName>,
}

/// The longest pool id: room for `-<ordinal>` and `-sleep` in instance and snapshot names.
pub const MAX_POOL_ID_LEN: usize = 40;

/// A tenant's own VM (not a pool instance) as quotas see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantVm {
    /// The VM.
    pub name: VmName,
    /// Its tenant.
    pub tenant: TenantId,
    /// What it uses in its current state.
    pub usage: Usage,
}

/// Reads the tenants' own VMs (those outside any pool), for quota checks. Called with the
/// fleet's lock held: it must not call back into the fleet.
pub type TenantVms = Box<dyn Fn() -> Result<Vec<TenantVm>> + Send + Sync>;

/// What a tenant's own VM is being brought to, for [`Fleet::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Defined (not running): it must fit the quotas as if it ran next to what runs now, so
    /// a VM that could never start is refused when it is made.
    Define,
    /// Running (start, resume, restore).
    Run,
    /// Sleeping on a memory snapshot (its memory moves to disk).
    Sleep,
}

/// The registry and the bookkeeping around it, behind the fleet's mutex.
struct State {
    tenants: BTreeMap<TenantId, Tenant>,
    pools: BTreeMap<PoolId, Pool>,
    instances: Vec<Instance>,
    bases: BTreeMap<PoolId, Base>,
    /// Instances an engine step is working on right now, and their VMs.
    busy: BTreeMap<InstanceId, VmName>,
    /// See [`Registry::retired`].
    retired: BTreeSet<VmName>,
    /// Per pool, the least ordinal a new instance may take: raised past a name some other
    /// VM already has, so the fleet never adopts or overwrites it.
    ordinal_floor: BTreeMap<PoolId, u32>,
    /// Tenants' own VMs being brought to a new state right now, with what they will use
    /// there (see [`Fleet::admit`]); they count like this until the step settles.
    pending: BTreeMap<VmName, (TenantId, Usage)>,
    /// Where tenants' own VMs are read from (see [`Fleet::count_tenant_vms`]).
    tenant_vms: Option<TenantVms>,
    /// Source of instance id bits (a counter mixed with the start time: unique per fleet).
    next_id: u32,
    backoff: BTreeMap<PoolId, (u32, Timestamp)>,
}

impl State {
    fn find(&self, id: &InstanceId) -> Option<&Instance> {
        self.instances.iter().find(|i| &i.id == id)
    }

    fn find_mut(&mut self, id: &InstanceId) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| &i.id == id)
    }

    fn pool(&self, id: &PoolId) -> Result<&Pool> {
        self.pools.get(id).ok_or_else(|| not_found_pool(id))
    }

    /// What `tenant` uses: its pools' instances, its own VMs, and what steps in flight will
    /// use. `except` is left out (the VM a check is about, counted by what it asks for).
    fn usage(&self, tenant: &TenantId, except: Option<&VmName>) -> Result<Usage> {
        let mut used = Usage::of(self.instances.iter().filter(|i| {
            self.pools.get(&i.pool).is_some_and(|p| &p.tenant == tenant) && Some(&i.name) != except
        }));
        if let Some(read) = &self.tenant_vms {
            for vm in read()? {
                let counted_elsewhere = self.pending.contains_key(&vm.name)
                    || Some(&vm.name) == except
                    || self.instances.iter().any(|i| i.name == vm.name);
                if &vm.tenant == tenant && !counted_elsewhere {
                    used.add(&vm.usage);
                }
            }
        }
        for (name, (t, u)) in &self.pending {
            if t == tenant && Some(name) != except {
                used.add(u);
            }
        }
        Ok(used)
    }

    fn check_quota(&self, pool: &Pool, add: Usage) -> Result<()> {
        self.check_tenant(&pool.tenant, None, add)
    }

    /// Whether `tenant`, without `except`, has room for `add`.
    fn check_tenant(&self, tenant: &TenantId, except: Option<&VmName>, add: Usage) -> Result<()> {
        let t = self
            .tenants
            .get(tenant)
            .ok_or_else(|| FleetError::TenantNotFound(tenant.clone()))?;
        t.quotas
            .check(&t.id, &self.usage(&t.id, except)?, &add)
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

    fn note(&mut self, id: &InstanceId, s: &VmStatus) {
        if let Some(i) = self.find_mut(id) {
            i.state = s.state;
            i.since = s.since;
        }
    }
}

/// Whom an engine step on an instance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The pool's own convergence (a reconcile pass): the instance stays unclaimed.
    Pool,
    /// A claim: the instance is marked claimed when reserved, so a concurrent pass already
    /// plans its replacement, and unmarked again if the step fails.
    Claim,
}

/// The snapshot a sleeping instance sleeps on: `<vm>-sleep`. Pool ids are short enough for it
/// ([`MAX_POOL_ID_LEN`]); a longer one from an old registry is an error, never a panic.
fn sleep_snapshot(name: &VmName) -> Result<SnapshotId> {
    SnapshotId::new(format!("{name}-sleep")).map_err(Error::InvalidName)
}

/// A pool's base snapshot: `<pool>-base`.
fn base_snapshot(pool: &PoolId) -> Result<SnapshotId> {
    SnapshotId::new(format!("{pool}-base")).map_err(Error::InvalidName)
}

/// Disk an instance of `spec` holds besides its memory (see [`Usage::of_spec`]).
fn disk_mib(spec: &VmSpec) -> u64 {
    Usage::of_spec(VmState::Defined, spec).disk_mib
}

/// Tenants, pools and instances on one host, driven through an engine. Every method takes
/// `&self`: share it between a reconcile loop and request handlers.
pub struct Fleet<E: ?Sized> {
    /// Shared: the daemon drives the same engine for plain VM operations.
    engine: Arc<E>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// One pass at a time.
    passing: Mutex<()>,
    /// Where the registry goes after every change (see [`Fleet::persist_with`]); the mutex
    /// also orders writers, so an older registry never overwrites a newer one.
    persist: Mutex<Option<Persist>>,
}

/// A sink for the registry.
type Persist = Box<dyn Fn(&Registry) + Send + Sync>;

impl<E: ?Sized> Fleet<E> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bookkeeping, not engine state, behind; the next
        // observe corrects it from the engine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Room reserved in a tenant's quotas for one of its VMs while an engine step brings it to a
/// new state (see [`Fleet::admit`]); released when dropped.
pub struct Admission<E: ?Sized> {
    fleet: Arc<Fleet<E>>,
    vm: Option<VmName>,
}

impl<E: ?Sized> Drop for Admission<E> {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            self.fleet.lock().pending.remove(&vm);
        }
    }
}

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// An empty fleet over `engine`.
    pub fn new(engine: Arc<E>, clock: Arc<dyn Clock>) -> Fleet<E> {
        Fleet::restore(engine, clock, Registry::default())
    }

    /// Picks a fleet back up from a persisted registry (which may be older than the engine's
    /// state: [`Fleet::observe`] adopts instances created after it was saved).
    pub fn restore(engine: Arc<E>, clock: Arc<dyn Clock>, registry: Registry) -> Fleet<E> {
        let seed = (clock.now().0 as u32).wrapping_mul(2_654_435_761);
        let state = State {
            tenants: registry
                .tenants
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect(),
            pools: registry
                .pools
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            instances: registry.instances,
            bases: registry
                .bases
                .into_iter()
                .map(|b| (b.pool.clone(), b))
                .collect(),
            busy: BTreeMap::new(),
            retired: registry.retired.into_iter().collect(),
            ordinal_floor: BTreeMap::new(),
            pending: BTreeMap::new(),
            tenant_vms: None,
            next_id: seed,
            backoff: BTreeMap::new(),
        };
        Fleet {
            engine,
            clock,
            state: Mutex::new(state),
            passing: Mutex::new(()),
            persist: Mutex::new(None),
        }
    }

    /// Hands the registry to `sink` after every change: every mutation, every settled engine
    /// step, the end of every pass, and a claim's reservation *before* its engine step (a
    /// process that dies mid-claim must come back knowing the instance was handed out, not
    /// find an unclaimed running instance and scale it away).
    pub fn persist_with(&self, sink: impl Fn(&Registry) + Send + Sync + 'static) {
        *self.persist.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(sink));
    }

    fn changed(&self) {
        let sink = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sink) = sink.as_ref() {
            sink(&self.registry());
        }
    }

    /// What to persist.
    pub fn registry(&self) -> Registry {
        let s = self.lock();
        Registry {
            tenants: s.tenants.values().cloned().collect(),
            pools: s.pools.values().cloned().collect(),
            instances: s.instances.clone(),
            bases: s.bases.values().cloned().collect(),
            retired: s.retired.iter().cloned().collect(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Adds or updates a tenant.
    pub fn put_tenant(&self, tenant: Tenant) {
        self.lock().tenants.insert(tenant.id.clone(), tenant);
        self.changed();
    }

    /// Tenants.
    pub fn tenants(&self) -> Vec<Tenant> {
        self.lock().tenants.values().cloned().collect()
    }

    /// One tenant.
    pub fn tenant(&self, id: &TenantId) -> Option<Tenant> {
        self.lock().tenants.get(id).cloned()
    }

    /// Removes a tenant that owns no pool.
    pub fn remove_tenant(&self, id: &TenantId) -> Result<()> {
        let mut s = self.lock();
        if !s.tenants.contains_key(id) {
            return Err(FleetError::TenantNotFound(id.clone()).into());
        }
        if let Some(pool) = s.pools.values().find(|p| &p.tenant == id) {
            return Err(FleetError::TenantInUse {
                tenant: id.clone(),
                pool: pool.id.clone(),
            }
            .into());
        }
        s.tenants.remove(id);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Adds a pool (its tenant must exist). Nothing is created until the next pass.
    pub fn add_pool(&self, pool: Pool) -> Result<()> {
        check_pool_id(&pool.id)?;
        let mut s = self.lock();
        if !s.tenants.contains_key(&pool.tenant) {
            return Err(FleetError::TenantNotFound(pool.tenant.clone()).into());
        }
        if s.pools.contains_key(&pool.id) {
            return Err(FleetError::PoolExists(pool.id.clone()).into());
        }
        s.pools.insert(pool.id.clone(), pool);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Changes a pool's desired counts and policy.
    pub fn scale(&self, pool: &PoolId, desired: Desired, policy: Option<Policy>) -> Result<()> {
        let mut s = self.lock();
        let p = s.pools.get_mut(pool).ok_or_else(|| not_found_pool(pool))?;
        p.desired = desired;
        if let Some(policy) = policy {
            p.policy = policy;
        }
        s.backoff.remove(pool);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Replaces a pool's template. Existing instances keep running what they were made from;
    /// new ones use the new template, and the pool's base snapshot (taken from the old one) is
    /// retaken on the next creation.
    pub fn set_template(&self, pool: &PoolId, template: VmSpec) -> Result<()> {
        let mut s = self.lock();
        let p = s.pools.get_mut(pool).ok_or_else(|| not_found_pool(pool))?;
        p.template = template;
        drop(s);
        self.changed();
        Ok(())
    }

    /// Removes a pool, every one of its instances (claimed or not) and its base snapshot.
    /// Instances a step is working on are dropped from the registry and discarded by that step
    /// when it finishes.
    pub fn remove_pool(&self, pool: &PoolId) -> Result<()> {
        let (doomed, base) = {
            let mut s = self.lock();
            if !s.pools.contains_key(pool) {
                return Err(not_found_pool(pool));
            }
            s.pools.remove(pool);
            s.backoff.remove(pool);
            let base = s.bases.remove(pool);
            let (doomed, kept): (Vec<Instance>, Vec<Instance>) = std::mem::take(&mut s.instances)
                .into_iter()
                .partition(|i| &i.pool == pool);
            s.instances = kept;
            // Every one of them is retired (and so persisted) before any is touched: if this
            // process dies half way, the next pass finishes the job, busy ones included.
            s.retired.extend(doomed.iter().map(|i| i.name.clone()));
            let idle: Vec<Instance> = doomed
                .into_iter()
                .filter(|i| !s.busy.contains_key(&i.id))
                .collect();
            (idle, base)
        };
        self.changed();
        let mut first_error = None;
        for i in doomed {
            match self.discard(&i.name) {
                Ok(()) => {
                    self.lock().retired.remove(&i.name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.changed();
        if let Some(base) = base {
            let _ = self.engine.delete_snapshot(&base.snapshot);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Pools.
    pub fn pools(&self) -> Vec<Pool> {
        self.lock().pools.values().cloned().collect()
    }

    /// One pool; `E_POOL_NOT_FOUND` if there is none.
    pub fn pool(&self, id: &PoolId) -> Result<Pool> {
        self.lock().pool(id).cloned()
    }

    /// A pool's base snapshot, if it has one.
    pub fn base(&self, pool: &PoolId) -> Option<Base> {
        self.lock().bases.get(pool).cloned()
    }

    /// Instances (of one pool, or all), oldest first.
    pub fn instances(&self, pool: Option<&PoolId>) -> Vec<Instance> {
        self.lock()
            .instances
            .iter()
            .filter(|i| pool.is_none_or(|p| &i.pool == p))
            .cloned()
            .collect()
    }

    /// What a tenant uses now: its pools' instances and its own VMs.
    pub fn usage(&self, tenant: &TenantId) -> Result<Usage> {
        self.lock().usage(tenant, None)
    }

    /// Reserves room in its tenant's quotas for VM `spec` going `to` a new state, checked
    /// against everything the tenant uses (pool instances, its other VMs, steps in flight)
    /// under the lock the fleet's own steps take, so two requests can never both take the last
    /// room. The room stays reserved until the returned [`Admission`] is dropped, after the
    /// engine step (whose result the store then shows). A VM without a tenant is admitted
    /// without a check; one whose tenant does not exist is `E_TENANT_NOT_FOUND`.
    pub fn admit(self: &Arc<Self>, spec: &VmSpec, to: Admit) -> Result<Admission<E>> {
        let Some(tenant) = &spec.tenant else {
            return Ok(Admission {
                fleet: self.clone(),
                vm: None,
            });
        };
        let (vcpus, memory, disk) = (spec.machine.vcpus, spec.machine.memory_mib, disk_mib(spec));
        let (check, holds) = match to {
            Admit::Define => (
                Usage {
                    instances: 1,
                    vcpus: u64::from(vcpus),
                    memory_mib: u64::from(memory),
                    disk_mib: disk,
                    ..Usage::default()
                },
                Usage::of_vm(VmState::Defined, vcpus, memory, disk),
            ),
            Admit::Run => {
                let u = Usage::of_vm(VmState::Running, vcpus, memory, disk);
                (u, u)
            }
            Admit::Sleep => {
                let u = Usage::of_vm(VmState::Sleeping, vcpus, memory, disk);
                (u, u)
            }
        };
        let mut s = self.lock();
        if s.pending.contains_key(&spec.name) {
            return Err(FleetError::VmBusy(spec.name.clone()).into());
        }
        s.check_tenant(tenant, Some(&spec.name), check)?;
        s.pending.insert(spec.name.clone(), (tenant.clone(), holds));
        Ok(Admission {
            fleet: self.clone(),
            vm: Some(spec.name.clone()),
        })
    }

    /// Makes quotas count tenants' own VMs (those made outside any pool), read through
    /// `read` whenever a quota is checked. Without it only pool instances count.
    pub fn count_tenant_vms(&self, read: TenantVms) {
        self.lock().tenant_vms = Some(read);
    }

    /// Refreshes every instance's state from the engine (one `list`). An instance whose VM is
    /// gone is dropped (the plan replaces it). VMs the registry does not list are never
    /// touched, whatever their names: the fleet records an instance *before* it asks the engine
    /// for its VM (see [`Fleet::persist_with`]), so after a crash every VM it made is in the
    /// restored registry, and a VM that is not is someone else's. Instances a step is working
    /// on are left as they are.
    pub fn observe(&self) -> Result<()> {
        let listed = self.engine.list()?;
        let mut s = self.lock();
        let mut seen: BTreeMap<VmName, (VmState, Timestamp)> = listed
            .into_iter()
            .map(|st| (st.name, (st.state, st.since)))
            .collect();
        let State {
            instances,
            busy,
            retired,
            ..
        } = &mut *s;
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
    fn discard_retired(&self, report: &mut PassReport) {
        let doomed: Vec<VmName> = {
            let s = self.lock();
            s.retired
                .iter()
                .filter(|n| !s.busy.values().any(|b| b == *n))
                .cloned()
                .collect()
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
                Err(e) => report
                    .errors
                    .push((e.code().as_str().into(), e.to_string())),
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
            report
                .errors
                .push((e.code().as_str().into(), e.to_string()));
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

    fn pool_of(&self, action: &Action) -> Option<PoolId> {
        match action {
            Action::Create { pool, .. } => Some(pool.clone()),
            Action::Resume { instance }
            | Action::Wake { instance, .. }
            | Action::Pause { instance }
            | Action::Sleep { instance }
            | Action::Remove { instance, .. } => self.lock().find(instance).map(|i| i.pool.clone()),
        }
    }

    fn act(&self, action: &Action, report: &mut PassReport) -> Result<()> {
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
        if result
            .as_ref()
            .err()
            .is_none_or(|e| e.code() != ErrorCode::Busy)
        {
            report.steps.push(Step {
                action: name.into(),
                target: made.unwrap_or(target),
                result: outcome(&result),
            });
        }
        result
    }

    fn act_on(
        &self,
        action: &Action,
        report: &mut PassReport,
        made: &mut Option<String>,
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
            Action::Wake {
                instance,
                then_pause,
            } => {
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

    /// Runs one engine step on an instance: reserve it under the lock (`check` may refuse,
    /// e.g. on quota; `claim` marks it claimed at once, so a concurrent pass already plans its
    /// replacement), run `work` unlocked, then record the outcome. If the instance's record was
    /// removed meanwhile, the VM is discarded and the step reports it.
    fn step(
        &self,
        id: &InstanceId,
        purpose: Purpose,
        check: impl FnOnce(&State, &Instance) -> Result<()>,
        work: impl FnOnce(&Instance) -> Result<VmStatus>,
    ) -> Result<Instance> {
        let before = self.reserve(id, purpose, check)?;
        if purpose == Purpose::Claim {
            self.changed();
        }
        let outcome = work(&before);
        let mut s = self.lock();
        s.busy.remove(id);
        let Some(rec) = s.find_mut(id) else {
            drop(s);
            self.discard_owned(&before.name);
            return Err(FleetError::InstanceRemoved(id.clone()).into());
        };
        let result = match outcome {
            Ok(status) => {
                rec.state = status.state;
                rec.since = status.since;
                Ok(rec.clone())
            }
            Err(e) => {
                if purpose == Purpose::Claim {
                    rec.claimed = before.claimed;
                }
                Err(e)
            }
        };
        drop(s);
        self.changed();
        result
    }

    /// Marks an idle instance busy once `check` passes (and claimed, with `claim`), returning it
    /// as it was; `E_BUSY` if another step has it.
    fn reserve(
        &self,
        id: &InstanceId,
        purpose: Purpose,
        check: impl FnOnce(&State, &Instance) -> Result<()>,
    ) -> Result<Instance> {
        let mut s = self.lock();
        let i = s
            .find(id)
            .cloned()
            .ok_or_else(|| FleetError::InstanceNotFound(id.clone()))?;
        if s.busy.contains_key(id) {
            return Err(FleetError::InstanceBusy(id.clone()).into());
        }
        check(&s, &i)?;
        s.busy.insert(id.clone(), i.name.clone());
        if purpose == Purpose::Claim {
            s.find_mut(id).expect("found above").claimed = true;
        }
        Ok(i)
    }

    /// Creates an instance of `pool` and brings it to `target`: cloned from the pool's base
    /// snapshot when there is a current one, otherwise booted (and then saved as the new base).
    /// The quota is checked and the instance reserved first, so a refusal creates nothing and
    /// concurrent creations cannot overshoot; a failure on the way removes what was made.
    /// Returns the instance and whether it was cloned.
    fn create(
        &self,
        pool_id: &PoolId,
        target: VmState,
        purpose: Purpose,
    ) -> Result<(Instance, bool)> {
        // A name taken by a VM the fleet did not make is skipped (never touched): try the next
        // ordinal, a few times.
        let mut attempts = 0;
        loop {
            match self.create_once(pool_id, target, purpose) {
                Err(Error::VmExists(_)) if attempts < 8 => attempts += 1,
                other => return other,
            }
        }
    }

    fn create_once(
        &self,
        pool_id: &PoolId,
        target: VmState,
        purpose: Purpose,
    ) -> Result<(Instance, bool)> {
        let (pool, reserved, base) = {
            let mut s = self.lock();
            let pool = s.pool(pool_id)?.clone();
            let (vcpus, memory) = (
                u64::from(pool.template.machine.vcpus),
                u64::from(pool.template.machine.memory_mib),
            );
            let holds_process = target != VmState::Sleeping;
            let disk = disk_mib(&pool.template);
            s.check_quota(
                &pool,
                Usage {
                    instances: 1,
                    running: u64::from(target == VmState::Running),
                    warm: u64::from(target == VmState::Paused),
                    vcpus: if holds_process { vcpus } else { 0 },
                    memory_mib: if holds_process { memory } else { 0 },
                    disk_mib: disk + if holds_process { 0 } else { memory },
                },
            )?;
            let mut ordinal = s
                .instances
                .iter()
                .filter(|i| i.pool == pool.id)
                .map(|i| i.ordinal + 1)
                .max()
                .unwrap_or(0)
                .max(s.ordinal_floor.get(&pool.id).copied().unwrap_or(0));
            let name = loop {
                let name = instance_name(&pool.id, ordinal)?;
                if !s.retired.contains(&name) {
                    break name;
                }
                ordinal += 1;
            };
            let id = s.fresh_id();
            let now = self.clock.now();
            let reserved = Instance {
                id: id.clone(),
                pool: pool.id.clone(),
                name,
                ordinal,
                // In flight: counted toward running by quotas until the step settles it.
                state: VmState::Starting,
                since: now,
                created_at: now,
                claimed: purpose == Purpose::Claim,
                vcpus: pool.template.machine.vcpus,
                memory_mib: pool.template.machine.memory_mib,
                disk_mib: disk,
            };
            s.instances.push(reserved.clone());
            s.busy.insert(id, reserved.name.clone());
            let base = s
                .bases
                .get(&pool.id)
                .filter(|b| b.template == pool.template && !pool.policy.cold_boot)
                .map(|b| b.snapshot.clone());
            (pool, reserved, base)
        };
        // Recorded before the engine hears of it: a registry saved from now on names this
        // VM, so a crash never leaves a VM the fleet made but does not know it owns.
        self.changed();
        let id = reserved.id.clone();
        let made = self.make(&pool, &reserved, target, base.as_ref());
        let mut s = self.lock();
        s.busy.remove(&id);
        let gone = s.find(&id).is_none();
        match made {
            Ok((status, cloned)) if !gone => {
                s.note(&id, &status);
                let made = s.find(&id).expect("checked").clone();
                drop(s);
                self.changed();
                Ok((made, cloned))
            }
            Err(Made::NotOurs(e)) => {
                // Another VM has the name: never touch it; the next creation takes the next
                // ordinal.
                s.instances.retain(|i| i.id != id);
                s.ordinal_floor
                    .insert(pool.id.clone(), reserved.ordinal + 1);
                drop(s);
                self.changed();
                Err(e)
            }
            outcome => {
                // Leave nothing half made: no process, no overlay, no record. Until the VM is
                // really gone it stays retired, so a later pass finishes the job.
                s.instances.retain(|i| i.id != id);
                s.retired.insert(reserved.name.clone());
                drop(s);
                self.changed();
                self.discard_owned(&reserved.name);
                match outcome {
                    Err(Made::Failed(e)) | Err(Made::NotOurs(e)) => Err(e),
                    Ok(_) => Err(FleetError::PoolRemoved {
                        pool: pool.id.clone(),
                        instance: id,
                    }
                    .into()),
                }
            }
        }
    }

    /// Discards a retired VM now, and forgets it once it is gone (a later pass retries if it
    /// is not).
    fn discard_owned(&self, name: &VmName) {
        if self.discard(name).is_ok() {
            self.lock().retired.remove(name);
            self.changed();
        }
    }

    /// The engine half of [`Fleet::create`]: define, clone or boot, then bring to `target`.
    fn make(
        &self,
        pool: &Pool,
        i: &Instance,
        target: VmState,
        base: Option<&SnapshotId>,
    ) -> std::result::Result<(VmStatus, bool), Made> {
        match self.engine.define(&instance_spec(pool, &i.name)) {
            Ok(_) => {}
            Err(e @ Error::VmExists(_)) => return Err(Made::NotOurs(e)),
            Err(e) => return Err(Made::Failed(e)),
        }
        self.bring_up(pool, i, target, base).map_err(Made::Failed)
    }

    /// The rest of [`Fleet::make`], once the VM is defined (and so the fleet's to discard).
    fn bring_up(
        &self,
        pool: &Pool,
        i: &Instance,
        target: VmState,
        base: Option<&SnapshotId>,
    ) -> Result<(VmStatus, bool)> {
        let cancel = CancelToken::new();
        let mut cloned = false;
        if let Some(base) = base {
            match self.engine.restore(&i.name, base, &cancel) {
                Ok(_) => cloned = true,
                // A base the engine no longer takes (deleted, or written by another QEMU):
                // forget it and boot; the boot below retakes it.
                Err(Error::SnapshotMismatch { .. } | Error::SnapshotNotFound(_)) => {
                    self.lock().bases.remove(&pool.id);
                    let _ = self.engine.delete_snapshot(base);
                }
                Err(e) => return Err(e),
            }
        }
        if !cloned {
            self.engine.start(&i.name, &cancel)?;
            if !pool.policy.cold_boot {
                self.take_base(pool, &i.name)?;
            }
        }
        let status = match target {
            VmState::Paused => match self.engine.status(&i.name)? {
                s if s.state == VmState::Paused => s,
                _ => self.engine.pause(&i.name)?,
            },
            VmState::Sleeping => {
                let snap = sleep_snapshot(&i.name)?;
                let _ = self.engine.delete_snapshot(&snap);
                self.engine.save(&i.name, &snap, SaveMode::Sleep, &cancel)?;
                self.engine.status(&i.name)?
            }
            _ => match self.engine.status(&i.name)? {
                s if s.state == VmState::Paused => self.engine.resume(&i.name)?,
                s => s,
            },
        };
        Ok((status, cloned))
    }

    /// Saves a freshly booted instance as its pool's base snapshot (it is left paused). A stale
    /// base (older template) is deleted first.
    fn take_base(&self, pool: &Pool, vm: &VmName) -> Result<()> {
        let snapshot = base_snapshot(&pool.id)?;
        let _ = self.engine.delete_snapshot(&snapshot);
        self.lock().bases.remove(&pool.id);
        self.engine
            .save(vm, &snapshot, SaveMode::KeepPaused, &CancelToken::new())?;
        self.lock().bases.insert(
            pool.id.clone(),
            Base {
                pool: pool.id.clone(),
                snapshot,
                template: pool.template.clone(),
            },
        );
        Ok(())
    }

    /// Stops (forcefully: the instance is being discarded) and deletes a VM and its sleep
    /// snapshot. A VM already gone is fine.
    fn discard(&self, name: &VmName) -> Result<()> {
        match self.engine.stop(name, StopMode::Force, &CancelToken::new()) {
            Ok(_) | Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.engine.undefine(name) {
            Ok(()) | Err(Error::VmNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(snap) = sleep_snapshot(name) {
            let _ = self.engine.delete_snapshot(&snap);
        }
        Ok(())
    }

    fn resume(&self, id: &InstanceId, purpose: Purpose) -> Result<Instance> {
        self.step(
            id,
            purpose,
            |s, i| {
                s.check_quota(
                    s.pool(&i.pool)?,
                    Usage {
                        running: 1,
                        ..Usage::default()
                    },
                )
            },
            |i| self.engine.resume(&i.name),
        )
    }

    fn wake(&self, id: &InstanceId, purpose: Purpose) -> Result<Instance> {
        self.step(
            id,
            purpose,
            |s, i| {
                s.check_quota(
                    s.pool(&i.pool)?,
                    Usage {
                        running: 1,
                        vcpus: u64::from(i.vcpus),
                        memory_mib: u64::from(i.memory_mib),
                        ..Usage::default()
                    },
                )
            },
            |i| {
                let snap = sleep_snapshot(&i.name)?;
                let s = self.engine.restore(&i.name, &snap, &CancelToken::new())?;
                // The state is in the running guest now; the file would only take disk.
                let _ = self.engine.delete_snapshot(&snap);
                Ok(s)
            },
        )
    }

    fn pause(&self, id: &InstanceId) -> Result<Instance> {
        self.step(
            id,
            Purpose::Pool,
            |_, _| Ok(()),
            |i| self.engine.pause(&i.name),
        )
    }

    fn sleep(&self, id: &InstanceId) -> Result<Instance> {
        self.step(
            id,
            Purpose::Pool,
            |_, _| Ok(()),
            |i| {
                let snap = sleep_snapshot(&i.name)?;
                // A leftover from an interrupted earlier sleep would block the save.
                let _ = self.engine.delete_snapshot(&snap);
                self.engine
                    .save(&i.name, &snap, SaveMode::Sleep, &CancelToken::new())?;
                self.engine.status(&i.name)
            },
        )
    }

    /// Stops and deletes an instance, and drops its record.
    fn remove(&self, id: &InstanceId) -> Result<()> {
        let i = self.reserve(id, Purpose::Pool, |_, _| Ok(()))?;
        let done = self.discard(&i.name);
        let mut s = self.lock();
        s.busy.remove(id);
        if done.is_ok() {
            s.instances.retain(|x| &x.id != id);
        }
        drop(s);
        self.changed();
        done
    }

    /// Hands out a ready instance of `pool`: from the warm set (resume) if any, else a sleeping
    /// one (wake), else a new one (cloned from the base snapshot when there is one). The next
    /// pass refills what was taken.
    ///
    /// Only the candidate is checked against the engine (not the whole fleet), so a claim costs
    /// the same with 3 instances or 3,000; a candidate found dead is skipped and left to the
    /// next pass to replace. The registry is never locked across an engine call, so a claim
    /// does not wait for a pass that is booting something.
    pub fn claim(&self, pool: &PoolId) -> Result<Claim> {
        let started = Instant::now();
        self.pool(pool)?;
        let (instance, source) = if let Some(i) = self.claim_ready(pool, VmState::Paused)? {
            (i, ClaimSource::Warm)
        } else if let Some(i) = self.claim_ready(pool, VmState::Sleeping)? {
            (i, ClaimSource::Sleeping)
        } else {
            let (i, cloned) = self.create(pool, VmState::Running, Purpose::Claim)?;
            let source = if cloned {
                ClaimSource::Cloned
            } else {
                ClaimSource::Created
            };
            (i, source)
        };
        Ok(Claim {
            instance,
            source,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// Claims the oldest unclaimed, idle instance of `pool` the registry has in `state` and
    /// the engine confirms is still in it, bringing it to running.
    fn claim_ready(&self, pool: &PoolId, state: VmState) -> Result<Option<Instance>> {
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
                VmState::Paused => self.resume(&id, Purpose::Claim),
                _ => self.wake(&id, Purpose::Claim),
            };
            match claimed {
                Ok(i) => return Ok(Some(i)),
                // Taken by a concurrent claim or pass step between the pick and the reserve.
                Err(e) if e.code() == ErrorCode::Busy => continue,
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

/// Refuses a pool id too long for the names derived from it (instances `<pool>-<n>`, their
/// sleep snapshots `<pool>-<n>-sleep`, the base `<pool>-base`).
fn check_pool_id(id: &PoolId) -> Result<()> {
    if id.as_str().len() > MAX_POOL_ID_LEN {
        return Err(Error::InvalidName(hangar_core::ids::InvalidName {
            kind: "pool id",
            value: id.to_string(),
            reason: hangar_core::ids::NameRule::LongerThan {
                len: id.as_str().len(),
                max: MAX_POOL_ID_LEN,
            },
        }));
    }
    Ok(())
}

/// How [`Fleet::make`] failed.
enum Made {
    /// The name is taken by a VM the fleet did not make.
    NotOurs(Error),
    /// Anything else (what was made must be discarded).
    Failed(Error),
}

/// The name of instance `ordinal` of `pool`: `<pool>-<ordinal>`.
fn instance_name(pool: &PoolId, ordinal: u32) -> Result<VmName> {
    VmName::new(format!("{pool}-{ordinal}")).map_err(Error::InvalidName)
}

/// A step's outcome as the audit log writes it: `ok` or the error code.
fn outcome<T>(r: &Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().as_str().into(),
    }
}

/// `E_INSTANCE_NOT_FOUND` for `id` (also what another tenant's instance looks like to a
/// tenant).
pub fn not_found_instance(id: &InstanceId) -> Error {
    FleetError::InstanceNotFound(id.clone()).into()
}

/// `E_POOL_NOT_FOUND` for `pool` (also what another tenant's pool looks like to a tenant).
pub fn not_found_pool(pool: &PoolId) -> Error {
    FleetError::PoolNotFound(pool.clone()).into()
}

fn action_subject(action: &Action) -> String {
    match action {
        Action::Create { pool, .. } => format!("pool {pool}"),
        Action::Resume { instance }
        | Action::Wake { instance, .. }
        | Action::Pause { instance }
        | Action::Sleep { instance }
        | Action::Remove { instance, .. } => instance.to_string(),
    }
}

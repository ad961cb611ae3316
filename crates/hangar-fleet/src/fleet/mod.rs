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
use std::time::Duration;

use hangar_core::clock::{Clock, Timestamp};
use hangar_core::contracts::{Lifecycle, Snapshots, VmStatus};
use hangar_core::error::{Coded, Error, Result};
use hangar_core::ids::{InstanceId, PoolId, RouteId, SnapshotId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::VmSpec;
use serde::{Deserialize, Serialize};

use crate::quota::Usage;
use crate::reconcile::{Action, Deferred};
use crate::{Instance, Pool, Route, Tenant};

mod claims;
mod pass;
mod registry;
mod route_table;
mod steps;

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
    /// A spare: its waiting QEMU loaded the base's device state and ran.
    Spare,
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
    /// In a cluster, the node the instance runs on (the one asked, or the one it passed the
    /// claim to); absent on a host of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
    /// Every tenant with its quotas.
    pub tenants: Vec<Tenant>,
    /// Every pool with its template and desired counts.
    pub pools: Vec<Pool>,
    /// Every instance the fleet made and still owns.
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
    /// The gateway's routes to pools' instances.
    #[serde(default)]
    pub routes: Vec<Route>,
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
    routes: BTreeMap<RouteId, Route>,
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
        let t =
            self.tenants.get(tenant).ok_or_else(|| FleetError::TenantNotFound(tenant.clone()))?;
        t.quotas.check(&t.id, &self.usage(&t.id, except)?, &add).map_err(Error::from)
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
    /// plans its replacement, and unmarked again if the step fails. `held`: the gateway's
    /// claim, marked with its holder at the same moment (so a crash mid-claim never leaves the
    /// gateway's instance looking like a client's).
    Claim {
        /// Claimed for the gateway ([`crate::GATEWAY_HOLDER`]).
        held: bool,
    },
}

impl Purpose {
    fn is_claim(self) -> bool {
        matches!(self, Purpose::Claim { .. })
    }

    /// The holder a reservation for this purpose records.
    fn holder(self) -> Option<String> {
        matches!(self, Purpose::Claim { held: true }).then(|| crate::GATEWAY_HOLDER.to_string())
    }
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
            tenants: registry.tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
            pools: registry.pools.into_iter().map(|p| (p.id.clone(), p)).collect(),
            instances: registry.instances,
            bases: registry.bases.into_iter().map(|b| (b.pool.clone(), b)).collect(),
            routes: registry.routes.into_iter().map(|r| (r.id.clone(), r)).collect(),
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
            routes: s.routes.values().cloned().collect(),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
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

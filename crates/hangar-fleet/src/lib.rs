//! The fleet on one host: tenants with quotas, pools with desired counts, and the loop that
//! keeps them so.
//!
//! The crate is split the way the rest of Hangar is: [`reconcile::plan`] is a pure function from
//! desired state (pools) and observed state (instances) to a list of [`reconcile::Action`]s;
//! [`Fleet`] holds the registry and carries actions out through the core engine contracts, so
//! the same code drives the in-memory fakes and real QEMU. Nothing here does I/O of its own;
//! persistence of tenants, pools and instances belongs to the store (see ARCHITECTURE.md).

use std::collections::BTreeMap;

use hangar_core::clock::Timestamp;
use hangar_core::ids::{InstanceId, PoolId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::VmSpec;
use serde::{Deserialize, Serialize};

mod error;
mod fleet;
pub mod quota;
pub mod reconcile;
pub mod routes;

pub use error::FleetError;
pub use fleet::{
    not_found_instance, not_found_pool, Admission, Admit, Base, Claim, ClaimSource, Fleet,
    PassReport, Registry, Step, TenantVm, TenantVms, MAX_POOL_ID_LEN,
};
pub use quota::{Quota, QuotaExceeded, Quotas, Usage};
pub use routes::{Match, Route, RouteTarget};

/// An isolation and quota boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tenant {
    /// The tenant's id: the prefix of its pools' and VMs' names.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: TenantId,
    /// Its limits.
    pub quotas: Quotas,
}

/// How many instances of a pool should be in each resting state. Claimed instances belong to
/// whoever claimed them and are not counted here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Desired {
    /// Booted and running, not claimed.
    pub running: u32,
    /// Booted, then paused in memory (a claim is one `cont`).
    pub warm: u32,
    /// Memory saved to disk, no process (a claim is a restore).
    pub sleeping: u32,
    /// Spares: a QEMU started ahead from the pool's base snapshot, waiting with no guest (a
    /// claim only loads the base's device state and runs). Pools that boot every instance
    /// (`cold_boot`) have no base, so no spares.
    pub spare: u32,
}

impl Desired {
    /// All of them.
    pub fn total(&self) -> u32 {
        self.running + self.warm + self.sleeping + self.spare
    }
}

/// How many of a pool's instances are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolCounts {
    /// Unclaimed and running.
    pub running: u32,
    /// Unclaimed and paused (the warm set).
    pub warm: u32,
    /// Unclaimed and sleeping.
    pub sleeping: u32,
    /// Spares (a QEMU waiting, with no guest, for the pool's base).
    #[serde(default)]
    pub spare: u32,
    /// Handed out by a claim.
    pub claimed: u32,
    /// In flight, failed or stopped (the loop is on them).
    pub other: u32,
}

impl PoolCounts {
    /// Counts `instances` (a pool's).
    pub fn of<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> PoolCounts {
        let mut counts = PoolCounts::default();
        for i in instances {
            let slot = match (i.claimed, i.state) {
                (true, _) => &mut counts.claimed,
                (false, VmState::Running) => &mut counts.running,
                (false, VmState::Paused) => &mut counts.warm,
                (false, VmState::Sleeping) => &mut counts.sleeping,
                (false, VmState::Spare) => &mut counts.spare,
                _ => &mut counts.other,
            };
            *slot += 1;
        }
        counts
    }

    /// Both counts added.
    pub fn plus(self, other: PoolCounts) -> PoolCounts {
        PoolCounts {
            running: self.running + other.running,
            warm: self.warm + other.warm,
            sleeping: self.sleeping + other.sleeping,
            spare: self.spare + other.spare,
            claimed: self.claimed + other.claimed,
            other: self.other + other.other,
        }
    }
}

/// A pool's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// A claimed instance paused (released) for longer than this goes to sleep.
    pub idle_sleep_s: Option<u64>,
    /// Running instances younger than this are never stopped by a scale-down (deferred).
    pub min_running_s: u64,
    /// Boot every instance from scratch instead of cloning the pool's base snapshot (for
    /// guests that must not share boot-time state such as entropy or identity).
    pub cold_boot: bool,
    /// An instance the gateway holds, running with no connection for this long, is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_pause_after_s: Option<u64>,
    /// An instance the gateway holds, running or paused with no connection for this long,
    /// goes to sleep (its memory to disk; the next connection wakes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_sleep_after_s: Option<u64>,
    /// An instance the gateway holds, unused for this long in any state, is removed (the
    /// next connection claims another: warm, spare, sleeping or new).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_stop_after_s: Option<u64>,
}

/// A pool: a spec template, desired counts and a policy, owned by a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pool {
    /// Id (also the prefix of its instances' names).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: PoolId,
    /// The tenant that owns the pool and whose quotas its instances count against.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: TenantId,
    /// The spec every instance is made from (its `name` is replaced per instance).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub template: VmSpec,
    /// Desired counts.
    pub desired: Desired,
    /// How instances are made and kept (clones or cold boots, back-off).
    pub policy: Policy,
}

/// One instance as the fleet knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Instance {
    /// Generated id (`i-xxxxxxxx`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: InstanceId,
    /// Its pool.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pool: PoolId,
    /// Its VM (`<pool>-<n>`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub name: VmName,
    /// `n` in the name: instances are created in increasing order, so a higher ordinal is newer.
    pub ordinal: u32,
    /// The VM's state, as last observed.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: VmState,
    /// When it entered that state (ms since the Unix epoch).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub since: Timestamp,
    /// When it was created (ms since the Unix epoch).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub created_at: Timestamp,
    /// Handed out by a claim: no longer counted against the pool's desired counts.
    pub claimed: bool,
    /// vCPUs and memory, for quotas.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Blank disk space it holds (MiB), for the disk quota.
    #[serde(default)]
    pub disk_mib: u64,
    /// Who holds a claimed instance, when it is not a client's: `gateway` for the instances
    /// the gateway claimed to serve a pool's routes (it wakes them again, and the pool's idle
    /// policy puts them back to rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Connections through the gateway, for an instance it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<Activity>,
}

/// The holder of the instances the gateway claims.
pub const GATEWAY_HOLDER: &str = "gateway";

/// What the gateway saw of one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Activity {
    /// Connections open now.
    pub open: u32,
    /// Connections ever handed to it.
    pub connections: u64,
    /// Bytes from clients to the instance.
    pub bytes_in: u64,
    /// Bytes from the instance to clients.
    pub bytes_out: u64,
    /// When a connection last opened, closed or moved bytes (ms since the Unix epoch).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub last: Timestamp,
}

/// The per-instance spec: the template under the instance's name, tagged with tenant and pool.
pub fn instance_spec(pool: &Pool, name: &VmName) -> VmSpec {
    let mut spec = pool.template.clone();
    spec.name = name.clone();
    spec.tenant = Some(pool.tenant.clone());
    spec.pool = Some(pool.id.clone());
    spec
}

/// Instances grouped by pool, in ordinal order.
pub fn by_pool(instances: &[Instance]) -> BTreeMap<&PoolId, Vec<&Instance>> {
    let mut map: BTreeMap<&PoolId, Vec<&Instance>> = BTreeMap::new();
    for i in instances {
        map.entry(&i.pool).or_default().push(i);
    }
    for list in map.values_mut() {
        list.sort_by_key(|i| i.ordinal);
    }
    map
}

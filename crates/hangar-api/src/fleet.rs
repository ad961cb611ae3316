//! Fleet wire types: what `/v1/tenants`, `/v1/pools`, `/v1/instances` and `/v1/fleet` take and
//! answer. The domain types themselves (`Quotas`, `Desired`, `Policy`, `Instance`, `Claim`,
//! `PassReport`) come from `hangar-fleet` unchanged.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use hangar_fleet::{
    Activity, Claim, ClaimSource, Desired, Instance, Match, PassReport, Policy, Pool, PoolCounts,
    Quotas, Route, RouteTarget, Usage,
};

/// `PUT /v1/tenants/{id}`: create a tenant or replace its quotas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    /// Its limits; an absent limit is unlimited.
    #[serde(default)]
    pub quotas: Quotas,
}

/// A tenant, with what it uses now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// The tenant's id (`acme`); its pools and VMs are named `acme--…`.
    pub id: String,
    /// Its limits.
    pub quotas: Quotas,
    /// What its instances use.
    pub usage: Usage,
    /// Its pools.
    pub pools: Vec<String>,
}

/// `POST /v1/pools`: a new pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// Id: also the prefix of its instances' names (`<pool>-<n>`). A pool lives in its
    /// tenant's namespace: `web` of tenant `acme` is `acme--web`.
    pub id: String,
    /// The owning tenant (it must exist). A tenant's token may omit it (its own tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The instance template: a VM spec document (the shape of vm.json; its `name` is replaced
    /// per instance).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// The directory relative paths in `spec` resolve against (the spec file's; `/` if absent).
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Desired counts (all zero if absent).
    #[serde(default)]
    pub desired: Desired,
    /// How instances are made and kept (clones or cold boots, back-off).
    #[serde(default)]
    pub policy: Policy,
}

/// `PATCH /v1/pools/{pool}`: change what is given, keep the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolUpdate {
    /// New desired counts.
    #[serde(default)]
    pub desired: Option<Desired>,
    /// New policy.
    #[serde(default)]
    pub policy: Option<Policy>,
    /// A new template (new instances use it; its base snapshot is retaken).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<serde_json::Value>,
    /// Where `spec`'s relative paths resolve.
    #[serde(default)]
    pub base_dir: Option<String>,
}

/// A pool, with its instances counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    /// The pool.
    pub pool: Pool,
    /// Its instances now.
    pub counts: PoolCounts,
    /// The memory snapshot new instances are cloned from, if one is current.
    pub base_snapshot: Option<String>,
}

/// `GET /v1/pools/{pool}`: a pool, its instances and the last reconcile pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// The pool and its counts.
    #[serde(flatten)]
    pub view: PoolView,
    /// Its instances, oldest first.
    pub instances: Vec<Instance>,
    /// The daemon's last reconcile pass (over every pool).
    pub last_pass: Option<PassReport>,
    /// The last pass that changed something, or failed differently from the one before.
    pub last_change: Option<PassReport>,
    /// In a cluster: each live node's share of the pool and what it has (the pool's counts
    /// are their sum; `instances` are the answering node's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub nodes: std::collections::BTreeMap<String, hangar_cluster::PoolShare>,
}

/// `GET /v1/fleet`: the reconcile loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetStatus {
    /// Seconds between passes when nothing asks for one sooner.
    pub interval_s: f64,
    /// Passes run since the daemon started.
    pub passes: u64,
    /// The last one.
    pub last_pass: Option<PassReport>,
    /// The last pass that changed something, or failed differently from the one before.
    pub last_change: Option<PassReport>,
}

impl PoolView {
    /// Counts `instances` (all of the pool's).
    pub fn new(pool: Pool, instances: &[Instance], base_snapshot: Option<String>) -> PoolView {
        PoolView { pool, counts: PoolCounts::of(instances), base_snapshot }
    }
}

/// `POST /v1/routes`: a gateway route to a pool's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// Id, in the tenant's namespace like a pool's (`web` of tenant `acme` is `acme--web`).
    pub id: String,
    /// The owning tenant (it must exist, and own the pool). A tenant's token may omit it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The host address to listen on (default `127.0.0.1`; only an admin may pick another).
    #[serde(default)]
    pub address: Option<String>,
    /// The host port to listen on (a tenant's: 1024 or above).
    pub port: u16,
    /// How connections are matched (default: plain TCP, the whole port).
    #[serde(default, rename = "match")]
    #[schema(value_type = Object)]
    pub matcher: Option<hangar_fleet::Match>,
    /// The pool (in the tenant's namespace, like `id`).
    pub pool: String,
    /// The guest port instances serve on.
    pub guest_port: u16,
    /// Connections that may wait for an instance at once (default 256).
    #[serde(default)]
    pub max_waiting: Option<u32>,
}

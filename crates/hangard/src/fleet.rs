//! The fleet in the daemon: the registry (restored from the store at start, written back after
//! every change), the reconcile loop, and the `/v1/tenants`, `/v1/pools`, `/v1/instances` and
//! `/v1/fleet` endpoints.
//!
//! Handlers call [`Fleet`](hangar_fleet::Fleet) directly; anything that may reach the engine
//! runs on its own thread (see `blocking` in the error module). The fleet never holds its lock
//! across an engine call, so a claim answers in milliseconds even while the loop is booting
//! instances.

use hangar_control::Control;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::fleet::{
    Claim, FleetStatus, Instance, PassReport, PoolRequest, PoolStatus, PoolUpdate, PoolView,
    TenantRequest, TenantView,
};
use hangar_api::ErrorBody;
use hangar_core::access::{Action, Resource};
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::error::ErrorCode;
use hangar_core::ids::{InstanceId, PoolId, TenantId, VmName};
use hangar_core::spec::VmSpec;
use hangar_fleet::{Pool, Tenant};
use hangar_spec::Format;
use serde::Deserialize;

use crate::body::{body_bytes, json_body};
use crate::error::{blocking, ApiError, ApiResult};
use crate::middleware::Ctx;
use crate::state::Daemon;
use crate::Caller;

/// The subject of reconcile-pass events in the event stream.
pub const EVENT_SUBJECT: &str = "fleet";

/// Default seconds between passes when nothing asks for one sooner.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// The reconcile loop's schedule and its last result.
pub struct Reconciler {
    interval: Duration,
    /// Set by [`Reconciler::poke`]; the loop runs a pass as soon as it sees it.
    asked: Mutex<bool>,
    wake: Condvar,
    passes: AtomicU64,
    last: Mutex<Option<PassReport>>,
    /// The last pass that changed something or failed differently from the one before: what
    /// the event stream and `hangar pool status` show (a pool stuck on the same quota refusal
    /// every pass says so once).
    last_change: Mutex<Option<PassReport>>,
}

impl Reconciler {
    /// A loop that passes every `interval` and whenever poked.
    pub fn new(interval: Duration) -> Reconciler {
        Reconciler {
            interval,
            asked: Mutex::new(false),
            wake: Condvar::new(),
            passes: AtomicU64::new(0),
            last: Mutex::new(None),
            last_change: Mutex::new(None),
        }
    }

    /// Asks for a pass now (after a change that the loop should act on).
    pub fn poke(&self) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    /// Waits until poked or the interval has passed.
    fn wait(&self) {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        let (mut asked, _) = self
            .wake
            .wait_timeout_while(asked, self.interval, |asked| !*asked)
            .unwrap_or_else(|e| e.into_inner());
        *asked = false;
    }

    /// The last pass.
    pub fn last(&self) -> Option<PassReport> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last pass that changed something or failed in a new way.
    pub fn last_change(&self) -> Option<PassReport> {
        self.last_change.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What `GET /v1/fleet` shows.
    pub fn status(&self) -> FleetStatus {
        FleetStatus {
            interval_s: self.interval.as_secs_f64(),
            passes: self.passes.load(Ordering::SeqCst),
            last_pass: self.last(),
            last_change: self.last_change(),
        }
    }

    /// Whether `report` is news: it acted, or it failed differently from the last change.
    fn is_news(&self, report: &PassReport) -> bool {
        let change = self.last_change.lock().unwrap_or_else(|e| e.into_inner());
        let same_errors = change.as_ref().is_some_and(|c| c.errors == report.errors);
        report.acted() || (!report.errors.is_empty() && !same_errors)
    }

    /// Keeps `report` as the last pass, and as the last change when it is `news`.
    fn record(&self, report: &PassReport, news: bool) {
        self.passes.fetch_add(1, Ordering::SeqCst);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        if news {
            *self.last_change.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        }
    }
}

impl Daemon {
    /// Runs one reconcile pass now and reports it: kept as the last pass, counted in metrics,
    /// and, when it is news (it acted, or failed differently from before), recorded as a
    /// `fleet` event in the event stream.
    pub fn reconcile(&self) -> PassReport {
        // The reconciler's actions are evidence too: with no audit log, it does nothing.
        if let Some(why) = self.trail.unavailable() {
            let report = PassReport {
                errors: vec![(
                    ErrorCode::AuditUnavailable.as_str().into(),
                    format!("reconcile passes wait for the audit log: {why}"),
                )],
                ..PassReport::default()
            };
            let news = self.reconciler.is_news(&report);
            self.reconciler.record(&report, news);
            return report;
        }
        if let Err(e) = self.in_good_standing() {
            // A node that may have lost its share makes no instance (it would double one).
            let report = PassReport {
                errors: vec![(e.1.code.clone(), e.1.message.clone())],
                ..PassReport::default()
            };
            let news = self.reconciler.is_news(&report);
            self.reconciler.record(&report, news);
            return report;
        }
        let report = self.fleet.pass();
        for step in &report.steps {
            let entry = hangar_audit::NewEntry {
                at: SystemClock.now(),
                who: "reconciler".into(),
                what: format!("fleet.{}", step.action),
                target: step.target.clone(),
                result: step.result.clone(),
                detail: None,
            };
            if let Err(e) = self.trail.record(entry) {
                tracing::error!("AUDIT FAILURE recording a reconcile step: {e}");
                self.metrics.error(ErrorCode::AuditUnavailable.as_str());
            }
        }
        self.metrics.reconcile_pass(report.took_ms / 1000.0, !report.errors.is_empty());
        // The event goes in before the report is kept, so whoever sees a change in the pool's
        // status finds its event in the stream too.
        let news = self.reconciler.is_news(&report);
        if news {
            let subject = VmName::new(EVENT_SUBJECT).expect("a valid name");
            let noted = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).record_note(
                &subject,
                SystemClock.now(),
                &report.summary(),
            );
            if let Err(e) = noted {
                tracing::error!("cannot record the reconcile pass: {e}");
            }
        }
        self.reconciler.record(&report, news);
        if news {
            self.changed.notify_waiters();
        }
        report
    }

    /// Starts the reconcile loop on its own thread (engine calls block; they never run on the
    /// async runtime).
    pub fn start_reconciler(self: &Arc<Self>) {
        let daemon = self.clone();
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || loop {
                // A pass that panics (a bug) is logged and the loop goes on.
                let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    daemon.reconcile();
                }));
                if let Err(panic) = pass {
                    tracing::error!(
                        "BUG: a reconcile pass panicked: {}",
                        crate::panic_message(&*panic)
                    );
                    daemon.metrics.reconcile_pass(0.0, true);
                }
                daemon.reconciler.wait();
            })
            .expect("spawn the reconcile thread");
    }

    fn pool_view(&self, pool: Pool) -> PoolView {
        let instances = self.fleet.instances(Some(&pool.id));
        let base = self
            .fleet
            .base(&pool.id)
            .filter(|b| b.template == pool.template)
            .map(|b| b.snapshot.to_string());
        PoolView::new(pool, &instances, base)
    }

    fn tenant_view(&self, tenant: Tenant) -> TenantView {
        TenantView {
            usage: self.fleet.usage(&tenant.id).unwrap_or_default(),
            pools: self
                .fleet
                .pools()
                .into_iter()
                .filter(|p| p.tenant == tenant.id)
                .map(|p| p.id.to_string())
                .collect(),
            id: tenant.id.to_string(),
            quotas: tenant.quotas,
        }
    }
}

pub(crate) fn bad_id(what: &str, value: &str, e: impl std::fmt::Display) -> ApiError {
    let mut body = ErrorBody::new(ErrorCode::InvalidName, format!("{what} {value:?}: {e}"));
    body.path = Some(what.to_string());
    body.hint = "ids are 1-63 characters of a-z, 0-9 and '-', starting with a letter".into();
    ApiError::from(body)
}

/// The tenant a new pool or route (`what`) is for: the one named, else the caller's own; an
/// admin must name one. Naming another tenant is forbidden, whether or not it exists.
pub(crate) fn managed_tenant(
    caller: &Caller, named: Option<&str>, what: &str,
) -> ApiResult<TenantId> {
    let tenant = match (named, caller.tenant()) {
        (Some(t), _) => tenant_id(t)?,
        (None, Some(mine)) => mine.clone(),
        (None, None) => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("a {what} needs a tenant"),
                Some("tenant".into()),
                Some("send \"tenant\": \"acme\"".into()),
            ))
        }
    };
    caller.allow(Action::PoolManage, Resource::Tenant(&tenant), || {
        crate::auth::forbidden(&caller.scope, Action::PoolManage)
    })?;
    Ok(tenant)
}

fn tenant_id(s: &str) -> ApiResult<TenantId> {
    TenantId::new(s).map_err(|e| bad_id("tenant", s, e))
}

pub(crate) fn pool_id(s: &str) -> ApiResult<PoolId> {
    PoolId::new(s).map_err(|e| bad_id("pool", s, e))
}

/// Validates a template document like `hangar up` validates a spec file, and the host files
/// it names like the daemon checks every spec's.
fn template(
    d: &Daemon, caller: &Caller, spec: &serde_json::Value, base_dir: Option<&str>,
) -> ApiResult<VmSpec> {
    caller.may_use_base_dir(base_dir)?;
    let text = serde_json::to_string(spec).expect("JSON values serialise");
    let base = Path::new(base_dir.unwrap_or("/"));
    let spec = hangar_spec::parse(&text, Format::Json, base)?.spec;
    d.local.check_paths(&spec)?;
    Ok(spec)
}

impl Daemon {
    /// The pool `id` means to `caller`, if the caller may do `action` to it. Another tenant's
    /// pool, like a missing one, is `E_POOL_NOT_FOUND`.
    fn visible_pool(&self, caller: &Caller, action: Action, id: &str) -> ApiResult<Pool> {
        let id = pool_id(&caller.resolve(id))?;
        let pool = self.fleet.pool(&id)?;
        caller.allow(action, Resource::Owned(Some(&pool.tenant)), || {
            hangar_fleet::not_found_pool(&id).into()
        })?;
        Ok(pool)
    }
}

/// `GET /v1/tenants`
#[utoipa::path(get, path = "/v1/tenants", responses((status = 200, body = [TenantView])))]
pub(crate) async fn list_tenants(Ctx { d, caller }: Ctx) -> ApiResult<Json<Vec<TenantView>>> {
    if let Some((m, keys)) = d.cluster_keys() {
        // The cluster's tenants, with what their pools ask of the whole cluster.
        let tenants = crate::tenancy::cluster_tenants(m, keys).await?;
        return Ok(visible(
            &caller,
            tenants,
            |(t, _)| t.id.as_str(),
            |(t, pools)| TenantView {
                id: t.id.to_string(),
                quotas: t.quotas,
                usage: hangar_cluster::tenancy::pools_usage(&pools),
                pools: pools.iter().map(|p| p.id.to_string()).collect(),
            },
        ));
    }
    let tenants = d.fleet.tenants();
    Ok(visible(&caller, tenants, |t| t.id.as_str(), |t| d.tenant_view(t)))
}

/// Those of `items` in a tenant `caller` sees (`tenant` says whose each is), as views.
pub(crate) fn visible<T, V>(
    caller: &Caller, items: Vec<T>, tenant: impl Fn(&T) -> &str, view: impl Fn(T) -> V,
) -> Json<Vec<V>> {
    let seen = items.into_iter().filter(|i| caller.sees(Some(tenant(i))));
    Json(seen.map(view).collect())
}

/// `PUT /v1/tenants/{id}`: create a tenant, or replace its quotas.
#[utoipa::path(put, path = "/v1/tenants/{id}", params(("id" = String, Path, description = "Tenant id")),
    request_body = TenantRequest,
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody)))]
pub(crate) async fn put_tenant(
    State(d): State<Arc<Daemon>>, UrlPath(id): UrlPath<String>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TenantView>> {
    let id = tenant_id(&id)?;
    let bytes = body_bytes(body)?;
    let request: TenantRequest = crate::body::json_or_default(&bytes)?;
    let tenant = Tenant { id: id.clone(), quotas: request.quotas };
    if let Some((m, keys)) = d.cluster_keys() {
        // The cluster's first: its quotas bound the tenant's pools on every node.
        crate::tenancy::put_cluster_tenant(m, keys, &tenant).await?;
    }
    // Its default network first: a tenant that exists has one.
    let local = d.local.clone();
    blocking(move || local.ensure_tenant_network(&id)).await??;
    d.fleet.put_tenant(tenant.clone());
    // Raised quotas may unblock a pool.
    d.reconciler.poke();
    Ok(Json(d.tenant_view(tenant)))
}

/// `DELETE /v1/tenants/{id}`: remove a tenant that owns no pool.
#[utoipa::path(delete, path = "/v1/tenants/{id}", params(("id" = String, Path, description = "Tenant id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_tenant(
    State(d): State<Arc<Daemon>>, UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let id = tenant_id(&id)?;
    // Its networks go with it (their bridges and rules too): refused while a VM holds an
    // address on one, before anything changes.
    let local = d.local.clone();
    let networks = blocking(move || local.networks()).await??;
    if let Some(busy) =
        networks.iter().find(|n| n.tenant.as_deref() == Some(id.as_str()) && !n.leases.is_empty())
    {
        let vms: Vec<&str> = busy.leases.iter().map(|l| l.vm.as_str()).collect();
        return Err(ApiError::new(
            ErrorCode::NetworkInUse,
            format!("tenant {id}'s network {} is in use by {vms:?}", busy.name),
            None,
            Some("remove those VMs first".into()),
        ));
    }
    if let Some((m, keys)) = d.cluster_keys() {
        // Refused while the tenant has a pool anywhere in the cluster.
        let was_there = crate::tenancy::delete_cluster_tenant(m, keys, &id).await?;
        match d.fleet.remove_tenant(&id) {
            Ok(()) => {}
            Err(_) if was_there => {} // this node never ran it, or still removes its pools
            Err(e) => return Err(e.into()),
        }
    } else {
        d.fleet.remove_tenant(&id)?;
    }
    let local = d.local.clone();
    blocking(move || local.remove_tenant_networks(&id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/pools`
#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = [PoolView])))]
pub(crate) async fn list_pools(Ctx { d, caller }: Ctx) -> ApiResult<Json<Vec<PoolView>>> {
    if let Some((m, keys)) = d.cluster_keys() {
        // The cluster's pools, each counted over the live nodes' reports.
        let pools = crate::tenancy::cluster_pools(m, keys).await?;
        let shares = cluster_shares(m).await?;
        let view = |pool: Pool| {
            let nodes = shares.get(pool.id.as_str()).cloned().unwrap_or_default();
            d.cluster_pool_view(pool, &nodes)
        };
        let Json(mut views) = visible(&caller, pools, |p| p.tenant.as_str(), view);
        // And this node's own, made before it joined.
        let own: Vec<Pool> = d
            .fleet
            .pools()
            .into_iter()
            .filter(|p| {
                !p.template.labels.contains_key(crate::scheduler::MANAGED_LABEL)
                    && !views.iter().any(|v| v.pool.id == p.id)
            })
            .collect();
        views.extend(visible(&caller, own, |p| p.tenant.as_str(), |p| d.pool_view(p)).0);
        return Ok(Json(views));
    }
    let pools = d.fleet.pools();
    Ok(visible(&caller, pools, |p| p.tenant.as_str(), |p| d.pool_view(p)))
}

/// Each live node's share of each pool, by pool then node (from the nodes' reports).
async fn cluster_shares(
    m: &crate::cluster::Membership,
) -> ApiResult<BTreeMap<String, BTreeMap<String, hangar_cluster::PoolShare>>> {
    let mut shares: BTreeMap<String, BTreeMap<String, hangar_cluster::PoolShare>> = BTreeMap::new();
    for node in m.nodes().await?.into_iter().filter(|n| n.alive) {
        for (pool, share) in node.report.map(|r| r.pools).unwrap_or_default() {
            shares.entry(pool).or_default().insert(node.name.clone(), share);
        }
    }
    Ok(shares)
}

impl Daemon {
    /// A cluster pool as the cluster has it: its counts are the sum of the nodes' `shares`.
    fn cluster_pool_view(
        &self, pool: Pool, shares: &BTreeMap<String, hangar_cluster::PoolShare>,
    ) -> PoolView {
        let counts =
            shares.values().fold(hangar_fleet::PoolCounts::default(), |sum, s| sum.plus(s.counts));
        let base = self.fleet.pool(&pool.id).ok().and_then(|p| self.pool_view(p).base_snapshot);
        PoolView { pool, counts, base_snapshot: base }
    }
}

/// `POST /v1/pools`: a new pool. Nothing is created until the reconcile pass it triggers.
#[utoipa::path(post, path = "/v1/pools", request_body = PoolRequest,
    responses((status = 201, body = PoolView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn create_pool(
    Ctx { d, caller }: Ctx, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: PoolRequest = json_body(body)?;
    let tenant = managed_tenant(&caller, request.tenant.as_deref(), "pool")?;
    // A pool lives in its tenant's namespace, like the tenant's VMs: `web` is `acme--web`.
    let id = pool_id(&hangar_core::ids::qualify(&tenant, &request.id))?;
    let pool = Pool {
        id,
        tenant,
        template: template(&d, &caller, &request.spec, request.base_dir.as_deref())?,
        desired: request.desired,
        policy: request.policy,
    };
    if let Some((m, keys)) = d.cluster_keys() {
        // In a cluster the pool is the cluster's: published (signed, within its tenant's
        // cluster-wide quotas) for the scheduler, which gives each node its share; nodes then
        // make their instances.
        let change = crate::tenancy::PoolChange::Create(pool.clone());
        crate::tenancy::change_pool(m, keys, change).await?;
        return Ok((StatusCode::CREATED, Json(d.pool_view(pool))).into_response());
    }
    d.fleet.add_pool(pool.clone())?;
    d.reconciler.poke();
    Ok((StatusCode::CREATED, Json(d.pool_view(pool))).into_response())
}

/// `GET /v1/pools/{pool}`: a pool, its instances and the last pass.
#[utoipa::path(get, path = "/v1/pools/{pool}", params(("pool" = String, Path, description = "Pool id")),
    responses((status = 200, body = PoolStatus), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_pool(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<PoolStatus>> {
    // A pass covers every tenant's pools: its report is the host's, not a tenant's.
    let host = caller.tenant().is_none();
    if let Some(pool) = d.cluster_pool_for(&caller, Action::PoolRead, &id).await? {
        let (m, _) = d.cluster_keys().expect("a cluster pool means a cluster");
        let nodes = cluster_shares(m).await?.remove(pool.id.as_str()).unwrap_or_default();
        let id = pool.id.clone();
        return Ok(Json(PoolStatus {
            view: d.cluster_pool_view(pool, &nodes),
            instances: d.fleet.instances(Some(&id)),
            last_pass: d.reconciler.last().filter(|_| host),
            last_change: d.reconciler.last_change().filter(|_| host),
            nodes,
        }));
    }
    let pool = d.visible_pool(&caller, Action::PoolRead, &id)?;
    let id = pool.id.clone();
    Ok(Json(PoolStatus {
        view: d.pool_view(pool),
        instances: d.fleet.instances(Some(&id)),
        last_pass: d.reconciler.last().filter(|_| host),
        last_change: d.reconciler.last_change().filter(|_| host),
        nodes: BTreeMap::new(),
    }))
}

/// `PATCH /v1/pools/{pool}`: new desired counts, policy or template.
#[utoipa::path(patch, path = "/v1/pools/{pool}", params(("pool" = String, Path, description = "Pool id")),
    request_body = PoolUpdate,
    responses((status = 200, body = PoolView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn update_pool(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PoolView>> {
    if let Some(mut pool) = d.cluster_pool_for(&caller, Action::PoolManage, &id).await? {
        let update: PoolUpdate = json_body(body)?;
        if let Some(spec) = &update.spec {
            pool.template = template(&d, &caller, spec, update.base_dir.as_deref())?;
        }
        pool.desired = update.desired.unwrap_or(pool.desired);
        pool.policy = update.policy.unwrap_or(pool.policy);
        let (m, keys) = d.cluster_keys().expect("a cluster pool means a cluster");
        let change = crate::tenancy::PoolChange::Update(pool.clone());
        crate::tenancy::change_pool(m, keys, change).await?;
        return Ok(Json(d.pool_view(pool)));
    }
    let current = d.visible_pool(&caller, Action::PoolManage, &id)?;
    let id = current.id.clone();
    let update: PoolUpdate = json_body(body)?;
    // Validate everything before changing anything.
    let new_template = match &update.spec {
        Some(spec) => Some(template(&d, &caller, spec, update.base_dir.as_deref())?),
        None => None,
    };
    if let Some(t) = new_template {
        d.fleet.set_template(&id, t)?;
    }
    if update.desired.is_some() || update.policy.is_some() {
        d.fleet.scale(&id, update.desired.unwrap_or(current.desired), update.policy)?;
    }
    d.reconciler.poke();
    let pool = d.fleet.pool(&id)?;
    Ok(Json(d.pool_view(pool)))
}

/// `DELETE /v1/pools/{pool}`: remove a pool, its instances (claimed ones too) and its base
/// snapshot.
#[utoipa::path(delete, path = "/v1/pools/{pool}", params(("pool" = String, Path, description = "Pool id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_pool(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    if let Some(pool) = d.cluster_pool_for(&caller, Action::PoolManage, &id).await? {
        // The scheduler takes its instances off every node.
        let (m, keys) = d.cluster_keys().expect("a cluster pool means a cluster");
        crate::tenancy::change_pool(m, keys, crate::tenancy::PoolChange::Remove(pool)).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let id = d.visible_pool(&caller, Action::PoolManage, &id)?.id;
    let fleet = d.fleet.clone();
    blocking(move || fleet.remove_pool(&id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/pools/{pool}/claim`: hand out a running instance (warm → resume, else sleeping →
/// wake, else a new one, cloned from the pool's base snapshot when it has one). The loop
/// refills behind it.
#[utoipa::path(post, path = "/v1/pools/{pool}/claim", params(("pool" = String, Path, description = "Pool id")),
    responses((status = 200, body = Claim), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn claim(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Claim>> {
    // A pool this node runs a share of is the cluster's, known without asking etcd: a claim
    // served here costs no etcd round trip. Only a pool this node has none of is looked up.
    let id = match d.visible_pool(&caller, Action::PoolClaim, &id) {
        Ok(pool) if pool.template.labels.contains_key(crate::scheduler::MANAGED_LABEL) => {
            return Ok(Json(d.cluster_claim(&caller, &pool).await?));
        }
        Ok(own) => own.id,
        Err(missing) => match d.cluster_pool_for(&caller, Action::PoolClaim, &id).await? {
            Some(pool) => return Ok(Json(d.cluster_claim(&caller, &pool).await?)),
            None => return Err(missing),
        },
    };
    d.in_good_standing()?;
    let fleet = d.fleet.clone();
    let claimed = blocking(move || fleet.claim(&id)).await??;
    d.reconciler.poke();
    Ok(Json(claimed))
}

/// `GET /v1/instances` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceQuery {
    /// Only this pool's.
    pub pool: Option<String>,
}

/// `GET /v1/instances`
#[utoipa::path(get, path = "/v1/instances", params(InstanceQuery),
    responses((status = 200, body = [Instance])))]
pub(crate) async fn list_instances(
    Ctx { d, caller }: Ctx, Query(q): Query<InstanceQuery>,
) -> ApiResult<Json<Vec<Instance>>> {
    let pool = match q.pool.as_deref() {
        Some(p) => Some(d.visible_pool(&caller, Action::InstanceRead, p)?.id),
        None => None,
    };
    let mut instances = d.fleet.instances(pool.as_ref());
    instances.retain(|i| {
        d.instance_owner(i).is_some_and(|t| caller.sees(Some(t.as_str())))
            || caller.tenant().is_none()
    });
    Ok(Json(instances))
}

impl Daemon {
    /// The tenant an instance belongs to (its pool's).
    fn instance_owner(&self, i: &Instance) -> Option<TenantId> {
        self.fleet.pool(&i.pool).ok().map(|p| p.tenant)
    }
}

/// `DELETE /v1/instances/{id}`: release an instance (it is stopped and removed; the pool's
/// desired counts decide whether it is replaced).
#[utoipa::path(delete, path = "/v1/instances/{id}", params(("id" = String, Path, description = "Instance id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn release_instance(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let id = InstanceId::new(&id).map_err(|e| bad_id("instance", &id, e))?;
    let owner =
        d.fleet.instances(None).into_iter().find(|i| i.id == id).and_then(|i| d.instance_owner(&i));
    caller.allow(Action::InstanceRelease, Resource::Owned(owner.as_ref()), || {
        hangar_fleet::not_found_instance(&id).into()
    })?;
    let fleet = d.fleet.clone();
    blocking(move || fleet.release(&id)).await??;
    d.reconciler.poke();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/fleet`: the reconcile loop and its last pass.
#[utoipa::path(get, path = "/v1/fleet", responses((status = 200, body = FleetStatus)))]
pub(crate) async fn fleet_status(State(d): State<Arc<Daemon>>) -> Json<FleetStatus> {
    Json(d.reconciler.status())
}

/// `POST /v1/fleet/reconcile`: run a pass now and answer with its report (waits for a pass
/// already running to end first).
#[utoipa::path(post, path = "/v1/fleet/reconcile", responses((status = 200, body = PassReport)))]
pub(crate) async fn reconcile_now(State(d): State<Arc<Daemon>>) -> ApiResult<Json<PassReport>> {
    let daemon = d.clone();
    Ok(Json(blocking(move || daemon.reconcile()).await?))
}

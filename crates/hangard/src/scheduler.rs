//! Pools across a cluster. Every second each node (1) tries to hold the scheduler role, a key
//! under its own lease created only if absent (an etcd transaction: one holder at a time, and
//! the role passes on when the holder's lease runs out), (2) if it holds it, places every
//! pool's instances on the nodes (`hangar_cluster::place`) and writes each node's signed
//! [`DesiredState`] where it changed, and (3) applies its own desired state to its fleet: its
//! share of each pool, which the local reconcile loop then converges on. A desired state that
//! does not open with the node's trusted keys (unsigned, tampered, forged, another node's) is
//! refused and audited, and the node keeps what it had.
//!
//! Keys under `/hangar/v1`: `scheduler` (the holder's name, under its lease), `desired/<node>`
//! (signed by the scheduler), `audit/<node>` (the node's latest signed audit head); it reads `pools/<id>` (written by the API, see `tenancy`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use hangar_cluster::{
    place, Assignment, ClusterKey, DesiredState, KeyRing, NodeView, PoolDemand, PoolShare,
    ReconcileReport, Resources, DESIRED_STATE, POOL,
};
use hangar_core::error::ErrorCode;
use hangar_core::spec::{AccelRequest, BootSource};
use hangar_fleet::{Pool, Tenant};

use crate::cluster::{unavailable, Membership, Standing, ROOT};
use crate::error::ApiError;
use crate::state::Daemon;
use crate::tenancy::pool_key;

/// The cluster's signing key and the keys this node trusts.
pub struct Keys {
    /// Signs what this node writes for others to act on.
    pub signing: ClusterKey,
    /// Opens what others wrote.
    pub trusted: KeyRing,
}

impl Keys {
    /// The signing key from `key_file` (64 hex digits, readable by its owner only), trusting
    /// its own public half and the keys listed in `trusted_file` (if it exists).
    pub fn load(
        key_file: &std::path::Path, trusted_file: &std::path::Path,
    ) -> Result<Keys, String> {
        use std::os::unix::fs::PermissionsExt;
        let what = |e: std::io::Error| format!("cluster key {}: {e}", key_file.display());
        let meta = std::fs::metadata(key_file).map_err(what)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "cluster key {}: others may read it (mode {:o}); chmod 600 it",
                key_file.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        let text = std::fs::read_to_string(key_file).map_err(what)?;
        let signing = ClusterKey::from_text(&text)
            .ok_or_else(|| format!("cluster key {}: not 64 hex digits", key_file.display()))?;
        let mut ring = signing.public();
        match std::fs::read_to_string(trusted_file) {
            Ok(more) => {
                ring.push('\n');
                ring.push_str(&more);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", trusted_file.display())),
        }
        let trusted =
            KeyRing::parse(&ring).map_err(|e| format!("{}: {e}", trusted_file.display()))?;
        Ok(Keys { signing, trusted })
    }
}

/// The label on the templates of pools this node runs for the cluster.
pub const MANAGED_LABEL: &str = "hangar.dev/cluster";

fn scheduler_key() -> String {
    format!("{ROOT}/scheduler")
}

/// Where node `node`'s latest signed audit head is published.
pub fn audit_key(node: &str) -> String {
    format!("{ROOT}/audit/{node}")
}

fn desired_key(node: &str) -> String {
    format!("{ROOT}/desired/{node}")
}

/// What the last pass did, for `/v1/nodes` readers and tests.
#[derive(Debug, Clone, Default)]
pub struct SchedulerStatus {
    /// Whether this node held the scheduler role in its last pass.
    pub scheduling: bool,
    /// The last desired state this node refused, and why.
    pub refused: Option<String>,
    /// How long its last scheduling pass took (read, place, write what changed), seconds.
    pub last_pass_s: Option<f64>,
}

/// The state the scheduling loop keeps between passes.
#[derive(Default)]
pub(crate) struct Scheduling {
    status: Mutex<SchedulerStatus>,
    /// The revision of the last desired-state document refused (audited once, not every pass).
    refused_revision: Mutex<i64>,
    /// The audit head last published to etcd (its sequence number).
    published_audit_seq: Mutex<Option<u64>>,
    /// The report last written, and the lease it was written under.
    published_report: Mutex<Option<(i64, ReconcileReport)>>,
}

impl Daemon {
    /// Starts the loop that schedules (when this node holds the role) and applies this node's
    /// desired state.
    pub(crate) fn start_scheduling(self: &Arc<Self>, membership: Arc<Membership>, keys: Arc<Keys>) {
        self.start_fencing(membership.clone());
        let d = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = d.cluster_pass(&membership, &keys).await {
                    tracing::debug!("cluster pass: {e}");
                }
            }
        });
    }

    async fn cluster_pass(self: &Arc<Self>, m: &Membership, keys: &Keys) -> Result<(), String> {
        let Some(lease) = m.status().lease.filter(|_| m.status().connected) else {
            return Err("not a member right now".into());
        };
        let mut client = m.client().await?;
        let me = m.node().to_string();
        let role = Txn::new()
            .when([Compare::create_revision(scheduler_key(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                scheduler_key(),
                me.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(scheduler_key(), None)]);
        let answer = client.txn(role).await.map_err(|e| e.to_string())?;
        let scheduling = answer.succeeded()
            || answer.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(g) => {
                    g.kvs().first().is_some_and(|kv| kv.value() == me.as_bytes())
                }
                _ => false,
            });
        self.scheduling.status.lock().unwrap_or_else(|e| e.into_inner()).scheduling = scheduling;
        if scheduling {
            let started = std::time::Instant::now();
            self.schedule(&mut client, m, keys).await?;
            self.scheduling.status.lock().unwrap_or_else(|e| e.into_inner()).last_pass_s =
                Some(started.elapsed().as_secs_f64());
        }
        self.publish_audit_head(&mut client, &me).await?;
        let applied = self.apply_desired(&mut client, &me, keys).await;
        self.publish_report(&mut client, &me, lease).await?;
        applied
    }

    /// What this node has of the pools the cluster gave it.
    pub(crate) fn reconcile_report(&self) -> ReconcileReport {
        let mut pools = BTreeMap::new();
        for pool in self.fleet.pools() {
            if !pool.template.labels.contains_key(MANAGED_LABEL) {
                continue;
            }
            let counts = hangar_fleet::PoolCounts::of(&self.fleet.instances(Some(&pool.id)));
            pools.insert(pool.id.to_string(), PoolShare { desired: pool.desired, counts });
        }
        let errors = self.reconciler.last().map(|pass| pass.errors).unwrap_or_default();
        let at = hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock).0;
        ReconcileReport { pools, errors, at }
    }

    /// Writes this node's report under its lease when it says something new (or the lease is
    /// new).
    async fn publish_report(
        self: &Arc<Self>, client: &mut Client, me: &str, lease: i64,
    ) -> Result<(), String> {
        let d = self.clone();
        let report = tokio::task::spawn_blocking(move || d.reconcile_report())
            .await
            .map_err(|e| e.to_string())?;
        let fresh = {
            let last = self.scheduling.published_report.lock().unwrap_or_else(|e| e.into_inner());
            !matches!(&*last, Some((l, r)) if *l == lease && r.same_as(&report))
        };
        if fresh {
            let doc = serde_json::to_vec(&report).expect("reports serialise");
            let with_lease = Some(PutOptions::new().with_lease(lease));
            client
                .put(crate::cluster::report_key(me), doc, with_lease)
                .await
                .map_err(|e| e.to_string())?;
            *self.scheduling.published_report.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((lease, report));
        }
        Ok(())
    }

    /// Publishes this node's latest signed audit head (when it changed) under
    /// `audit/<node>`, with no lease: it outlives the node, so a log cut short or rewritten
    /// after the head was published no longer matches it (`hangar audit verify --expect-head`).
    async fn publish_audit_head(&self, client: &mut Client, me: &str) -> Result<(), String> {
        let Some((head, _key)) = self.trail.head() else { return Ok(()) };
        let published =
            *self.scheduling.published_audit_seq.lock().unwrap_or_else(|e| e.into_inner());
        if published == Some(head.seq) {
            return Ok(());
        }
        let doc = serde_json::to_vec(&head).expect("heads serialise");
        client.put(audit_key(me), doc, None).await.map_err(|e| e.to_string())?;
        *self.scheduling.published_audit_seq.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(head.seq);
        Ok(())
    }

    /// Watches this node's standing (ten times a second: fencing must beat the lease's expiry)
    /// and pauses its running pool instances once when it becomes fenced.
    fn start_fencing(self: &Arc<Self>, membership: Arc<Membership>) {
        let d = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut paused = false;
            loop {
                tick.tick().await;
                match membership.standing() {
                    Standing::Fenced if !paused => {
                        paused = true;
                        tracing::error!(
                            node = %membership.node(),
                            "cannot renew the cluster lease: pausing this node's pool instances"
                        );
                        let fenced = d.clone();
                        let _ = tokio::task::spawn_blocking(move || fenced.pause_pool_instances())
                            .await;
                    }
                    Standing::Member if paused => {
                        paused = false;
                        tracing::info!(node = %membership.node(), "the cluster lease is renewed again");
                    }
                    _ => {}
                }
            }
        });
    }

    /// Pauses every running instance of every pool here, claimed ones included: the cluster
    /// is about to count them as lost and replace them elsewhere.
    fn pause_pool_instances(&self) {
        use hangar_control::Control;
        for instance in self.fleet.instances(None) {
            if instance.state != hangar_core::lifecycle::VmState::Running {
                continue;
            }
            let request = hangar_api::OperationRequest::Pause { vm: instance.name.to_string() };
            match self.local.run(request, &|_| {}) {
                Ok(_) => tracing::warn!(vm = %instance.name, "paused (fenced)"),
                Err(e) => {
                    tracing::error!(vm = %instance.name, "could not pause a fenced instance: {e}")
                }
            }
        }
    }

    /// Whether this node may hand out and make instances now (always, outside a cluster).
    pub(crate) fn in_good_standing(&self) -> Result<(), ApiError> {
        match self.membership().map(|m| m.standing()) {
            None | Some(Standing::Member) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorCode::ClusterUnavailable,
                "this node cannot renew its cluster lease, so it hands out and makes no instance until it can",
                None,
                Some("retry, or claim through another node".into()),
            )),
        }
    }

    /// One scheduling pass: read nodes, pools and the current placement; write what changed.
    async fn schedule(
        &self, client: &mut Client, m: &Membership, keys: &Keys,
    ) -> Result<(), String> {
        let nodes: Vec<NodeView> = m
            .nodes()
            .await
            .map_err(|e| e.1.message.clone())?
            .into_iter()
            .filter_map(|n| {
                Some(NodeView {
                    info: n.info?,
                    alive: n.alive,
                    schedule: n.schedule,
                    unmanaged: Resources::default(),
                })
            })
            .collect();
        let all = |prefix: String| {
            let mut client = client.clone();
            async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let pools =
            crate::tenancy::cluster_pools(m, keys).await.map_err(|e| e.1.message.clone())?;
        let mut current = Assignment::new();
        let mut written: BTreeMap<String, DesiredState> = BTreeMap::new();
        for kv in all(format!("{ROOT}/desired/")).await?.kvs() {
            // What does not open is as good as absent: it is rewritten below.
            if let Ok(ds) = keys.trusted.open::<DesiredState>(DESIRED_STATE, kv.value()) {
                current.insert(ds.node.clone(), ds.shares());
                written.insert(ds.node.clone(), ds);
            }
        }
        let demands: Vec<PoolDemand> = pools.iter().map(demand).collect();
        let mut placement = place(&nodes, &demands, &current);
        // A node whose lease ran out has no records left to place by, but its last orders are
        // still there: they are emptied, so that it removes its instances when it comes back
        // instead of bringing them back beside their replacements.
        for node in written.keys() {
            placement.nodes.entry(node.clone()).or_default();
        }
        for (node, shares) in &placement.nodes {
            let desired = DesiredState::for_node(node, m.node(), shares, &pools);
            let same = written.get(node).is_some_and(|w| w.pools == desired.pools);
            if !same {
                let doc = serde_json::to_vec(&keys.signing.sign(DESIRED_STATE, &desired))
                    .expect("documents serialise");
                client.put(desired_key(node), doc, None).await.map_err(|e| e.to_string())?;
                tracing::info!(node = %node, pools = desired.pools.len(), "scheduled");
            }
        }
        for (pool, missing) in &placement.unplaced {
            tracing::warn!(pool = %pool, "no node has room for {} instances", missing.total());
        }
        Ok(())
    }

    /// Applies this node's desired state to its fleet (when it opens).
    async fn apply_desired(
        self: &Arc<Self>, client: &mut Client, me: &str, keys: &Keys,
    ) -> Result<(), String> {
        let answer = client.get(desired_key(me), None).await.map_err(|e| e.to_string())?;
        let Some(kv) = answer.kvs().first() else {
            return Ok(()); // nothing scheduled here yet
        };
        let desired = keys
            .trusted
            .open::<DesiredState>(DESIRED_STATE, kv.value())
            .map_err(|e| e.to_string())
            .and_then(|ds| {
                if ds.node == me {
                    Ok(ds)
                } else {
                    Err(format!("it is {:?}'s, copied to this node's key", ds.node))
                }
            });
        let desired = match desired {
            Ok(ds) => ds,
            Err(why) => {
                self.refuse(kv.mod_revision(), me, &why);
                return Err(why);
            }
        };
        self.scheduling.status.lock().unwrap_or_else(|e| e.into_inner()).refused = None;
        let d = self.clone();
        tokio::task::spawn_blocking(move || d.converge_pools(desired))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Audits a refused desired state (once per document) and keeps the fleet as it is.
    fn refuse(&self, revision: i64, me: &str, why: &str) {
        let mut last = self.scheduling.refused_revision.lock().unwrap_or_else(|e| e.into_inner());
        self.scheduling.status.lock().unwrap_or_else(|e| e.into_inner()).refused =
            Some(why.to_string());
        if *last == revision {
            return;
        }
        *last = revision;
        tracing::error!(node = %me, "refusing this node's desired state: {why}");
        self.metrics.error(ErrorCode::SignatureInvalid.as_str());
        let entry = hangar_audit::NewEntry {
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
            who: "cluster".into(),
            what: "cluster.desired_state".into(),
            target: me.to_string(),
            result: ErrorCode::SignatureInvalid.as_str().to_string(),
            detail: Some(format!("refused revision {revision}: {why}")),
        };
        if let Err(e) = self.trail.record(entry) {
            tracing::error!("AUDIT FAILURE recording a refused desired state: {e}");
        }
    }

    /// Makes the fleet's pools this node's share: adds, rescales, retemplates and removes.
    /// Pools it made carry the [`MANAGED_LABEL`] in their template; only those are ever removed
    /// (pools made here before the node joined stay its own).
    fn converge_pools(&self, desired: DesiredState) -> Result<(), String> {
        let mut changed = false;
        let managed = |pool: &Pool| pool.template.labels.contains_key(MANAGED_LABEL);
        for pool in desired.pools.values() {
            let mut pool = pool.clone();
            pool.template.labels.insert(MANAGED_LABEL.into(), "true".into());
            let pool = &pool;
            if self.fleet.tenant(&pool.tenant).is_none() {
                // Quotas are the cluster's to enforce; here the tenant only has to exist, with
                // its default network (a template may name it), as `PUT /v1/tenants` makes it.
                hangar_control::Control::ensure_tenant_network(&*self.local, &pool.tenant)
                    .map_err(|e| e.to_string())?;
                self.fleet
                    .put_tenant(Tenant { id: pool.tenant.clone(), quotas: Default::default() });
            }
            match self.fleet.pool(&pool.id) {
                Ok(local) => {
                    if local.template != pool.template {
                        self.fleet
                            .set_template(&pool.id, pool.template.clone())
                            .map_err(|e| e.to_string())?;
                        changed = true;
                    }
                    if local.desired != pool.desired || local.policy != pool.policy {
                        self.fleet
                            .scale(&pool.id, pool.desired, Some(pool.policy))
                            .map_err(|e| e.to_string())?;
                        changed = true;
                    }
                }
                Err(_) => {
                    self.fleet.add_pool(pool.clone()).map_err(|e| e.to_string())?;
                    changed = true;
                }
            }
        }
        for local in self.fleet.pools() {
            if managed(&local) && !desired.pools.contains_key(local.id.as_str()) {
                self.fleet.remove_pool(&local.id).map_err(|e| e.to_string())?;
                changed = true;
            }
        }
        if changed {
            self.reconciler.poke();
        }
        Ok(())
    }

    /// What the scheduling loop last did.
    pub fn scheduler_status(&self) -> SchedulerStatus {
        self.scheduling.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cluster's keys, when this node is in a cluster.
    pub(crate) fn cluster_keys(&self) -> Option<(&Arc<Membership>, &Arc<Keys>)> {
        Some((self.membership()?, self.keys.get()?))
    }
}

/// What one pool asks of the cluster.
fn demand(pool: &Pool) -> PoolDemand {
    let machine = &pool.template.machine;
    PoolDemand {
        pool: pool.id.to_string(),
        desired: pool.desired,
        per_instance: Resources {
            vcpus: machine.vcpus,
            memory_mib: u64::from(machine.memory_mib),
            disk_mib: 0,
        },
        requires_kvm: machine.accel == AccelRequest::Kvm,
        image: match &pool.template.boot {
            BootSource::Image { image, .. } => Some(image.clone()),
            _ => None,
        },
    }
}

/// The cluster's copy of a pool, if it has one.
pub(crate) async fn cluster_pool(
    m: &Membership, keys: &Keys, id: &str,
) -> Result<Option<Pool>, ApiError> {
    let mut client = m.client().await.map_err(unavailable)?;
    let answer = client.get(pool_key(id), None).await.map_err(unavailable)?;
    match answer.kvs().first() {
        None => Ok(None),
        Some(kv) => keys
            .trusted
            .open::<Pool>(POOL, kv.value())
            .map(Some)
            .map_err(|e| ApiError::new(ErrorCode::SignatureInvalid, e.to_string(), None, None)),
    }
}

impl Daemon {
    /// The cluster's copy of pool `id`, if this node is in a cluster and the caller may act on
    /// it with `action`.
    pub(crate) async fn cluster_pool_for(
        &self, caller: &crate::auth::Caller, action: hangar_core::access::Action, id: &str,
    ) -> Result<Option<Pool>, ApiError> {
        let Some((m, keys)) = self.cluster_keys() else { return Ok(None) };
        let id = crate::fleet::pool_id(&caller.resolve(id))?;
        // Not the cluster's: the caller looks among this node's own (made before it joined).
        let Some(pool) = crate::scheduler::cluster_pool(m, keys, id.as_str()).await? else {
            return Ok(None);
        };
        caller.allow(action, hangar_core::access::Resource::Owned(Some(&pool.tenant)), || {
            hangar_fleet::not_found_pool(&id).into()
        })?;
        Ok(Some(pool))
    }
}

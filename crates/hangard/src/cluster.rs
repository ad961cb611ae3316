//! Membership in a cluster (`hangard --cluster`). etcd holds the cluster's shared state; this
//! node keeps its own records there under a lease it renews, reads every node's, and records
//! an operator's cordon. A node that cannot reach etcd keeps running its VMs and refuses
//! cluster changes with `E_CLUSTER_UNAVAILABLE` (retryable); it rejoins by itself when etcd
//! answers again.
//!
//! Keys (all under [`ROOT`]): `nodes/<name>/info` ([`NodeInfo`], signed with the cluster key,
//! under the node's lease: other nodes send claims to the address it names),
//! `nodes/<name>/stats` ([`NodeStats`], same lease, refreshed at every renewal),
//! `nodes/<name>/report` ([`ReconcileReport`], same lease, written by the scheduling loop) and
//! `schedule/<name>` ([`Schedule`], signed, no lease: a cordon outlives the node's absence).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use hangar_api::ClusterNode;
use hangar_cluster::{NodeInfo, NodeStats, ReconcileReport, Schedule, NODE_INFO, SCHEDULE};
use hangar_core::error::ErrorCode;

use crate::error::ApiError;

/// Where Hangar's keys live in etcd.
pub const ROOT: &str = "/hangar/v1";

/// vCPUs a node offers per host CPU. Guests mostly idle, and a paused one uses none, so vCPUs
/// are overcommitted (OpenStack's default ratio); memory never is.
pub const VCPU_OVERCOMMIT: u32 = 16;

/// How long one etcd call may take before the cluster counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How this node joins.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// etcd's client URLs (`http://127.0.0.1:2379`, …).
    pub endpoints: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Where other nodes reach this one's API (`host:port`).
    pub advertise: String,
    /// The fingerprint of that API's TLS certificate (`None`: plain HTTP).
    pub tls_fingerprint: Option<String>,
    /// The lease's time to live: a node silent this long is gone.
    pub lease_ttl: Duration,
}

/// What the membership loop last saw.
#[derive(Debug, Clone, Default)]
pub struct MemberStatus {
    /// Its lease was renewed within the last third of its time to live.
    pub connected: bool,
    /// When it was last renewed.
    pub renewed_at: Option<Instant>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// The lease this node's records live under.
    pub lease: Option<i64>,
}

/// Where this node stands, from how long ago its lease was last renewed (the renewal runs
/// every third of the TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Renewed within half the TTL: a member in good standing.
    Member,
    /// Not renewed for half the TTL (or not yet joined): it hands out no instance and makes
    /// none, since the cluster may be about to give its share to others.
    Unsure,
    /// Not renewed for two thirds of the TTL: it pauses its pool instances. etcd expires the
    /// lease no earlier than a whole TTL after that renewal was sent, and only then does the
    /// scheduler move the node's share, so a pool instance never runs on two nodes at once.
    Fenced,
}

/// This node's membership: its records' upkeep and the cluster reads the API serves.
pub struct Membership {
    options: ClusterOptions,
    status: Mutex<MemberStatus>,
    /// Signs this node's info; opens every node's.
    keys: Arc<crate::scheduler::Keys>,
}

/// The host's name: a node's default name, and the host's when it is a cluster of one.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn info_key(node: &str) -> String {
    format!("{ROOT}/nodes/{node}/info")
}

fn stats_key(node: &str) -> String {
    format!("{ROOT}/nodes/{node}/stats")
}

/// Where node `node`'s [`ReconcileReport`] is kept (under its lease).
pub(crate) fn report_key(node: &str) -> String {
    format!("{ROOT}/nodes/{node}/report")
}

fn schedule_key(node: &str) -> String {
    format!("{ROOT}/schedule/{node}")
}

/// `E_CLUSTER_UNAVAILABLE` with what failed.
pub(crate) fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::ClusterUnavailable,
        format!("the cluster's etcd does not answer: {what}"),
        None,
        Some("retry once etcd is back; VMs on this node keep running meanwhile".into()),
    )
}

/// Runs `call` with [`CALL_TIMEOUT`], as a string error.
async fn timed<T, E: std::fmt::Display>(
    what: &str, call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} s", CALL_TIMEOUT.as_secs())),
    }
}

/// Runs an etcd call until it succeeds or [`RETRY_FOR`] has passed. A member's crash makes the
/// others elect a new leader, and calls in flight fail (`leader changed`) for a moment: with
/// two of three members up that must change nothing for users.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match timed(what, call()).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long a read or a change retries before the cluster counts as unavailable.
const RETRY_FOR: Duration = Duration::from_secs(4);

impl Membership {
    /// Joins: publishes `info` and keeps it (and `stats()`, measured at each renewal) under a
    /// lease for as long as the process runs, reconnecting after any failure.
    pub fn start(
        options: ClusterOptions, info: NodeInfo, stats: Arc<dyn Fn() -> NodeStats + Send + Sync>,
        keys: Arc<crate::scheduler::Keys>,
    ) -> Arc<Membership> {
        let membership =
            Arc::new(Membership { options, status: Mutex::new(MemberStatus::default()), keys });
        let keeper = membership.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                let began = Instant::now();
                let why = keeper.session(&info, &stats).await;
                tracing::warn!(node = %keeper.options.node, "cluster membership lost: {why}");
                keeper.set_status(|s| {
                    s.connected = false;
                    s.error = Some(why.clone());
                });
                // A session that lasted resets the backoff; quick failures back off to 2 s.
                if began.elapsed() > keeper.options.lease_ttl {
                    pause = Duration::from_millis(100);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
        membership
    }

    fn set_status(&self, change: impl FnOnce(&mut MemberStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// What the membership loop last saw.
    pub fn status(&self) -> MemberStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where this node stands now.
    pub fn standing(&self) -> Standing {
        let ttl = self.options.lease_ttl;
        match self.status().renewed_at.map(|at| at.elapsed()) {
            Some(age) if age < ttl / 2 => Standing::Member,
            Some(age) if age < ttl * 2 / 3 => Standing::Unsure,
            Some(_) => Standing::Fenced,
            None => Standing::Unsure,
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.options.node
    }

    pub(crate) async fn client(&self) -> Result<Client, String> {
        let options =
            ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT).with_timeout(CALL_TIMEOUT);
        timed("connect", Client::connect(&self.options.endpoints, Some(options))).await
    }

    /// One lease's life: grant, publish, renew until something fails; returns why it ended.
    async fn session(
        &self, info: &NodeInfo, stats: &Arc<dyn Fn() -> NodeStats + Send + Sync>,
    ) -> String {
        let result: Result<(), String> = async {
            let mut client = self.client().await?;
            let ttl = self.options.lease_ttl.as_secs().max(1) as i64;
            let lease = timed("grant a lease", client.lease_grant(ttl, None)).await?.id();
            self.set_status(|s| s.lease = Some(lease));
            let with_lease = || Some(PutOptions::new().with_lease(lease));
            let info_json = serde_json::to_vec(&self.keys.signing.sign(NODE_INFO, info))
                .expect("node records serialise");
            timed("publish the node", client.put(info_key(&info.name), info_json, with_lease()))
                .await?;
            let (mut keeper, mut answers) =
                timed("keep the lease alive", client.lease_keep_alive(lease)).await?;
            let every = self.options.lease_ttl / 3;
            loop {
                let measure = stats.clone();
                let now = tokio::task::spawn_blocking(move || measure())
                    .await
                    .map_err(|e| format!("measure the node: {e}"))?;
                let stats_json = serde_json::to_vec(&now).expect("node records serialise");
                timed(
                    "publish the stats",
                    client.put(stats_key(&info.name), stats_json, with_lease()),
                )
                .await?;
                // The lease runs at least TTL from when etcd renews it, which is after this
                // instant: fencing counts from here, never from when the answer came back.
                let sent = Instant::now();
                timed("renew the lease", keeper.keep_alive()).await?;
                match timed("renew the lease", answers.message()).await? {
                    Some(answer) if answer.ttl() > 0 => {}
                    Some(_) => return Err("the lease expired before it was renewed".into()),
                    None => return Err("etcd ended the lease's keep-alive stream".into()),
                }
                self.set_status(|s| {
                    s.connected = true;
                    s.renewed_at = Some(sent);
                    s.error = None;
                });
                tokio::time::sleep(every).await;
            }
        }
        .await;
        match result {
            Ok(()) => "the session ended".into(),
            Err(why) => why,
        }
    }

    /// Every node the cluster knows: those with a live lease, and those an operator cordoned.
    pub async fn nodes(&self) -> Result<Vec<ClusterNode>, ApiError> {
        let client = self.client().await.map_err(unavailable)?;
        let read = |key: String| {
            let client = client.clone();
            move || {
                let (mut client, key) = (client.clone(), key.clone());
                async move { client.get(key, Some(GetOptions::new().with_prefix())).await }
            }
        };
        let records = retrying("read the nodes", read(format!("{ROOT}/nodes/")))
            .await
            .map_err(unavailable)?;
        let schedules = retrying("read the schedules", read(format!("{ROOT}/schedule/")))
            .await
            .map_err(unavailable)?;
        let mut nodes: BTreeMap<String, ClusterNode> = BTreeMap::new();
        let entry = |nodes: &mut BTreeMap<String, ClusterNode>, name: &str| {
            nodes
                .entry(name.to_string())
                .or_insert_with(|| ClusterNode {
                    name: name.to_string(),
                    alive: false,
                    schedule: Schedule::Ready,
                    this_node: name == self.options.node,
                    info: None,
                    stats: None,
                    report: None,
                    problem: None,
                })
                .clone()
        };
        for kv in records.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(&format!("{ROOT}/nodes/")) else { continue };
            let Some((name, record)) = rest.split_once('/') else { continue };
            let mut node = entry(&mut nodes, name);
            let problem = match record {
                // Info that does not open is as good as absent: nothing is placed on the node
                // and no claim is sent to the address it names.
                "info" => match self.keys.trusted.open::<NodeInfo>(NODE_INFO, kv.value()) {
                    Ok(info) if info.name == name => {
                        node.alive = true;
                        node.info = Some(info);
                        None
                    }
                    Ok(info) => Some(format!("its info names another node ({:?})", info.name)),
                    Err(e) => Some(format!("its info is refused: {e}")),
                },
                "stats" => match serde_json::from_slice::<NodeStats>(kv.value()) {
                    Ok(stats) => {
                        node.stats = Some(stats);
                        None
                    }
                    Err(e) => Some(format!("its stats do not read: {e}")),
                },
                "report" => match serde_json::from_slice::<ReconcileReport>(kv.value()) {
                    Ok(report) => {
                        node.report = Some(report);
                        None
                    }
                    Err(e) => Some(format!("its report does not read: {e}")),
                },
                other => Some(format!("an unknown record {other:?}")),
            };
            node.problem = node.problem.or(problem);
            nodes.insert(name.to_string(), node);
        }
        for kv in schedules.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(name) = key.strip_prefix(&format!("{ROOT}/schedule/")) else { continue };
            let mut node = entry(&mut nodes, name);
            // One that does not open is ignored: raw etcd access cannot drain a node.
            match self.keys.trusted.open::<Schedule>(SCHEDULE, kv.value()) {
                Ok(schedule) => node.schedule = schedule,
                Err(e) => node.problem = Some(format!("its schedule is refused: {e}")),
            }
            nodes.insert(name.to_string(), node);
        }
        Ok(nodes.into_values().collect())
    }

    /// Records what an operator decided for `node` (which must be known to the cluster).
    pub async fn set_schedule(
        &self, node: &str, schedule: Schedule,
    ) -> Result<ClusterNode, ApiError> {
        let known = self.nodes().await?;
        if !known.iter().any(|n| n.name == node) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("no node {node:?} in the cluster"),
                Some("node".into()),
                Some("`hangar node ls` lists the nodes".into()),
            ));
        }
        let client = self.client().await.map_err(unavailable)?;
        let value = serde_json::to_vec(&self.keys.signing.sign(SCHEDULE, &schedule))
            .expect("schedules serialise");
        retrying("record the schedule", || {
            let (mut client, value) = (client.clone(), value.clone());
            async move { client.put(schedule_key(node), value, None).await }
        })
        .await
        .map_err(unavailable)?;
        let nodes = self.nodes().await?;
        Ok(nodes.into_iter().find(|n| n.name == node).expect("it was there a moment ago"))
    }
}

impl crate::state::Daemon {
    /// What this node publishes about itself: its capacity from the host facts, the
    /// accelerator its VMs get (`fake` on the fake engine), the images it can boot.
    pub fn node_info(
        &self, name: &str, advertise: &str, tls_fingerprint: Option<String>,
    ) -> NodeInfo {
        let facts = &self.facts;
        let accel = match self.engine_name {
            "fake" => "fake".to_string(),
            _ if facts.kvm.verdict().0 => "kvm".to_string(),
            _ => "tcg".to_string(),
        };
        let shared = std::path::Path::new(hangar_plan::probe::SYSTEM_IMAGE_DIR);
        let images = hangar_api::images(self.local.home(), shared)
            .map(|list| list.into_iter().filter(|i| i.complete).map(|i| i.name).collect())
            .unwrap_or_default();
        NodeInfo {
            name: name.to_string(),
            advertise: advertise.to_string(),
            tls_fingerprint,
            capacity: hangar_cluster::Resources {
                vcpus: facts.cpu_count.saturating_mul(VCPU_OVERCOMMIT),
                memory_mib: facts.capacity.map(|c| c.memory_available_mib).unwrap_or(0),
                disk_mib: facts.capacity.map(|c| c.disk_free_mib).unwrap_or(0),
            },
            accel,
            qemu_version: facts.qemu.version.clone(),
            images,
            joined_at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock).0,
        }
    }

    /// What this node's VMs hold now (running and paused ones hold their memory), and how
    /// many of each pool's instances wait to be claimed.
    pub fn node_stats(&self) -> NodeStats {
        use hangar_control::Control;
        use hangar_core::lifecycle::VmState;
        let vms = self.local.list().unwrap_or_default();
        let mut waiting: BTreeMap<String, u32> =
            self.fleet.pools().into_iter().map(|p| (p.id.to_string(), 0)).collect();
        for i in self.fleet.instances(None) {
            if !i.claimed && matches!(i.state, VmState::Paused | VmState::Spare | VmState::Sleeping)
            {
                *waiting.entry(i.pool.to_string()).or_default() += 1;
            }
        }
        let holding: Vec<_> =
            vms.iter().filter(|v| v.state == "running" || v.state == "paused").collect();
        NodeStats {
            used: hangar_cluster::Resources {
                vcpus: holding.iter().map(|v| v.vcpus).sum(),
                memory_mib: holding.iter().map(|v| u64::from(v.memory_mib)).sum(),
                disk_mib: 0,
            },
            vms_running: holding.len() as u32,
            vms_total: vms.len() as u32,
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock).0,
            waiting,
        }
    }

    /// Joins the cluster `options` names (once; later calls change nothing): keeps this node's
    /// membership, and schedules pools and applies this node's share with `keys`.
    pub fn join_cluster(self: &Arc<Self>, options: ClusterOptions, keys: crate::scheduler::Keys) {
        let info =
            self.node_info(&options.node, &options.advertise, options.tls_fingerprint.clone());
        let measured = self.clone();
        let keys = Arc::new(keys);
        let membership =
            Membership::start(options, info, Arc::new(move || measured.node_stats()), keys.clone());
        if self.cluster.set(membership.clone()).is_ok() && self.keys.set(keys.clone()).is_ok() {
            self.start_scheduling(membership, keys);
        }
    }

    /// The cluster this node is in, if any.
    pub(crate) fn membership(&self) -> Option<&Arc<Membership>> {
        self.cluster.get()
    }
}

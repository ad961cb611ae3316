//! Requests served by other nodes, with node credentials ([`NodeCredential`]: signed with the
//! cluster key, for one node, one request and the caller's scope, good once and for 30 s), sent
//! to each node's API over TLS pinned by the fingerprint in its signed
//! [`hangar_cluster::NodeInfo`].
//!
//! **Claims anywhere**: `POST /v1/pools/{pool}/claim` on any node hands out an instance: one
//! waiting on this node if there is one; else one waiting on another node; only when no node
//! has one waiting is a new one made, here if this node runs the pool. The answer names the
//! node the instance runs on. Which nodes have instances waiting comes from their published
//! stats (refreshed every third of the lease's TTL): a node that has none by the time it is
//! asked says so and the next is asked.
//!
//! **Events cluster-wide**: `GET /v1/cluster/events` reads a page of events from every live
//! node at once (each filtered by the caller's scope on the node that holds them) and merges
//! them by time, with a cursor that holds each node's position.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hangar_cluster::{Forwarded, NodeCredential};
use hangar_core::access::Scope;
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::error::ErrorCode;
use hangar_fleet::{Claim, Pool};

use crate::auth::Caller;
use crate::error::{blocking, ApiError, ApiResult};
use crate::state::Daemon;

/// How long a forwarded claim may take (it may restore or boot an instance).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(120);

/// Credentials accepted and not yet expired, by nonce: each is accepted once. The record is
/// in memory, so it starts with the daemon: a credential made before then is refused (it may
/// have been used before a restart).
pub(crate) struct SeenCredentials {
    since: u64,
    seen: Mutex<BTreeMap<String, u64>>,
}

impl Default for SeenCredentials {
    fn default() -> Self {
        SeenCredentials { since: now_ms(), seen: Mutex::default() }
    }
}

impl SeenCredentials {
    /// Whether `credential` was made since the record began and is not in it (and now is,
    /// until it expires); why not otherwise.
    fn first_use(&self, credential: &NodeCredential, now: u64) -> Result<(), &'static str> {
        if credential.issued_at < self.since {
            return Err("node credential refused: it was made before this node started");
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, until| *until > now);
        match seen.insert(credential.nonce.clone(), credential.expires_at()) {
            None => Ok(()),
            Some(_) => Err("node credential refused: it was used already"),
        }
    }
}

fn now_ms() -> u64 {
    SystemClock.now().0
}

fn nonce() -> ApiResult<String> {
    let bytes = hangar_control::tokens::random(16)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Daemon {
    /// The node credential `token` stands for, on `method path`: the caller another node
    /// authenticated, for one claim from one pool.
    pub(crate) fn forwarded_caller(
        &self, token: &str, method: &axum::http::Method, path: &str,
    ) -> Result<Caller, String> {
        let (m, keys) = self
            .cluster_keys()
            .ok_or("a node credential is for a cluster's nodes, and this daemon is in none")?;
        let forwarded = NodeCredential::open(token, &keys.trusted).map_err(|e| e.to_string())?;
        let now = now_ms();
        forwarded.check(m.node(), method.as_str(), path, now).map_err(|e| e.to_string())?;
        let scope: Scope = forwarded.scope.parse()?;
        self.seen_credentials.first_use(&forwarded, now)?;
        Ok(Caller {
            scope,
            who: format!("node:{} for {}", forwarded.from, forwarded.who),
            forwarded: Some(forwarded),
        })
    }

    /// A claim from cluster pool `pool`, as described at the top of this module. Returns the
    /// claim and the node that served it.
    pub(crate) async fn cluster_claim(&self, caller: &Caller, pool: &Pool) -> ApiResult<Claim> {
        let (m, _) = self.cluster_keys().expect("a cluster pool means a cluster");
        let me = m.node().to_string();
        let here = self.fleet.pool(&pool.id).is_ok();
        if let Some(forwarded) = &caller.forwarded {
            // Passed on by another node: served here or not at all.
            self.in_good_standing()?;
            if !here {
                return Err(none_here(&me, pool));
            }
            let create = matches!(forwarded.allows, Forwarded::Claim { create: true, .. });
            return self.claim_here(pool, create).await?.ok_or_else(|| none_here(&me, pool));
        }
        // A node that cannot renew its lease neither hands out nor passes on claims: its view
        // of the cluster is stale, and the caller is better served by another node.
        self.in_good_standing()?;
        if here {
            if let Some(claim) = self.claim_here(pool, false).await? {
                return Ok(claim);
            }
        }
        let id = pool.id.to_string();
        let mut others: Vec<(u32, hangar_api::ClusterNode)> = m
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.alive && !n.this_node && n.info.is_some())
            .filter_map(|n| {
                let waiting = n.stats.as_ref()?.waiting.get(&id).copied()?;
                Some((waiting, n))
            })
            .collect();
        // Most waiting first (the likeliest to still have one), then by name.
        others.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let mut last = None;
        for (_, node) in others.iter().filter(|(waiting, _)| *waiting > 0) {
            match self.forward(caller, pool, node, false).await {
                Ok(claim) => return Ok(claim),
                Err(e) => last = Some(e),
            }
        }
        // Nothing waits anywhere: make one, here if this node runs the pool.
        if here {
            let claim = self.claim_here(pool, true).await?;
            return Ok(claim.expect("a claim that may create always has one"));
        }
        for (_, node) in &others {
            match self.forward(caller, pool, node, true).await {
                Ok(claim) => return Ok(claim),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ApiError::new(
                ErrorCode::ClusterUnavailable,
                format!("no node runs pool {:?} right now", pool.id.as_str()),
                None,
                Some("retry: the scheduler places a new pool's instances within seconds".into()),
            )
        }))
    }

    /// A claim from this node's share of `pool` (`create`: making one if none waits).
    async fn claim_here(&self, pool: &Pool, create: bool) -> ApiResult<Option<Claim>> {
        let (fleet, id) = (self.fleet.clone(), pool.id.clone());
        let claimed = blocking(move || match create {
            true => fleet.claim(&id).map(Some),
            false => fleet.claim_waiting(&id),
        })
        .await??;
        self.reconciler.poke();
        let node = self.membership().map(|m| m.node().to_string());
        Ok(claimed.map(|claim| Claim { node, ..claim }))
    }

    /// Sends `method path` to `node` on `caller`'s behalf, with a node credential that allows
    /// `allows` only; its answer when it is 200, else its error.
    async fn ask<T: serde::de::DeserializeOwned + Send + 'static>(
        &self, caller: &Caller, node: &hangar_api::ClusterNode, allows: Forwarded, method: &str,
        path: String,
    ) -> ApiResult<T> {
        let (m, keys) = self.cluster_keys().expect("only a cluster's nodes forward");
        let info = node.info.clone().expect("only nodes with info are asked");
        let credential = NodeCredential {
            from: m.node().to_string(),
            to: node.name.clone(),
            allows,
            scope: caller.scope.to_string(),
            who: caller.who.clone(),
            issued_at: now_ms(),
            nonce: nonce()?,
        };
        let endpoint = hangar_api::client::Endpoint::Tcp {
            addr: info.advertise.clone(),
            fingerprint: info.tls_fingerprint.clone(),
            token: credential.credential(&keys.signing),
        };
        let method = method.to_string();
        let sent = blocking(move || {
            hangar_api::client::send(&endpoint, &method, &path, None, FORWARD_TIMEOUT)
        })
        .await?;
        let response = sent.map_err(|e| unanswered(&node.name, e.to_string()))?;
        if response.status != 200 {
            let body: hangar_api::ErrorBody = serde_json::from_slice(&response.body)
                .map_err(|_| unanswered(&node.name, format!("status {}", response.status)))?;
            tracing::info!(node = %node.name, "a forwarded request was refused: {}", body.message);
            return Err(ApiError::from(body));
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| unanswered(&node.name, format!("its answer does not read: {e}")))
    }

    /// Asks `node` to serve the claim.
    async fn forward(
        &self, caller: &Caller, pool: &Pool, node: &hangar_api::ClusterNode, create: bool,
    ) -> ApiResult<Claim> {
        let allows = Forwarded::Claim { pool: pool.id.to_string(), create };
        let path = format!("/v1/pools/{}/claim", pool.id);
        let claim: Claim = self.ask(caller, node, allows, "POST", path).await?;
        // The node says where the instance runs; it can only be itself.
        if claim.node.as_deref() != Some(node.name.as_str()) {
            return Err(unanswered(&node.name, format!("it answered for node {:?}", claim.node)));
        }
        tracing::info!(node = %node.name, pool = %pool.id, instance = %claim.instance.id, "claim served by another node");
        Ok(claim)
    }
}

impl Daemon {
    /// A page of every live node's events after `cursor` (see the top of this module).
    pub(crate) async fn cluster_events(
        &self, caller: Caller, cursor: BTreeMap<String, u64>, limit: Option<usize>,
    ) -> ApiResult<hangar_api::ClusterEvents> {
        let nodes: Vec<hangar_api::ClusterNode> = match self.membership() {
            Some(m) => {
                m.nodes().await?.into_iter().filter(|n| n.alive && n.info.is_some()).collect()
            }
            None => Vec::new(),
        };
        let me = match self.membership() {
            Some(m) => m.node().to_string(),
            None => crate::cluster::host_name(),
        };
        let since = |node: &str| cursor.get(node).copied().unwrap_or(0);
        let limit_query = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        let theirs = nodes.iter().filter(|n| !n.this_node).map(|node| {
            let path = format!("/v1/events/page?since={}{limit_query}", since(&node.name));
            let asked = self.ask::<Vec<hangar_api::EventView>>(
                &caller,
                node,
                Forwarded::EventsPage,
                "GET",
                path,
            );
            async move { (node.name.clone(), asked.await) }
        });
        let mine = async {
            let page = crate::routes::events::page(self, caller.clone(), since(&me), limit).await;
            (me.clone(), page)
        };
        let (mine, theirs) = tokio::join!(mine, futures_util::future::join_all(theirs));
        let mut positions = cursor.clone();
        let mut events = Vec::new();
        let mut unanswered = Vec::new();
        for (node, page) in std::iter::once(mine).chain(theirs) {
            match page {
                Ok(page) => {
                    if let Some(last) = page.last() {
                        positions.insert(node.clone(), last.seq());
                    }
                    events.extend(
                        page.into_iter()
                            .map(|event| hangar_api::NodeEvent { node: node.clone(), event }),
                    );
                }
                Err(e) if node == me => return Err(e),
                Err(e) => {
                    tracing::info!(node = %node, "no events from it: {}", e.1.message);
                    unanswered.push(node);
                }
            }
        }
        events.sort_by(|a, b| {
            (a.event.at(), &a.node, a.event.seq()).cmp(&(b.event.at(), &b.node, b.event.seq()))
        });
        let cursor =
            positions.iter().map(|(n, s)| format!("{n}:{s}")).collect::<Vec<_>>().join(",");
        Ok(hangar_api::ClusterEvents { events, cursor, unanswered })
    }
}

/// `E_CLUSTER_UNAVAILABLE` (retryable): node `name` did not answer a forwarded request.
fn unanswered(name: &str, why: String) -> ApiError {
    ApiError::new(
        ErrorCode::ClusterUnavailable,
        format!("node {name:?} did not answer: {why}"),
        None,
        Some("retry; `hangar node ls` shows the nodes".into()),
    )
}

/// `E_BUSY` (retryable): a node asked to serve a claim has no instance of the pool waiting.
fn none_here(me: &str, pool: &Pool) -> ApiError {
    ApiError::new(
        ErrorCode::Busy,
        format!("node {me:?} has no instance of pool {:?} waiting", pool.id.as_str()),
        None,
        Some("the node that passed the claim on asks another".into()),
    )
}

//! Cluster wire types: what `/v1/nodes` and `/v1/cluster/events` answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::EventView;

/// A node of the cluster, as `GET /v1/nodes` shows it (without `hangard --cluster`, the host
/// alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    /// Its name (`hangard --node`).
    pub name: String,
    /// Whether its lease is alive: it renews it every third of the lease's time to live, and
    /// its records go when it stops.
    pub alive: bool,
    /// `ready`, `cordoned` (no new instances) or `draining` (its instances move away).
    #[schema(value_type = String)]
    pub schedule: hangar_cluster::Schedule,
    /// Whether it is the node that answered.
    pub this_node: bool,
    /// What it published when it joined (absent once its lease expired).
    #[schema(value_type = Option<Object>)]
    pub info: Option<hangar_cluster::NodeInfo>,
    /// What it uses now.
    #[schema(value_type = Option<Object>)]
    pub stats: Option<hangar_cluster::NodeStats>,
    /// Its share of each pool and what it has of it, as of its last scheduling pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub report: Option<hangar_cluster::ReconcileReport>,
    /// Why one of its records could not be read (they are written by nodes; anything else
    /// that wrote there is reported, not trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One event of a node, as `GET /v1/cluster/events` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeEvent {
    /// The node it happened on (its `seq` is that node's).
    pub node: String,
    /// The event.
    pub event: EventView,
}

/// `GET /v1/cluster/events`: a page of every live node's events, merged by time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterEvents {
    /// The events, oldest first (by time, then node, then sequence number).
    pub events: Vec<NodeEvent>,
    /// Where the next page starts: each node's last sequence number read, as
    /// `node:seq,node:seq` (pass it back as `cursor`).
    pub cursor: String,
    /// Nodes that did not answer (their events come in a later page, from where they were).
    pub unanswered: Vec<String>,
}

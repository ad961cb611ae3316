//! What the scheduler tells each node to run, and the keys it is kept under.

use std::collections::BTreeMap;

use hangar_fleet::Pool;
use serde::{Deserialize, Serialize};

/// The kind of a signed [`DesiredState`] document.
pub const DESIRED_STATE: &str = "desired-state";
/// The kind of a signed cluster-wide [`Pool`] document.
pub const POOL: &str = "pool";

/// One node's share of the cluster: the pools it runs instances of, each with this node's
/// counts (not the pool's cluster-wide ones). Signed by the scheduler; a node acts on nothing
/// else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The node it is for (a document copied to another node's key is refused there).
    pub node: String,
    /// The scheduler that wrote it.
    pub scheduler: String,
    /// Its pools, by id, with this node's counts.
    pub pools: BTreeMap<String, Pool>,
}

impl DesiredState {
    /// The shares in `placement` for `node`, with each pool's template and policy from `pools`.
    pub fn for_node(
        node: &str, scheduler: &str, shares: &BTreeMap<String, hangar_fleet::Desired>,
        pools: &[Pool],
    ) -> DesiredState {
        let pools = shares
            .iter()
            .filter_map(|(id, share)| {
                let pool = pools.iter().find(|p| p.id.as_str() == id)?;
                Some((id.clone(), Pool { desired: *share, ..pool.clone() }))
            })
            .collect();
        DesiredState { node: node.to_string(), scheduler: scheduler.to_string(), pools }
    }

    /// The shares it gives, by pool (what [`crate::place`] takes as the current placement).
    pub fn shares(&self) -> BTreeMap<String, hangar_fleet::Desired> {
        self.pools.iter().map(|(id, p)| (id.clone(), p.desired)).collect()
    }
}

//! What a node reports back after converging on its desired state: its share of each pool
//! and the instances it has of it. The cluster's view of a pool (`GET /v1/pools/{pool}` on any
//! node) is the sum of the live nodes' reports.

use std::collections::BTreeMap;

use hangar_fleet::{Desired, PoolCounts};
use serde::{Deserialize, Serialize};

/// One pool on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolShare {
    /// What the scheduler gave the node (its counts of the pool).
    pub desired: Desired,
    /// What the node has.
    pub counts: PoolCounts,
}

impl PoolShare {
    /// Whether the node has every unclaimed instance its share asks for, and no more.
    pub fn converged(&self) -> bool {
        let (d, c) = (self.desired, self.counts);
        (c.running, c.warm, c.sleeping, c.spare, c.other)
            == (d.running, d.warm, d.sleeping, d.spare, 0)
    }
}

/// A node's report, under its lease (it goes with the node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileReport {
    /// Its pools (those the cluster gave it), by id.
    pub pools: BTreeMap<String, PoolShare>,
    /// The errors of its last reconcile pass: code and message.
    pub errors: Vec<(String, String)>,
    /// When written, milliseconds since the epoch.
    pub at: u64,
}

impl ReconcileReport {
    /// Whether every pool's share is met.
    pub fn converged(&self) -> bool {
        self.pools.values().all(PoolShare::converged)
    }

    /// Whether it says what `other` says (its time aside): written again only when not.
    pub fn same_as(&self, other: &ReconcileReport) -> bool {
        self.pools == other.pools && self.errors == other.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_met_when_the_unclaimed_counts_are_its_own() {
        let desired = Desired { warm: 2, running: 1, ..Desired::default() };
        let mut share = PoolShare {
            desired,
            counts: PoolCounts { warm: 2, running: 1, claimed: 5, ..PoolCounts::default() },
        };
        assert!(share.converged(), "claimed instances are their claimers'");
        share.counts.other = 1;
        assert!(!share.converged(), "one in flight");
        share.counts = PoolCounts { warm: 3, running: 1, ..PoolCounts::default() };
        assert!(!share.converged(), "one too many");
        let report = ReconcileReport { pools: [("p".into(), share)].into(), ..Default::default() };
        assert!(!report.converged());
        assert!(report.same_as(&ReconcileReport { at: 5, ..report.clone() }));
    }
}

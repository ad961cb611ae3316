//! What the cluster knows about a node.

use serde::{Deserialize, Serialize};

/// Amounts of what instances use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk in MiB.
    pub disk_mib: u64,
}

impl Resources {
    /// Both amounts added (saturating: a corrupt record must not wrap around).
    pub fn plus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            disk_mib: self.disk_mib.saturating_add(other.disk_mib),
        }
    }

    /// `self` minus `other`, none below zero.
    pub fn minus(self, other: Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(other.disk_mib),
        }
    }

    /// Whether `need` fits in `self`.
    pub fn holds(self, need: Resources) -> bool {
        need.vcpus <= self.vcpus
            && need.memory_mib <= self.memory_mib
            && need.disk_mib <= self.disk_mib
    }

    /// `self` taken `n` times.
    pub fn times(self, n: u32) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_mul(n),
            memory_mib: self.memory_mib.saturating_mul(u64::from(n)),
            disk_mib: self.disk_mib.saturating_mul(u64::from(n)),
        }
    }
}

/// The kind of a node's signed [`NodeInfo`]: other nodes send claims (and node credentials) to
/// the address it names, so a record anyone with raw etcd access could rewrite is not trusted.
pub const NODE_INFO: &str = "node-info";

/// What a node publishes about itself when it joins (under its lease: it disappears when the
/// node stops renewing), signed with the cluster key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// The node's name (`hangard --node`), unique in the cluster.
    pub name: String,
    /// Where other nodes reach its API (`host:port`, `hangard --advertise`).
    pub advertise: String,
    /// The SHA-256 fingerprint of its API's TLS certificate, which other nodes pin; `None`
    /// when it serves plain HTTP (`--insecure-plaintext`).
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// What it has for instances.
    pub capacity: Resources,
    /// `kvm`, `tcg`, or `fake` (the shipped in-memory engine).
    pub accel: String,
    /// The QEMU version, when it runs QEMU.
    pub qemu_version: Option<String>,
    /// The built-in images it can boot.
    pub images: Vec<String>,
    /// When it joined, milliseconds since the epoch.
    pub joined_at: u64,
}

/// What a node uses now, refreshed while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeStats {
    /// Resources its VMs hold.
    pub used: Resources,
    /// VMs running (or paused: they hold memory).
    pub vms_running: u32,
    /// VMs it has in any state.
    pub vms_total: u32,
    /// When measured, milliseconds since the epoch.
    pub at: u64,
    /// For each pool it runs instances of: how many wait to be claimed (warm, spare or
    /// sleeping). Where a claim is forwarded when the node asked has none.
    #[serde(default)]
    pub waiting: std::collections::BTreeMap<String, u32>,
}

/// The kind of a signed [`Schedule`] document (an operator's cordon or drain, written through
/// the API).
pub const SCHEDULE: &str = "schedule";

/// Whether the scheduler may place instances on a node. An operator's decision, kept apart from
/// the node's own records (it outlives the node's lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// New instances may go there.
    #[default]
    Ready,
    /// No new instances; those there stay.
    Cordoned,
    /// No new instances, and those there move elsewhere.
    Draining,
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// What it published.
    pub info: NodeInfo,
    /// Whether its lease is alive.
    pub alive: bool,
    /// What the operator said.
    pub schedule: Schedule,
    /// What VMs that no pool placed there use (the scheduler leaves that room alone).
    pub unmanaged: Resources,
}

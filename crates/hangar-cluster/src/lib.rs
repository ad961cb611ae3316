//! Hangar across hosts. A cluster keeps its shared state in etcd (never a consensus of its own);
//! this crate holds what the nodes agree on and the pure decisions made from it:
//!
//! - [`node`]: what a node says about itself ([`NodeInfo`], [`NodeStats`]) and what an operator
//!   says about it ([`Schedule`]: cordoned, draining);
//! - [`placement`]: which node runs how many of each pool's instances, a pure function of the
//!   nodes and the pools (like `hangar_fleet::reconcile::plan` on one host);
//! - [`desired`]: what the scheduler tells a node to run ([`DesiredState`]);
//! - [`report`]: what a node answers, its share of each pool and what it has ([`ReconcileReport`]);
//! - [`forward`]: the node credential a request carries when one node passes it to another;
//! - [`tenancy`]: tenants' quotas checked against what their pools ask of the whole cluster;
//! - [`signed`]: documents signed with the cluster's Ed25519 key, so that raw access to etcd is
//!   not enough to make a node run something.
//!
//! Nothing here does I/O; the etcd client lives with the daemon that uses it.

pub mod desired;
pub mod forward;
pub mod node;
pub mod placement;
pub mod report;
pub mod signed;
pub mod tenancy;

pub use desired::{DesiredState, DESIRED_STATE, POOL};
pub use forward::{Forwarded, NodeCredential, CREDENTIAL_PREFIX};
pub use node::{NodeInfo, NodeStats, NodeView, Resources, Schedule, NODE_INFO, SCHEDULE};
pub use placement::{place, Assignment, Placement, PoolDemand};
pub use report::{PoolShare, ReconcileReport};
pub use signed::{ClusterKey, KeyRing, SignatureError, SignedPayload};
pub use tenancy::TENANT;

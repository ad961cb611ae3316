//! `hangard`, the node daemon: Hangar's REST API v1 on a unix socket.
//!
//! Every handler is a thin translation between HTTP and `hangar-control`'s
//! [`Local`](hangar_control::Local), the same library the CLI uses without a daemon; the wire types live in `hangar-api`. A mutating call
//! is journaled as an operation and carried out on its own thread (engine calls block while
//! they wait for guests, so they never run on the async runtime's threads). VMs never depend on
//! the daemon: QEMU processes outlive it; a restarted daemon finds them again through the store
//! (PID + start time + QMP) and settles every operation its predecessor left running.
mod admin;
mod app;
pub mod auth;
mod body;
pub mod cluster;
pub mod embedded;
mod error;
pub mod fleet;
mod forwarding;
pub mod metrics;
mod middleware;
mod openapi;
mod routes;
pub mod scheduler;
pub mod server;
mod state;
mod tenancy;
pub mod trail;

pub use app::{bind, router, serve, serve_tcp};
pub use auth::{Caller, UidMap};
pub use error::{panic_message, ApiError, StartError};
pub use openapi::{openapi_json, ApiDoc};
pub use routes::events::{EventPageQuery, EventsQuery};
pub use routes::operations::OperationsQuery;
pub use routes::operations::WaitQuery;
pub use routes::vms::{DeleteQuery, VmAction};
pub use state::{Daemon, Options, Peer, LIST_MAX_AGE, MAX_BODY_BYTES};

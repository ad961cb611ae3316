//! One module per resource (`gateway`: the gateway's routes); `admin` and `fleet` beside them
//! hold tokens, host, tenants, pools and instances.

pub(crate) mod events;
pub(crate) mod gateway;
pub(crate) mod guest;
pub(crate) mod networks;
pub(crate) mod nodes;
pub(crate) mod operations;
pub(crate) mod snapshots;
pub(crate) mod system;
pub(crate) mod vms;

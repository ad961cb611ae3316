//! Networks through the control library: records in the store (via `hangar-net`), bridges
//! made by the engine (a fake makes none), views for the CLI and the API.

use hangar_api::{LeaseView, NetworkRequest, NetworkView};
use hangar_core::error::ErrorCode;
use hangar_core::ids::{qualify, NetworkName, TenantId};
use hangar_core::network::{Lease, Network, Subnet};

use crate::{ControlError, Result};

/// The view of a network and its leases.
pub fn view(network: &Network, leases: &[Lease]) -> NetworkView {
    NetworkView {
        name: network.name.to_string(),
        tenant: network.tenant.as_ref().map(|t| t.to_string()),
        subnet: network.subnet.to_string(),
        gateway: network.subnet.gateway().to_string(),
        bridge: hangar_plan::bridge_name(network.name.as_str()),
        nat: network.nat,
        leases: leases
            .iter()
            .map(|l| LeaseView {
                address: l.address.to_string(),
                vm: l.vm.to_string(),
                nic: l.nic.to_string(),
                mac: l.mac.clone(),
            })
            .collect(),
        free: network.subnet.capacity().saturating_sub(leases.len() as u32),
    }
}

/// A request checked into a network record: the name qualified by its tenant, the subnet
/// parsed strictly.
pub fn network_of(req: &NetworkRequest) -> Result<Network> {
    let tenant = req
        .tenant
        .as_deref()
        .map(|t| {
            TenantId::new(t).map_err(|e| {
                ControlError::refused(e.code(), format!("tenant {t:?}: {e}")).at("tenant")
            })
        })
        .transpose()?;
    let name = match &tenant {
        Some(t) => qualify(t, &req.name),
        None => req.name.clone(),
    };
    let name = NetworkName::new(&name).map_err(|e| {
        ControlError::refused(e.code(), format!("network name {name:?}: {e}")).at("name")
    })?;
    let subnet: Subnet = req.subnet.parse().map_err(|e: String| {
        ControlError::refused(ErrorCode::InvalidArgument, format!("subnet: {e}"))
            .at("subnet")
            .hint("a private IPv4 range with prefix 16 to 29, like 10.88.0.0/24")
    })?;
    Ok(Network { name, tenant, subnet, nat: req.nat })
}

/// A network name from a path or argument (a malformed one is simply not found).
pub fn name_of(name: &str) -> Result<NetworkName> {
    NetworkName::new(name).map_err(|_| {
        ControlError::refused(ErrorCode::NetworkNotFound, format!("no network {name:?}"))
    })
}

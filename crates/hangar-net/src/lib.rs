//! Hangar's networks on one host.
//!
//! A network is a record (name, tenant, subnet, NAT) and, in the kernel, one Linux bridge
//! holding the subnet's gateway address. A VM's bridge NIC holds a lease (an address from the
//! subnet, from define to removal) and, while QEMU runs, a TAP on the bridge. The TAP is not
//! persistent: QEMU holds its only descriptor, so it disappears with QEMU however QEMU ends
//! (see `hangar_netlink::tap`), and nothing of a VM's networking can outlive it but its lease.
//!
//! Records live in the store ([`hangar_store`]); links are made over netlink
//! ([`hangar_netlink`]). This crate maps both to the core's coded errors.

pub mod host;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};

use hangar_core::clock::Timestamp;
use hangar_core::error::{Error, Result};
use hangar_core::ids::{qualify, NetworkName, VmName};
use hangar_core::network::{Lease, Network};
use hangar_core::spec::{NicMode, VmSpec};
use hangar_plan::NicNetwork;
use hangar_store::{Leased, NetworkCreated, Store};

fn store_error(e: hangar_store::StoreError) -> Error {
    use hangar_core::error::Coded;
    Error::Backend { code: e.code(), message: e.to_string() }
}

/// The full name of the network a VM's NIC names: a tenant's VM names its tenant's networks
/// without the `tenant--` prefix.
pub fn network_of(spec: &VmSpec, network: &NetworkName) -> Result<NetworkName> {
    match &spec.tenant {
        Some(tenant) => {
            NetworkName::new(qualify(tenant, network.as_str())).map_err(Error::InvalidName)
        }
        None => Ok(network.clone()),
    }
}

/// Creates a network: stored (name and subnet unique), then made on the host by `realize`
/// (its bridge, for a real engine); what cannot be made removes the record again.
pub fn create(
    store: &Store, network: &Network, at: Timestamp, realize: impl FnOnce(&Network) -> Result<()>,
) -> Result<()> {
    match store.create_network(network, at).map_err(|e| match e {
        hangar_store::StoreError::Exists { table: "networks", .. } => {
            Error::NetworkExists(network.name.clone())
        }
        other => store_error(other),
    })? {
        NetworkCreated::Created => {}
        NetworkCreated::Overlaps(other) => {
            return Err(Error::NetworkOverlap {
                subnet: network.subnet.to_string(),
                other: other.name,
                other_subnet: other.subnet.to_string(),
            })
        }
    }
    if let Err(e) = realize(network) {
        let _ = store.delete_network(&network.name);
        return Err(e);
    }
    Ok(())
}

/// Removes a network with no leases: on the host by `unrealize` (its bridge), then its record.
pub fn remove(
    store: &Store, name: &NetworkName, unrealize: impl FnOnce(&Network) -> Result<()>,
) -> Result<()> {
    let network = store.network(name).map_err(store_error)?;
    let Some(network) = network else {
        return Err(Error::NetworkNotFound(name.clone()));
    };
    let leases = store.leases(Some(name)).map_err(store_error)?;
    if !leases.is_empty() {
        let vms: BTreeSet<String> = leases.iter().map(|l| l.vm.to_string()).collect();
        return Err(Error::NetworkInUse { network: name.clone(), vms: vms.into_iter().collect() });
    }
    unrealize(&network)?;
    match store.delete_network(name).map_err(store_error)? {
        Ok(_) => Ok(()),
        // A lease taken between the check and the delete: the bridge comes back at its start.
        Err(leases) => Err(Error::NetworkInUse {
            network: name.clone(),
            vms: leases.into_iter().map(|l| l.vm.to_string()).collect(),
        }),
    }
}

/// The name of a tenant's default network: `TENANT--default`.
pub fn default_name(tenant: &hangar_core::ids::TenantId) -> NetworkName {
    NetworkName::new(qualify(tenant, hangar_core::network::DEFAULT_NETWORK))
        .expect("a tenant id and `default` make a name")
}

/// Where tenants' default networks are carved from: the first free /24 of 10.200.0.0/16.
const DEFAULT_SUBNETS: std::ops::RangeInclusive<u8> = 0..=255;

/// A tenant's default network, recorded if it has none: the first /24 of 10.200.0.0/16 no
/// network overlaps, NAT on. Only the record: its bridge is made when its first VM boots.
pub fn ensure_default(
    store: &Store, tenant: &hangar_core::ids::TenantId, at: Timestamp,
) -> Result<Network> {
    let name = default_name(tenant);
    for _ in 0..3 {
        if let Some(existing) = store.network(&name).map_err(store_error)? {
            return Ok(existing);
        }
        let taken = store.networks().map_err(store_error)?;
        let free = DEFAULT_SUBNETS
            .map(|i| format!("10.200.{i}.0/24").parse::<hangar_core::network::Subnet>())
            .filter_map(|s| s.ok())
            .find(|s| !taken.iter().any(|n| n.subnet.overlaps(s)));
        let Some(subnet) = free else {
            return Err(Error::NetworkExhausted {
                network: name,
                subnet: "10.200.0.0/16 (every /24 is taken)".into(),
            });
        };
        let network =
            Network { name: name.clone(), tenant: Some(tenant.clone()), subnet, nat: true };
        match create(store, &network, at, |_| Ok(())) {
            // Another process took that subnet (or made the network) meanwhile: look again.
            Err(Error::NetworkOverlap { .. } | Error::NetworkExists(_)) => continue,
            other => return other.map(|()| network),
        }
    }
    Err(Error::NetworkUnavailable(format!("could not record {name}: the store kept changing")))
}

/// Whether to take leases or only look (a dry run: `hangar plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leasing {
    /// Take (or keep) a lease for every bridge NIC, release the VM's others.
    Take,
    /// Report the lease held, or the address a lease would get now; change nothing.
    Look,
}

/// What each bridge NIC of `spec` gets from its network (for the planner's
/// [`HostFacts::nic_networks`](hangar_plan::HostFacts)). With [`Leasing::Take`], a failure
/// leaves the VM's leases as they were before the call only if it had none; callers that
/// define a VM release them on failure ([`release`]).
pub fn nic_networks(
    store: &Store, spec: &VmSpec, leasing: Leasing, at: Timestamp,
) -> Result<BTreeMap<String, NicNetwork>> {
    if leasing == Leasing::Take {
        refuse_taken_ports(store, spec)?;
    }
    let mut out = BTreeMap::new();
    let mut kept = Vec::new();
    let mut would_take: BTreeMap<NetworkName, BTreeSet<std::net::Ipv4Addr>> = BTreeMap::new();
    for nic in spec.nics.iter().filter(|n| n.mode == NicMode::Bridge) {
        let Some(named) = &nic.network else { continue };
        let name = network_of(spec, named)?;
        let mut network = store.network(&name).map_err(store_error)?;
        if let (None, Leasing::Take, Some(tenant)) = (&network, leasing, &spec.tenant) {
            // A tenant recorded before networks existed gets its default network on first use.
            if name == default_name(tenant) {
                network = Some(ensure_default(store, tenant, at)?);
            }
        }
        let Some(network) = network else {
            // The planner reports it, with the NIC's field path.
            continue;
        };
        let mac = hangar_plan::mac_for(spec.name.as_str(), nic.name.as_str());
        let (address, leased) = match leasing {
            Leasing::Take => {
                match store.lease(&name, &spec.name, &nic.name, &mac, at).map_err(store_error)? {
                    Leased::Yes(lease) => (lease.address, true),
                    Leased::Exhausted(n) => {
                        return Err(Error::NetworkExhausted {
                            network: n.name,
                            subnet: n.subnet.to_string(),
                        })
                    }
                    Leased::NoNetwork => continue,
                }
            }
            Leasing::Look => {
                let leases = store.leases(Some(&name)).map_err(store_error)?;
                match leases.iter().find(|l| l.vm == spec.name && l.nic == nic.name) {
                    Some(lease) => (lease.address, true),
                    None => {
                        let taken = would_take.entry(name.clone()).or_default();
                        taken.extend(leases.iter().map(|l| l.address));
                        let address = network.subnet.first_free(taken).ok_or_else(|| {
                            Error::NetworkExhausted {
                                network: name.clone(),
                                subnet: network.subnet.to_string(),
                            }
                        })?;
                        taken.insert(address);
                        (address, false)
                    }
                }
            }
        };
        kept.push(nic.name.clone());
        out.insert(
            nic.name.to_string(),
            NicNetwork {
                network: name.to_string(),
                bridge: hangar_plan::bridge_name(name.as_str()),
                subnet: network.subnet.to_string(),
                address,
                gateway: network.subnet.gateway(),
                leased,
                nat: network.nat,
            },
        );
    }
    if leasing == Leasing::Take {
        // A NIC detached or moved to another mode gives its address back.
        for lease in store.leases_of(&spec.name).map_err(store_error)? {
            if !kept.contains(&lease.nic) {
                store.release_lease(&spec.name, &lease.nic).map_err(store_error)?;
            }
        }
    }
    Ok(out)
}

/// Refuses a host port another VM publishes already when either side is a bridge NIC: a
/// bridge NIC's port is a destination NAT rule from define to removal, which would take the
/// port from another bridge NIC's rule or from QEMU's own listener for a user NIC without a
/// word. Two user NICs need no check here: QEMU itself binds, and says so.
fn refuse_taken_ports(store: &Store, spec: &VmSpec) -> Result<()> {
    type Published = (usize, usize, bool, hangar_core::spec::PortForward);
    let published = |s: &VmSpec| -> Vec<Published> {
        s.nics
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.mode, NicMode::Bridge | NicMode::User))
            .flat_map(|(i, n)| {
                let bridged = n.mode == NicMode::Bridge;
                n.forward.iter().enumerate().map(move |(j, f)| (i, j, bridged, *f))
            })
            .collect()
    };
    let mine = published(spec);
    if mine.is_empty() {
        return Ok(());
    }
    for other in store.list_vms().map_err(store_error)? {
        if other.spec.name == spec.name {
            continue;
        }
        for (_, _, their_bridge, theirs) in published(&other.spec) {
            if let Some((i, j, _, _)) = mine.iter().find(|(_, _, my_bridge, f)| {
                (*my_bridge || their_bridge) && f.proto == theirs.proto && f.host == theirs.host
            }) {
                return Err(Error::InvalidArgument {
                    what: format!("nic[{i}].forward[{j}]"),
                    reason: format!(
                        "host port {}/{} is already published by VM {}",
                        theirs.host,
                        theirs.proto.as_str(),
                        other.spec.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Releases every lease `vm` holds (its removal, or a define that failed).
pub fn release(store: &Store, vm: &VmName) -> Result<usize> {
    store.release_leases(vm).map_err(store_error)
}

/// Every network with its leases.
pub fn list(store: &Store) -> Result<Vec<(Network, Vec<Lease>)>> {
    let networks = store.networks().map_err(store_error)?;
    let leases = store.leases(None).map_err(store_error)?;
    Ok(networks
        .into_iter()
        .map(|n| {
            let held = leases.iter().filter(|l| l.network == n.name).cloned().collect();
            (n, held)
        })
        .collect())
}

//! The `networks` and `leases` tables: Hangar's networks and the addresses their NICs hold.
//! Allocation happens inside one `BEGIN IMMEDIATE` transaction, so two processes leasing at
//! once never get one address (and the primary key would refuse it if they did).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hangar_core::clock::Timestamp;
use hangar_core::ids::{DeviceName, NetworkName, VmName};
use hangar_core::network::{Lease, Network};
use rusqlite::{params, Row};

use crate::error::Result;
use crate::row::Fields;
use crate::store::Store;

const NETWORK_COLUMNS: &str = "SELECT name, tenant, subnet, nat FROM networks";
const LEASE_COLUMNS: &str = "SELECT network, address, vm, nic, mac FROM leases";

fn decode_network(row: &Row<'_>) -> Result<Network> {
    let f = Fields::new(row, "networks", "name");
    let nat: i64 = f.get("nat")?;
    Ok(Network {
        name: f.parse("name")?,
        tenant: f.opt_parse("tenant")?,
        subnet: f.parse("subnet")?,
        nat: match nat {
            0 => false,
            1 => true,
            other => return Err(f.bad("nat", format!("{other} is not 0 or 1"))),
        },
    })
}

fn decode_lease(row: &Row<'_>) -> Result<Lease> {
    let f = Fields::new(row, "leases", "address");
    Ok(Lease {
        network: f.parse("network")?,
        address: f.parse("address")?,
        vm: f.parse("vm")?,
        nic: f.parse("nic")?,
        mac: f.get("mac")?,
    })
}

/// What creating a network did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkCreated {
    /// It was stored.
    Created,
    /// Its subnet overlaps this existing network's; nothing was stored.
    Overlaps(Network),
}

/// What asking for a lease did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// The NIC holds this lease (a new one, or the one it already had).
    Yes(Lease),
    /// Every address is taken.
    Exhausted(Network),
    /// There is no such network.
    NoNetwork,
}

impl Store {
    /// Stores a network unless its name is taken (`Exists`) or its subnet overlaps another's.
    pub fn create_network(&self, network: &Network, at: Timestamp) -> Result<NetworkCreated> {
        let mut outcome = NetworkCreated::Created;
        self.in_transaction(|| {
            if let Some(other) =
                self.networks()?.into_iter().find(|n| n.subnet.overlaps(&network.subnet))
            {
                if other.name != network.name {
                    outcome = NetworkCreated::Overlaps(other);
                    return Ok(());
                }
            }
            self.insert(
                "networks",
                &network.name,
                "INSERT INTO networks (name, tenant, subnet, nat, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    network.name.as_str(),
                    network.tenant.as_ref().map(|t| t.as_str()),
                    network.subnet.to_string(),
                    network.nat as i64,
                    at.0 as i64
                ],
            )
        })?;
        Ok(outcome)
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<Network>> {
        self.all(&format!("{NETWORK_COLUMNS} ORDER BY name"), [], decode_network)
    }

    /// One network.
    pub fn network(&self, name: &NetworkName) -> Result<Option<Network>> {
        self.one(&format!("{NETWORK_COLUMNS} WHERE name = ?1"), [name.as_str()], decode_network)
    }

    /// Deletes a network that holds no lease: `Ok(Err(leases))` when some remain, `Ok(Ok(false))`
    /// when there was no such network.
    pub fn delete_network(
        &self, name: &NetworkName,
    ) -> Result<std::result::Result<bool, Vec<Lease>>> {
        let mut outcome = Ok(false);
        self.in_transaction(|| {
            let leases = self.leases(Some(name))?;
            if !leases.is_empty() {
                outcome = Err(leases);
                return Ok(());
            }
            outcome =
                Ok(self.execute("DELETE FROM networks WHERE name = ?1", [name.as_str()])? > 0);
            Ok(())
        })?;
        Ok(outcome)
    }

    /// Gives NIC `nic` of `vm` an address on `network` (the lowest free one), or returns the
    /// lease it already holds there.
    pub fn lease(
        &self, network: &NetworkName, vm: &VmName, nic: &DeviceName, mac: &str, at: Timestamp,
    ) -> Result<Leased> {
        let mut outcome = Leased::NoNetwork;
        self.in_transaction(|| {
            let Some(net) = self.network(network)? else {
                return Ok(());
            };
            let held = self.leases(Some(network))?;
            if let Some(lease) = held.iter().find(|l| l.vm == *vm && l.nic == *nic) {
                outcome = Leased::Yes(lease.clone());
                return Ok(());
            }
            let taken: BTreeSet<Ipv4Addr> = held.iter().map(|l| l.address).collect();
            let Some(address) = net.subnet.first_free(&taken) else {
                outcome = Leased::Exhausted(net);
                return Ok(());
            };
            let lease = Lease {
                network: network.clone(),
                address,
                vm: vm.clone(),
                nic: nic.clone(),
                mac: mac.to_string(),
            };
            self.insert(
                "leases",
                format!("{network}/{address}"),
                "INSERT INTO leases (network, address, vm, nic, mac, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    network.as_str(),
                    address.to_string(),
                    vm.as_str(),
                    nic.as_str(),
                    mac,
                    at.0 as i64
                ],
            )?;
            outcome = Leased::Yes(lease);
            Ok(())
        })?;
        Ok(outcome)
    }

    /// The leases on `network` (every lease when `None`), by network and address.
    pub fn leases(&self, network: Option<&NetworkName>) -> Result<Vec<Lease>> {
        let mut leases = match network {
            Some(n) => self.all(
                &format!("{LEASE_COLUMNS} WHERE network = ?1"),
                [n.as_str()],
                decode_lease,
            )?,
            None => self.all(LEASE_COLUMNS, [], decode_lease)?,
        };
        leases.sort_by(|a, b| (&a.network, a.address).cmp(&(&b.network, b.address)));
        Ok(leases)
    }

    /// The leases `vm`'s NICs hold.
    pub fn leases_of(&self, vm: &VmName) -> Result<Vec<Lease>> {
        self.all(
            &format!("{LEASE_COLUMNS} WHERE vm = ?1 ORDER BY nic"),
            [vm.as_str()],
            decode_lease,
        )
    }

    /// Releases the lease of NIC `nic` of `vm`, if it holds one.
    pub fn release_lease(&self, vm: &VmName, nic: &DeviceName) -> Result<usize> {
        self.execute("DELETE FROM leases WHERE vm = ?1 AND nic = ?2", [vm.as_str(), nic.as_str()])
    }

    /// Releases every lease `vm` holds; how many there were.
    pub fn release_leases(&self, vm: &VmName) -> Result<usize> {
        self.execute("DELETE FROM leases WHERE vm = ?1", [vm.as_str()])
    }
}

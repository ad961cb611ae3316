//! Networks as Hangar objects: a named IPv4 subnet (one host bridge), owned by a tenant or by
//! the host, and the leases that give each NIC on it one address. Pure: the host side (bridges,
//! TAPs, rules) lives in the crates that do I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceName, NetworkName, TenantId, VmName};

/// The network a bridge NIC that names none joins; for a tenant's VM, its tenant's default
/// network (`TENANT--default`, recorded with the tenant).
pub const DEFAULT_NETWORK: &str = "default";

/// The shortest prefix a network may have: a /16 is 65 534 guests, more than any host runs.
pub const MIN_PREFIX: u8 = 16;
/// The longest: a /29 leaves a gateway and five guests.
pub const MAX_PREFIX: u8 = 29;

/// An IPv4 subnet, `10.88.0.0/24`: the network address (host bits zero) and a prefix length
/// in [`MIN_PREFIX`]..=[`MAX_PREFIX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The gateway: the first host address, held by the host's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// Whether `address` is in the subnet.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// How many guests it can hold: host addresses but the gateway.
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 3
    }

    /// The lowest address a guest may lease that is not in `leased`, if any: host addresses
    /// after the gateway, never the broadcast address.
    pub fn first_free(&self, leased: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from).find(|a| !leased.contains(a))
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Subnet, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX (like 10.88.0.0/24)"))?;
        let address: Ipv4Addr =
            address.parse().map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (MIN_PREFIX..=MAX_PREFIX).contains(p))
            .ok_or_else(|| format!("prefix {prefix:?} must be {MIN_PREFIX} to {MAX_PREFIX}"))?;
        let subnet = Subnet { network: address, prefix };
        let network = Ipv4Addr::from(u32::from(address) & subnet.mask());
        if network != address {
            return Err(format!("{text} has host bits set; the subnet is {network}/{prefix}"));
        }
        if !(address.is_private() || address.octets()[0] == 100 && address.octets()[1] & 0xc0 == 64)
        {
            return Err(format!(
                "{text} is not a private range (10/8, 172.16/12, 192.168/16 or 100.64/10): \
                 guests would shadow real hosts"
            ));
        }
        Ok(subnet)
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Subnet> for String {
    fn from(value: Subnet) -> String {
        value.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A network: a subnet behind one host bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its name: `tenant--name` for a tenant's network, as for VMs.
    pub name: NetworkName,
    /// The tenant that owns it (its VMs and pool instances may join it), or none: the host's.
    pub tenant: Option<TenantId>,
    /// Its addresses.
    pub subnet: Subnet,
    /// Whether guests reach beyond the host, masqueraded behind its address.
    pub nat: bool,
}

/// One NIC's address on a network, held from the VM's define to its removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The network.
    pub network: NetworkName,
    /// The address.
    pub address: Ipv4Addr,
    /// The VM holding it.
    pub vm: VmName,
    /// Its NIC.
    pub nic: DeviceName,
    /// The NIC's MAC address (anti-spoofing pairs the two).
    pub mac: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_strictly_and_allocate_lowest_first() {
        let s: Subnet = "10.88.0.0/29".parse().unwrap();
        assert_eq!(s.to_string(), "10.88.0.0/29");
        assert_eq!(
            (s.gateway(), s.broadcast(), s.capacity()),
            ("10.88.0.1".parse().unwrap(), "10.88.0.7".parse().unwrap(), 5)
        );
        let mut leased = BTreeSet::new();
        for want in 2..=6 {
            let a = s.first_free(&leased).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 88, 0, want));
            leased.insert(a);
        }
        assert_eq!(s.first_free(&leased), None, "full: never the gateway or broadcast");
        leased.remove(&Ipv4Addr::new(10, 88, 0, 4));
        assert_eq!(s.first_free(&leased), Some(Ipv4Addr::new(10, 88, 0, 4)), "reused");
        for bad in
            ["10.88.0.1/24", "10.88.0.0", "10.88.0.0/8", "10.88.0.0/30", "8.8.8.0/24", "x/24"]
        {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let err = "10.88.0.1/24".parse::<Subnet>().unwrap_err();
        assert!(err.contains("10.88.0.0/24"), "{err}");
        let a: Subnet = "10.88.0.0/16".parse().unwrap();
        let b: Subnet = "10.88.7.0/24".parse().unwrap();
        let c: Subnet = "10.89.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        assert!("100.64.0.0/24".parse::<Subnet>().is_ok());
    }
}

//! Hangar's packet rules, derived from the store alone (networks and leases) and programmed as
//! two nf_tables tables named `hangar` (family `ip`: NAT and isolation between networks and
//! from the host; family `bridge`: each NIC may send only from its own MAC and address).
//! Every change rebuilds both tables in one transaction each; with no network they are removed.
//!
//! `ip hangar`:
//! - `postrouting` (nat): a NAT network's traffic leaving by any other interface is
//!   masqueraded behind the host's address there;
//! - `forward` (filter): nothing crosses from one Hangar network to another (what stays
//!   inside one, seen here when `br_netfilter` is loaded, passes); nothing enters a
//!   network unasked (new connections from outside); a network without NAT sends nothing out;
//! - `input` (filter): a guest reaches the host only with replies and ICMP (not hangard's API,
//!   nor anything else listening on the host).
//!
//! `bridge hangar`, `prerouting`: a frame from a NIC's TAP must carry its MAC, IPv4 or ARP only,
//! and (in IPv4 and ARP) its leased address.

use hangar_core::error::{Error, Result};
use hangar_core::ids::NetworkName;
use hangar_core::network::{Lease, Network};
use hangar_core::spec::{NicMode, PortForward, Protocol};
use hangar_netlink::nft::{self, Base, Chain, Cmp, Expr, Family, Hook, Meta, Verdict};
use hangar_store::Store;

/// The tables' name (one per family).
pub const TABLE: &str = "hangar";
/// What every Hangar bridge's name starts with.
const BRIDGE_PREFIX: &[u8] = b"hgb-";
const ETH_IP: [u8; 2] = [0x08, 0x00];
const ETH_ARP: [u8; 2] = [0x08, 0x06];
/// Conntrack state bits: established | related, and new.
const CT_ESTABLISHED_RELATED: u32 = 2 | 4;
const CT_NEW: u32 = 8;
const ICMP: u8 = 1;

fn iif(name: &str) -> [Expr; 2] {
    [Expr::Meta(Meta::IifName), Expr::Cmp(Cmp::Eq, nft::ifname(name))]
}

fn oif(op: Cmp, name: &str) -> [Expr; 2] {
    [Expr::Meta(Meta::OifName), Expr::Cmp(op, nft::ifname(name))]
}

fn ct(bits: u32) -> [Expr; 3] {
    [Expr::CtState, Expr::And(bits.to_ne_bytes().to_vec()), Expr::Cmp(Cmp::Neq, vec![0; 4])]
}

fn rule<const N: usize>(parts: &[&[Expr]], verdict: [Expr; N]) -> Vec<Expr> {
    parts.iter().flat_map(|p| p.iter().cloned()).chain(verdict).collect()
}

/// A port a bridged NIC publishes on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The guest's address.
    pub address: std::net::Ipv4Addr,
    /// Which port to which, bound where.
    pub forward: PortForward,
}

/// The destination NAT of one published port, for traffic matched by `to`.
fn dnat(p: &Published, to: &[Expr]) -> Vec<Expr> {
    let l4 = match p.forward.proto {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    };
    let port = [
        Expr::Meta(Meta::L4Proto),
        Expr::Cmp(Cmp::Eq, vec![l4]),
        Expr::Payload(Base::Transport, 2, 2),
        Expr::Cmp(Cmp::Eq, p.forward.host.to_be_bytes().to_vec()),
    ];
    let target = [
        Expr::Load(1, p.address.octets().to_vec()),
        Expr::Load(2, p.forward.guest.to_be_bytes().to_vec()),
        Expr::Dnat,
    ];
    rule(&[&port, to], target)
}

/// The `ip hangar` chains for `networks` and the ports their NICs publish.
pub fn ip_chains(networks: &[Network], published: &[Published]) -> Vec<Chain> {
    let drop = [Expr::Verdict(Verdict::Drop)];
    let accept = [Expr::Verdict(Verdict::Accept)];
    let (mut nat, mut forward, mut input) = (Vec::new(), Vec::new(), Vec::new());
    let local = [Expr::FibDaddrType, Expr::Cmp(Cmp::Eq, nft::RTN_LOCAL.to_ne_bytes().to_vec())];
    let to_loopback = [Expr::Payload(Base::Network, 16, 4), Expr::Cmp(Cmp::Eq, vec![127, 0, 0, 1])];
    // Published ports: from other hosts only when bound on every address (prerouting); from
    // this host to 127.0.0.1, or to any of its addresses when bound on every address (output).
    let mut prerouting = Vec::new();
    let mut output = Vec::new();
    for p in published {
        if p.forward.all_addresses {
            prerouting.push(dnat(p, &local));
            output.push(dnat(p, &local));
        } else {
            output.push(dnat(p, &to_loopback));
        }
    }
    let from_loopback = [
        Expr::Payload(Base::Network, 12, 4),
        Expr::And(vec![255, 0, 0, 0]),
        Expr::Cmp(Cmp::Eq, vec![127, 0, 0, 0]),
    ];
    for n in networks {
        let bridge = hangar_plan::bridge_name(n.name.as_str());
        let mask = u32::MAX << (32 - n.subnet.prefix());
        let from_subnet = [
            Expr::Payload(Base::Network, 12, 4),
            Expr::And(mask.to_be_bytes().to_vec()),
            Expr::Cmp(Cmp::Eq, n.subnet.network().octets().to_vec()),
        ];
        if n.nat {
            nat.push(rule(&[&from_subnet, &oif(Cmp::Neq, &bridge)], [Expr::Masquerade]));
        }
        // A published port reached on 127.0.0.1: the guest answers the bridge's address.
        nat.push(rule(&[&from_loopback, &oif(Cmp::Eq, &bridge)], [Expr::Masquerade]));
        let to_hangar = [Expr::Meta(Meta::OifName), Expr::Cmp(Cmp::Eq, BRIDGE_PREFIX.to_vec())];
        // With br_netfilter loaded, frames bridged within the network show up here too, in
        // and out of the same bridge: they are the network's own business.
        forward.push(rule(&[&iif(&bridge), &oif(Cmp::Eq, &bridge)], accept.clone()));
        forward.push(rule(&[&iif(&bridge), &to_hangar], drop.clone()));
        let published_here = [
            Expr::CtStatus,
            Expr::And(nft::IPS_DST_NAT.to_ne_bytes().to_vec()),
            Expr::Cmp(Cmp::Neq, vec![0; 4]),
        ];
        forward.push(rule(&[&oif(Cmp::Eq, &bridge), &published_here], accept.clone()));
        forward.push(rule(&[&oif(Cmp::Eq, &bridge), &ct(CT_NEW)], drop.clone()));
        if !n.nat {
            forward.push(rule(&[&iif(&bridge)], drop.clone()));
        }
        input.push(rule(&[&iif(&bridge), &ct(CT_ESTABLISHED_RELATED)], accept.clone()));
        let icmp = [Expr::Meta(Meta::L4Proto), Expr::Cmp(Cmp::Eq, vec![ICMP])];
        input.push(rule(&[&iif(&bridge), &icmp], accept.clone()));
        input.push(rule(&[&iif(&bridge)], drop.clone()));
    }
    let chain = |name: &str, kind, hook, priority, rules| Chain {
        name: name.into(),
        kind,
        hook,
        priority,
        rules,
    };
    vec![
        chain("prerouting", "nat", Hook::Prerouting, -100, prerouting),
        chain("output", "nat", Hook::Output, -100, output),
        chain("postrouting", "nat", Hook::Postrouting, 100, nat),
        chain("forward", "filter", Hook::Forward, 0, forward),
        chain("input", "filter", Hook::Input, 0, input),
    ]
}

/// The `bridge hangar` chain for `leases` (anti-spoofing on each NIC's TAP).
pub fn bridge_chains(leases: &[Lease]) -> Vec<Chain> {
    let drop = [Expr::Verdict(Verdict::Drop)];
    let mut rules = Vec::new();
    for lease in leases {
        let Some(mac) = hangar_netlink::parse_mac(&lease.mac) else { continue };
        let tap = hangar_plan::tap_name(lease.vm.as_str(), lease.nic.as_str());
        let from = iif(&tap);
        let ether_type =
            |op, t: [u8; 2]| [Expr::Payload(Base::Link, 12, 2), Expr::Cmp(op, t.to_vec())];
        let address = lease.address.octets().to_vec();
        let not_mac = [Expr::Payload(Base::Link, 6, 6), Expr::Cmp(Cmp::Neq, mac.to_vec())];
        rules.push(rule(&[&from, &not_mac], drop.clone()));
        let not_ip_source =
            [Expr::Payload(Base::Network, 12, 4), Expr::Cmp(Cmp::Neq, address.clone())];
        rules.push(rule(&[&from, &ether_type(Cmp::Eq, ETH_IP), &not_ip_source], drop.clone()));
        let not_arp_sender = [Expr::Payload(Base::Network, 14, 4), Expr::Cmp(Cmp::Neq, address)];
        rules.push(rule(&[&from, &ether_type(Cmp::Eq, ETH_ARP), &not_arp_sender], drop.clone()));
        rules.push(rule(
            &[&from, &ether_type(Cmp::Neq, ETH_IP), &ether_type(Cmp::Neq, ETH_ARP)],
            drop.clone(),
        ));
    }
    vec![Chain {
        name: "prerouting".into(),
        kind: "filter",
        hook: Hook::Prerouting,
        priority: -200,
        rules,
    }]
}

/// Programs the rules for every network in the store whose bridge exists here (but `except`, a
/// network being removed) and every lease on them; removes both tables when no such network is
/// left, and touches nothing when there were none and are none (a network is made on the host
/// at its creation or its first VM's boot, and syncs then). Turns on IPv4 forwarding when a
/// network masquerades (guests' traffic must be routed out).
pub fn sync(store: &Store, except: Option<&NetworkName>) -> Result<()> {
    let unavailable = |what: &str, e: std::io::Error| {
        Error::NetworkUnavailable(format!(
            "{what}: {e} (is nf_tables in the kernel? see `hangar doctor`)"
        ))
    };
    let store_error = |e: hangar_store::StoreError| {
        use hangar_core::error::Coded;
        Error::Backend { code: e.code(), message: e.to_string() }
    };
    let bridges: Vec<String> = hangar_netlink::route::Rtnl::open()
        .and_then(|mut r| r.links())
        .map_err(|e| unavailable("listing links", e))?
        .into_iter()
        .map(|l| l.name)
        .collect();
    let networks: Vec<Network> = store
        .networks()
        .map_err(store_error)?
        .into_iter()
        .filter(|n| Some(&n.name) != except)
        .filter(|n| bridges.contains(&hangar_plan::bridge_name(n.name.as_str())))
        .collect();
    let leases: Vec<Lease> = store
        .leases(None)
        .map_err(store_error)?
        .into_iter()
        .filter(|l| networks.iter().any(|n| n.name == l.network))
        .collect();
    if networks.is_empty() {
        let ours = nft::tables().map_err(|e| unavailable("listing rules", e))?;
        if !ours.iter().any(|(_, name)| name == TABLE) {
            return Ok(());
        }
        nft::replace_table(Family::Ipv4, TABLE, None)
            .map_err(|e| unavailable("removing rules", e))?;
        return nft::replace_table(Family::Bridge, TABLE, None)
            .map_err(|e| unavailable("removing rules", e));
    }
    if networks.iter().any(|n| n.nat) {
        forwarding_on().map_err(|e| unavailable("turning on IPv4 forwarding", e))?;
    }
    let mut published = Vec::new();
    for vm in store.list_vms().map_err(store_error)? {
        for nic in vm.spec.nics.iter().filter(|n| n.mode == NicMode::Bridge) {
            let lease = leases.iter().find(|l| l.vm == vm.spec.name && l.nic == nic.name);
            if let Some(lease) = lease {
                published.extend(
                    nic.forward.iter().map(|f| Published { address: lease.address, forward: *f }),
                );
            }
        }
    }
    nft::replace_table(Family::Ipv4, TABLE, Some(&ip_chains(&networks, &published)))
        .map_err(|e| unavailable("programming the ip rules", e))?;
    nft::replace_table(Family::Bridge, TABLE, Some(&bridge_chains(&leases)))
        .map_err(|e| unavailable("programming the bridge rules", e))
}

/// `net.ipv4.ip_forward = 1` in the calling thread's network namespace.
fn forwarding_on() -> std::io::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() != "1" {
        std::fs::write(path, "1")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn every_network_gets_its_isolation_and_only_nat_networks_masquerade() {
        let net = |name: &str, subnet: &str, nat| Network {
            name: NetworkName::new(name).unwrap(),
            tenant: None,
            subnet: subnet.parse().unwrap(),
            nat,
        };
        let published = |all_addresses| Published {
            address: Ipv4Addr::new(10, 1, 0, 2),
            forward: PortForward { proto: Protocol::Tcp, host: 8080, guest: 80, all_addresses },
        };
        let chains = ip_chains(
            &[net("a", "10.1.0.0/24", true), net("b", "10.2.0.0/24", false)],
            &[published(false), published(true)],
        );
        let count = |name: &str| chains.iter().find(|c| c.name == name).unwrap().rules.len();
        assert_eq!(
            [
                count("prerouting"),
                count("output"),
                count("postrouting"),
                count("forward"),
                count("input")
            ],
            [1, 2, 3, 9, 6]
        );
        let lease = Lease {
            network: NetworkName::new("a").unwrap(),
            address: Ipv4Addr::new(10, 1, 0, 2),
            vm: hangar_core::ids::VmName::new("v").unwrap(),
            nic: hangar_core::ids::DeviceName::new("net0").unwrap(),
            mac: "52:54:00:aa:bb:cc".into(),
        };
        let bridge = bridge_chains(&[lease.clone(), Lease { mac: "garbage".into(), ..lease }]);
        assert_eq!(bridge[0].rules.len(), 4, "a lease with an unreadable MAC gets no rules");
    }
}

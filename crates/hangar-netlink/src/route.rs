//! rtnetlink: links, addresses and routes of the calling thread's network namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::*;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const IFF_UP: u32 = 0x1;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_LEARNING: u16 = 8;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its kind (`bridge`, `veth`, `tun`, …) when it has one.
    pub kind: Option<String>,
    /// The bridge it is a port of.
    pub master: Option<u32>,
    /// Its MAC address, `aa:bb:…`.
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix (`0.0.0.0/0` for the default route).
    pub destination: (Ipv4Addr, u8),
    /// The next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// The outgoing interface.
    pub interface: Option<u32>,
}

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut body = vec![family, 0, 0, 0];
    body.extend_from_slice(&(index as i32).to_ne_bytes());
    body.extend_from_slice(&flags.to_ne_bytes());
    body.extend_from_slice(&change.to_ne_bytes());
    body
}

/// `struct ifaddrmsg`: family, prefix length, flags, scope, index; then the address.
fn ifaddrmsg(index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut body = vec![AF_INET, prefix, 0, 0];
    body.extend_from_slice(&index.to_ne_bytes());
    attr(&mut body, IFA_LOCAL, &addr.octets());
    attr(&mut body, IFA_ADDRESS, &addr.octets());
    body
}

fn ipv4(value: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = value.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// A route netlink socket.
pub struct Rtnl(Socket);

impl Rtnl {
    /// Opens one in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl(Socket::open(0)?))
    }

    /// Every link.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.0.call(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(AF_UNSPEC, 0, 0, 0))?;
        let mut links = Vec::new();
        for (kind, msg) in replies {
            if kind != RTM_NEWLINK || msg.len() < 16 {
                continue;
            }
            let index = u32::from_ne_bytes(msg[4..8].try_into().unwrap());
            let flags = u32::from_ne_bytes(msg[8..12].try_into().unwrap());
            let mut link =
                Link { index, name: String::new(), kind: None, master: None, mac: None, up: false };
            link.up = flags & IFF_UP != 0;
            for (attr, value) in attrs(&msg[16..]) {
                match attr {
                    IFLA_IFNAME => link.name = str_of(value),
                    IFLA_MASTER => link.master = u32_of(value),
                    IFLA_ADDRESS if value.len() == 6 => {
                        let hex: Vec<String> = value.iter().map(|b| format!("{b:02x}")).collect();
                        link.mac = Some(hex.join(":"));
                    }
                    IFLA_LINKINFO => {
                        link.kind = attrs(value)
                            .into_iter()
                            .find(|(a, _)| *a == IFLA_INFO_KIND)
                            .map(|(_, v)| str_of(v));
                    }
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// The index of the link called `name` (`NotFound` if none).
    pub fn index_of(&mut self, name: &str) -> io::Result<u32> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))
    }

    /// Sets a link up, with an MTU if given.
    pub fn set_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut body = ifinfomsg(AF_UNSPEC, index, IFF_UP, IFF_UP);
        if let Some(mtu) = mtu {
            attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.0.call(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Gives link `index` the MAC address `mac` (`aa:bb:cc:dd:ee:ff`), taking it down for the
    /// change (most drivers refuse a new address while up) and back up.
    pub fn set_mac(&mut self, index: u32, mac: &str) -> io::Result<()> {
        let bytes = parse_mac(mac).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{mac:?} is not a MAC address"))
        })?;
        self.0.call(RTM_NEWLINK, 0, &ifinfomsg(AF_UNSPEC, index, 0, IFF_UP))?;
        let mut body = ifinfomsg(AF_UNSPEC, index, 0, 0);
        attr(&mut body, IFLA_ADDRESS, &bytes);
        self.0.call(RTM_NEWLINK, 0, &body)?;
        self.set_up(index, None)
    }

    /// Creates a bridge (fails with `AlreadyExists` if the name is taken).
    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut body = ifinfomsg(AF_UNSPEC, 0, 0, 0);
        attr(&mut body, IFLA_IFNAME, &cstr(name));
        nested(&mut body, IFLA_LINKINFO, |info| attr(info, IFLA_INFO_KIND, b"bridge"));
        self.0.call(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body).map(drop)
    }

    /// Creates a veth pair `name` ↔ `peer`, the peer in the network namespace `peer_netns`
    /// (an open `/proc/…/ns/net`) when given.
    pub fn create_veth(
        &mut self, name: &str, peer: &str, peer_netns: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        let mut body = ifinfomsg(AF_UNSPEC, 0, 0, 0);
        attr(&mut body, IFLA_IFNAME, &cstr(name));
        nested(&mut body, IFLA_LINKINFO, |info| {
            attr(info, IFLA_INFO_KIND, b"veth");
            nested(info, IFLA_INFO_DATA, |data| {
                nested(data, VETH_INFO_PEER, |p| {
                    p.extend(ifinfomsg(AF_UNSPEC, 0, 0, 0));
                    attr(p, IFLA_IFNAME, &cstr(peer));
                    if let Some(ns) = peer_netns {
                        attr(p, IFLA_NET_NS_FD, &(ns.as_raw_fd() as u32).to_ne_bytes());
                    }
                });
            });
        });
        self.0.call(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &body).map(drop)
    }

    /// Makes link `index` a port of bridge `master` (`None`: of no bridge).
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> io::Result<()> {
        let mut body = ifinfomsg(AF_UNSPEC, index, 0, 0);
        attr(&mut body, IFLA_MASTER, &master.unwrap_or(0).to_ne_bytes());
        self.0.call(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Moves link `index` into the network namespace `netns` (an open `/proc/…/ns/net`).
    pub fn move_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> io::Result<()> {
        let mut body = ifinfomsg(AF_UNSPEC, index, 0, 0);
        attr(&mut body, IFLA_NET_NS_FD, &(netns.as_raw_fd() as u32).to_ne_bytes());
        self.0.call(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Deletes link `index` (a veth takes its peer with it).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        self.0.call(RTM_DELLINK, 0, &ifinfomsg(AF_UNSPEC, index, 0, 0)).map(drop)
    }

    /// Sets bridge-port flags of link `index` (a port of some bridge): `learning` (MAC
    /// learning) and `isolated` (isolated ports forward only to non-isolated ones).
    pub fn set_bridge_port(
        &mut self, index: u32, learning: Option<bool>, isolated: Option<bool>,
    ) -> io::Result<()> {
        let mut body = ifinfomsg(AF_BRIDGE, index, 0, 0);
        nested(&mut body, IFLA_PROTINFO, |p| {
            if let Some(on) = learning {
                attr(p, IFLA_BRPORT_LEARNING, &[on as u8]);
            }
            if let Some(on) = isolated {
                attr(p, IFLA_BRPORT_ISOLATED, &[on as u8]);
            }
        });
        self.0.call(RTM_SETLINK, 0, &body).map(drop)
    }

    /// Bridge-port flags of link `index` as the bridge reports them: (learning, isolated);
    /// `None` if it is no bridge's port.
    pub fn bridge_port(&mut self, index: u32) -> io::Result<Option<(bool, bool)>> {
        let replies = self.0.call(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(AF_BRIDGE, 0, 0, 0))?;
        for (kind, msg) in replies {
            if kind != RTM_NEWLINK || msg.len() < 16 {
                continue;
            }
            if u32::from_ne_bytes(msg[4..8].try_into().unwrap()) != index {
                continue;
            }
            let Some((_, info)) = attrs(&msg[16..]).into_iter().find(|(a, _)| *a == IFLA_PROTINFO)
            else {
                continue;
            };
            let flag = |which: u16| {
                attrs(info).into_iter().any(|(a, v)| a == which && v.first() == Some(&1))
            };
            return Ok(Some((flag(IFLA_BRPORT_LEARNING), flag(IFLA_BRPORT_ISOLATED))));
        }
        Ok(None)
    }

    /// The IPv4 addresses (with prefix) on link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut body = vec![AF_INET, 0, 0, 0];
        body.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        for (kind, msg) in self.0.call(RTM_GETADDR, NLM_F_DUMP, &body)? {
            if kind != RTM_NEWADDR || msg.len() < 8 || msg[0] != AF_INET {
                continue;
            }
            if u32::from_ne_bytes(msg[4..8].try_into().unwrap()) != index {
                continue;
            }
            for (attr, value) in attrs(&msg[8..]) {
                if let (IFA_LOCAL, Some(addr)) = (attr, ipv4(value)) {
                    out.push((addr, msg[1]));
                }
            }
        }
        Ok(out)
    }

    /// Adds (or keeps) an address on link `index`.
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let body = ifaddrmsg(index, addr, prefix);
        self.0.call(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body).map(drop)
    }

    /// Gives link `index` exactly the addresses `want`.
    pub fn set_addresses(&mut self, index: u32, want: &[(Ipv4Addr, u8)]) -> io::Result<()> {
        for (addr, prefix) in self.addresses(index)? {
            if !want.contains(&(addr, prefix)) {
                self.0.call(RTM_DELADDR, 0, &ifaddrmsg(index, addr, prefix))?;
            }
        }
        for &(addr, prefix) in want {
            self.add_address(index, addr, prefix)?;
        }
        Ok(())
    }

    /// Sets (or replaces) the default route: through `gateway` on link `index`.
    pub fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot), scope
        // (universe), type (unicast), flags.
        let mut body = vec![AF_INET, 0, 0, 0, RT_TABLE_MAIN, 3, 0, 1];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, RTA_GATEWAY, &gateway.octets());
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.0.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body).map(drop)
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut body = vec![AF_INET, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        for (kind, msg) in self.0.call(RTM_GETROUTE, NLM_F_DUMP, &body)? {
            if kind != RTM_NEWROUTE || msg.len() < 12 || msg[0] != AF_INET {
                continue;
            }
            if msg[4] != RT_TABLE_MAIN {
                continue;
            }
            let mut route = Route {
                destination: (Ipv4Addr::UNSPECIFIED, msg[1]),
                gateway: None,
                interface: None,
            };
            for (attr, value) in attrs(&msg[12..]) {
                match attr {
                    RTA_DST => route.destination.0 = ipv4(value).unwrap_or(Ipv4Addr::UNSPECIFIED),
                    RTA_GATEWAY => route.gateway = ipv4(value),
                    RTA_OIF => route.interface = u32_of(value),
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }
}

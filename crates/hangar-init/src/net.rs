//! Network configuration inside the guest (the agent's `network` request, and loopback at
//! boot), over rtnetlink: links up with an MTU, IPv4 addresses replaced, a default route, DNS
//! servers in `resolv.conf` and the hostname. A few fixed message layouts, encoded here, so the
//! static guest binary needs neither `ip` nor a netlink library.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;

use hangar_agent_proto::GuestNetwork as NetworkConfig;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

/// A route netlink socket with its own sequence numbers.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let fd =
            // No protocol is NETLINK_ROUTE.
            rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    /// Sends one request (`body` after the 16-byte header) and returns the replies' payloads
    /// (for a dump, every message up to DONE); an error answer is that errno.
    fn call(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq += 1;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        rustix::net::send(&self.fd, &msg, SendFlags::empty())?;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty())?.0;
            let mut at = 0;
            while at + 16 <= n {
                let word =
                    |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
                let len = word(0) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < 16 || at + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a torn netlink reply"));
                }
                let payload = buf[at + 16..at + len].to_vec();
                if word(8) == self.seq {
                    match kind {
                        NLMSG_ERROR => {
                            let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                            if errno != 0 {
                                return Err(io::Error::from_raw_os_error(-errno));
                            }
                            // The acknowledgement comes last (after a dump's DONE too).
                            return Ok(replies);
                        }
                        // A dump ends here (whether an acknowledgement follows depends on the
                        // kernel).
                        NLMSG_DONE if dump => return Ok(replies),
                        NLMSG_DONE => {}
                        _ => replies.push((kind, payload)),
                    }
                }
                at += len.next_multiple_of(4);
            }
        }
    }

    fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
        body[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
        body[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
        if let Some(mtu) = mtu {
            attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.call(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// struct ifaddrmsg: family, prefix length, flags, scope, index.
    fn ifaddrmsg(index: u32, addr: Ipv4Addr, prefix: u8) -> Vec<u8> {
        let mut body = vec![AF_INET, prefix, 0, 0];
        body.extend_from_slice(&index.to_ne_bytes());
        attr(&mut body, IFA_LOCAL, &addr.octets());
        attr(&mut body, IFA_ADDRESS, &addr.octets());
        body
    }

    /// The IPv4 addresses (with prefix) on link `index`.
    fn addresses(&mut self, index: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
        let mut body = vec![AF_INET, 0, 0, 0];
        body.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        for (kind, msg) in self.call(RTM_GETADDR, NLM_F_DUMP, &body)? {
            if kind != RTM_NEWADDR || msg.len() < 8 || msg[0] != AF_INET {
                continue;
            }
            if u32::from_ne_bytes(msg[4..8].try_into().unwrap()) != index {
                continue;
            }
            let mut at = 8;
            while at + 4 <= msg.len() {
                let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
                let kind = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]);
                if len < 4 || at + len > msg.len() {
                    break;
                }
                if kind == IFA_LOCAL && len == 8 {
                    let o: [u8; 4] = msg[at + 4..at + 8].try_into().unwrap();
                    out.push((Ipv4Addr::from(o), msg[1]));
                }
                at += len.next_multiple_of(4);
            }
        }
        Ok(out)
    }

    fn set_addresses(&mut self, index: u32, want: &[(Ipv4Addr, u8)]) -> io::Result<()> {
        for (addr, prefix) in self.addresses(index)? {
            if !want.contains(&(addr, prefix)) {
                self.call(RTM_DELADDR, 0, &Rtnl::ifaddrmsg(index, addr, prefix))?;
            }
        }
        for &(addr, prefix) in want {
            let body = Rtnl::ifaddrmsg(index, addr, prefix);
            self.call(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body)?;
        }
        Ok(())
    }

    fn default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table (main), protocol (boot), scope
        // (universe), type (unicast), flags.
        let mut body = vec![AF_INET, 0, 0, 0, 254, 3, 0, 1];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, RTA_GATEWAY, &gateway.octets());
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.call(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body).map(drop)
    }
}

/// `10.0.0.5/24` as (address, prefix).
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

/// The kernel name of the interface with MAC `mac`, from `<sys_class_net>/*/address`.
pub fn name_of_mac(sys_class_net: &Path, mac: &str) -> Option<String> {
    let dir = std::fs::read_dir(sys_class_net).ok()?;
    for entry in dir.flatten() {
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim().eq_ignore_ascii_case(mac.trim()) {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

fn index_of(name: &str) -> io::Result<u32> {
    let probe = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    rustix::net::netdevice::name_to_index(&probe, name)
        .map_err(|e| io::Error::new(e.kind(), format!("no interface {name}: {e}")))
}

/// Applies `config`; files (`etc/resolv.conf`, `etc/hostname`) are written under `root` (`/`
/// in a guest). What was configured, for the reply.
pub fn apply(config: &NetworkConfig, root: &Path) -> io::Result<serde_json::Value> {
    // Check everything before changing anything.
    let mut plans = Vec::new();
    for nic in &config.nics {
        let name = match (&nic.name, &nic.mac) {
            (Some(name), _) => name.clone(),
            (None, Some(mac)) => name_of_mac(Path::new("/sys/class/net"), mac)
                .ok_or_else(|| invalid(format!("no interface has MAC {mac}")))?,
            (None, None) => return Err(invalid("a NIC needs a mac or a name".into())),
        };
        let addresses = nic
            .addresses
            .iter()
            .map(|a| parse_cidr(a).ok_or_else(|| invalid(format!("{a:?} is not ADDRESS/PREFIX"))))
            .collect::<io::Result<Vec<_>>>()?;
        plans.push((name, addresses, nic));
    }
    if let Some(h) = &config.hostname {
        let valid = !h.is_empty()
            && h.len() <= 64
            && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(invalid(format!("{h:?} is not a hostname")));
        }
    }
    let mut rtnl = Rtnl::open()?;
    let mut done = Vec::new();
    for (name, addresses, nic) in plans {
        let index = index_of(&name)?;
        rtnl.link_up(index, nic.mtu)?;
        rtnl.set_addresses(index, &addresses)?;
        if let Some(gateway) = nic.gateway {
            rtnl.default_route(index, gateway)?;
        }
        done.push(
            serde_json::json!({"name": name, "addresses": nic.addresses, "gateway": nic.gateway}),
        );
    }
    if !config.dns.is_empty() {
        let text: String = config.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        write_whole(&root.join("etc/resolv.conf"), text.as_bytes())?;
    }
    if let Some(h) = &config.hostname {
        rustix::system::sethostname(h.as_bytes())?;
        write_whole(&root.join("etc/hostname"), format!("{h}\n").as_bytes())?;
    }
    Ok(serde_json::json!({"nics": done, "dns": config.dns, "hostname": config.hostname}))
}

/// Every interface but loopback, with its MAC and IPv4 addresses as the kernel has them (for
/// the readiness line), sorted by name.
pub fn report() -> io::Result<Vec<crate::ReadyNic>> {
    let mut rtnl = Rtnl::open()?;
    let mut nics = Vec::new();
    for entry in std::fs::read_dir("/sys/class/net")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let mac = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        let addresses = rtnl
            .addresses(index_of(&name)?)?
            .into_iter()
            .map(|(addr, prefix)| format!("{addr}/{prefix}"))
            .collect();
        nics.push(crate::ReadyNic { name, mac: mac.trim().to_owned(), addresses });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

/// Loopback up with 127.0.0.1/8 (the kernel adds the address once the link is up).
pub fn loopback_up() -> io::Result<()> {
    let mut rtnl = Rtnl::open()?;
    rtnl.link_up(index_of("lo")?, None)
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("hangar-new");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

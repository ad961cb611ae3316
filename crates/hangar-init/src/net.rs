//! Network configuration inside the guest (the agent's `network` request, and loopback at
//! boot), over rtnetlink: links up with an MTU, IPv4 addresses replaced, a default route, DNS
//! servers in `resolv.conf` and the hostname, through `hangar-netlink` (the host's encoder), so
//! the static guest binary needs neither `ip` nor a C library.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use hangar_agent_proto::GuestNetwork as NetworkConfig;
use hangar_netlink::route::Rtnl;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
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
        if let Some(mac) = &nic.set_mac {
            if hangar_netlink::parse_mac(mac).is_none() {
                return Err(invalid(format!("{mac:?} is not a MAC address")));
            }
        }
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
        let index = rtnl.index_of(&name)?;
        if let Some(mac) = &nic.set_mac {
            rtnl.set_mac(index, mac)?;
        }
        rtnl.set_up(index, nic.mtu)?;
        rtnl.set_addresses(index, &addresses)?;
        if let Some(gateway) = nic.gateway {
            rtnl.set_default_route(index, gateway)?;
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
    for link in rtnl.links()? {
        if link.name == "lo" {
            continue;
        }
        let addresses = rtnl
            .addresses(link.index)?
            .into_iter()
            .map(|(addr, prefix)| format!("{addr}/{prefix}"))
            .collect();
        nics.push(crate::ReadyNic {
            name: link.name,
            mac: link.mac.unwrap_or_default(),
            addresses,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

/// Loopback up with 127.0.0.1/8 (the kernel adds the address once the link is up).
pub fn loopback_up() -> io::Result<()> {
    let mut rtnl = Rtnl::open()?;
    let lo = rtnl.index_of("lo")?;
    rtnl.set_up(lo, None)
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

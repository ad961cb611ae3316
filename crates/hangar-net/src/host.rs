//! What networks are in the kernel: bridges with their gateway address, and TAP ports on them.
//! Every function acts on the calling thread's network namespace.

use std::os::fd::OwnedFd;

use hangar_core::error::{Error, Result};
use hangar_core::network::Network;
use hangar_netlink::route::Rtnl;

fn unavailable(what: &str, e: std::io::Error) -> Error {
    Error::NetworkUnavailable(format!("{what}: {e}"))
}

/// Makes sure `network`'s bridge exists, is up and holds the gateway address (idempotent:
/// after a host reboot the first VM to start brings it back). Its index.
pub fn ensure_bridge(network: &Network) -> Result<u32> {
    let bridge = hangar_plan::bridge_name(network.name.as_str());
    let mut rtnl = Rtnl::open().map_err(|e| unavailable("netlink", e))?;
    let index = match rtnl.link(&bridge).map_err(|e| unavailable("listing links", e))? {
        Some(link) if link.kind.as_deref() == Some("bridge") => link.index,
        Some(link) => {
            return Err(Error::NetworkUnavailable(format!(
                "{bridge} exists and is a {} device, not Hangar's bridge",
                link.kind.unwrap_or_else(|| "plain".into())
            )))
        }
        None => {
            rtnl.create_bridge(&bridge)
                .map_err(|e| unavailable(&format!("creating bridge {bridge}"), e))?;
            rtnl.index_of(&bridge).map_err(|e| unavailable("reading the bridge back", e))?
        }
    };
    let made = (|| {
        rtnl.add_address(index, network.subnet.gateway(), network.subnet.prefix())?;
        rtnl.set_up(index, None)
    })();
    made.map_err(|e| unavailable(&format!("configuring bridge {bridge}"), e))?;
    // Published ports reached on 127.0.0.1 are routed out of this bridge after their
    // destination NAT; the kernel allows loopback sources there only with route_localnet.
    let localnet = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&localnet, "1").map_err(|e| unavailable(&format!("writing {localnet}"), e))?;
    Ok(index)
}

/// Deletes `network`'s bridge if it exists; whether it did.
pub fn remove_bridge(network: &Network) -> Result<bool> {
    let bridge = hangar_plan::bridge_name(network.name.as_str());
    let mut rtnl = Rtnl::open().map_err(|e| unavailable("netlink", e))?;
    match rtnl.link(&bridge).map_err(|e| unavailable("listing links", e))? {
        Some(link) => {
            rtnl.delete_link(link.index)
                .map_err(|e| unavailable(&format!("deleting bridge {bridge}"), e))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Creates TAP `ifname` as an up port of `network`'s bridge (made if missing) and returns the
/// descriptor that keeps it alive. On any failure the descriptor is dropped, so no TAP stays.
pub fn open_port(network: &Network, ifname: &str) -> Result<OwnedFd> {
    let bridge = ensure_bridge(network)?;
    let mut rtnl = Rtnl::open().map_err(|e| unavailable("netlink", e))?;
    let tap = hangar_netlink::tap::create(ifname)
        .map_err(|e| unavailable(&format!("creating TAP {ifname}"), e))?;
    let attached = (|| {
        let index = rtnl.index_of(ifname)?;
        rtnl.set_master(index, Some(bridge))?;
        rtnl.set_up(index, None)
    })();
    attached.map_err(|e| unavailable(&format!("attaching TAP {ifname}"), e))?;
    Ok(tap)
}

//! rtnetlink and TAPs against the kernel, inside network namespaces the test creates (never
//! the machine's own). Without the rights to create one, each test says SKIPPED and why.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use hangar_netlink::route::Rtnl;
use hangar_testkit::netns::Netns;

macro_rules! netns_or_skip {
    ($test:literal) => {
        match Netns::new() {
            Ok(ns) => ns,
            Err(reason) => {
                let _ = writeln!(std::io::stderr(), "SKIPPED {}: {reason}", $test);
                return;
            }
        }
    };
}

fn names(rtnl: &mut Rtnl) -> Vec<String> {
    let mut names: Vec<String> = rtnl.links().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    names
}

#[test]
fn bridges_taps_addresses_and_port_flags_live_and_die_in_the_test_namespace() {
    let ns =
        netns_or_skip!("bridges_taps_addresses_and_port_flags_live_and_die_in_the_test_namespace");
    let root_before = names(&mut Rtnl::open().unwrap());
    ns.run(|| {
        let mut rtnl = Rtnl::open().unwrap();
        assert_eq!(names(&mut rtnl), ["lo"], "a new namespace has only loopback");
        rtnl.create_bridge("hgt-br0").unwrap();
        let err = rtnl.create_bridge("hgt-br0").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        let bridge = rtnl.link("hgt-br0").unwrap().unwrap();
        assert_eq!(bridge.kind.as_deref(), Some("bridge"));
        assert!(!bridge.up);
        rtnl.set_up(bridge.index, None).unwrap();
        rtnl.add_address(bridge.index, Ipv4Addr::new(10, 99, 0, 1), 24).unwrap();
        assert_eq!(rtnl.addresses(bridge.index).unwrap(), [(Ipv4Addr::new(10, 99, 0, 1), 24)]);

        let tap = hangar_netlink::tap::create("hgt-tap0").unwrap();
        let port = rtnl.link("hgt-tap0").unwrap().expect("the TAP exists while its fd is open");
        assert_eq!(port.kind.as_deref(), Some("tun"));
        rtnl.set_master(port.index, Some(bridge.index)).unwrap();
        rtnl.set_up(port.index, None).unwrap();
        rtnl.set_bridge_port(port.index, Some(false), Some(true)).unwrap();
        let port = rtnl.link("hgt-tap0").unwrap().unwrap();
        assert_eq!((port.master, port.up), (Some(bridge.index), true));
        assert_eq!(rtnl.bridge_port(port.index).unwrap(), Some((false, true)));
        rtnl.set_bridge_port(port.index, Some(true), Some(false)).unwrap();
        assert_eq!(rtnl.bridge_port(port.index).unwrap(), Some((true, false)));
        assert_eq!(rtnl.bridge_port(bridge.index).unwrap(), None, "a bridge is no port");
        drop(tap);
        assert_eq!(rtnl.link("hgt-tap0").unwrap(), None, "closing the fd deletes the TAP");

        let err = hangar_netlink::tap::create("a-name-far-too-long").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

        rtnl.delete_link(bridge.index).unwrap();
        assert_eq!(names(&mut rtnl), ["lo"], "nothing left behind");
    });
    assert_eq!(names(&mut Rtnl::open().unwrap()), root_before, "the machine's links unchanged");
}

#[test]
fn a_veth_pair_joins_two_test_namespaces_and_routes_read_back() {
    let host = netns_or_skip!("a_veth_pair_joins_two_test_namespaces_and_routes_read_back");
    let upstream = Netns::new().unwrap();
    let upstream_fd = upstream.fd().try_clone().unwrap();
    host.run(move || {
        let mut rtnl = Rtnl::open().unwrap();
        rtnl.create_veth("hgt-up", "hgt-peer", Some(upstream_fd.as_fd())).unwrap();
        let up = rtnl.index_of("hgt-up").unwrap();
        assert_eq!(rtnl.link("hgt-peer").unwrap(), None, "the peer went to the other namespace");
        rtnl.set_up(up, None).unwrap();
        rtnl.add_address(up, Ipv4Addr::new(192, 0, 2, 1), 24).unwrap();
        rtnl.set_default_route(up, Ipv4Addr::new(192, 0, 2, 2)).unwrap();
        let routes = rtnl.routes().unwrap();
        let default = routes.iter().find(|r| r.destination == (Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        assert_eq!(
            (default.gateway, default.interface),
            (Some(Ipv4Addr::new(192, 0, 2, 2)), Some(up))
        );
    });
    upstream.run(|| {
        let mut rtnl = Rtnl::open().unwrap();
        let peer = rtnl.link("hgt-peer").unwrap().expect("the peer is here");
        assert_eq!(peer.kind.as_deref(), Some("veth"));
    });
}

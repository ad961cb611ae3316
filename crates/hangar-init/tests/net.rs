//! The guest's network configuration code, run on this host inside a network and UTS namespace
//! the test creates for one thread (nothing in the machine's own namespaces changes): loopback
//! up, addresses replaced, a default route, resolv.conf and the hostname.

use std::net::Ipv4Addr;

use hangar_agent_proto::{GuestNetwork as NetworkConfig, GuestNic as NicConfig};

/// Runs `f` on a thread of its own in fresh network and UTS namespaces; its result.
fn in_namespaces<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    std::thread::spawn(move || {
        // NEWNET and NEWUTS touch nothing shared with other threads of this process (the
        // reason rustix now asks for `unshare_unsafe` is CLONE_FILES and CLONE_FS).
        #[allow(deprecated)]
        let entered = rustix::thread::unshare(
            rustix::thread::UnshareFlags::NEWNET | rustix::thread::UnshareFlags::NEWUTS,
        );
        entered.map(|()| f()).map_err(|e| format!("cannot enter new namespaces: {e}"))
    })
    .join()
    .map_err(|_| "the namespaced thread panicked".to_string())?
}

/// This thread's IPv4 routes from /proc: (destination, gateway, interface).
fn routes() -> Vec<(Ipv4Addr, Ipv4Addr, String)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/route").unwrap();
    let hex = |s: &str| Ipv4Addr::from(u32::from_str_radix(s, 16).unwrap().swap_bytes());
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (hex(f[1]), hex(f[2]), f[0].to_string())
        })
        .collect()
}

fn addresses() -> Vec<String> {
    hangar_init::agent::local_addresses(
        &std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap(),
    )
}

#[test]
fn addresses_routes_dns_and_hostname_are_applied_and_replaced() {
    let root = tempfile::tempdir().unwrap();
    let etc_root = root.path().to_path_buf();
    let outcome = in_namespaces(move || {
        hangar_init::net::loopback_up().unwrap();
        let up = addresses();
        let lo = |addresses: &[&str], gateway| NetworkConfig {
            nics: vec![NicConfig {
                name: Some("lo".into()),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
                gateway,
                mtu: Some(9000),
                ..NicConfig::default()
            }],
            dns: vec![Ipv4Addr::new(10, 9, 0, 1)],
            hostname: Some("hangar-net-test".into()),
        };
        let first = lo(&["127.0.0.1/8", "10.9.0.5/24"], Some(Ipv4Addr::new(10, 9, 0, 1)));
        hangar_init::net::apply(&first, &etc_root).unwrap();
        let (after_first, routes_first) = (addresses(), routes());
        // A clone re-addressed: the old address goes, the new one comes.
        let second = lo(&["127.0.0.1/8", "10.9.0.6/24"], None);
        hangar_init::net::apply(&second, &etc_root).unwrap();
        let after_second = addresses();
        let hostname = rustix::system::uname().nodename().to_string_lossy().into_owned();
        let mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap_or_default();
        let bad = NetworkConfig {
            nics: vec![NicConfig {
                name: Some("lo".into()),
                addresses: vec!["10.9.0.7".into()],
                ..NicConfig::default()
            }],
            ..NetworkConfig::default()
        };
        let refused = hangar_init::net::apply(&bad, &etc_root).unwrap_err().kind();
        let missing = NetworkConfig {
            nics: vec![NicConfig { name: Some("nosuch0".into()), ..NicConfig::default() }],
            ..NetworkConfig::default()
        };
        let absent = hangar_init::net::apply(&missing, &etc_root).is_err();
        (up, after_first, routes_first, after_second, hostname, mtu, refused, absent)
    });
    let (up, after_first, routes_first, after_second, hostname, _mtu, refused, absent) =
        match outcome {
            Ok(v) => v,
            Err(why) => {
                eprintln!(
                    "SKIPPED addresses_routes_dns_and_hostname_are_applied_and_replaced: {why}"
                );
                return;
            }
        };
    assert_eq!(up, ["127.0.0.1"], "loopback comes up with its address");
    assert!(after_first.contains(&"10.9.0.5".to_string()), "{after_first:?}");
    assert!(
        routes_first.iter().any(|(dst, gw, dev)| *dst == Ipv4Addr::UNSPECIFIED
            && *gw == Ipv4Addr::new(10, 9, 0, 1)
            && dev == "lo"),
        "no default route via 10.9.0.1: {routes_first:?}"
    );
    assert!(after_second.contains(&"10.9.0.6".to_string()), "{after_second:?}");
    assert!(
        !after_second.contains(&"10.9.0.5".to_string()),
        "the old address stayed: {after_second:?}"
    );
    assert_eq!(hostname, "hangar-net-test");
    assert_eq!(refused, std::io::ErrorKind::InvalidInput, "an address without a prefix");
    assert!(absent, "an interface that does not exist is an error");
    let resolv = std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.9.0.1\n");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(),
        "hangar-net-test\n"
    );
    // The machine's own hostname is untouched (the UTS namespace was the thread's).
    assert_ne!(rustix::system::uname().nodename().to_string_lossy(), "hangar-net-test");
}

//! Bridged networks end to end with real guests, inside network namespaces the test creates
//! (the machine's own namespace is never touched; every packet stays between the test's
//! guests and its namespace). Without QEMU, the built image or the right to create a
//! namespace, each test prints `SKIPPED …` with the reason and checks nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use hangar_netlink::nft;
use hangar_netlink::route::Rtnl;
use hangar_testkit::netns::Netns;

/// A private `HANGAR_HOME` sharing the built image; removes its VMs when dropped.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Result<Home, String> {
        if let Some(reason) = hangar_testkit::real_engine_missing() {
            return Err(reason);
        }
        let images = hangar_testkit::image_dir();
        let dir = tempfile::Builder::new().prefix("hgn-").tempdir_in("/tmp").unwrap();
        std::os::unix::fs::symlink(&images, dir.path().join("images")).unwrap();
        Ok(Home(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn hangar(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", self.path())
            .env("HANGAR_DAEMON", "never")
            .output()
            .unwrap()
    }

    /// `hangar ARGS` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.hangar(args);
        assert!(out.status.success(), "hangar {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// A 128 MiB VM with one bridge NIC on `network`, up.
    fn up_bridged(&self, name: &str, network: &str) {
        self.up_publishing(name, network, &[]);
    }

    /// A 128 MiB VM with one bridge NIC on `network` publishing `forward`, up.
    fn up_publishing(&self, name: &str, network: &str, forward: &[&str]) {
        let spec = self.path().join(format!("{name}.toml"));
        let text = format!(
            "schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = 128\n\
             [[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"{network}\"\n\
             forward = {forward:?}\n"
        );
        std::fs::write(&spec, text).unwrap();
        self.ok(&["up", spec.to_str().unwrap()]);
    }

    fn exec(&self, vm: &str, script: &str) -> Output {
        self.hangar(&["exec", vm, "--", "sh", "-c", script])
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Ok(serde_json::Value::Array(vms)) =
            serde_json::from_slice(&self.hangar(&["ps", "--all", "--output", "json"]).stdout)
        {
            for vm in vms {
                if let Some(name) = vm["name"].as_str() {
                    let _ = self.hangar(&["rm", "--force", name]);
                }
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

use hangar_testkit::netns::link_names;

macro_rules! or_skip {
    ($test:expr, $what:expr) => {
        match $what {
            Ok(v) => v,
            Err(reason) => {
                let _ = writeln!(std::io::stderr(), "SKIPPED {}: {reason}", $test);
                return;
            }
        }
    };
}

#[test]
fn two_vms_on_one_network_reach_each_other_and_rm_leaves_nothing() {
    let test = "two_vms_on_one_network_reach_each_other_and_rm_leaves_nothing";
    let ns = or_skip!(test, Netns::new());
    let home = or_skip!(test, Home::new());
    let root_links = link_names();
    let root_tables = nft::tables().unwrap();
    ns.run(move || {
        let out = home.ok(&["network", "create", "lab", "--subnet", "10.77.0.0/24"]);
        assert!(out.contains("gateway 10.77.0.1"), "{out}");
        let bridge = hangar_plan::bridge_name("lab");
        assert!(link_names().contains(&bridge), "the bridge exists: {:?}", link_names());
        // Refusals are coded and change nothing.
        let out = home.hangar(&["network", "create", "lab2", "--subnet", "10.77.0.0/16"]);
        assert!(text(&out.stderr).contains("E_NETWORK_OVERLAP"), "{}", text(&out.stderr));
        let out = home.hangar(&["network", "create", "lab", "--subnet", "10.78.0.0/24"]);
        assert!(text(&out.stderr).contains("E_NETWORK_EXISTS"), "{}", text(&out.stderr));

        // The dry run says which address a VM would lease, and takes none.
        let spec = home.path().join("dry.toml");
        std::fs::write(
            &spec,
            "schema_version = 1\nname = \"dry\"\n[[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"lab\"\nforward = [\"8080:80\"]\n",
        )
        .unwrap();
        let plan = home.ok(&["plan", spec.to_str().unwrap()]);
        assert!(plan.contains("lease    10.77.0.2 on lab  (nic net0, to take)"), "{plan}");
        let tap = hangar_plan::tap_name("dry", "net0");
        assert!(plan.contains(&format!("port     {tap} on bridge {bridge}")), "{plan}");
        let only = format!("rule     bridge hangar: frames from {tap} only from {}", hangar_plan::mac_for("dry", "net0"));
        assert!(plan.contains(&only), "{plan}");
        assert!(plan.contains("rule     ip hangar: tcp 127.0.0.1:8080 -> 10.77.0.2:80 (destination NAT)"), "{plan}");
        let nowhere = spec.with_file_name("nowhere.toml");
        std::fs::write(&nowhere, std::fs::read_to_string(&spec).unwrap().replace("\"lab\"", "\"nowhere\"")).unwrap();
        let out = home.hangar(&["plan", nowhere.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(err.contains("E_NETWORK_NOT_FOUND") && err.contains("nic[0].network"), "{err}");

        home.up_bridged("a", "lab");
        home.up_bridged("b", "lab");
        let ps = home.json(&["ps", "--output", "json"]);
        let addresses: Vec<&serde_json::Value> = ps.as_array().unwrap().iter().map(|v| &v["addresses"]).collect();
        assert_eq!(addresses, [&serde_json::json!(["10.77.0.2/24"]), &serde_json::json!(["10.77.0.3/24"])]);
        let net = home.json(&["network", "inspect", "lab"]);
        assert_eq!(net["leases"].as_array().unwrap().len(), 2, "{net}");

        // Guest to guest: ping, and a TCP exchange with busybox httpd.
        let out = home.exec("b", "mkdir -p /www && echo page-of-b > /www/index.html && busybox httpd -p 80 -h /www");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = home.exec("a", "ping -c 1 -W 10 10.77.0.3");
        assert!(out.status.success(), "ping: {} {}", text(&out.stdout), text(&out.stderr));
        // (busybox nc, not wget: this busybox's wget crashes in a guest without a DNS server.)
        let out = home.exec("a", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 10.77.0.3 80");
        let reply = text(&out.stdout);
        assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("\r\n\r\npage-of-b\n"), "{reply:?}");
        // The host (this namespace) reaches a guest through the bridge's address.
        let mut conn = std::net::TcpStream::connect("10.77.0.3:80").unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut page = String::new();
        std::io::Read::read_to_string(&mut conn, &mut page).unwrap();
        assert!(page.contains("page-of-b"), "{page}");

        let out = home.hangar(&["network", "rm", "lab"]);
        let err = text(&out.stderr);
        assert!(err.contains("E_NETWORK_IN_USE") && err.contains('a'), "{err}");
        home.ok(&["rm", "--force", "a"]);
        home.ok(&["rm", "--force", "b"]);
        let net = home.json(&["network", "inspect", "lab"]);
        assert_eq!(net["leases"], serde_json::json!([]), "rm released the leases");
        assert!(!link_names().iter().any(|l| l.starts_with("hg-")), "no TAP left: {:?}", link_names());
        assert_eq!(nft::rule_count(nft::Family::Bridge, "hangar").unwrap(), 0, "no VM, no per-NIC rule");
        home.ok(&["network", "rm", "lab"]);
        assert_eq!(link_names(), ["lo"], "nothing left in the namespace");
        assert_eq!(nft::tables().unwrap(), [], "no rule left");
    });
    assert_eq!(link_names(), root_links, "the machine's links unchanged");
    assert_eq!(nft::tables().unwrap(), root_tables, "the machine's rules unchanged");
}

/// Reads one line from each of `count` connections to `listener`; the peers' addresses.
fn record_peers(
    listener: std::net::TcpListener, count: usize,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        (0..count)
            .map(|_| {
                let (mut conn, peer) = listener.accept().unwrap();
                conn.write_all(b"hello from upstream\n").unwrap();
                peer.ip().to_string()
            })
            .collect()
    })
}

#[test]
fn networks_are_isolated_spoofing_is_dropped_and_nat_hides_guests_upstream() {
    let test = "networks_are_isolated_spoofing_is_dropped_and_nat_hides_guests_upstream";
    let host = or_skip!(test, Netns::new());
    let home = or_skip!(test, Home::new());
    // The outside world: another namespace behind a veth pair, the host's default route.
    let upstream = Netns::new().unwrap();
    let upstream_fd = upstream.fd().try_clone().unwrap();
    host.run(move || {
        let mut rtnl = Rtnl::open().unwrap();
        rtnl.create_veth("hgt-up", "hgt-peer", Some(std::os::fd::AsFd::as_fd(&upstream_fd)))
            .unwrap();
        let up = rtnl.index_of("hgt-up").unwrap();
        rtnl.add_address(up, "10.250.0.1".parse().unwrap(), 24).unwrap();
        rtnl.set_up(up, None).unwrap();
        rtnl.set_default_route(up, "10.250.0.2".parse().unwrap()).unwrap();
    });
    let listener = upstream.run(|| {
        let mut rtnl = Rtnl::open().unwrap();
        let peer = rtnl.index_of("hgt-peer").unwrap();
        rtnl.add_address(peer, "10.250.0.2".parse().unwrap(), 24).unwrap();
        rtnl.set_up(peer, None).unwrap();
        std::net::TcpListener::bind("10.250.0.2:9000").unwrap()
    });
    let peers = record_peers(listener, 1);
    // `home` never leaves the host namespace's thread: its cleanup (`hangar rm`) reprograms
    // the rules, which must happen there, whatever fails.
    let upstream = std::sync::Arc::new(upstream);
    let outside = upstream.clone();
    let root_tables = nft::tables().unwrap();
    host.run(move || {
        home.ok(&["network", "create", "lab", "--subnet", "10.77.0.0/24"]);
        home.ok(&["network", "create", "dark", "--subnet", "10.78.0.0/24", "--no-nat"]);
        let ls = home.json(&["network", "ls", "--output", "json"]);
        assert_eq!(ls[0]["name"], "dark");
        assert_eq!((ls[0]["nat"].as_bool(), ls[1]["nat"].as_bool()), (Some(false), Some(true)));
        home.up_bridged("a", "lab");
        home.up_publishing("b", "lab", &["8080:80", "0.0.0.0:8081:80"]);
        home.up_bridged("c", "dark");
        // A host port another VM publishes is refused, naming the field; nothing is leased.
        let twin = home.path().join("twin.toml");
        let b_spec = std::fs::read_to_string(home.path().join("b.toml")).unwrap();
        std::fs::write(&twin, b_spec.replace("name = \"b\"", "name = \"twin\"")).unwrap();
        let out = home.hangar(&["up", twin.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(
            err.contains("nic[0].forward[0]") && err.contains("already published by VM b"),
            "{err}"
        );
        let leases = home.json(&["network", "inspect", "lab"])["leases"].as_array().unwrap().len();
        assert_eq!(leases, 2, "the refused VM holds no address");
        // So is a user NIC's forward of that port (b's rule would take it from QEMU's listener).
        let user = home.path().join("user.toml");
        std::fs::write(
            &user,
            "schema_version = 1\nname = \"user\"\n[[nic]]\nname = \"net0\"\nforward = [\"8081:80\"]\n",
        )
        .unwrap();
        let out = home.hangar(&["up", user.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(err.contains("nic[0].forward[0]") && err.contains("8081/tcp is already published by VM b"), "{err}");
        assert!(home.json(&["ps", "--all", "--output", "json"]).as_array().unwrap().iter().all(|v| v["name"] != "user"));
        assert_eq!(
            nft::tables().unwrap(),
            [
                (nft::Family::Ipv4, "hangar".to_string()),
                (nft::Family::Bridge, "hangar".to_string())
            ]
        );
        assert_eq!(nft::rule_count(nft::Family::Bridge, "hangar").unwrap(), 12, "4 per NIC");
        let ok = |vm: &str, script: &str| {
            let out = home.exec(vm, script);
            assert!(
                out.status.success(),
                "{vm}: {script}: {} {}",
                text(&out.stdout),
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        let fails = |vm: &str, script: &str| {
            let out = home.exec(vm, script);
            let reply = text(&out.stdout);
            let answered = reply.contains("hello")
                || reply.contains("page-of-b")
                || reply.contains(" 0% packet loss");
            assert!(!out.status.success() && !answered, "{vm}: {script} got through: {reply}");
        };
        // DNS: a guest on a NAT network has the host's (reachable) nameservers; one on a
        // network without NAT has none (no query could get out).
        let host_dns = hangar_plan::probe::nameservers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
        let expected: String = host_dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        let resolv = |vm: &str| text(&home.exec(vm, "cat /etc/resolv.conf 2>/dev/null").stdout);
        assert_eq!(resolv("a"), expected);
        assert_eq!(resolv("c"), "", "no DNS without NAT");
        ok("b", "mkdir -p /www && echo page-of-b > /www/index.html && busybox httpd -p 80 -h /www");
        let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5";
        assert!(ok("a", &format!("{get} 10.77.0.3 80")).contains("page-of-b"));

        // Published ports: 127.0.0.1:8080 from the host; 8081 from the outside too.
        assert!(http_get("127.0.0.1:8080").contains("page-of-b"));
        assert!(http_get("127.0.0.1:8081").contains("page-of-b"));

        // Egress through NAT: upstream sees the host's address, not the guest's.
        assert_eq!(ok("a", "nc -w 10 10.250.0.2 9000 </dev/null"), "hello from upstream\n");
        assert_eq!(peers.join().unwrap(), ["10.250.0.1"]);
        // A network without NAT sends nothing out; nor reaches another network.
        fails("c", "nc -w 3 10.250.0.2 9000 </dev/null");
        fails("c", &format!("{get} 10.77.0.3 80"));
        fails("c", "ping -c 1 -W 3 10.77.0.3");
        // Guests do not reach services on the host (hangard's API among them) ...
        let service = std::net::TcpListener::bind("10.77.0.1:9100").unwrap();
        service.set_nonblocking(true).unwrap();
        fails("a", "nc -w 3 10.77.0.1 9100 </dev/null");
        assert!(service.accept().is_err(), "a guest connected to the host");
        // ... and a guest sending from an address not its own is dropped.
        ok("a", "ping -c 1 -W 5 -I 10.77.0.2 10.77.0.3");
        ok("a", "ip addr add 10.77.0.99/24 dev eth0");
        fails("a", "ping -c 1 -W 3 -I 10.77.0.99 10.77.0.3");

        outside.run(|| {
            assert!(
                http_get("10.250.0.1:8081").contains("page-of-b"),
                "published on every address"
            );
            let loopback_only = std::net::TcpStream::connect("10.250.0.1:8080");
            assert!(loopback_only.is_err(), "8080 is published on 127.0.0.1 only");
        });
        for vm in ["a", "b", "c"] {
            home.ok(&["rm", "--force", vm]);
        }
        home.ok(&["network", "rm", "lab"]);
        assert_eq!(nft::rule_count(nft::Family::Bridge, "hangar").unwrap(), 0);
        home.ok(&["network", "rm", "dark"]);
        assert_eq!(nft::tables().unwrap(), [], "no rule left");
        assert_eq!(link_names(), ["hgt-up", "lo"], "no bridge or TAP left");
    });
    drop(upstream);
    assert_eq!(nft::tables().unwrap(), root_tables, "the machine's rules unchanged");
}

/// One HTTP/1.0 GET; the whole response.
fn http_get(address: &str) -> String {
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut page);
    page
}

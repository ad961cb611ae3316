//! Pool instances on their tenant's network, through the real daemon, with real guests, inside
//! a network namespace the test makes (the daemon, its QEMUs, bridges and rules live there; the
//! machine's own namespace is never touched). Without QEMU, the built image or the right to make
//! a namespace, the test prints `SKIPPED …` with the reason and checks nothing.

use hangar_core::contracts::ExitStatus;
use serde_json::{json, Value};

mod common;
use common::SpawnedDaemon as Daemon;
use hangar_testkit::Reaper;

/// Reconcile passes until the pool's unclaimed counts are as desired.
fn converge(d: &Daemon, pool: &str) -> Value {
    for _ in 0..10 {
        let (s, pass) = d.call("POST", "/v1/fleet/reconcile", None);
        assert_eq!(s, 200, "{pass}");
        assert_eq!(pass["errors"], json!([]), "{pass}");
        let (_, status) = d.call("GET", &format!("/v1/pools/{pool}"), None);
        let (desired, counts) = (&status["pool"]["desired"], &status["counts"]);
        if ["running", "warm", "sleeping"].iter().all(|k| desired[k] == counts[k]) {
            return status;
        }
    }
    panic!("pool {pool} did not converge in 10 passes");
}

#[test]
fn pool_instances_join_their_tenants_network_with_their_own_addresses() {
    let test = "pool_instances_join_their_tenants_network_with_their_own_addresses";
    let Some(ns) = hangar_testkit::real_netns(test) else { return };
    let root_tables = hangar_netlink::nft::tables().unwrap();
    ns.run(|| {
        let home = hangar_testkit::private_home("hgd-net-");
        let _reaper = Reaper(home.path().to_path_buf());
        let d = Daemon::start(home.path());
        assert_eq!(d.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200);
        // The template's NIC names no network: instances join acme's default network.
        let template = json!({
            "schema_version": 1, "name": "t", "machine": {"memory_mib": 128},
            "nic": [{"name": "net0", "mode": "bridge"}],
        });
        let pool = json!({
            "id": "web", "tenant": "acme", "spec": template, "desired": {"running": 2},
            "policy": {"min_running_s": 0, "cold_boot": false},
        });
        let (s, v) = d.call("POST", "/v1/pools", Some(&pool.to_string()));
        assert_eq!(s, 201, "{v}");
        converge(&d, "acme--web");

        let (_, instances) = d.call("GET", "/v1/instances", None);
        let names: Vec<String> = instances
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 2, "{instances}");
        let (_, net) = d.call("GET", "/v1/networks/acme--default", None);
        let lease_of =
            |vm: &str| net["leases"].as_array().unwrap().iter().find(|l| l["vm"] == vm).cloned();
        let (a, b) = (
            lease_of(&names[0]).unwrap_or_else(|| panic!("{} has no lease: {net}", names[0])),
            lease_of(&names[1]).unwrap_or_else(|| panic!("{} has no lease: {net}", names[1])),
        );
        assert_ne!(a["address"], b["address"], "{net}");
        assert_ne!(a["mac"], b["mac"], "{net}");
        // Each clone has its own lease in the guest (MAC and address), and they reach each
        // other.
        let remote = hangar_control::Remote::new(home.path().join("hangard.sock"));
        for (me, peer) in [(&names[0], &b), (&names[1], &a)] {
            let script = format!(
                "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; ping -c 1 -W 10 {}",
                peer["address"].as_str().unwrap()
            );
            let (status, out, err) =
                hangar_testkit::exec_in(&remote, me, &["sh", "-c", &script], None).unwrap();
            assert_eq!(status, ExitStatus::Code(0), "{me}: {out}{err}");
            let mine = lease_of(me).unwrap();
            assert!(out.starts_with(mine["mac"].as_str().unwrap()), "{me}: {out}");
            let address = format!("inet {}/24", mine["address"].as_str().unwrap());
            assert!(out.contains(&address), "{me}: {out}");
        }

        // Removing the pool releases its instances' leases; removing the tenant, its network.
        assert_eq!(d.call("DELETE", "/v1/pools/acme--web", None).0, 204);
        let (_, net) = d.call("GET", "/v1/networks/acme--default", None);
        assert_eq!(net["leases"], json!([]), "{net}");
        let (s, v) = d.call("DELETE", "/v1/tenants/acme", None);
        assert!(s == 200 || s == 204, "{s} {v}");
        assert_eq!(hangar_testkit::netns::link_names(), ["lo"], "nothing left in the namespace");
        assert_eq!(hangar_netlink::nft::tables().unwrap(), [], "no rule left");
        d.kill9();
    });
    assert_eq!(
        hangar_netlink::nft::tables().unwrap(),
        root_tables,
        "the machine's rules unchanged"
    );
}

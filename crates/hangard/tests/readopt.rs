//! Crash safety: `kill -9` the real `hangard` binary while idle, in the middle of a boot and in
//! the middle of a stop; after each restart every VM is found again (same QEMU, by PID and start
//! time), the operations that were in flight are settled in the journal (never left running),
//! and nothing is orphaned; a daemon killed while a bridged VM is being created leaks no TAP,
//! rule or lease (in a network namespace the test makes). Needs QEMU and the built image (and,
//! for the bridged test, the right to make a namespace); otherwise skipped with the reason.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::SpawnedDaemon as Daemon;
use hangar_testkit::{qemu_pids as pids_of, Reaper};

fn spec(name: &str, cmdline: &str) -> String {
    format!(
        r#"{{"schema_version":1,"name":"{name}","machine":{{"memory_mib":128}},"boot":{{"image":"minimal","cmdline":"{cmdline}"}}}}"#
    )
}

fn qemus_of(home: &Path) -> usize {
    pids_of(home).len()
}

#[test]
fn kill_9_at_several_points_loses_nothing_and_orphans_nothing() {
    if hangar_testkit::skip("kill_9_at_several_points_loses_nothing_and_orphans_nothing") {
        return;
    }
    let home = hangar_testkit::private_home("hgk-");
    let _reaper = Reaper(home.path().to_path_buf());

    // 1. Idle: a running VM survives the daemon and is re-adopted with the same QEMU.
    let d = Daemon::start(home.path());
    assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&spec("steady", ""))).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/steady/start?wait=true", None);
    let v = &op["result"]["vm"];
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{op}");
    let steady_pid = v["pid"].as_u64().unwrap();
    d.kill9();
    let d = Daemon::start(home.path());
    let v = d.vm("steady");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(steady_pid)),
        "{v}"
    );
    // Its guest agent answers through the restarted daemon (exec is a WebSocket), and the exec
    // is in the audit log with its argv.
    {
        use hangar_core::contracts::{ExitStatus, Guest};
        let remote = hangar_control::Remote::new(home.path().join("hangard.sock"));
        let script = "read x; echo adopted-$x; exit 5";
        let (status, out, err) =
            hangar_testkit::exec_in(&remote, "steady", &["sh", "-c", script], Some(b"42\n"))
                .unwrap();
        assert_eq!((status, out.as_str()), (ExitStatus::Code(5), "adopted-42\n"), "{err}");
        let vm = hangar_core::ids::VmName::new("steady").unwrap();
        let info = remote.guest_info(&vm).unwrap();
        assert!(info.agent.starts_with("hangar-init"), "{info:?}");
        let audit = std::fs::read_to_string(home.path().join("audit.log")).unwrap();
        assert!(
            audit.lines().any(|l| l.contains("guest.exec") && l.contains("adopted-$x")),
            "no audit entry for the exec"
        );
    }

    // 2. Mid-boot: the start's waiter dies with the daemon; the restarted daemon finishes the boot.
    assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&spec("booting", ""))).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/booting/start", None);
    assert_eq!(s, 202, "{op}");
    let boot_op = op["id"].as_str().unwrap().to_string();
    // Kill the daemon as soon as the VM's QEMU exists: spawn to guest-ready takes seconds, so
    // this is always mid-boot (checked below: the console has no ready line yet).
    let deadline = Instant::now() + Duration::from_secs(60);
    let booting_pid = loop {
        let found = pids_of(home.path()).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("vms/booting/"))
        });
        if let Some(pid) = found {
            break pid as u64;
        }
        assert!(Instant::now() < deadline, "QEMU for booting never appeared");
        std::thread::yield_now();
    };
    d.kill9();
    let console =
        std::fs::read_to_string(home.path().join("vms/booting/console.log")).unwrap_or_default();
    assert!(!console.contains("HANGAR_READY"), "the daemon was not killed mid-boot");
    let d = Daemon::start(home.path());
    let op = d.settled(&boot_op);
    assert_eq!(op["status"], "succeeded", "the interrupted start was finished: {op}");
    let v = d.vm("booting");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(booting_pid)),
        "the same QEMU finished booting: {v}"
    );

    // 3. Mid-stop: a guest that ignores power-off keeps the stop waiting; the daemon dies; the
    //    restarted daemon completes the stop.
    assert_eq!(
        d.call("POST", "/v1/vms?wait=true", Some(&spec("stubborn", "hangar.ignore_poweroff=1"))).0,
        200
    );
    assert_eq!(d.call("POST", "/v1/vms/stubborn/start?wait=true", None).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/stubborn/stop", Some(r#"{"timeout_s": 60}"#));
    assert_eq!(s, 202, "{op}");
    let stop_op = op["id"].as_str().unwrap().to_string();
    d.wait_for("stubborn", "stopping", |v| v["state"] == "stopping");
    d.kill9();
    let d = Daemon::start(home.path());
    let op = d.settled(&stop_op);
    assert_eq!(op["status"], "succeeded", "the interrupted stop was finished: {op}");
    let v = d.vm("stubborn");
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["pid"].is_null(), "{v}");
    // No operation is left running, and the journal names what each did.
    let (_, ops) = d.call("GET", "/v1/operations", None);
    assert!(ops.as_array().unwrap().iter().all(|o| o["status"] != "running"), "{ops}");

    // Nothing lost, nothing orphaned: three records, exactly the two running QEMUs.
    let (_, all) = d.call("GET", "/v1/vms", None);
    let names: Vec<_> =
        all.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["booting", "steady", "stubborn"]);
    assert_eq!(qemus_of(home.path()), 2);
    for name in ["booting", "steady", "stubborn"] {
        assert_eq!(d.call("DELETE", &format!("/v1/vms/{name}?force=true&wait=true"), None).0, 200);
    }
    assert_eq!(qemus_of(home.path()), 0, "orphaned QEMU");
    assert!(
        std::fs::read_dir(home.path().join("vms")).unwrap().next().is_none(),
        "runtime dirs left behind"
    );
    d.kill9();
}

/// A pool's spare (a QEMU waiting for the pool's base, no guest) outlives `kill -9` of the
/// daemon like a running VM: the restarted daemon finds the same QEMU, still a spare, and a
/// claim takes it and runs its guest.
#[test]
fn a_spare_survives_kill_9_of_the_daemon_and_is_claimed_after() {
    if hangar_testkit::skip("a_spare_survives_kill_9_of_the_daemon_and_is_claimed_after") {
        return;
    }
    let home = hangar_testkit::private_home("hgk-");
    let _reaper = Reaper(home.path().to_path_buf());
    // Passes only when asked, so the test sees each step.
    let child = common::spawn_hangard(home.path(), &["--reconcile-interval", "3600"]);
    let d = Daemon::from_child(child, home.path());
    assert_eq!(d.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200);
    let pool = format!(
        r#"{{"id":"acme--sp","tenant":"acme","spec":{},"desired":{{"spare":1}}}}"#,
        spec("template", "")
    );
    let (s, body) = d.call("POST", "/v1/pools", Some(&pool));
    assert!((200..300).contains(&s), "{s} {body}");
    let (s, pass) = d.call("POST", "/v1/fleet/reconcile", None);
    assert_eq!((s, pass["errors"].as_array().map(Vec::len)), (200, Some(0)), "{pass}");
    let spare = |d: &Daemon| {
        let (_, p) = d.call("GET", "/v1/pools/acme--sp", None);
        let found = p["instances"].as_array().unwrap().iter().find(|i| i["state"] == "spare");
        found.unwrap_or_else(|| panic!("no spare in {p}"))["name"].as_str().unwrap().to_string()
    };
    let name = spare(&d);
    let pid = d.vm(&name)["pid"].as_u64().expect("a spare holds a QEMU");
    d.kill9();

    let child = common::spawn_hangard(home.path(), &["--reconcile-interval", "3600"]);
    let d = Daemon::from_child(child, home.path());
    assert_eq!(spare(&d), name);
    let v = d.vm(&name);
    assert_eq!((v["state"].as_str(), v["pid"].as_u64()), (Some("spare"), Some(pid)), "{v}");
    let (s, claim) = d.call("POST", "/v1/pools/acme--sp/claim", None);
    assert_eq!((s, claim["source"].as_str()), (200, Some("spare")), "{claim}");
    assert_eq!(claim["instance"]["name"].as_str(), Some(name.as_str()), "{claim}");
    let remote = hangar_control::Remote::new(home.path().join("hangard.sock"));
    let (status, out, err) =
        hangar_testkit::exec_in(&remote, &name, &["echo", "from-the-spare"], None).unwrap();
    assert_eq!(
        (status, out.as_str()),
        (hangar_core::contracts::ExitStatus::Code(0), "from-the-spare\n"),
        "{err}"
    );
    assert_eq!(d.vm(&name)["pid"].as_u64(), Some(pid), "the same QEMU runs the guest");
    assert_eq!(d.call("DELETE", "/v1/pools/acme--sp", None).0 / 100, 2);
    d.kill9();
}

/// A 128 MiB VM with one NIC on `network`.
fn bridged_spec(name: &str, network: &str) -> String {
    format!(
        r#"{{"schema_version":1,"name":"{name}","machine":{{"memory_mib":128}},"nic":[{{"name":"net0","mode":"bridge","network":"{network}"}}]}}"#
    )
}

/// Everything networking leaves on a host, from netlink: link names, the rules in each Hangar
/// table, and (from the daemon) the leases.
fn host_network_state(d: &Daemon) -> (Vec<String>, usize, usize, serde_json::Value) {
    use hangar_netlink::nft::{rule_count, Family};
    let links = hangar_testkit::netns::link_names();
    let rules = |family| rule_count(family, "hangar").unwrap();
    let (_, net) = d.call("GET", "/v1/networks/lab", None);
    (links, rules(Family::Ipv4), rules(Family::Bridge), net["leases"].clone())
}

/// Bridged networking across daemon crashes, inside a network namespace this test makes (the
/// daemon, its QEMUs and their TAPs are born there): a lease survives a restart with its VM,
/// and a daemon killed while a bridged VM is being created (its TAP just made), restarted and
/// asked to remove that VM leaves the host exactly as before: no TAP, rule or lease.
#[test]
fn kill_9_while_creating_a_bridged_vm_leaks_no_tap_rule_or_lease() {
    let test = "kill_9_while_creating_a_bridged_vm_leaks_no_tap_rule_or_lease";
    let Some(ns) = hangar_testkit::real_netns(test) else { return };
    let root_tables = hangar_netlink::nft::tables().unwrap();
    ns.run(|| {
        let home = hangar_testkit::private_home("hgk-");
        let _reaper = Reaper(home.path().to_path_buf());
        let d = Daemon::start(home.path());
        let (s, net) =
            d.call("POST", "/v1/networks", Some(r#"{"name":"lab","subnet":"10.77.0.0/24"}"#));
        assert_eq!(s, 201, "{net}");
        assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&bridged_spec("a", "lab"))).0, 200);
        let (s, op) = d.call("POST", "/v1/vms/a/start?wait=true", None);
        assert_eq!((s, op["result"]["vm"]["state"].as_str()), (200, Some("running")), "{op}");
        let a_pid = op["result"]["vm"]["pid"].as_u64().unwrap();
        let (_, net) = d.call("GET", "/v1/networks/lab", None);
        let leases = net["leases"].clone();
        assert_eq!(leases.as_array().unwrap().len(), 1, "{net}");
        assert_eq!(leases[0]["address"], "10.77.0.2", "{net}");

        // 1. A restart keeps the lease, the VM (same QEMU) and its network.
        d.kill9();
        let d = Daemon::start(home.path());
        let (_, net) = d.call("GET", "/v1/networks/lab", None);
        assert_eq!(net["leases"], leases, "the lease survived the restart");
        let v = d.vm("a");
        assert_eq!((v["state"].as_str(), v["pid"].as_u64()), (Some("running"), Some(a_pid)));
        let remote = hangar_control::Remote::new(home.path().join("hangard.sock"));
        let (status, out, err) = hangar_testkit::exec_in(
            &remote,
            "a",
            &["ping", "-c", "1", "-W", "10", "10.77.0.1"],
            None,
        )
        .unwrap();
        assert_eq!(status, hangar_core::contracts::ExitStatus::Code(0), "{out}{err}");

        // 2. Killed while creating a bridged VM, at two points: as soon as its TAP exists (the
        //    daemon holds it; QEMU may not be spawned yet) and as soon as its QEMU exists (which
        //    holds the TAP across the restart, and whose boot the restarted daemon finishes).
        let before = host_network_state(&d);
        let tap = hangar_plan::tap_name("b", "net0");
        let mut d = d;
        for point in ["TAP", "QEMU"] {
            assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&bridged_spec("b", "lab"))).0, 200);
            let (_, net) = d.call("GET", "/v1/networks/lab", None);
            assert_eq!(net["leases"].as_array().unwrap().len(), 2, "b leased at define: {net}");
            let (s, op) = d.call("POST", "/v1/vms/b/start", None);
            assert_eq!(s, 202, "{op}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let reached = match point {
                    "TAP" => host_network_state(&d).0.contains(&tap),
                    _ => pids_of(home.path()).into_iter().any(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline"))
                            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("vms/b/"))
                    }),
                };
                if reached {
                    break;
                }
                assert!(Instant::now() < deadline, "b's {point} never appeared");
                std::thread::yield_now();
            }
            d.kill9();
            d = Daemon::start(home.path());
            let (s, op) = d.call("DELETE", "/v1/vms/b?force=true&wait=true", None);
            assert_eq!(s, 200, "{op}");
            assert_eq!(
                host_network_state(&d),
                before,
                "rm after a crash once b's {point} existed left something behind"
            );
        }

        // 3. The kept lease is still honoured: a new VM gets the next free address, not a's.
        assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&bridged_spec("c", "lab"))).0, 200);
        let (_, net) = d.call("GET", "/v1/networks/lab", None);
        let addresses: Vec<&str> = net["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["address"].as_str().unwrap())
            .collect();
        assert_eq!(addresses, ["10.77.0.2", "10.77.0.3"], "{net}");

        for name in ["a", "c"] {
            assert_eq!(
                d.call("DELETE", &format!("/v1/vms/{name}?force=true&wait=true"), None).0,
                200
            );
        }
        assert_eq!(d.call("DELETE", "/v1/networks/lab", None).0, 204);
        let (links, ip_rules, bridge_rules, _) = host_network_state(&d);
        assert_eq!((links, ip_rules, bridge_rules), (vec!["lo".to_string()], 0, 0));
        assert_eq!(hangar_netlink::nft::tables().unwrap(), [], "no Hangar table left");
        d.kill9();
    });
    assert_eq!(
        hangar_netlink::nft::tables().unwrap(),
        root_tables,
        "the machine's rules unchanged"
    );
}

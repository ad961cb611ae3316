//! The gateway with real guests, through the real daemon, inside a network namespace the test
//! makes (the daemon, its QEMUs, its bridge and the test's HTTP clients live there; the
//! machine's own namespace is never touched). The pool's guests run busybox `httpd` from boot
//! (`hangar.run=`), so its base snapshot, and every instance made from it, serves a page.
//! Without QEMU, the built image or the right to make a namespace, the test prints `SKIPPED …`
//! with the reason and checks nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::SpawnedDaemon as Daemon;
use hangar_testkit::Reaper;

const PAGE: &str = "page-from-the-pool";

/// One HTTP/1.1 GET through the gateway: the status line and the body.
fn get(port: u16) -> (String, String) {
    try_get(port, Duration::from_secs(120)).expect("the gateway accepts")
}

/// [`get`] that may fail (no connection), waiting at most `timeout` for each read.
fn try_get(port: u16, timeout: Duration) -> Option<(String, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(timeout)).ok()?;
    write!(conn, "GET /index.html HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The instances the gateway holds: (name, state).
fn held(d: &Daemon) -> Vec<(String, String)> {
    let (_, instances) = d.call("GET", "/v1/instances?pool=acme--web", None);
    instances
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["holder"] == "gateway")
        .map(|i| {
            (i["name"].as_str().unwrap().to_string(), i["state"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Reconcile passes until `pred` holds for the pool's status (bounded).
fn passes_until(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, pass) = d.call("POST", "/v1/fleet/reconcile", None);
        assert_eq!(s, 200, "{pass}");
        let (_, status) = d.call("GET", "/v1/pools/acme--web", None);
        if pred(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_pool_scaled_to_zero_serves_through_the_gateway_and_sleeps_when_idle() {
    let test = "a_pool_scaled_to_zero_serves_through_the_gateway_and_sleeps_when_idle";
    let Some(ns) = hangar_testkit::real_netns(test) else { return };
    ns.run(|| {
        let home = hangar_testkit::private_home("hgd-gwq-");
        let _reaper = Reaper(home.path().to_path_buf());
        let d = Daemon::start(home.path());
        assert_eq!(d.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200);
        let script = format!(
            "mkdir -p /www && echo {PAGE} > /www/index.html && busybox httpd -p 80 -h /www && exec sleep 1000000"
        );
        let template = json!({
            "schema_version": 1, "name": "t", "machine": {"memory_mib": 128},
            "boot": {"image": "minimal", "cmdline": hangar_testkit::run_argument(&["/bin/sh", "-c", &script])},
            "nic": [{"name": "net0", "mode": "bridge"}],
        });
        // Scale to zero: nothing running, one instance asleep; idle ones go back to sleep.
        let pool = json!({
            "id": "web", "tenant": "acme", "spec": template, "desired": {"sleeping": 1},
            "policy": {"idle_sleep_after_s": 2},
        });
        let (s, v) = d.call("POST", "/v1/pools", Some(&pool.to_string()));
        assert_eq!(s, 201, "{v}");
        passes_until(&d, "one sleeping", |s| s["counts"]["sleeping"] == 1);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let route = json!({
            "id": "shop", "tenant": "acme", "port": port, "pool": "web", "guest_port": 80,
            "match": {"protocol": "http", "host": "shop.test"},
        });
        let (s, r) = d.call("POST", "/v1/routes", Some(&route.to_string()));
        assert_eq!(s, 201, "{r}");

        // The first request wakes the sleeping instance and gets the page from its guest.
        let (status, body) = get(port);
        assert!(status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200"), "{status}\n{body}");
        assert_eq!(body.trim(), PAGE);
        let first = held(&d);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].1, "running", "{first:?}");

        // Idle past idle_sleep_after_s: back to sleep (the daemon hands the gateway's counts
        // to the fleet every second; the passes here are the loop's, on demand).
        passes_until(&d, "the gateway's instance asleep", |_| {
            held(&d).iter().all(|(_, state)| state == "sleeping")
        });

        // A plain TCP route to the same pool wakes it the same way (the bytes pass untouched).
        let tcp_port =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tcp = json!({
            "id": "raw", "tenant": "acme", "port": tcp_port, "pool": "web", "guest_port": 80,
            "match": {"protocol": "tcp"},
        });
        let (s, r) = d.call("POST", "/v1/routes", Some(&tcp.to_string()));
        assert_eq!(s, 201, "{r}");
        let (status, body) = get(tcp_port);
        assert!(status.contains(" 200 "), "{status}\n{body}");
        assert_eq!(body.trim(), PAGE);
        assert_eq!(held(&d), [(first[0].0.clone(), "running".to_string())], "woken for TCP");
        passes_until(&d, "the gateway's instance asleep again", |_| {
            held(&d).iter().all(|(_, state)| state == "sleeping")
        });

        // 50 connections arrive while it sleeps: every one gets the page from one wake.
        let clients: Vec<_> = (0..50).map(|_| std::thread::spawn(move || get(port))).collect();
        for c in clients {
            let (status, body) = c.join().unwrap();
            assert!(status.contains(" 200 "), "{status}\n{body}");
            assert_eq!(body.trim(), PAGE);
        }
        let woken = held(&d);
        assert_eq!(woken, [(first[0].0.clone(), "running".to_string())], "one instance, woken again");
        let text = hangar_api::client::request(
            &home.path().join("hangard.sock"),
            "GET",
            "/metrics",
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&text.body).into_owned();
        assert!(text.contains("hangar_gateway_connections_total{"), "{text}");

        // Its QEMU killed while requests keep coming: the next connection is served by a
        // replacement (those caught in the kill may fail).
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let traffic = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    // One caught in the kill is closed by the gateway once the fleet has
                    // seen its instance die (a vanished guest sends no reset).
                    let answer = try_get(port, Duration::from_secs(30));
                    if answer.is_some_and(|(s, b)| s.contains(" 200 ") && b.trim() == PAGE) {
                        served.fetch_add(1, SeqCst);
                    }
                }
            })
        };
        let flowing = Instant::now() + Duration::from_secs(60);
        while served.load(SeqCst) < 3 {
            assert!(Instant::now() < flowing, "no traffic through the gateway");
            std::thread::sleep(Duration::from_millis(5));
        }
        let vm = d.vm(&woken[0].0);
        let pid = vm["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {vm}")) as i32;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let (status, body) = get(port);
        assert!(status.contains(" 200 "), "{status}\n{body}");
        assert_eq!(body.trim(), PAGE);
        let after = held(&d);
        assert!(
            after.iter().any(|(name, state)| name != &woken[0].0 && state == "running"),
            "a replacement serves: {after:?}"
        );
        stop.store(true, SeqCst);
        traffic.join().unwrap();

        // A restarted daemon keeps the route and serves again.
        drop(d);
        let d = Daemon::start(home.path());
        let (_, routes) = d.call("GET", "/v1/routes", None);
        let ids: Vec<&str> =
            routes.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["acme--raw", "acme--shop"], "{routes}");
        let (status, body) = get(port);
        assert!(status.contains(" 200 "), "{status}\n{body}");
        assert_eq!(body.trim(), PAGE);

        // kill -9 of the daemon during a wake: once restarted, the woken instance is the
        // gateway's, counted once, and serves; the pool keeps its one resting instance.
        passes_until(&d, "the gateway's instances asleep", |_| {
            held(&d).iter().all(|(_, state)| state == "sleeping")
        });
        let sleeper = held(&d)[0].0.clone();
        let client = std::thread::spawn(move || {
            // The connection dies with the daemon; what matters is what is left after.
            let _ = std::panic::catch_unwind(|| get(port));
        });
        d.wait_for(&sleeper, "waking", |v| v["state"] == "waking" || v["state"] == "running");
        d.kill9();
        let _ = client.join();
        let d = Daemon::start(home.path());
        let (status, body) = get(port);
        assert!(status.contains(" 200 "), "{status}\n{body}");
        assert_eq!(body.trim(), PAGE);
        let status = passes_until(&d, "the pool settled", |s| s["counts"]["sleeping"] == 1);
        let (_, instances) = d.call("GET", "/v1/instances?pool=acme--web", None);
        let names: Vec<&str> =
            instances.as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "an instance counted twice: {instances}");
        let serving: Vec<(String, String)> =
            held(&d).into_iter().filter(|(_, state)| state == "running").collect();
        assert_eq!(serving.len(), 1, "one instance serves: {instances}\n{status}");
    });
}

//! Networking: what a NIC adds to a cold boot and to a clone (bridged vs none), TCP throughput
//! and round trips (bridged vs `user`), and nf_tables programming rate. All of it inside a
//! network namespace made for the run: nothing touches the machine's own.

use std::io::{Read, Write};
use std::time::Instant;

use serde_json::{json, Value};

use crate::engine::{Args, Home};
use crate::stats::{median, round};

/// MiB sent per throughput sample.
const MIB: usize = 32;

fn spec(home: &Home, name: &str, nic: &str) -> Result<String, String> {
    let path = home.dir.join(format!("{name}.toml"));
    let text = format!(
        "schema_version = 1\nname = \"{name}\"\n[machine]\nvcpus = 1\nmemory_mib = 256\n{nic}"
    );
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}

const BRIDGED: &str = "[[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"bench\"\n";

fn sh(home: &Home, vm: &str, script: &str) -> Result<String, String> {
    home.hangar(&["exec", vm, "--", "sh", "-c", script])
}

fn millis(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Bytes per second of [`MIB`] MiB, as MiB/s.
fn mib_s(t: Instant) -> f64 {
    round(MIB as f64 / t.elapsed().as_secs_f64(), 1)
}

/// Downloads `/big` from the HTTP server at `address` (busybox httpd in a guest, or the
/// host's [`serve_big`]) from the host; MiB/s, checking every byte arrived.
fn host_download(address: &str) -> Result<f64, String> {
    let mut conn = std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    let t = Instant::now();
    conn.write_all(b"GET /big HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut got = Vec::with_capacity((MIB << 20) + 4096);
    conn.read_to_end(&mut got).map_err(|e| e.to_string())?;
    let rate = mib_s(t);
    if got.len() < MIB << 20 {
        return Err(format!("{address}: {} bytes of {}", got.len(), MIB << 20));
    }
    Ok(rate)
}

/// Has `vm` download `/big` from `host:port` (busybox nc); MiB/s, checking the byte count.
fn guest_download(home: &Home, vm: &str, host: &str, port: u16) -> Result<f64, String> {
    let t = Instant::now();
    let got = sh(
        home,
        vm,
        &format!("printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc {host} {port} | wc -c"),
    )?;
    let rate = mib_s(t);
    let bytes: usize = got.trim().parse().map_err(|_| format!("{vm}: wc said {got:?}"))?;
    if bytes < MIB << 20 {
        return Err(format!("{vm} got {bytes} bytes of {}", MIB << 20));
    }
    Ok(rate)
}

/// Serves [`MIB`] MiB of zeros once, over HTTP/1.0, on `listener`.
fn serve_big(listener: std::net::TcpListener) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut request = [0u8; 1024];
        let _ = c.read(&mut request).map_err(|e| e.to_string())?;
        c.write_all(format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", MIB << 20).as_bytes())
            .map_err(|e| e.to_string())?;
        let block = vec![0u8; 1 << 20];
        for _ in 0..MIB {
            c.write_all(&block).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Starts busybox httpd in `vm` serving `/big` ([`MIB`] MiB) and `/small` (one byte) on port 80.
fn http_server(home: &Home, vm: &str) -> Result<(), String> {
    let make = format!(
        "mkdir -p /www && echo > /www/small && dd if=/dev/zero of=/www/big bs=1048576 count={MIB} 2>/dev/null"
    );
    sh(home, vm, &format!("{make} && busybox httpd -p 80 -h /www")).map(drop)
}

/// Median ms of `n` HTTP/1.0 requests for `/small` from the host to `address`, each from
/// connect to the server closing (a TCP round trip plus busybox httpd's own work, which is the
/// same on both sides of the comparison).
fn request_ms(address: &str, n: usize) -> Result<f64, String> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut conn =
            std::net::TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
        conn.write_all(b"GET /small HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).map_err(|e| e.to_string())?;
        samples.push(millis(t));
        if !reply.starts_with(b"HTTP/1.") || !reply.ends_with(b"\r\n\r\n\n") {
            return Err(format!("{address}: {:?}", String::from_utf8_lossy(&reply)));
        }
    }
    Ok(round(median(&samples), 2))
}

/// Clone (`hangar snapshot restore` of one VM's snapshot into another), no NIC vs one bridged
/// NIC, alternated: the bridged clone also opens its TAP, syncs the rules and is re-addressed
/// (MAC included) through its guest agent before it counts as restored.
fn clones(home: &Home, rounds: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    for (base, target, nic) in [("cp0", "cp1", ""), ("cb0", "cb1", BRIDGED)] {
        // Untimed: the base snapshot taken, the target defined, one restore to warm caches.
        home.hangar(&["up", &spec(home, base, nic)?])?;
        home.hangar(&["snapshot", "save", base, base, "--sleep"])?;
        home.hangar(&["up", &spec(home, target, nic)?])?;
        home.hangar(&["stop", "--force", target])?;
        home.hangar(&["snapshot", "restore", target, base])?;
        home.hangar(&["stop", "--force", target])?;
    }
    let (mut none_ms, mut bridge_ms) = (Vec::new(), Vec::new());
    for round_ in 0..rounds {
        let mut order = [("cp1", "cp0", &mut none_ms), ("cb1", "cb0", &mut bridge_ms)];
        if round_ % 2 == 1 {
            order.reverse();
        }
        for (target, base, out) in order {
            let t = Instant::now();
            home.hangar(&["snapshot", "restore", target, base])?;
            out.push(millis(t));
            home.hangar(&["stop", "--force", target])?;
        }
    }
    for vm in ["cp0", "cp1", "cb0", "cb1"] {
        home.hangar(&["rm", "--force", vm])?;
    }
    Ok((none_ms, bridge_ms))
}

fn ping_avg_ms(out: &str) -> Option<f64> {
    // busybox: "round-trip min/avg/max = 0.512/0.733/1.201 ms"
    let stats = out.lines().find(|l| l.contains("min/avg/max"))?;
    stats.split('=').nth(1)?.trim().split('/').nth(1)?.parse().ok()
}

fn measure(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "net")?;
    home.hangar(&["network", "create", "bench", "--subnet", "10.99.0.0/24"])?;

    // Cold boot, no NIC vs one bridged NIC, alternated.
    let (plain, bridged) = (spec(&home, "p", "")?, spec(&home, "b", BRIDGED)?);
    let (mut none_ms, mut bridge_ms) = (Vec::new(), Vec::new());
    for round_ in 0..args.rounds {
        let order: [(&str, &str, &mut Vec<f64>); 2] = if round_ % 2 == 0 {
            [("p", &plain, &mut none_ms), ("b", &bridged, &mut bridge_ms)]
        } else {
            [("b", &bridged, &mut bridge_ms), ("p", &plain, &mut none_ms)]
        };
        for (vm, file, out) in order {
            let t = Instant::now();
            home.hangar(&["up", file])?;
            out.push(millis(t));
            home.hangar(&["rm", "--force", vm])?;
        }
    }

    let (clone_none_ms, clone_bridge_ms) = clones(&home, args.rounds)?;

    // Two bridged guests and one user-mode guest (forward 127.0.0.1:15002 → 5002).
    let user = spec(&home, "u", "[[nic]]\nname = \"net0\"\nforward = [\"15002:80\"]\n")?;
    for (vm, file) in [("a", spec(&home, "a", BRIDGED)?), ("b", bridged), ("u", user)] {
        let _ = vm;
        home.hangar(&["up", &file])?;
    }
    http_server(&home, "b")?;
    http_server(&home, "u")?;
    let guest_guest = guest_download(&home, "a", "10.99.0.3", 80)?;
    let guest_to_host_bridged = host_download("10.99.0.3:80")?;
    let guest_to_host_user = host_download("127.0.0.1:15002")?;
    let listener = std::net::TcpListener::bind("127.0.0.1:15003").map_err(|e| e.to_string())?;
    let server = serve_big(listener);
    let host_to_guest_user = guest_download(&home, "u", "10.0.2.2", 15003)?;
    server.join().map_err(|_| "server thread panicked".to_string())??;
    let rtt_bridged = ping_avg_ms(&sh(&home, "a", "ping -c 10 -i 0.2 10.99.0.3")?);
    let request_bridged = request_ms("10.99.0.3:80", 50)?;
    let request_user = request_ms("127.0.0.1:15002", 50)?;

    // Rules: each of 200 leases followed by a full sync (what each VM's define + boot costs).
    let store = hangar_store::Store::open_in(&home.dir).map_err(|e| e.to_string())?;
    let network = hangar_core::ids::NetworkName::new("bench").unwrap();
    let t = Instant::now();
    let mut rules = 0;
    for i in 0..200 {
        let vm = hangar_core::ids::VmName::new(format!("fake-{i}")).unwrap();
        let nic = hangar_core::ids::DeviceName::new("net0").unwrap();
        let mac = hangar_plan::mac_for(vm.as_str(), "net0");
        store
            .lease(&network, &vm, &nic, &mac, hangar_core::clock::Timestamp(0))
            .map_err(|e| e.to_string())?;
        hangar_net::rules::sync(&store, None).map_err(|e| e.to_string())?;
        rules += hangar_netlink::nft::rule_count(hangar_netlink::nft::Family::Bridge, "hangar")
            .map_err(|e| e.to_string())?;
    }
    let secs = t.elapsed().as_secs_f64();
    for vm in ["a", "b", "u"] {
        home.hangar(&["rm", "--force", vm])?;
    }
    for i in 0..200 {
        store.release_leases(&hangar_core::ids::VmName::new(format!("fake-{i}")).unwrap()).ok();
    }
    home.hangar(&["network", "rm", "bench"])?;
    let boot = |v: &[f64]| round(median(v), 0);
    Ok(json!({
        "benchmark": "net",
        "cold_boot_ms": {"no_nic": boot(&none_ms), "bridged": boot(&bridge_ms),
            "added_ms": round(median(&bridge_ms) - median(&none_ms), 0), "rounds": args.rounds},
        "clone_ms": {"no_nic": boot(&clone_none_ms), "bridged": boot(&clone_bridge_ms),
            "added_ms": round(median(&clone_bridge_ms) - median(&clone_none_ms), 0),
            "rounds": args.rounds},
        "tcp_mib_s": {
            "what": "one HTTP/1.0 download of 32 MiB, sender to receiver",
            "guest_to_guest_bridged": guest_guest,
            "guest_to_host_bridged": guest_to_host_bridged,
            "guest_to_host_user": guest_to_host_user,
            "host_to_guest_user": host_to_guest_user,
        },
        "rtt_ms": {"guest_to_guest_bridged_ping": rtt_bridged,
            "user_ping": "not measured (slirp answers no ICMP here)",
            "host_to_guest_request": {"what": "median of 50 HTTP/1.0 requests for 1 byte, connect to close",
                "bridged": request_bridged, "user": request_user,
                "ratio_user_to_bridged": round(request_user / request_bridged, 2)}},
        "rules": {"syncs": 200, "seconds": round(secs, 2), "syncs_per_s": round(200.0 / secs, 0),
            "rules_programmed": rules, "rules_per_s": round(rules as f64 / secs, 0)},
    }))
}

/// Runs [`measure`] in a network namespace of its own.
pub fn run(args: &Args) -> Result<Value, String> {
    let ns = hangar_testkit::netns::Netns::new()?;
    let args = args.clone();
    ns.run(move || measure(&args))
}

//! A cluster on etcd (issue 18), on the fake engine: a 3-member etcd on loopback and three
//! `hangard --engine fake --cluster` nodes. Placement of a 999-instance pool end to end (from
//! `POST /v1/pools` until every node has applied its share, against the pure placement of the
//! same inputs in this process, the same run's baseline), failover after a `kill -9` of a
//! node (until the other two hold the whole pool), against the lease TTL, and a claim through a
//! node with no instance of the pool (passed to another node) against a claim served where it
//! is asked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangar_cluster::{place, Assignment, NodeInfo, NodeView, PoolDemand, Resources, Schedule};
use hangar_testkit::etcd::EtcdCluster;
use serde_json::{json, Value};

use crate::stats::round;

/// `hangar-bench cluster` arguments.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The hangard binary.
    #[arg(long, default_value = "target/release/hangard")]
    pub hangard: PathBuf,
    /// Lease TTLs to measure failover with, in seconds.
    #[arg(long, value_delimiter = ',', default_value = "3,6")]
    pub ttls: Vec<u64>,
    /// Also simulate a cluster of this many nodes on the fake engine (each a hangard process,
    /// 100 warm instances each): how long they take to join and to place and make a pool, the
    /// scheduler's pass time, the etcd writes a second they cost at rest, their memory, and a
    /// claim through a node that must pass it on. 0 skips it (`all` runs 100).
    #[arg(long, default_value_t = 0)]
    pub simulate_nodes: usize,
}

/// A directory removed on drop (after the nodes in it are gone: declare it first).
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    child: Child,
    socket: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    hangard: &Path, home: &Path, etcd: &EtcdCluster, name: &str, ttl: u64, key: &Path,
) -> Result<Node, String> {
    let node = spawn(hangard, home, etcd, name, ttl, key)?;
    wait(Duration::from_secs(30), "hangard to answer", || {
        Ok(call(&node, "GET", "/v1/health", None).is_ok())
    })?;
    Ok(node)
}

fn spawn(
    hangard: &Path, home: &Path, etcd: &EtcdCluster, name: &str, ttl: u64, key: &Path,
) -> Result<Node, String> {
    std::fs::create_dir_all(home).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(home.join("hangard.log")).map_err(|e| e.to_string())?;
    // Other nodes pass claims to it here (over TLS, its own certificate).
    let port = hangar_testkit::free_port();
    let child = Command::new(hangard)
        .args(["--home", &home.display().to_string(), "--engine", "fake", "--node", name])
        .args(["--listen-tcp", &format!("127.0.0.1:{port}")])
        .args(["--cluster", &etcd.endpoints().join(","), "--lease-ttl", &ttl.to_string()])
        .args(["--cluster-key", &key.display().to_string(), "--reconcile-interval", "0.5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", hangard.display()))?;
    Ok(Node { child, socket: home.join("hangard.sock") })
}

fn call(node: &Node, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let body = body.map(|b| b.to_string());
    let (status, answer) =
        crate::api::call(&node.socket, method, path, body.as_deref().map(str::as_bytes))?;
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if status >= 300 {
        return Err(format!("{method} {path}: {status} {v}"));
    }
    Ok(v)
}

/// Polls `done` every 10 ms until it holds or `limit` passes; how long it took.
fn wait(
    limit: Duration, what: &str, mut done: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("no {what} within {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Tenant `acme`'s pool `web` of `warm` instances, made through `node`. 64 MiB each (the least
/// a spec may ask): a few hundred fit in each node's memory as probed.
fn create_pool(node: &Node, warm: u64) -> Result<(), String> {
    let spec = json!({"schema_version": 1, "name": "t", "machine": {"memory_mib": 64}});
    let pool = json!({"id": "web", "tenant": "acme", "spec": spec, "desired": {"warm": warm}});
    call(node, "POST", "/v1/pools", Some(pool)).map(drop)
}

/// The pool's desired warm count on each of `nodes` (named `n1`, `n2`, … in order; 0 where it
/// has no share), from the nodes' reports as the first shows them.
fn shares(nodes: &[&Node]) -> Vec<u64> {
    let pool = call(nodes[0], "GET", "/v1/pools/acme--web", None).unwrap_or(Value::Null);
    (1..=nodes.len())
        .map(|i| pool["nodes"][format!("n{i}")]["desired"]["warm"].as_u64().unwrap_or(0))
        .collect()
}

/// The pure placement of `warm` instances over 3 equal nodes, timed (median of 20).
fn pure_placement_ms(warm: u32) -> f64 {
    let nodes: Vec<NodeView> = (1..=3)
        .map(|i| NodeView {
            info: NodeInfo {
                name: format!("n{i}"),
                advertise: String::new(),
                tls_fingerprint: None,
                capacity: Resources { vcpus: 32, memory_mib: 1 << 20, disk_mib: 1 << 20 },
                accel: "fake".into(),
                qemu_version: None,
                images: vec!["minimal".into()],
                joined_at: 0,
            },
            alive: true,
            schedule: Schedule::Ready,
            unmanaged: Resources::default(),
        })
        .collect();
    let pool = PoolDemand {
        pool: "acme--web".into(),
        desired: hangar_fleet::Desired { warm, ..Default::default() },
        per_instance: Resources { vcpus: 1, memory_mib: 64, disk_mib: 0 },
        requires_kvm: false,
        image: Some("minimal".into()),
    };
    let times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(place(&nodes, std::slice::from_ref(&pool), &Assignment::new()));
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    crate::stats::median(&times)
}

fn measure(args: &Args, ttl: u64, placement: bool) -> Result<Value, String> {
    let etcd = EtcdCluster::start(3)?;
    let dir = Scratch(PathBuf::from(format!("/tmp/hgb-cluster-{}-{ttl}", std::process::id())));
    let _ = std::fs::remove_dir_all(dir.path());
    std::fs::create_dir_all(dir.path()).map_err(|e| e.to_string())?;
    let key = key_file(dir.path(), ttl as u8)?;
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            start(
                &args.hangard,
                &dir.path().join(format!("n{i}")),
                &etcd,
                &format!("n{i}"),
                ttl,
                &key,
            )
        })
        .collect::<Result<_, _>>()?;
    wait(Duration::from_secs(30), "3 live nodes", || {
        let list = call(&nodes[0], "GET", "/v1/nodes", None)?;
        Ok(list.as_array().map(|a| a.iter().filter(|n| n["alive"] == true).count()) == Some(3))
    })?;
    call(&nodes[0], "PUT", "/v1/tenants/acme", Some(json!({})))?;
    let warm: u64 = if placement { 999 } else { 6 };
    let t = Instant::now();
    create_pool(&nodes[0], warm)?;
    let all: Vec<&Node> = nodes.iter().collect();
    wait(Duration::from_secs(120), "placement applied", || {
        Ok(shares(&all).iter().sum::<u64>() == warm)
    })?;
    let placed_ms = t.elapsed().as_secs_f64() * 1000.0;
    let spread = shares(&all);
    let mut out = json!({ "instances": warm, "shares": spread, "placed_and_applied_ms": round(placed_ms, 1) });
    if placement {
        let pure = pure_placement_ms(warm as u32);
        out["pure_placement_ms"] = json!(round(pure, 3));
        out["end_to_end_over_pure"] = json!(round(placed_ms / pure.max(1e-6), 0));
        return Ok(out);
    }
    if ttl == args.ttls[0] {
        out["claims"] = claims(&nodes)?;
    }
    // Failover: kill -9 of the last node; the pool is whole once the other two hold it all.
    let mut nodes = nodes;
    let victim = nodes.pop().expect("three nodes");
    drop(victim); // kill -9 and reaped
    let killed = Instant::now();
    let left: Vec<&Node> = nodes.iter().collect();
    wait(Duration::from_secs(10 * ttl + 30), "failover", || {
        Ok(shares(&left).iter().sum::<u64>() == warm)
    })?;
    let failover = killed.elapsed().as_secs_f64();
    out["lease_ttl_s"] = json!(ttl);
    out["failover_s"] = json!(round(failover, 2));
    out["failover_over_ttl"] = json!(round(failover / ttl as f64, 2));
    Ok(out)
}

/// Unclaimed warm instances of the pool on node `name` (as its last report says).
fn waiting(via: &Node, name: &str) -> u64 {
    call(via, "GET", "/v1/pools/acme--web", None)
        .ok()
        .and_then(|p| p["nodes"][name]["counts"]["warm"].as_u64())
        .unwrap_or(0)
}

/// Claims through n2 (served there, from its warm set) and through a drained n1 (passed to
/// another node with a node credential), alternately, each once n2 has an instance waiting
/// again: the median round trip of each, and their ratio.
fn claims(nodes: &[Node]) -> Result<Value, String> {
    const ROUNDS: usize = 20;
    call(&nodes[0], "POST", "/v1/nodes/n1/drain", None)?;
    let all: Vec<&Node> = nodes.iter().collect();
    wait(Duration::from_secs(120), "n1 drained", || {
        let n1_empty = shares(&all)[0] == 0 && waiting(&nodes[1], "n1") == 0;
        Ok(n1_empty && waiting(&nodes[1], "n2") >= 1)
    })?;
    let (mut here, mut passed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (via, times) in [(&nodes[1], &mut here), (&nodes[0], &mut passed)] {
            wait(Duration::from_secs(30), "instances waiting", || {
                Ok(waiting(&nodes[1], "n2") >= 1)
            })?;
            let t = Instant::now();
            let claim = call(via, "POST", "/v1/pools/acme--web/claim", None)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if claim["node"] == "n1" || claim["source"] != "warm" {
                return Err(format!("a claim was not served from a warm set elsewhere: {claim}"));
            }
        }
    }
    call(&nodes[0], "POST", "/v1/nodes/n1/uncordon", None)?;
    let (here, passed) = (crate::stats::median(&here), crate::stats::median(&passed));
    Ok(json!({
        "rounds": ROUNDS,
        "served_where_asked_ms": round(here, 2),
        "passed_to_another_node_ms": round(passed, 2),
        "passed_over_served_here": round(passed / here.max(1e-6), 1),
    }))
}

/// A cluster key file in `dir` (from a fixed seed: a benchmark's key guards nothing).
fn key_file(dir: &Path, seed: u8) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = dir.join("cluster.key");
    let text = hangar_cluster::ClusterKey::from_seed([seed; 32]).to_text();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(key)
}

/// etcd's count of keys written so far (puts and deletes, each transaction's included), from
/// the member at `endpoint`'s Prometheus metrics.
fn etcd_writes(endpoint: &str) -> Result<f64, String> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let total: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("etcd_mvcc_put_total ") || l.starts_with("etcd_mvcc_delete_total ")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum();
    Ok(total)
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// The scheduler's last pass time, seconds, from whichever of `nodes` holds the role.
fn scheduler_pass_s(nodes: &[Node]) -> Option<f64> {
    nodes.iter().find_map(|node| {
        let (_, text) = crate::api::call(&node.socket, "GET", "/metrics", None).ok()?;
        let text = String::from_utf8_lossy(&text).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("hangar_cluster_scheduler_pass_seconds "))?
            .parse()
            .ok()
    })
}

/// `n` nodes on the fake engine, lease TTL 10 s (the default), a pool of 100 warm instances per
/// node.
fn simulate(args: &Args, n: usize) -> Result<Value, String> {
    let etcd = EtcdCluster::start(3)?;
    let dir = Scratch(PathBuf::from(format!("/tmp/hgb-sim-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(dir.path());
    std::fs::create_dir_all(dir.path()).map_err(|e| e.to_string())?;
    let key = key_file(dir.path(), 42)?;
    let started = Instant::now();
    let nodes: Vec<Node> = (1..=n)
        .map(|i| {
            let home = dir.path().join(format!("n{i}"));
            spawn(&args.hangard, &home, &etcd, &format!("n{i}"), 10, &key)
        })
        .collect::<Result<_, _>>()?;
    wait(Duration::from_secs(60), "the first node to answer", || {
        Ok(call(&nodes[0], "GET", "/v1/health", None).is_ok())
    })?;
    wait(Duration::from_secs(300), "every node to join", || {
        let list = call(&nodes[0], "GET", "/v1/nodes", None).unwrap_or(Value::Null);
        Ok(list.as_array().map(|a| a.iter().filter(|n| n["alive"] == true).count()) == Some(n))
    })?;
    let joined_s = started.elapsed().as_secs_f64();
    call(&nodes[0], "PUT", "/v1/tenants/acme", Some(json!({})))?;
    const PER_NODE: u64 = 100;
    let warm = PER_NODE * n as u64;
    let t = Instant::now();
    create_pool(&nodes[0], warm)?;
    let mut spread = Vec::new();
    wait(Duration::from_secs(600), "the pool placed and made", || {
        let pool = call(&nodes[0], "GET", "/v1/pools/acme--web", None).unwrap_or(Value::Null);
        let shares = pool["nodes"].as_object().cloned().unwrap_or_default();
        spread = shares.values().filter_map(|s| s["counts"]["warm"].as_u64()).collect();
        Ok(pool["counts"]["warm"].as_u64() == Some(warm))
    })?;
    let placed_s = t.elapsed().as_secs_f64();
    // At rest: what the cluster costs etcd with nothing changing (leases, stats, reports).
    let endpoint = etcd.endpoints()[0].clone();
    let before = etcd_writes(&endpoint)?;
    let window = Duration::from_secs(10);
    let t = Instant::now();
    std::thread::sleep(window); // a measurement window, not a wait for anything
    let writes_per_s = (etcd_writes(&endpoint)? - before) / t.elapsed().as_secs_f64();
    let rss: Vec<f64> = nodes.iter().map(|n| rss_mib(n.child.id())).collect();
    let pass_at_rest = scheduler_pass_s(&nodes);
    let claims = claims(&nodes)?;
    Ok(json!({
        "nodes": n,
        "joined_s": round(joined_s, 1),
        "instances": warm,
        "placed_and_made_s": round(placed_s, 1),
        "least_and_most_per_node": [spread.iter().min(), spread.iter().max()],
        "etcd_writes_per_s_at_rest": round(writes_per_s, 1),
        "etcd_writes_per_s_per_node": round(writes_per_s / n as f64, 2),
        "hangard_rss_mib_median": round(crate::stats::median(&rss), 1),
        "scheduler_pass_ms_at_rest": pass_at_rest.map(|s| round(s * 1000.0, 1)),
        "claims": claims,
    }))
}

/// `hangar-bench cluster`
pub fn run(args: &Args) -> Result<Value, String> {
    if !args.hangard.exists() {
        return Err(format!(
            "{} not found; run `cargo build --release -p hangard`",
            args.hangard.display()
        ));
    }
    let placement = measure(args, 3, true)?;
    eprintln!("placement: {placement}");
    let mut failover = Vec::new();
    for &ttl in &args.ttls {
        let one = measure(args, ttl, false)?;
        eprintln!("failover: {one}");
        failover.push(one);
    }
    let mut out = json!({ "placement_999_over_3_nodes": placement, "failover": failover });
    if args.simulate_nodes > 0 {
        let simulated = simulate(args, args.simulate_nodes)?;
        eprintln!("simulation: {simulated}");
        out["simulation"] = simulated;
    }
    Ok(out)
}

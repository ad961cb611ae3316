//! Nodes in a cluster on etcd (`hangard --cluster`): a 3-member etcd on loopback and real
//! `hangard` processes on the fake engine. Membership is a lease each node renews; a killed
//! node's records go when its lease runs out; a cordon is kept in etcd; with one etcd member
//! down nothing changes, with all down changes are refused (`E_CLUSTER_UNAVAILABLE`) while the
//! node's own API keeps serving, and the node rejoins by itself when etcd is back.
//!
//! One test runs two nodes on QEMU with real guests.
//!
//! Without etcd installed (or, for the QEMU test, QEMU and the image) a test prints `SKIPPED …`
//! and checks nothing.
//!
//! Over 700 lines on purpose: one test binary for the cluster. Every test binary links the
//! whole daemon (~65 MB and a link step each), and CI's disk is what failed before; the four
//! tests share their nodes', etcd's and shares' helpers here.

use std::time::{Duration, Instant};

use hangar_testkit::etcd::EtcdCluster;
use hangar_testkit::free_port;
use serde_json::Value;

mod common;
use common::{coded, spawn_hangard, SpawnedDaemon};

/// Lease time to live of the test's nodes (the shortest hangard takes).
const LEASE_TTL_S: u64 = 3;

/// The cluster's signing key, in a file beside the nodes' homes that every node reads.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("cluster.key");
    if !path.exists() {
        let key = hangar_cluster::ClusterKey::from_seed([7; 32]);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, key.to_text().as_bytes()).unwrap();
    }
    path
}

fn node(home: &std::path::Path, etcd: &EtcdCluster, name: &str) -> SpawnedDaemon {
    std::fs::create_dir_all(home).unwrap();
    let endpoints = etcd.endpoints().join(",");
    let ttl = LEASE_TTL_S.to_string();
    let key = key_file(home.parent().unwrap());
    // Other nodes reach it here (the default --advertise), over TLS with its own certificate.
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "--engine",
        "fake",
        "--cluster",
        &endpoints,
        "--node",
        name,
        "--listen-tcp",
        &listen,
        "--lease-ttl",
        &ttl,
        "--cluster-key",
        key.to_str().unwrap(),
    ];
    SpawnedDaemon::from_child(spawn_hangard(home, &args), home)
}

/// A 3-member etcd, or `None` after saying why `test` is skipped.
fn etcd_or_skip(test: &str) -> Option<EtcdCluster> {
    EtcdCluster::start(3).map_err(|reason| eprintln!("SKIPPED {test}: {reason}")).ok()
}

/// The node `name` as `d` lists it.
fn listed(d: &SpawnedDaemon, name: &str) -> Option<Value> {
    let (status, nodes) = d.call("GET", "/v1/nodes", None);
    if status != 200 {
        return None;
    }
    nodes.as_array()?.iter().find(|n| n["name"] == name).cloned()
}

/// Waits (up to `limit`) until `d` lists node `name` and `pred` holds for it; how long it took.
fn until(
    d: &SpawnedDaemon, name: &str, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(n) = listed(d, name).filter(|n| pred(n)) {
            let _ = n;
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "node {name} never became {what}; listed: {:?}",
            d.call("GET", "/v1/nodes", None)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_join_leave_and_are_cordoned_through_etcd() {
    let test = "nodes_join_leave_and_are_cordoned_through_etcd";
    let Some(mut etcd) = etcd_or_skip(test) else { return };
    let dir = tempfile::Builder::new().prefix("hgn-").tempdir_in("/tmp").unwrap();
    let (home_a, home_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = node(&home_a, &etcd, "n1");
    let b = node(&home_b, &etcd, "n2");

    // Both join; each sees both, itself marked.
    let limit = Duration::from_secs(15);
    until(&a, "n2", limit, "alive", |n| n["alive"] == true);
    until(&b, "n1", limit, "alive", |n| n["alive"] == true);
    let n1 = listed(&a, "n1").unwrap();
    assert_eq!((n1["this_node"].as_bool(), n1["schedule"].as_str()), (Some(true), Some("ready")));
    assert_eq!(n1["info"]["accel"], "fake", "{n1}");
    assert!(n1["info"]["advertise"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{n1}");
    assert!(
        n1["info"]["tls_fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:")),
        "{n1}"
    );
    assert!(n1["info"]["capacity"]["vcpus"].as_u64() >= Some(1), "{n1}");
    assert_eq!(listed(&b, "n1").unwrap()["this_node"], false);
    // Stats follow the node's VMs (refreshed at each renewal).
    let spec = r#"{"schema_version":1,"name":"vm1","machine":{"vcpus":2,"memory_mib":128}}"#;
    assert_eq!(b.call("POST", "/v1/vms?wait=true", Some(spec)).0, 200);
    assert_eq!(b.call("POST", "/v1/vms/vm1/start?wait=true", Some("{}")).0, 200);
    until(&a, "n2", limit, "running one VM", |n| {
        n["stats"]["vms_running"] == 1 && n["stats"]["used"]["memory_mib"] == 128
    });

    // A cordon made through one node is the cluster's: the other sees it.
    let (s, n) = a.call("POST", "/v1/nodes/n2/cordon", None);
    assert_eq!((s, n["schedule"].as_str()), (200, Some("cordoned")), "{n}");
    assert_eq!(listed(&b, "n2").unwrap()["schedule"], "cordoned");
    let (s, e) = a.call("POST", "/v1/nodes/nope/cordon", None);
    assert_eq!(s, 400, "{e}");
    coded(&e, "E_INVALID_ARGUMENT");

    // Tenants and quotas are the cluster's: made through one node, seen and enforced through
    // the other. Two pools asked for at once through both nodes cannot both take the last of
    // a quota.
    let quotas = r#"{"quotas":{"max_warm":8}}"#;
    assert!(matches!(a.call("PUT", "/v1/tenants/acme", Some(quotas)).0, 200 | 201));
    let (_, tenants) = b.call("GET", "/v1/tenants", None);
    assert_eq!(tenants[0]["quotas"]["max_warm"], 8, "{tenants}");
    let pool = |id: &str, warm: u32| {
        format!(
            r#"{{"id":"{id}","tenant":"acme","desired":{{"warm":{warm}}},
                "spec":{{"schema_version":1,"name":"t","machine":{{"memory_mib":64}}}}}}"#
        )
    };
    let (p1, p2) = (pool("p1", 5), pool("p2", 5));
    let (on_a, on_b) = std::thread::scope(|s| {
        let x = s.spawn(|| a.call("POST", "/v1/pools", Some(&p1)));
        let y = s.spawn(|| b.call("POST", "/v1/pools", Some(&p2)));
        (x.join().unwrap(), y.join().unwrap())
    });
    let mut statuses = [on_a.0, on_b.0];
    statuses.sort();
    assert_eq!(statuses, [201, 429], "{on_a:?} {on_b:?}");
    coded(if on_a.0 == 429 { &on_a.1 } else { &on_b.1 }, "E_QUOTA_EXCEEDED");
    // What is left of the quota can be taken; a tenant with pools is not removed.
    let (s, e) = a.call("POST", "/v1/pools", Some(&pool("p3", 3)));
    assert_eq!(s, 201, "{e}");
    let (_, tenants) = b.call("GET", "/v1/tenants", None);
    assert_eq!(tenants[0]["usage"]["warm"], 8, "{tenants}");
    assert_eq!(tenants[0]["pools"].as_array().map(Vec::len), Some(2), "{tenants}");
    let (s, e) = b.call("DELETE", "/v1/tenants/acme", None);
    assert_eq!(s, 409, "{e}");
    coded(&e, "E_TENANT_IN_USE");

    // One etcd member down changes nothing.
    etcd.stop(0);
    let (s, n) = b.call("POST", "/v1/nodes/n2/uncordon", None);
    assert_eq!((s, n["schedule"].as_str()), (200, Some("ready")), "{n}");
    assert_eq!(listed(&a, "n2").unwrap()["alive"], true);
    etcd.restart(0).unwrap();

    // kill -9 of a node: its lease runs out, and it is listed as down.
    b.kill9();
    let gone = until(&a, "n2", Duration::from_secs(4 * LEASE_TTL_S), "down", |n| {
        n["alive"] == false && n["info"].is_null()
    });
    eprintln!(
        "a killed node was listed as down {:.1} s after the kill (lease TTL {LEASE_TTL_S} s)",
        gone.as_secs_f64()
    );
    assert!(gone <= Duration::from_secs(LEASE_TTL_S + 2), "took {gone:?}");

    // etcd gone entirely: changes are refused with a retryable code; the node still serves its
    // own API, and its VMs that are no pool's keep running even once it has fenced itself;
    // when etcd is back the node is a member again without anyone's help.
    let spec = r#"{"schema_version":1,"name":"keep","machine":{"memory_mib":64}}"#;
    assert_eq!(a.call("POST", "/v1/vms?wait=true", Some(spec)).0, 200);
    assert_eq!(a.call("POST", "/v1/vms/keep/start?wait=true", Some("{}")).0, 200);
    for i in 0..3 {
        etcd.stop(i);
    }
    let deadline = Instant::now() + Duration::from_secs(4 * LEASE_TTL_S);
    while !a.text("GET", "/metrics").contains("hangar_cluster_fenced 1") {
        assert!(Instant::now() < deadline, "n1 never fenced itself without etcd");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.call("GET", "/v1/vms/keep", None).1["state"], "running");
    let (s, e) = a.call("POST", "/v1/nodes/n1/cordon", None);
    assert_eq!(s, 503, "{e}");
    coded(&e, "E_CLUSTER_UNAVAILABLE");
    let (s, e) = a.call("GET", "/v1/nodes", None);
    assert_eq!(s, 503, "{e}");
    assert_eq!(a.call("GET", "/v1/vms", None).0, 200, "the node's own API serves on");
    etcd.restart_all().unwrap();
    until(&a, "n1", Duration::from_secs(20), "a member again", |n| n["alive"] == true);
}

/// Node `name`'s share of pool `acme--web` as `via` shows it (from the nodes' reports in
/// etcd): (desired warm, warm instances it has).
fn share(via: &SpawnedDaemon, name: &str) -> (u64, u64) {
    let (status, p) = via.call("GET", "/v1/pools/acme--web", None);
    if status != 200 {
        return (0, 0);
    }
    let s = &p["nodes"][name];
    (s["desired"]["warm"].as_u64().unwrap_or(0), s["counts"]["warm"].as_u64().unwrap_or(0))
}

/// Waits (up to `limit`) until the shares of nodes `names`, as `via` shows them, are as `want`
/// says; how long it took.
fn until_shares(
    via: &SpawnedDaemon, names: &[&str], want: &[(u64, u64)], limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got: Vec<(u64, u64)> = names.iter().map(|n| share(via, n)).collect();
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "shares {got:?}, wanted {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pool_spreads_over_the_nodes_refuses_forged_orders_and_fails_over() {
    let test = "a_pool_spreads_over_the_nodes_refuses_forged_orders_and_fails_over";
    let Some(etcd) = etcd_or_skip(test) else { return };
    let dir = tempfile::Builder::new().prefix("hgp-").tempdir_in("/tmp").unwrap();
    let homes: Vec<_> = ["a", "b", "c"].iter().map(|h| dir.path().join(h)).collect();
    let n1 = node(&homes[0], &etcd, "n1");
    let n2 = node(&homes[1], &etcd, "n2");
    let n3 = node(&homes[2], &etcd, "n3");
    for n in ["n1", "n2", "n3"] {
        until(&n1, n, Duration::from_secs(15), "alive", |v| v["alive"] == true);
    }

    // A pool made through one node spreads 2/2/2, and each node makes its own instances.
    assert!(matches!(n1.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200 | 201));
    let pool = r#"{"id":"web","tenant":"acme","desired":{"warm":6},
        "spec":{"schema_version":1,"name":"t","machine":{"memory_mib":128}}}"#;
    let (s, p) = n1.call("POST", "/v1/pools", Some(pool));
    assert_eq!(s, 201, "{p}");
    // (n2 was never told of tenant acme: the cluster's tenants are in etcd.)
    let (s, e) = n2.call("POST", "/v1/pools", Some(pool));
    assert_eq!(s, 409, "the cluster has it already: {e}");
    let all = ["n1", "n2", "n3"];
    let took = until_shares(&n1, &all, &[(2, 2), (2, 2), (2, 2)], Duration::from_secs(30));
    eprintln!(
        "warm = 6 spread 2/2/2, instances made, {:.1} s after the pool was created",
        took.as_secs_f64()
    );
    // Any node shows the pool whole: the cluster's counts, summed over the nodes' reports.
    let (_, p) = n3.call("GET", "/v1/pools/acme--web", None);
    assert_eq!(
        (p["pool"]["desired"]["warm"].as_u64(), p["counts"]["warm"].as_u64()),
        (Some(6), Some(6)),
        "{p}"
    );
    let (_, pools) = n2.call("GET", "/v1/pools", None);
    assert_eq!(pools[0]["counts"]["warm"], 6, "{pools}");

    // A desired state changed behind the scheduler's back (raw etcd access, no key) is refused
    // by its node, audited, and does not change what the node runs; the scheduler repairs it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = "/hangar/v1/desired/n2";
    let tamper = || {
        runtime.block_on(async {
            let mut etcd = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
            let got = etcd.get(key, None).await.unwrap();
            let mut doc: Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
            let payload = doc["payload"].as_str().unwrap().replace(r#""warm":2"#, r#""warm":5"#);
            if payload != doc["payload"].as_str().unwrap() {
                doc["payload"] = payload.into();
                etcd.put(key, doc.to_string(), None).await.unwrap();
            }
        })
    };
    let audit = homes[1].join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tamper();
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        if log.contains("cluster.desired_state") && log.contains("E_SIGNATURE_INVALID") {
            break;
        }
        assert_eq!(share(&n2, "n2").0, 2, "n2 acted on a tampered desired state");
        assert!(Instant::now() < deadline, "n2 never refused the tampered desired state");
        std::thread::sleep(Duration::from_millis(200));
    }
    until_shares(&n1, &all, &[(2, 2), (2, 2), (2, 2)], Duration::from_secs(10));
    // A drain written straight to etcd (unsigned) is refused and reported; the node stays ready
    // (the scheduler reads schedules the same way).
    let forged_drain = |put: bool| {
        runtime.block_on(async {
            let mut etcd = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
            match put {
                true => etcd.put("/hangar/v1/schedule/n3", r#""draining""#, None).await.map(drop),
                false => etcd.delete("/hangar/v1/schedule/n3", None).await.map(drop),
            }
            .unwrap()
        })
    };
    forged_drain(true);
    let n = listed(&n1, "n3").unwrap();
    assert_eq!(n["schedule"], "ready", "{n}");
    assert!(n["problem"].as_str().is_some_and(|p| p.contains("schedule is refused")), "{n}");
    forged_drain(false);

    // A credential n3 accepted is refused by n3 restarted, though still within its 30 s: its
    // record of used ones is lost with the process, so it refuses any made before it started.
    let key = hangar_cluster::ClusterKey::from_seed([7; 32]);
    let events = hangar_cluster::NodeCredential {
        from: "n1".into(),
        to: "n3".into(),
        allows: hangar_cluster::Forwarded::EventsPage,
        scope: "admin".into(),
        who: "test".into(),
        issued_at: now_ms(),
        nonce: "before-restart".into(),
    };
    let info = listed(&n1, "n3").unwrap()["info"].clone();
    assert_eq!(as_node(&info, &key, &events, "GET", "/v1/events/page").0, 200);

    // kill -9 of a node: once its lease runs out its share goes to the others.
    n3.kill9();
    let whole = until_shares(&n1, &["n1", "n2"], &[(3, 3), (3, 3)], Duration::from_secs(30));
    eprintln!(
        "the pool was whole again (3/3 on the two left) {:.1} s after kill -9 of a node (lease TTL {LEASE_TTL_S} s)",
        whole.as_secs_f64()
    );
    // It comes back: it is given nothing (no churn back, nothing doubled).
    let n3 = node(&homes[2], &etcd, "n3");
    until(&n1, "n3", Duration::from_secs(15), "alive", |v| v["alive"] == true);
    until(&n1, "n2", Duration::from_secs(5), "alive", |v| v["alive"] == true);
    std::thread::sleep(Duration::from_secs(2)); // two scheduling passes: nothing may move
    assert_eq!([share(&n3, "n1"), share(&n3, "n2"), share(&n3, "n3")], [(3, 3), (3, 3), (0, 0)]);
    let info = listed(&n1, "n3").unwrap()["info"].clone();
    let (s, e) = as_node(&info, &key, &events, "GET", "/v1/events/page");
    assert!(now_ms() < events.expires_at(), "the test took too long to show this");
    assert_eq!(s, 401, "a credential replayed to a restarted node: {e}");

    // Drain: the node's instances move to the others, and it is left empty.
    let (s, n) = n2.call("POST", "/v1/nodes/n1/drain", None);
    assert_eq!((s, n["schedule"].as_str()), (200, Some("draining")), "{n}");
    let drained = until_shares(&n2, &all, &[(0, 0), (3, 3), (3, 3)], Duration::from_secs(30));
    eprintln!("a drained node was empty {:.1} s after the drain", drained.as_secs_f64());
    let (_, vms) = n1.call("GET", "/v1/vms", None);
    assert_eq!(vms, serde_json::json!([]), "the drained node keeps no VM");

    // Claims anywhere: n1 has none of the pool left, so a claim through it is served by a node
    // that has one waiting, and the answer names that node.
    let (s, claim) = n1.call("POST", "/v1/pools/acme--web/claim", None);
    assert_eq!(s, 200, "{claim}");
    let (serving, home) = match claim["node"].as_str() {
        Some("n2") => (&n2, &homes[1]),
        Some("n3") => (&n3, &homes[2]),
        other => panic!("served by {other:?}: {claim}"),
    };
    assert!(matches!(claim["source"].as_str(), Some("warm")), "{claim}");
    let (_, instances) = serving.call("GET", "/v1/instances?pool=acme--web", None);
    let claimed = instances
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == claim["instance"]["id"])
        .unwrap_or_else(|| panic!("{claim} is not on the node it names: {instances}"));
    assert_eq!(claimed["claimed"], true, "{claimed}");
    let audit = std::fs::read_to_string(home.join("audit.log")).unwrap();
    assert!(audit.contains("node:n1 for local:uid="), "the serving node audits who asked");
    assert_eq!(n1.call("GET", "/v1/vms", None).1, serde_json::json!([]), "n1 made nothing");

    node_credentials_are_good_once_for_one_claim(&n1);

    // Events cluster-wide: one page through n1 holds every node's events, each with its node,
    // merged by time; the cursor it returns starts the next page after them.
    let (s, page) = n1.call("GET", "/v1/cluster/events?limit=10000", None);
    assert_eq!(s, 200, "{page}");
    assert!(page["unanswered"].as_array().unwrap().is_empty(), "{}", page["unanswered"]);
    let events = page["events"].as_array().unwrap();
    let nodes: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["node"].as_str()).collect();
    assert!(nodes.contains("n2") && nodes.contains("n3"), "events from {nodes:?}");
    let times: Vec<u64> = events.iter().map(|e| e["event"]["at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not merged by time");
    let claimed_vm = claim["instance"]["name"].as_str().unwrap();
    assert!(
        events.iter().any(|e| e["node"] == claim["node"]
            && e["event"]["vm"] == claimed_vm
            && e["event"]["to"] == "running"),
        "the claimed instance's resume is among its node's events"
    );
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let (_, next) = n1.call("GET", &format!("/v1/cluster/events?cursor={cursor}"), None);
    let seen: std::collections::BTreeSet<(String, u64)> = events
        .iter()
        .map(|e| (e["node"].as_str().unwrap().into(), e["event"]["seq"].as_u64().unwrap()))
        .collect();
    for e in next["events"].as_array().unwrap() {
        let key = (e["node"].as_str().unwrap().to_string(), e["event"]["seq"].as_u64().unwrap());
        assert!(!seen.contains(&key), "{key:?} came again after the cursor");
    }
    let (s, e) = n1.call("GET", "/v1/cluster/events?cursor=n1", None);
    assert_eq!(s, 400, "{e}");
    coded(&e, "E_INVALID_ARGUMENT");

    // Metrics name the node; each node's audit head is published to etcd, and matches its log.
    let metrics = n1.text("GET", "/metrics");
    assert!(metrics.contains(r#"hangar_node_info{node="n1",cluster="true"} 1"#), "{metrics}");
    assert!(metrics.contains("hangar_cluster_fenced 0"), "{metrics}");
    let published = runtime.block_on(async {
        let mut etcd = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
        let got = etcd.get("/hangar/v1/audit/n2", None).await.unwrap();
        serde_json::from_slice::<Value>(got.kvs()[0].value()).unwrap()
    });
    let log = std::fs::read_to_string(homes[1].join("audit.log")).unwrap();
    let seq = published["seq"].as_u64().unwrap() as usize;
    let line = log.lines().nth(seq - 1).expect("the published head is in the log");
    assert_eq!(published["hash"], hangar_audit::hash_line(line.as_bytes()), "{published}");
}

/// Sends `method path` with `credential` (signed with `key`) to the node `info` describes, as
/// another node would.
fn as_node(
    info: &Value, key: &hangar_cluster::ClusterKey, credential: &hangar_cluster::NodeCredential,
    method: &str, path: &str,
) -> (u16, Value) {
    let endpoint = hangar_api::client::Endpoint::Tcp {
        addr: info["advertise"].as_str().unwrap().to_string(),
        fingerprint: info["tls_fingerprint"].as_str().map(String::from),
        token: credential.credential(key),
    };
    let r =
        hangar_api::client::send(&endpoint, method, path, None, Duration::from_secs(60)).unwrap();
    (r.status, serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What a node credential opens on n2, sent straight to its API as another node would.
fn node_credentials_are_good_once_for_one_claim(n1: &SpawnedDaemon) {
    use hangar_cluster::NodeCredential;
    let info = listed(n1, "n2").unwrap()["info"].clone();
    let send = |key: &hangar_cluster::ClusterKey,
                claim: &NodeCredential,
                method: &str,
                path: &str| { as_node(&info, key, claim, method, path) };
    let key = hangar_cluster::ClusterKey::from_seed([7; 32]);
    let now = now_ms();
    let good = NodeCredential {
        from: "n1".into(),
        to: "n2".into(),
        allows: hangar_cluster::Forwarded::Claim { pool: "acme--web".into(), create: false },
        scope: "tenant:acme:operator".into(),
        who: "test".into(),
        issued_at: now,
        nonce: "good".into(),
    };
    let claim_path = "/v1/pools/acme--web/claim";
    let refused = [
        // Any other route.
        (send(&key, &good, "GET", "/v1/vms"), 401),
        // Another node's, a stale one, one signed by a key the cluster does not trust.
        (
            send(
                &key,
                &NodeCredential { to: "n3".into(), nonce: "1".into(), ..good.clone() },
                "POST",
                claim_path,
            ),
            401,
        ),
        (
            send(
                &key,
                &NodeCredential { issued_at: now - 60_000, nonce: "2".into(), ..good.clone() },
                "POST",
                claim_path,
            ),
            401,
        ),
        (
            send(
                &hangar_cluster::ClusterKey::from_seed([9; 32]),
                &NodeCredential { nonce: "3".into(), ..good.clone() },
                "POST",
                claim_path,
            ),
            401,
        ),
        // Another tenant's scope does not reach acme's pool.
        (
            send(
                &key,
                &NodeCredential {
                    scope: "tenant:globex:owner".into(),
                    nonce: "4".into(),
                    ..good.clone()
                },
                "POST",
                claim_path,
            ),
            404,
        ),
    ];
    for (i, ((status, body), want)) in refused.into_iter().enumerate() {
        assert_eq!(status, want, "case {i}: {body}");
    }
    // The genuine one is served, once.
    let (s, claim) = send(&key, &good, "POST", claim_path);
    assert_eq!((s, claim["node"].as_str()), (200, Some("n2")), "{claim}");
    let (s, again) = send(&key, &good, "POST", claim_path);
    assert_eq!(s, 401, "a replayed credential: {again}");
}

/// A TCP relay to one etcd member that the test can cut: how one node loses its access to etcd
/// while the others keep theirs.
struct Relay {
    port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn to(target: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let target = target.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, c) = (open.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused from now on
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                c.lock().unwrap().extend([client, server]);
            }
        });
        Relay { port, open, conns }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The pool's instances running on `d` (its VMs in state `running`).
fn running(d: &SpawnedDaemon) -> usize {
    let (_, vms) = d.call("GET", "/v1/vms", None);
    vms.as_array().map(|a| a.iter().filter(|v| v["state"] == "running").count()).unwrap_or(0)
}

#[test]
fn a_node_cut_off_from_etcd_fences_itself_before_its_share_moves() {
    let test = "a_node_cut_off_from_etcd_fences_itself_before_its_share_moves";
    let Some(etcd) = etcd_or_skip(test) else { return };
    let dir = tempfile::Builder::new().prefix("hgf-").tempdir_in("/tmp").unwrap();
    let homes: Vec<_> = ["a", "b", "c"].iter().map(|h| dir.path().join(h)).collect();
    let n1 = node(&homes[0], &etcd, "n1");
    let n2 = node(&homes[1], &etcd, "n2");
    // n3 reaches etcd only through relays the test can cut.
    let relays: Vec<Relay> = etcd.endpoints().iter().map(|e| Relay::to(e)).collect();
    std::fs::create_dir_all(&homes[2]).unwrap();
    let endpoints = relays.iter().map(Relay::url).collect::<Vec<_>>().join(",");
    let key = key_file(dir.path());
    let ttl = LEASE_TTL_S.to_string();
    let args = [
        "--engine",
        "fake",
        "--cluster",
        &endpoints,
        "--node",
        "n3",
        "--lease-ttl",
        &ttl,
        "--cluster-key",
        key.to_str().unwrap(),
    ];
    let n3 = SpawnedDaemon::from_child(spawn_hangard(&homes[2], &args), &homes[2]);
    for n in ["n1", "n2", "n3"] {
        until(&n1, n, Duration::from_secs(15), "alive", |v| v["alive"] == true);
    }
    assert!(matches!(n1.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200 | 201));
    let pool = r#"{"id":"web","tenant":"acme","desired":{"running":3},
        "spec":{"schema_version":1,"name":"t","machine":{"memory_mib":128}}}"#;
    assert_eq!(n1.call("POST", "/v1/pools", Some(pool)).0, 201);
    let deadline = Instant::now() + Duration::from_secs(30);
    while [running(&n1), running(&n2), running(&n3)] != [1, 1, 1] {
        assert!(Instant::now() < deadline, "never 1/1/1");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Cut n3 off. It stops handing out instances at once (half a TTL at most), then pauses
    // its instances (claimed ones too); only after that does the cluster replace its share:
    // at no moment do the others run the whole pool while n3 still runs any of it.
    for r in &relays {
        r.cut();
    }
    let cut = Instant::now();
    // Claims are asked on a thread of their own (one may wait out etcd's retries), so that
    // the loop below samples every 20 ms.
    let outcome = std::thread::scope(|scope| {
        let claims = scope.spawn(|| loop {
            let (s, e) = n3.call("POST", "/v1/pools/acme--web/claim", Some("{}"));
            if s == 503 && e["code"] == "E_CLUSTER_UNAVAILABLE" {
                return cut.elapsed();
            }
            assert!(cut.elapsed() < Duration::from_secs(30), "n3 kept handing out instances");
            std::thread::sleep(Duration::from_millis(20));
        });
        let sampled = sample_until_whole(&n1, &n2, &n3, cut);
        (claims.join().unwrap(), sampled)
    });
    let (refused, (paused, whole_after)) = outcome;
    eprintln!(
        "cut off: claims refused after {:.1} s, instance paused after {:.1} s, pool whole on the others after {:.1} s (lease TTL {LEASE_TTL_S} s)",
        refused.as_secs_f64(), paused.as_secs_f64(), whole_after.as_secs_f64()
    );
    assert!(paused < whole_after, "the share moved before the cut-off node paused");
    let (_, vms) = n3.call("GET", "/v1/vms", None);
    let states: Vec<&str> =
        vms.as_array().unwrap().iter().filter_map(|v| v["state"].as_str()).collect();
    assert!(!states.is_empty() && states.iter().all(|s| *s == "paused"), "{vms}");
}

/// Samples every 20 ms, from `cut`, until n1 and n2 run the whole pool: when n3 had no instance
/// running any more, and when the pool was whole elsewhere; never both at once.
fn sample_until_whole(
    n1: &SpawnedDaemon, n2: &SpawnedDaemon, n3: &SpawnedDaemon, cut: Instant,
) -> (Duration, Duration) {
    let mut paused_after = None;
    let whole_after = loop {
        let on_n3 = running(n3);
        if on_n3 == 0 && paused_after.is_none() {
            paused_after = Some(cut.elapsed());
        }
        let elsewhere = running(n1) + running(n2);
        assert!(
            !(on_n3 > 0 && elsewhere >= 3),
            "{on_n3} running on the cut-off node while the others run the whole pool"
        );
        if elsewhere == 3 {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "the pool never became whole on n1 and n2"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (paused_after.expect("n3 never paused its instance"), whole_after)
}

/// Two nodes on QEMU (real guests): a pool spreads 1/1, a drained node's share boots on the
/// other, and a claim through the drained node is served by the other, whose guest then runs a
/// command. Needs QEMU, the built image and etcd; otherwise skipped with the reason.
#[test]
fn two_qemu_nodes_share_a_pool_and_serve_each_others_claims() {
    let test = "two_qemu_nodes_share_a_pool_and_serve_each_others_claims";
    if hangar_testkit::skip(test) {
        return;
    }
    let Some(etcd) = etcd_or_skip(test) else { return };
    let keys = tempfile::Builder::new().prefix("hgq-").tempdir_in("/tmp").unwrap();
    let key = key_file(keys.path());
    let homes = [hangar_testkit::private_home("hgq1-"), hangar_testkit::private_home("hgq2-")];
    let _reapers: Vec<_> =
        homes.iter().map(|h| hangar_testkit::Reaper(h.path().to_path_buf())).collect();
    let endpoints = etcd.endpoints().join(",");
    let spawn = |home: &std::path::Path, name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "--cluster",
            &endpoints,
            "--node",
            name,
            "--listen-tcp",
            &listen,
            "--lease-ttl",
            "10",
            "--cluster-key",
            key.to_str().unwrap(),
        ];
        SpawnedDaemon::from_child(spawn_hangard(home, &args), home)
    };
    let n1 = spawn(homes[0].path(), "q1");
    let n2 = spawn(homes[1].path(), "q2");
    for n in ["q1", "q2"] {
        until(&n1, n, Duration::from_secs(15), "alive", |v| v["alive"] == true);
    }
    let accel = listed(&n1, "q2").unwrap()["info"]["accel"].clone();
    assert!(accel == "tcg" || accel == "kvm", "a QEMU node says which accelerator: {accel}");

    assert!(matches!(n1.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200 | 201));
    let pool = r#"{"id":"web","tenant":"acme","desired":{"warm":2},"policy":{"cold_boot":true},
        "spec":{"schema_version":1,"name":"t","machine":{"memory_mib":128},"boot":{"image":"minimal"}}}"#;
    let (s, p) = n1.call("POST", "/v1/pools", Some(pool));
    assert_eq!(s, 201, "{p}");
    let booted = until_shares(&n1, &["q1", "q2"], &[(1, 1), (1, 1)], Duration::from_secs(180));
    eprintln!(
        "warm = 2 over two QEMU nodes, guests booted and paused, after {:.1} s",
        booted.as_secs_f64()
    );

    let (s, n) = n2.call("POST", "/v1/nodes/q1/drain", None);
    assert_eq!(s, 200, "{n}");
    until_shares(&n2, &["q1", "q2"], &[(0, 0), (2, 2)], Duration::from_secs(180));
    let (s, claim) = n1.call("POST", "/v1/pools/acme--web/claim", None);
    assert_eq!(s, 200, "{claim}");
    assert_eq!((claim["node"].as_str(), claim["source"].as_str()), (Some("q2"), Some("warm")));
    let name = claim["instance"]["name"].as_str().unwrap();
    let remote = hangar_control::Remote::new(homes[1].path().join("hangard.sock"));
    let (status, out, err) =
        hangar_testkit::exec_in(&remote, name, &["echo", "served-by-q2"], None).unwrap();
    assert_eq!(
        (status, out.as_str()),
        (hangar_core::contracts::ExitStatus::Code(0), "served-by-q2\n"),
        "{err}"
    );
    assert_eq!(n1.call("DELETE", "/v1/pools/acme--web", None).0, 204);
}

//! `hangard --engine fake`: the real daemon binary serves the API and runs the fleet on the
//! in-memory engine, with no QEMU: VMs are defined, started and listed; a pool converges on its
//! warm count through the reconcile loop; a claim hands out a running instance. What this
//! proves is that nothing between the API and the engine is tied to QEMU. It also checks
//! `--log-format json`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use hangar_api::client::request;

mod common;
use serde_json::{json, Value};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(home: &Path) -> Daemon {
        let child = common::spawn_hangard(home, &["--engine", "fake", "--log-format", "json"]);
        Daemon { child, socket: home.join("hangard.sock") }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let r = request(
            &self.socket,
            method,
            path,
            body.as_deref().map(str::as_bytes),
            Duration::from_secs(30),
        )
        .unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(name: &str) -> Value {
    json!({ "schema_version": 1, "name": name, "machine": { "vcpus": 2, "memory_mib": 128 } })
}

#[test]
fn the_daemon_serves_vms_and_the_fleet_on_the_fake_engine() {
    let home = tempfile::Builder::new().prefix("hgd-fake-").tempdir_in("/tmp").unwrap();
    let d = Daemon::start(home.path());
    // `--log-format json`: every line of the log is one JSON object; one says it listens on
    // the fake engine.
    let log = std::fs::read_to_string(home.path().join("hangard.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["engine"] == "fake"
            && l["message"].as_str().is_some_and(|m| m.starts_with("listening on"))
            && l["timestamp"].is_string()),
        "{log}"
    );

    // A VM: create, start, list, stop, remove, all through the API.
    let (s, op) = d.call("POST", "/v1/vms?wait=true", Some(spec("vm1")));
    assert_eq!(s, 200, "{op}");
    assert_eq!(op["status"], "succeeded", "{op}");
    let (s, op) = d.call("POST", "/v1/vms/vm1/start?wait=true", Some(json!({})));
    assert_eq!((s, &op["status"]), (200, &json!("succeeded")), "{op}");
    let (s, vm) = d.call("GET", "/v1/vms/vm1", None);
    assert_eq!(s, 200, "{vm}");
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["accel"], "fake");
    assert_eq!((vm["vcpus"].as_u64(), vm["memory_mib"].as_u64()), (Some(2), Some(128)));
    assert_eq!(vm["pid"], Value::Null, "the fake has no process");
    let (_, list) = d.call("GET", "/v1/vms", None);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (s, op) = d.call("POST", "/v1/vms/vm1/stop?wait=true", Some(json!({ "force": true })));
    assert_eq!((s, &op["status"]), (200, &json!("succeeded")), "{op}");
    assert_eq!(d.call("GET", "/v1/vms/vm1", None).1["state"], "stopped");
    let (s, _) = d.call("GET", "/v1/vms/nope", None);
    assert_eq!(s, 404);

    // The fleet: a pool converges on two warm instances, a claim hands one out running.
    let (s, t) = d.call("PUT", "/v1/tenants/acme", Some(json!({})));
    assert!(s == 200 || s == 201, "{s} {t}");
    let pool = json!({
        "id": "web", "tenant": "acme", "spec": spec("template"),
        "desired": { "warm": 2 }
    });
    let (s, p) = d.call("POST", "/v1/pools", Some(pool));
    assert!(s == 200 || s == 201, "{s} {p}");
    // A pass on demand answers with its report once it ran; the loop may have acted first.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let (s, report) = d.call("POST", "/v1/fleet/reconcile", None);
        assert_eq!(s, 200, "{report}");
        let (_, p) = d.call("GET", "/v1/pools/acme--web", None);
        if p["counts"]["warm"] == 2 {
            break p["counts"].clone();
        }
        assert!(Instant::now() < deadline, "no 2 warm instances: {p}");
    };
    assert_eq!(counts["warm"], 2, "{counts}");
    let (_, vms) = d.call("GET", "/v1/vms", None);
    let paused = vms.as_array().unwrap().iter().filter(|v| v["state"] == "paused").count();
    assert_eq!(paused, 2, "warm instances are paused VMs on the fake: {vms}");
    let (s, claimed) = d.call("POST", "/v1/pools/acme--web/claim", Some(json!({})));
    assert_eq!(s, 200, "{claimed}");
    assert_eq!(claimed["instance"]["state"], "running", "{claimed}");
    assert_eq!(claimed["source"], "warm", "{claimed}");
    let name = claimed["instance"]["name"].as_str().unwrap();
    let (_, vm) = d.call("GET", &format!("/v1/vms/{name}"), None);
    assert_eq!(vm["state"], "running", "the engine agrees: {vm}");
    assert_eq!(vm["tenant"], "acme", "{vm}");
}

#[test]
fn a_streamed_operation_reports_every_phase_then_how_it_ended() {
    let home = tempfile::Builder::new().prefix("hgd-fake-").tempdir_in("/tmp").unwrap();
    let d = Daemon::start(home.path());
    let (s, op) = d.call("POST", "/v1/vms?wait=true", Some(spec("vm1")));
    assert_eq!(s, 200, "{op}");
    let endpoint = hangar_api::client::Endpoint::Unix(d.socket.clone());
    let stream = |body: Value| {
        let mut lines: Vec<Value> = Vec::new();
        let mut sink = |line: &[u8]| {
            if !line.is_empty() {
                lines.push(serde_json::from_slice(line).unwrap());
            }
        };
        let r = hangar_api::client::send_streaming(
            &endpoint,
            "POST",
            "/v1/operations?stream=true",
            Some(body.to_string().as_bytes()),
            Duration::from_secs(30),
            Some(&mut sink),
        )
        .unwrap();
        (r, lines)
    };
    // The fake reports `engine` and `ready` microseconds apart: both arrive, in order.
    let (r, lines) = stream(json!({ "kind": "start", "vm": "vm1" }));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(&lines[..2], [json!({ "phase": "engine" }), json!({ "phase": "ready" })]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["operation"]["status"], "succeeded", "{lines:?}");
    assert_eq!(lines[2]["operation"]["id"], r.header("x-hangar-operation").unwrap());
    // A failure ends the stream the same way, with the operation's error.
    let (r, lines) = stream(json!({ "kind": "snapshot_restore", "vm": "vm1", "id": "missing" }));
    assert_eq!(r.status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["operation"]["status"], "failed", "{lines:?}");
    assert!(last["operation"]["error"]["code"].is_string(), "{last}");
    // A request refused before it becomes an operation is an ordinary coded error.
    let (r, lines) = stream(json!({ "kind": "start", "vm": "nope" }));
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert!(lines.is_empty());
}

//! The gateway's routes through `hangard --engine fake`: created, listed, refused when they
//! conflict or cannot match, listened on at once, kept across a restart, answered with a coded
//! 503 when no instance can be reached (the fake's VMs have no address) and 404 when no route
//! matches, and no longer listened on once removed. Splicing to real guests is tested over
//! the fake engine in `hangar-gateway` and needs bridged guests otherwise.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use hangar_api::client::request;
use serde_json::{json, Value};

mod common;

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(home: &Path) -> Daemon {
        let child = common::spawn_hangard(home, &["--engine", "fake"]);
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

use hangar_testkit::free_port;

/// One HTTP/1.1 request to the gateway; the whole answer.
fn http_get(port: u16, host: &str, path: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer
}

#[test]
fn routes_are_listened_on_kept_across_restarts_and_refuse_with_codes() {
    let home = tempfile::Builder::new().prefix("hgd-gw-").tempdir_in("/tmp").unwrap();
    let d = Daemon::start(home.path());
    assert_eq!(d.call("PUT", "/v1/tenants/acme", Some(json!({}))).0, 200);
    let template = json!({ "schema_version": 1, "name": "t", "machine": { "memory_mib": 128 } });
    let (s, p) =
        d.call("POST", "/v1/pools", Some(json!({"id": "web", "tenant": "acme", "spec": template})));
    assert_eq!(s, 201, "{p}");
    let port = free_port();
    let route = json!({
        "id": "shop", "tenant": "acme", "port": port, "pool": "web", "guest_port": 80,
        "match": {"protocol": "http", "host": "shop.test", "path_prefix": "/"}
    });
    let (s, r) = d.call("POST", "/v1/routes", Some(route.clone()));
    assert_eq!(s, 201, "{r}");
    assert_eq!(
        (r["id"].as_str(), r["target"]["pool"].as_str()),
        (Some("acme--shop"), Some("acme--web"))
    );
    assert_eq!(r["listen"], format!("127.0.0.1:{port}"));
    // The same connections twice, a route that cannot match, a pool that is not there.
    let (s, e) = d.call("POST", "/v1/routes", Some(json!({"id": "again", "tenant": "acme", "port": port, "pool": "web", "guest_port": 80, "match": {"protocol": "http", "host": "shop.test"}})));
    assert_eq!((s, e["code"].as_str()), (409, Some("E_ROUTE_CONFLICT")), "{e}");
    let (s, e) = d.call("POST", "/v1/routes", Some(json!({"id": "bad", "tenant": "acme", "port": port, "pool": "web", "guest_port": 80, "match": {"protocol": "http", "path_prefix": "no-slash"}})));
    assert_eq!(
        (s, e["code"].as_str(), e["path"].as_str()),
        (400, Some("E_INVALID_ARGUMENT"), Some("match.path_prefix")),
        "{e}"
    );
    let (s, e) = d.call("POST", "/v1/routes", Some(json!({"id": "lost", "tenant": "acme", "port": free_port(), "pool": "nope", "guest_port": 80})));
    assert_eq!((s, e["code"].as_str()), (404, Some("E_POOL_NOT_FOUND")), "{e}");
    let (_, list) = d.call("GET", "/v1/routes", None);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    // Listening already. Another host matches no route: 404, coded.
    let answer = http_get(port, "other.test", "/");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("E_ROUTE_NOT_FOUND"), "{answer}");
    // The route's host: the gateway claims an instance for it, but the fake's VMs have no
    // address to reach: 503, coded, and the refusal is counted.
    let answer = http_get(port, "shop.test", "/index.html");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("E_GATEWAY_UNAVAILABLE") && answer.contains("no address"), "{answer}");
    let (_, instances) = d.call("GET", "/v1/instances?pool=acme--web", None);
    let held: Vec<&Value> =
        instances.as_array().unwrap().iter().filter(|i| i["holder"] == "gateway").collect();
    assert_eq!(held.len(), 1, "the gateway claimed one instance for its pool: {instances}");

    // A restart keeps the route and listens again.
    drop(d);
    let d = Daemon::start(home.path());
    let (_, list) = d.call("GET", "/v1/routes", None);
    assert_eq!(list[0]["id"], "acme--shop", "{list}");
    assert!(http_get(port, "other.test", "/").starts_with("HTTP/1.1 404"));

    // Removed: nothing listens there any more.
    assert_eq!(d.call("DELETE", "/v1/routes/acme--shop", None).0, 204);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still listening on {port}");
    let (s, e) = d.call("DELETE", "/v1/routes/acme--shop", None);
    assert_eq!((s, e["code"].as_str()), (404, Some("E_ROUTE_NOT_FOUND")), "{e}");
}

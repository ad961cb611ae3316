//! The trust boundary, through the real daemon and its TCP API with tokens of every scope:
//! every route × role as the policy says, tenants that cannot see or touch each other and
//! learn nothing of each other's names, specs that can name only allowed host files, quotas on
//! every creation path, a fleet that touches only its own VMs, and an audit log that fails
//! closed. No guest is booted here (`tenancy_qemu.rs` boots some).

use hangar_core::access::{decide, Action, Decision, Resource, Role, Scope};
use hangar_core::ids::TenantId;

mod common;
use common::{coded, TestDaemon};

fn spec(name: &str, memory: u32) -> String {
    format!(r#"{{"schema_version": 1, "name": "{name}", "machine": {{"memory_mib": {memory}}}}}"#)
}

/// A daemon with tenants acme and beta, acme's VM `vm1` and pool `web` (no instances), and a
/// token for admin and each role.
struct World {
    d: TestDaemon,
    admin: String,
    tokens: Vec<(Scope, String)>,
}

fn world() -> World {
    let d = TestDaemon::start();
    for t in ["acme", "beta"] {
        assert_eq!(d.call("PUT", &format!("/v1/tenants/{t}"), Some("{}")).0, 200);
    }
    let (s, v) = d.call(
        "POST",
        "/v1/vms?wait=true",
        Some(&spec("vm1", 128).replace("\"name\"", "\"tenant\": \"acme\", \"name\"")),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["vm"]["name"], "acme--vm1", "{v}");
    let (s, v) = d.call(
        "POST",
        "/v1/pools",
        Some(&format!(r#"{{"id": "web", "tenant": "acme", "spec": {}}}"#, spec("t", 128))),
    );
    assert_eq!(s, 201, "{v}");
    let admin = d.token("admin");
    let mut tokens = vec![(Scope::Admin, admin.clone())];
    for (tenant, role) in [
        ("acme", Role::Viewer),
        ("acme", Role::Operator),
        ("acme", Role::Owner),
        ("beta", Role::Owner),
    ] {
        let scope = Scope::Tenant { tenant: TenantId::new(tenant).unwrap(), role };
        tokens.push((scope.clone(), d.token(&scope.to_string())));
    }
    World { d, admin, tokens }
}

/// Every route, with a request that changes nothing lasting when allowed (it names an object
/// that is missing, or one whose state refuses the change), and the action the policy judges.
fn requests() -> Vec<(&'static str, String, Option<String>, Option<Action>)> {
    let s = |x: &str| x.to_string();
    vec![
        ("GET", s("/v1/health"), None, None),
        ("GET", s("/v1/openapi.json"), None, Some(Action::ApiRead)),
        ("POST", s("/v1/validate"), Some(spec("x", 128)), Some(Action::ApiRead)),
        ("POST", s("/v1/plan"), Some(spec("x", 128)), Some(Action::ApiRead)),
        ("GET", s("/v1/images"), None, Some(Action::ImageRead)),
        ("GET", s("/v1/vms"), None, Some(Action::VmRead)),
        // Makes a VM in the caller's own namespace (idempotent).
        ("POST", s("/v1/vms?wait=true"), Some(spec("made", 128)), Some(Action::VmCreate)),
        ("GET", s("/v1/vms/vm1"), None, Some(Action::VmRead)),
        ("DELETE", s("/v1/vms/gone"), None, Some(Action::VmDelete)),
        // A defined VM cannot pause: allowed callers get E_INVALID_TRANSITION.
        ("POST", s("/v1/vms/vm1/pause?wait=true"), None, Some(Action::VmOperate)),
        // vm1 is defined, not running: allowed callers get E_AGENT_UNAVAILABLE (503), or 400
        // for an exec that is not a WebSocket upgrade.
        ("GET", s("/v1/vms/vm1/guest"), None, Some(Action::VmRead)),
        ("GET", s("/v1/vms/vm1/files?path=/etc/hostname"), None, Some(Action::GuestExec)),
        ("PUT", s("/v1/vms/vm1/files?path=/tmp/x"), Some(s("data")), Some(Action::GuestExec)),
        ("POST", s("/v1/vms/vm1/exec"), None, Some(Action::GuestExec)),
        ("GET", s("/v1/vms/vm1/snapshots"), None, Some(Action::SnapshotRead)),
        (
            "POST",
            s("/v1/vms/vm1/snapshots?wait=true"),
            Some(s(r#"{"id": "s1"}"#)),
            Some(Action::SnapshotSave),
        ),
        (
            "POST",
            s("/v1/vms/vm1/snapshots/s1/restore?wait=true"),
            None,
            Some(Action::SnapshotRestore),
        ),
        ("GET", s("/v1/snapshots"), None, Some(Action::SnapshotRead)),
        ("DELETE", s("/v1/snapshots/s1"), None, Some(Action::SnapshotDelete)),
        ("GET", s("/v1/operations"), None, Some(Action::OperationRead)),
        (
            "POST",
            s("/v1/operations?wait=true"),
            Some(s(r#"{"kind": "pause", "vm": "vm1"}"#)),
            Some(Action::VmOperate),
        ),
        ("GET", s("/v1/operations/op-0-00000000"), None, Some(Action::OperationRead)),
        ("GET", s("/v1/events?follow=false"), None, Some(Action::EventRead)),
        ("GET", s("/v1/events/page"), None, Some(Action::EventRead)),
        ("GET", s("/v1/cluster/events"), None, Some(Action::EventRead)),
        ("GET", s("/metrics"), None, Some(Action::MetricsRead)),
        ("GET", s("/v1/tenants"), None, Some(Action::TenantRead)),
        ("PUT", s("/v1/tenants/gamma"), Some(s("{}")), Some(Action::TenantManage)),
        ("DELETE", s("/v1/tenants/nobody"), None, Some(Action::TenantManage)),
        ("GET", s("/v1/pools"), None, Some(Action::PoolRead)),
        // No tenant: a tenant's token means its own; an admin's must say (400).
        (
            "POST",
            s("/v1/pools"),
            Some(format!(r#"{{"id": "p2", "spec": {}}}"#, spec("t", 128))),
            Some(Action::PoolManage),
        ),
        ("GET", s("/v1/pools/web"), None, Some(Action::PoolRead)),
        ("PATCH", s("/v1/pools/web"), Some(s("{}")), Some(Action::PoolManage)),
        ("DELETE", s("/v1/pools/gone"), None, Some(Action::PoolManage)),
        ("POST", s("/v1/pools/gone/claim"), None, Some(Action::PoolClaim)),
        ("GET", s("/v1/routes"), None, Some(Action::PoolRead)),
        // A pool that is not there: refused after the gate, nothing listens.
        (
            "POST",
            s("/v1/routes"),
            Some(s(r#"{"id": "r", "port": 18999, "pool": "gone", "guest_port": 80}"#)),
            Some(Action::PoolManage),
        ),
        ("GET", s("/v1/routes/nope"), None, Some(Action::PoolRead)),
        ("DELETE", s("/v1/routes/nope"), None, Some(Action::PoolManage)),
        ("GET", s("/v1/instances"), None, Some(Action::InstanceRead)),
        ("DELETE", s("/v1/instances/i-00000000"), None, Some(Action::InstanceRelease)),
        ("GET", s("/v1/fleet"), None, Some(Action::FleetRead)),
        ("POST", s("/v1/fleet/reconcile"), None, Some(Action::FleetReconcile)),
        ("GET", s("/v1/tokens"), None, Some(Action::TokenManage)),
        (
            "POST",
            s("/v1/tokens"),
            Some(s(r#"{"name": "n", "scope": "tenant:beta:viewer"}"#)),
            Some(Action::TokenManage),
        ),
        ("DELETE", s("/v1/tokens/tok-nope"), None, Some(Action::TokenManage)),
        ("GET", s("/v1/host"), None, Some(Action::HostRead)),
        ("GET", s("/v1/networks"), None, Some(Action::NetworkRead)),
        ("GET", s("/v1/networks/nope"), None, Some(Action::NetworkRead)),
        // A subnet that is not private: refused before anything is made.
        (
            "POST",
            s("/v1/networks"),
            Some(s(r#"{"name":"n","subnet":"8.8.8.0/24"}"#)),
            Some(Action::NetworkManage),
        ),
        ("DELETE", s("/v1/networks/nope"), None, Some(Action::NetworkManage)),
        ("GET", s("/v1/nodes"), None, Some(Action::NodeRead)),
        ("GET", s("/v1/nodes/nope"), None, Some(Action::NodeRead)),
        // Not in a cluster: refused after the gate.
        ("POST", s("/v1/nodes/nope/cordon"), None, Some(Action::NodeManage)),
        ("POST", s("/v1/nodes/nope/uncordon"), None, Some(Action::NodeManage)),
        ("POST", s("/v1/nodes/nope/drain"), None, Some(Action::NodeManage)),
    ]
}

#[test]
fn every_route_and_role_behaves_as_the_policy_table_says() {
    let w = world();
    let routes = requests();
    // The list above covers every route the daemon has.
    for (method, route, _) in hangard::auth::ROUTES {
        let covered = routes.iter().any(|(m, p, _, _)| {
            let p = p.split('?').next().unwrap();
            m == method && matches_route(route, p)
        });
        assert!(covered, "no request for {method} {route}");
    }
    let mut checked = 0;
    for (scope, token) in &w.tokens {
        for (method, path, body, action) in &routes {
            let (status, v) = w.d.as_token(token, method, path, body.as_deref());
            let expected = action.map(|a| decide(scope, a, Resource::Host));
            match expected {
                Some(Decision::Forbidden) => {
                    assert_eq!(status, 403, "{scope} {method} {path}: {v}");
                    coded(&v, "E_FORBIDDEN");
                }
                _ => assert!(
                    ![401, 403].contains(&status)
                        && (status < 500 || (status == 503 && v["code"] == "E_AGENT_UNAVAILABLE")),
                    "{scope} {method} {path} must be allowed: {status} {v}"
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, w.tokens.len() * routes.len());
    // Spot checks of the table itself.
    let viewer = &w.tokens[1].1;
    assert_eq!(w.d.as_token(viewer, "POST", "/v1/vms/vm1/stop", None).0, 403);
    let operator = &w.tokens[2].1;
    assert_eq!(w.d.as_token(operator, "DELETE", "/v1/vms/vm1", None).0, 403);
    let owner = &w.tokens[3].1;
    assert_eq!(w.d.as_token(owner, "PUT", "/v1/tenants/acme", Some("{}")).0, 403);
    assert_eq!(w.d.as_token(owner, "POST", "/v1/tokens", Some("{}")).0, 403);
    // Without a token only /v1/health answers.
    assert_eq!(w.d.over_tcp("GET", "/v1/health", None, None).0, 200);
    assert_eq!(w.d.over_tcp("GET", "/metrics", None, None).0, 401);
    assert_eq!(w.d.over_tcp("GET", "/v1/openapi.json", None, None).0, 401);
    // The scheme is matched case-insensitively.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(w.d.tcp).unwrap();
    write!(
        s,
        "GET /v1/vms HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: bEaReR {}\r\n\r\n",
        w.admin
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Whether `path` is an instance of `route` (`/v1/vms/{name}` matches `/v1/vms/vm1`).
fn matches_route(route: &str, path: &str) -> bool {
    let (r, p): (Vec<_>, Vec<_>) = (route.split('/').collect(), path.split('/').collect());
    r.len() == p.len()
        && r.iter().zip(&p).all(|(r, p)| r == p || (r.starts_with('{') && r.ends_with('}')))
}

#[test]
fn a_tenant_sees_nothing_of_another_touches_nothing_and_learns_no_names() {
    let w = world();
    let beta = &w.tokens[4].1;
    let acme_owner = &w.tokens[3].1;
    // Acme's owner sees its VM and pool, by short name or full name.
    let (s, v) = w.d.as_token(acme_owner, "GET", "/v1/vms/vm1", None);
    assert_eq!((s, v["name"].as_str()), (200, Some("acme--vm1")), "{v}");
    assert_eq!(w.d.as_token(acme_owner, "GET", "/v1/vms/acme--vm1", None).0, 200);
    assert_eq!(w.d.as_token(acme_owner, "GET", "/v1/pools/web", None).0, 200);
    // Beta's lists hold nothing of acme's.
    for list in ["/v1/vms", "/v1/pools", "/v1/instances", "/v1/snapshots", "/v1/operations"] {
        let (s, v) = w.d.as_token(beta, "GET", list, None);
        assert_eq!((s, v.clone()), (200, serde_json::json!([])), "{list}");
    }
    let (_, tenants) = w.d.as_token(beta, "GET", "/v1/tenants", None);
    let ids: Vec<_> = tenants.as_array().unwrap().iter().map(|t| t["id"].clone()).collect();
    assert_eq!(ids, [serde_json::json!("beta")]);
    let (_, page) = w.d.as_token(beta, "GET", "/v1/events/page", None);
    assert_eq!(page, serde_json::json!([]), "acme's VM's events are not beta's");
    let (_, sse) = w.d.over_tcp("GET", "/v1/events?follow=false", Some(beta), None);
    assert!(!sse.contains("acme"), "{sse}");
    // Acme's events are acme's.
    let (_, page) = w.d.as_token(acme_owner, "GET", "/v1/events/page", None);
    assert!(
        page.as_array().unwrap().iter().all(|e| e["vm"].as_str().unwrap().starts_with("acme--")),
        "{page}"
    );
    assert!(!page.as_array().unwrap().is_empty());

    // Everything beta tries on acme's objects answers exactly as for objects that do not
    // exist: the same status, code and message shape, so acme's names do not leak.
    let probes: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/v1/vms/{}", None),
        ("POST", "/v1/vms/{}/stop", None),
        ("DELETE", "/v1/vms/{}?force=true", None),
        ("GET", "/v1/vms/{}/snapshots", None),
        ("POST", "/v1/vms/{}/snapshots", Some(r#"{"id": "x"}"#)),
        ("POST", "/v1/vms/{}/snapshots/s1/restore", None),
        ("GET", "/v1/pools/{}", None),
        ("PATCH", "/v1/pools/{}", Some(r#"{"desired": {"running": 5}}"#)),
        ("POST", "/v1/pools/{}/claim", None),
        ("DELETE", "/v1/pools/{}", None),
        ("GET", "/v1/instances?pool={}", None),
    ];
    for (method, template, body) in probes {
        for (theirs, missing) in [("acme--vm1", "acme--nope"), ("acme--web", "acme--nope")] {
            let real = template.replace("{}", theirs);
            let fake = template.replace("{}", missing);
            let (s1, v1) = w.d.as_token(beta, method, &real, *body);
            let (s2, v2) = w.d.as_token(beta, method, &fake, *body);
            assert_eq!(s1, s2, "{method} {real}: {v1} vs {v2}");
            assert!(s1 == 404, "{method} {real}: {s1} {v1}");
            assert_eq!(
                serde_json::to_string(&v1).unwrap().replace(theirs, "NAME"),
                serde_json::to_string(&v2).unwrap().replace(missing, "NAME"),
                "{method} {real}"
            );
        }
    }
    // Operations and instances are found by id: another tenant's look missing too.
    let (_, ops) = w.d.call("GET", "/v1/operations", None);
    let acme_op =
        ops.as_array().unwrap().iter().find(|o| o["target"] == "acme--vm1").expect("acme's create")
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let (s1, v1) = w.d.as_token(beta, "GET", &format!("/v1/operations/{acme_op}"), None);
    let (s2, v2) = w.d.as_token(beta, "GET", "/v1/operations/op-1-00000000", None);
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        v1.to_string().replace(&acme_op, "ID"),
        v2.to_string().replace("op-1-00000000", "ID")
    );
    assert_eq!(w.d.as_token(acme_owner, "GET", &format!("/v1/operations/{acme_op}"), None).0, 200);
    // A VM beta makes is beta's, even named like acme's: tenants have namespaces of their own.
    let (s, v) = w.d.as_token(beta, "POST", "/v1/vms?wait=true", Some(&spec("vm1", 128)));
    assert_eq!((s, v["result"]["vm"]["name"].as_str()), (200, Some("beta--vm1")), "{v}");
    let (s, v) = w.d.as_token(beta, "POST", "/v1/vms?wait=true", Some(&spec("acme--vm1", 128)));
    assert_eq!(s, 400, "a name with another tenant's prefix is refused: {v}");
    // Naming another tenant in a spec or a pool is forbidden, whether it exists or not.
    for tenant in ["acme", "nobody"] {
        let body =
            spec("x", 128).replace("\"name\"", &format!("\"tenant\": \"{tenant}\", \"name\""));
        let (s, v) = w.d.as_token(beta, "POST", "/v1/vms", Some(&body));
        assert_eq!(s, 403, "{v}");
        coded(&v, "E_FORBIDDEN");
        let pool = format!(r#"{{"id": "p", "tenant": "{tenant}", "spec": {}}}"#, spec("t", 128));
        assert_eq!(w.d.as_token(beta, "POST", "/v1/pools", Some(&pool)).0, 403);
    }
    // Nor may a tenant say where relative paths resolve on the host.
    let create = format!(r#"{{"kind": "create", "spec": {}, "base_dir": "/etc"}}"#, spec("y", 128));
    let (s, v) = w.d.as_token(beta, "POST", "/v1/operations", Some(&create));
    assert_eq!((s, v["path"].as_str()), (403, Some("base_dir")), "{v}");
    // Outside every tenant, names and snapshot ids of the form `acme--…` are acme's alone.
    let (s, v) = w.d.call("POST", "/v1/vms?wait=true", Some(&spec("acme--x", 128)));
    assert_eq!(s, 400, "{v}");
    coded(&v, "E_INVALID_NAME");
    assert_eq!(w.d.call("POST", "/v1/vms?wait=true", Some(&spec("hostvm", 128))).0, 200);
    let (s, v) = w.d.call("POST", "/v1/vms/hostvm/snapshots", Some(r#"{"id": "acme--s1"}"#));
    assert_eq!((s, v["path"].as_str()), (400, Some("id")), "{v}");
    // Nothing of acme's changed.
    let (_, vm) = w.d.call("GET", "/v1/vms/acme--vm1", None);
    assert_eq!(vm["state"], "defined");
    let (_, pool) = w.d.call("GET", "/v1/pools/acme--web", None);
    assert_eq!(pool["pool"]["desired"]["running"], 0, "{pool}");
    // What a pool shows a tenant says nothing of the passes over other tenants' pools.
    let (_, mine) = w.d.as_token(acme_owner, "GET", "/v1/pools/web", None);
    assert!(mine["last_pass"].is_null() && mine["last_change"].is_null(), "{mine}");
}

#[test]
fn specs_may_name_only_host_files_under_the_allowed_roots() {
    let outside = tempfile::tempdir().unwrap();
    let allowed = tempfile::tempdir().unwrap();
    let allow = allowed.path().to_path_buf();
    let d = TestDaemon::start_with(move |_| hangard::Options {
        allow_paths: vec![allow],
        ..hangard::Options::default()
    });
    let home = d.home.path();
    // Files a spec might try to read: a secret, another VM's overlay and saved disk, and
    // symlinks to them from inside an allowed directory.
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "root:x:0").unwrap();
    for dir in ["vms/other", "snapshots/s.disks", "images/minimal"] {
        std::fs::create_dir_all(home.join(dir)).unwrap();
    }
    std::fs::write(home.join("vms/other/root.qcow2"), "their disk").unwrap();
    std::fs::write(home.join("snapshots/s.disks/root.qcow2"), "their saved disk").unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", allowed.path().join("environ.raw")).unwrap();
    std::os::unix::fs::symlink(&secret, allowed.path().join("innocent.raw")).unwrap();
    std::fs::write(allowed.path().join("ok.raw"), vec![0u8; 4096]).unwrap();
    let p = |x: &std::path::Path| x.display().to_string();
    let mut bad = vec![
        ("/etc/shadow".to_string(), "raw"),
        (p(&secret), "raw"),
        (p(&home.join("vms/other/root.qcow2")), "qcow2"),
        (p(&home.join("snapshots/s.disks/root.qcow2")), "qcow2"),
        (p(&home.join("state.db")), "raw"),
        (p(&allowed.path().join("environ.raw")), "raw"),
        (p(&allowed.path().join("innocent.raw")), "raw"),
        (format!("{}/../{}", p(allowed.path()), p(&secret)), "raw"),
    ];
    // A qcow2 inside the allowed directory whose backing file is outside it, made by the real
    // qemu-img (as a user would).
    let qemu_img = hangar_plan::probe::find_in_path("qemu-img");
    match &qemu_img {
        Some(img) => {
            let overlay = allowed.path().join("overlay.qcow2");
            let made = std::process::Command::new(img)
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(&secret)
                .arg(&overlay)
                .status()
                .unwrap();
            assert!(made.success());
            // (Only as a disk: as a kernel the same file is just bytes, read by nobody else.)
            bad.push((p(&overlay), "qcow2-chain"));
        }
        None => eprintln!(
            "SKIPPED the qemu-img backing-chain case: qemu-img not found (run scripts/setup)"
        ),
    }
    let vms_before = std::fs::read_dir(home.join("vms")).unwrap().count();
    for (i, (source, format)) in bad.iter().enumerate() {
        let chain_only = *format == "qcow2-chain";
        let format = if chain_only { "qcow2" } else { format };
        let body = format!(
            r#"{{"schema_version": 1, "name": "p{i}", "machine": {{"memory_mib": 128}}, "disk": [{{"name": "root", "source": "{source}", "format": "{format}", "readonly": true}}]}}"#
        );
        let (s, v) = d.call("POST", "/v1/vms?wait=true", Some(&body));
        assert_eq!(s, 400, "{source}: {v}");
        coded(&v, "E_PATH_NOT_ALLOWED");
        assert_eq!(v["path"], "disk[0].source", "{v}");
        if chain_only {
            continue;
        }
        // The same for a kernel.
        let body = format!(
            r#"{{"schema_version": 1, "name": "k{i}", "machine": {{"memory_mib": 128}}, "boot": {{"kernel": "{source}"}}}}"#
        );
        let (s, v) = d.call("POST", "/v1/vms", Some(&body));
        assert_eq!(
            (s, v["code"].as_str(), v["path"].as_str()),
            (400, Some("E_PATH_NOT_ALLOWED"), Some("boot.kernel")),
            "{source}: {v}"
        );
        // Validation on the daemon says the same.
        let (_, r) = d.call("POST", "/v1/validate", Some(&body));
        assert_eq!(r["ok"], false, "{r}");
        // And so does a pool template.
        let pool = format!(r#"{{"id": "p{i}", "tenant": "t", "spec": {body}}}"#);
        d.call("PUT", "/v1/tenants/t", Some("{}"));
        let (s, v) = d.call("POST", "/v1/pools", Some(&pool));
        assert_eq!((s, v["code"].as_str()), (400, Some("E_PATH_NOT_ALLOWED")), "{v}");
    }
    // Nothing was created: no VM, no runtime directory, no operation.
    let (_, list) = d.call("GET", "/v1/vms", None);
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(std::fs::read_dir(home.join("vms")).unwrap().count(), vms_before);
    let (_, ops) = d.call("GET", "/v1/operations", None);
    assert_eq!(ops, serde_json::json!([]));
    // A file under the allowed directory is fine.
    let body = format!(
        r#"{{"schema_version": 1, "name": "fine", "machine": {{"memory_mib": 128}}, "disk": [{{"name": "root", "source": "{}", "format": "raw", "readonly": true}}]}}"#,
        p(&allowed.path().join("ok.raw"))
    );
    let (s, v) = d.call("POST", "/v1/vms?wait=true", Some(&body));
    assert_eq!(s, 200, "{v}");
    // The daemon says which directories are allowed.
    let (_, host) = d.call("GET", "/v1/host", None);
    let roots: Vec<String> = serde_json::from_value(host["allowed_paths"].clone()).unwrap();
    assert_eq!(roots, [p(&home.join("images")), p(&home.join("volumes")), p(allowed.path())]);
}

#[test]
fn quotas_apply_to_vms_made_through_the_api_and_nothing_is_left_of_a_refusal() {
    let d = TestDaemon::start();
    let (s, _) = d.call(
        "PUT",
        "/v1/tenants/acme",
        Some(r#"{"quotas": {"max_vcpus": 1, "max_memory_mib": 512, "max_instances": 2}}"#),
    );
    assert_eq!(s, 200);
    let owner = d.token("tenant:acme:owner");
    let huge =
        r#"{"schema_version": 1, "name": "huge", "machine": {"vcpus": 64, "memory_mib": 262144}}"#;
    for (who, body) in [
        (None, huge.replace("\"name\"", "\"tenant\": \"acme\", \"name\"")),
        (Some(&owner), huge.to_string()),
    ] {
        let (s, v) = match who {
            None => d.call("POST", "/v1/vms?wait=true", Some(&body)),
            Some(t) => d.as_token(t, "POST", "/v1/vms?wait=true", Some(&body)),
        };
        assert_eq!(s, 429, "{v}");
        coded(&v, "E_QUOTA_EXCEEDED");
        assert!(v["message"].as_str().unwrap().contains("max_vcpus"), "{v}");
    }
    // Nothing was made: no record, no runtime directory, no operation.
    assert_eq!(d.call("GET", "/v1/vms", None).1, serde_json::json!([]));
    assert!(!d.home.path().join("vms/acme--huge").exists());
    assert_eq!(d.call("GET", "/v1/operations", None).1, serde_json::json!([]));
    // Within the quota: fine, until the instance count is reached; the usage shows it.
    for n in ["a", "b"] {
        let (s, v) = d.as_token(&owner, "POST", "/v1/vms?wait=true", Some(&spec(n, 256)));
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = d.as_token(&owner, "POST", "/v1/vms?wait=true", Some(&spec("c", 256)));
    assert_eq!(s, 429, "{v}");
    assert!(v["message"].as_str().unwrap().contains("max_instances"), "{v}");
    let (_, tenants) = d.as_token(&owner, "GET", "/v1/tenants", None);
    assert_eq!(tenants[0]["usage"]["instances"], 2, "{tenants}");
    // A VM of a tenant that does not exist is refused too.
    let (s, v) = d.call(
        "POST",
        "/v1/vms",
        Some(&spec("x", 128).replace("\"name\"", "\"tenant\": \"nobody\", \"name\"")),
    );
    assert_eq!(s, 404, "{v}");
    coded(&v, "E_TENANT_NOT_FOUND");
    // A spec cannot make itself a pool instance.
    let (s, v) = d.call(
        "POST",
        "/v1/vms",
        Some(&spec("x", 128).replace("\"name\"", "\"pool\": \"web\", \"name\"")),
    );
    assert_eq!((s, v["path"].as_str()), (400, Some("pool")), "{v}");
}

#[test]
fn a_plain_vm_named_like_a_pool_instance_survives_reconcile_passes_untouched() {
    let d = TestDaemon::start();
    d.call("PUT", "/v1/tenants/acme", Some("{}"));
    // acme's own VMs named like the instances pool `web` would make (acme--web-0, …).
    for n in ["web-0", "web-7"] {
        let body = spec(n, 128).replace("\"name\"", "\"tenant\": \"acme\", \"name\"");
        assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&body)).0, 200);
    }
    let (s, v) = d.call(
        "POST",
        "/v1/pools",
        Some(&format!(r#"{{"id": "web", "tenant": "acme", "spec": {}}}"#, spec("t", 128))),
    );
    assert_eq!(s, 201, "{v}");
    let events_before = d.call("GET", "/v1/events/page?limit=10000", None).1;
    for _ in 0..3 {
        let (s, r) = d.call("POST", "/v1/fleet/reconcile", None);
        assert_eq!(s, 200);
        assert_eq!(r["stopped"], 0, "{r}");
        assert!(r["errors"].as_array().unwrap().is_empty(), "{r}");
    }
    let (_, instances) = d.call("GET", "/v1/instances", None);
    assert_eq!(instances, serde_json::json!([]), "nothing adopted");
    for n in ["acme--web-0", "acme--web-7"] {
        let (s, vm) = d.call("GET", &format!("/v1/vms/{n}"), None);
        assert_eq!((s, vm["state"].as_str()), (200, Some("defined")), "{vm}");
    }
    let events_after = d.call("GET", "/v1/events/page?limit=10000", None).1;
    let transitions = |e: &serde_json::Value| {
        e.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["vm"].as_str().unwrap().starts_with("acme--web-"))
            .count()
    };
    assert_eq!(transitions(&events_before), transitions(&events_after));
}

#[test]
fn a_failed_audit_write_refuses_the_request_and_does_nothing() {
    let d = TestDaemon::start();
    assert_eq!(d.call("PUT", "/v1/tenants/acme", Some("{}")).0, 200);
    // Damage the log's tail (bytes that are not the start of the next entry): appending on
    // top of them is refused, so every change must be.
    let log = d.home.path().join("audit.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"garbage without a newline").unwrap();
    drop(f);
    for (method, path, body) in [
        ("POST", "/v1/vms?wait=true", Some(spec("x", 128))),
        ("PUT", "/v1/tenants/beta", Some("{}".to_string())),
        ("DELETE", "/v1/tenants/acme", None),
        ("POST", "/v1/tokens", Some(r#"{"name": "n", "scope": "admin"}"#.to_string())),
    ] {
        let (s, v) = d.call(method, path, body.as_deref());
        assert_eq!(s, 503, "{method} {path}: {v}");
        coded(&v, "E_AUDIT_UNAVAILABLE");
    }
    assert_eq!(d.call("GET", "/v1/vms", None).1, serde_json::json!([]));
    let (_, tenants) = d.call("GET", "/v1/tenants", None);
    assert_eq!(tenants.as_array().unwrap().len(), 1, "acme only: {tenants}");
    let (_, tokens) = d.call("GET", "/v1/tokens", None);
    assert_eq!(tokens, serde_json::json!([]));
    // Reads still answer.
    assert_eq!(d.call("GET", "/v1/health", None).0, 200);
}

#[test]
fn a_tampered_log_keeps_a_restarted_daemon_from_changing_anything() {
    let home = tempfile::Builder::new().prefix("hgd-").tempdir_in("/tmp").unwrap();
    let open = || {
        hangard::Daemon::new(
            hangar_qemu::QemuEngine::open(home.path(), hangar_qemu::EngineOptions::default())
                .unwrap(),
        )
        .unwrap()
    };
    let d = open();
    let entry =
        |what: &str| hangar_audit::NewEntry::ok(hangar_core::clock::Timestamp(1), "t", what, "x");
    drop(d);
    {
        let (log, key, head) = hangar_audit::files_in(home.path());
        let mut l = hangar_audit::AuditLog::open_signed(&log, &key, &head).unwrap();
        for w in ["a", "b", "c"] {
            l.append(entry(w)).unwrap();
        }
    }
    // Drop the last entry: a valid but shorter chain.
    let log = home.path().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    let d = open();
    assert!(d.reconcile().errors[0].0 == "E_AUDIT_UNAVAILABLE");
}

#[test]
fn failed_authentications_and_token_changes_are_audited() {
    let d = TestDaemon::start();
    for _ in 0..5 {
        assert_eq!(d.over_tcp("GET", "/v1/vms", Some("hgr_tok-00000000_00"), None).0, 401);
    }
    let token = d.token("admin");
    let id = d.call("GET", "/v1/tokens", None).1[0]["id"].as_str().unwrap().to_string();
    assert_eq!(d.call("DELETE", &format!("/v1/tokens/{id}"), None).0, 204);
    assert_eq!(d.over_tcp("GET", "/v1/vms", Some(&token), None).0, 401);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.home.path().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed: Vec<_> =
        lines.iter().filter(|e| e["what"].as_str().unwrap().starts_with("auth.failed")).collect();
    // Six failures from one peer within the window: one entry (rate-limited).
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["result"], "E_UNAUTHORIZED");
    assert!(failed[0]["who"].as_str().unwrap().contains("127.0.0.1"));
    let made = lines
        .iter()
        .find(|e| e["what"] == "POST /v1/tokens" && e["result"] == "ok")
        .expect("token creation recorded");
    assert!(made["detail"].as_str().unwrap().contains("scope admin"), "{made}");
    assert!(lines.iter().any(|e| e["what"] == "DELETE /v1/tokens/{id}" && e["result"] == "ok"));
    assert!(hangar_audit::verify(&d.home.path().join("audit.log")).unwrap().is_intact());
}

//! `hangar token` and `hangar audit` as an administrator uses them, and unix-socket users
//! mapped to a tenant's scope (`hangard --map-uid`). No guest is booted.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

mod common;

fn hangar(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", home)
        .env("HANGAR_DAEMON", "never")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = hangar(home, args);
    assert!(out.status.success(), "hangar {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn tokens_have_scopes_and_every_change_is_in_a_verifiable_signed_log() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    // A scope must be given, and be a real one.
    assert_eq!(hangar(home, &["token", "create", "--name", "x"]).status.code(), Some(2));
    let out = hangar(home, &["token", "create", "--tenant", "acme", "--role", "god"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("E_INVALID_ARGUMENT"));
    let secret =
        ok(home, &["token", "create", "--name", "ci", "--tenant", "acme", "--role", "operator"]);
    assert!(secret.trim().starts_with("hgr_tok-"), "{secret}");
    ok(home, &["token", "create", "--name", "ops", "--admin"]);
    let list: serde_json::Value =
        serde_json::from_str(&ok(home, &["token", "ls", "--output", "json"])).unwrap();
    let scopes: Vec<_> =
        list.as_array().unwrap().iter().map(|t| t["scope"].as_str().unwrap()).collect();
    assert_eq!(scopes, ["tenant:acme:operator", "admin"]);
    let id = list[0]["id"].as_str().unwrap().to_string();
    ok(home, &["token", "rm", &id]);

    // Each change was recorded (before and after), and the log's head is signed.
    let log = std::fs::read_to_string(home.join("audit.log")).unwrap();
    let whats: Vec<(String, String)> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|e| (e["what"].as_str().unwrap().into(), e["result"].as_str().unwrap().into()))
        .collect();
    assert_eq!(whats.len(), 6, "{whats:?}");
    assert_eq!(whats[1], ("token.create".to_string(), "ok".to_string()));
    assert_eq!(whats[5], ("token.remove".to_string(), "ok".to_string()));
    assert!(ok(home, &["audit", "verify"]).contains("signed head"));
    let head = ok(home, &["audit", "head"]).trim().to_string();
    assert!(head.starts_with("6:sha256:"), "{head}");
    ok(home, &["audit", "verify", "--expect-head", &head]);
    let signed = ok(home, &["audit", "head", "--output", "json"]);
    ok(home, &["audit", "verify", "--expect-head", signed.trim()]);

    // Dropping the last entry leaves a valid chain, but not the signed or the kept head.
    let lines: Vec<&str> = log.lines().collect();
    std::fs::write(home.join("audit.log"), format!("{}\n", lines[..5].join("\n"))).unwrap();
    let out = hangar(home, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("entries were removed"), "{}", text(&out.stderr));
    let out = hangar(home, &["audit", "verify", "--expect-head", &head, "--file", "x"]);
    assert!(!out.status.success());
    // And nothing more is written on top of it: token changes fail closed.
    let out = hangar(home, &["token", "create", "--admin"]);
    assert!(text(&out.stderr).contains("E_AUDIT_UNAVAILABLE"), "{}", text(&out.stderr));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ok(home, &["token", "ls", "--output", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_unix_socket_user_is_what_the_daemon_maps_it_to_and_nothing_if_unmapped() {
    let dir = tempfile::Builder::new().prefix("hgac-").tempdir_in("/tmp").unwrap();
    let home = dir.path();
    // Other users must reach the socket (the daemon decides what they may do).
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o711)).unwrap();
    let engine =
        hangar_qemu::QemuEngine::open(home, hangar_qemu::EngineOptions::default()).unwrap();
    let viewer: hangar_core::access::Scope = "tenant:acme:viewer".parse().unwrap();
    let options = hangard::Options {
        uids: hangard::UidMap([(65534, viewer)].into()),
        ..hangard::Options::default()
    };
    let _d = common::serve_with(home, engine, options, false);
    acme_with_db_and(home, "host-vm");
    let as_user = |uid: u32, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", home)
            .env("HANGAR_DAEMON", "require")
            .uid(uid)
            .gid(65534)
            .output()
            .unwrap()
    };
    // The mapped user is acme's viewer: it sees acme's VM only, and may not stop it.
    let out = as_user(65534, &["ps", "--all", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = ps.as_array().unwrap().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!("acme--db")]);
    let out = as_user(65534, &["stop", "db"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("E_FORBIDDEN"), "{}", text(&out.stderr));
    // Any other user gets nothing at all.
    let out = as_user(65533, &["ps", "--all"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("E_UNAUTHORIZED"), "{}", text(&out.stderr));
    // Both attempts that changed or reached nothing are evidence.
    let log = std::fs::read_to_string(home.join("audit.log")).unwrap();
    let entries: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        entries.iter().any(|e| e["who"] == "local:uid=65534" && e["result"] == "E_FORBIDDEN"),
        "{log}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "anonymous (uid 65533)" && e["result"] == "E_UNAUTHORIZED"),
        "{log}"
    );
}

#[test]
fn the_cli_reaches_a_remote_daemon_over_tls_with_a_tenant_token() {
    let dir = tempfile::Builder::new().prefix("hgtl-").tempdir_in("/tmp").unwrap();
    let home = dir.path();
    let engine =
        hangar_qemu::QemuEngine::open(home, hangar_qemu::EngineOptions::default()).unwrap();
    let (_d, addr, pin) = common::serve_tls(home, engine);
    let admin = |args: &[&str]| as_admin(home, args);
    acme_with_db_and(home, "other");
    let token = admin(&["token", "create", "--tenant", "acme", "--role", "viewer"]);
    // Somewhere else, with nothing but the address, the token and the pin.
    let elsewhere = tempfile::tempdir().unwrap();
    let remote = |pin: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", elsewhere.path())
            .env("HANGAR_REMOTE", format!("https://{addr}"))
            .env("HANGAR_TOKEN", token.trim())
            .env("HANGAR_TLS_FINGERPRINT", pin)
            .output()
            .unwrap()
    };
    let out = remote(&pin, &["ps", "--all", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = ps.as_array().unwrap().iter().map(|v| v["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!("acme--db")]);
    // A viewer may not stop it, through the remote either.
    let out = remote(&pin, &["stop", "db"]);
    assert!(text(&out.stderr).contains("E_FORBIDDEN"), "{}", text(&out.stderr));
    // Another certificate is refused.
    let out = remote(&format!("sha256:{}", "1".repeat(64)), &["ps"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not the pinned"), "{}", text(&out.stderr));
}

/// Tenant `acme` with its VM `db`, and a host VM called `other`, made over the daemon's socket
/// (as this process's user: an admin).
fn acme_with_db_and(home: &std::path::Path, other: &str) {
    as_admin(home, &["tenant", "create", "acme"]);
    let socket = home.join("hangard.sock");
    let db =
        r#"{"schema_version": 1, "name": "db", "tenant": "acme", "machine": {"memory_mib": 128}}"#;
    let other =
        format!(r#"{{"schema_version": 1, "name": "{other}", "machine": {{"memory_mib": 128}}}}"#);
    for body in [db, &other] {
        let r = hangar_api::client::request(
            &socket,
            "POST",
            "/v1/vms?wait=true",
            Some(body.as_bytes()),
            std::time::Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", text(&r.body));
    }
}

/// Runs `hangar args` through the daemon on `home` as this process's user (an admin); it must
/// succeed. Its standard output.
fn as_admin(home: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", home)
        .env("HANGAR_DAEMON", "require")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

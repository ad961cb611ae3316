//! The CLI goes through `hangard` when it runs: `HANGAR_DAEMON=require` proves the path (it fails
//! without a daemon), and every command prints the same as on the local path. Nothing here
//! boots a guest (the engine tests do), so the commands used are the ones that need none.

use std::path::Path;
use std::process::Command;

mod common;
use common::serve;

fn hangar(home: &Path, daemon: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", home)
        .env("HANGAR_DAEMON", daemon)
        .output()
        .unwrap()
}

fn home() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("hgcd-").tempdir_in("/tmp").unwrap()
}

/// Defines VM `seen` directly through the engine.
fn define_seen(home: &Path) -> hangar_qemu::QemuEngine {
    let engine =
        hangar_qemu::QemuEngine::open(home, hangar_qemu::EngineOptions::default()).unwrap();
    let spec = hangar_testkit::toml_spec("schema_version = 1\nname = \"seen\"\n");
    hangar_core::contracts::Lifecycle::define(&engine, &spec).unwrap();
    engine
}

/// Output with what legitimately differs between two homes masked: operation ids, times.
fn normalise(out: &std::process::Output) -> String {
    let text = format!(
        "exit={:?}\n--stdout--\n{}--stderr--\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut masked = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("op-") {
        masked.push_str(&rest[..i]);
        masked.push_str("op-*");
        rest = rest[i + 3..].trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '-');
    }
    masked.push_str(rest);
    // Times and durations: `"at": 1763…` (pretty or compact), `hh:mm:ss` in tables.
    for key in ["\"at\":", "\"created_at\":", "\"updated_at\":", "\"took_ms\":", "\"boot_ms\":"] {
        let mut out = String::new();
        let mut rest = masked.as_str();
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i + key.len()]);
            out.push('*');
            rest =
                rest[i + key.len()..].trim_start_matches(|c: char| c == ' ' || c.is_ascii_digit());
        }
        out.push_str(rest);
        masked = out;
    }
    masked
        .lines()
        .map(|l| {
            l.trim_end()
                .split(' ')
                .map(|w| {
                    let is_time = w.len() == 8
                        && w.chars().enumerate().all(|(i, c)| {
                            if i == 2 || i == 5 {
                                c == ':'
                            } else {
                                c.is_ascii_digit()
                            }
                        });
                    if is_time {
                        "hh:mm:ss"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_command_prints_the_same_through_the_daemon() {
    // Without a daemon, `require` is an environment error.
    let lonely = home();
    let out = hangar(lonely.path(), "require", &["ps", "--all"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("E_ENGINE_UNAVAILABLE"));

    let remote_home = home();
    let local_home = home();
    let _served = serve(remote_home.path(), define_seen(remote_home.path()), None);
    drop(define_seen(local_home.path()));
    let script: &[&[&str]] = &[
        &["ps", "--all", "--output", "json"],
        &["ps", "--all"],
        &["pause", "seen"],
        &["stop", "seen"],
        &["snapshot", "ls", "--output", "json"],
        &["snapshot", "rm", "nothing"],
        &["rm", "seen"],
        &["rm", "seen"],
        &["start", "Bad_Name"],
        &["events", "--output", "json"],
        &["ops", "--output", "json"],
    ];
    for args in script {
        let via_daemon = hangar(remote_home.path(), "require", args);
        let local = hangar(local_home.path(), "never", args);
        assert_eq!(
            normalise(&via_daemon),
            normalise(&local),
            "`hangar {}` differs through the daemon",
            args.join(" ")
        );
    }
    // And the commands did what they say, journaled as operations with the same outcomes.
    let ops = hangar(remote_home.path(), "require", &["ops", "--output", "json"]);
    let ops: serde_json::Value = serde_json::from_slice(&ops.stdout).unwrap();
    let summary: Vec<_> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["kind"].as_str().unwrap().to_string(), o["status"].as_str().unwrap().to_string())
        })
        .collect();
    // (An unknown snapshot, like an unknown VM, is refused before an operation is made.)
    let expected = [
        ("delete", "succeeded"),
        ("stop", "succeeded"), // stopping a VM that is not running is a no-op
        ("pause", "failed"),
    ];
    assert_eq!(
        summary,
        expected.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect::<Vec<_>>()
    );
    let events = hangar(remote_home.path(), "require", &["events"]);
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains("defined -> deleted"), "{text}");
}

#[test]
fn fleet_commands_need_the_daemon_and_go_through_it() {
    let h = home();
    // No daemon: an environment error that says how to start one, whatever HANGAR_DAEMON says.
    for mode in ["auto", "never"] {
        let out = hangar(h.path(), mode, &["pool", "ls"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("E_ENGINE_UNAVAILABLE") && err.contains("hangard"), "{err}");
    }
    let engine =
        hangar_qemu::QemuEngine::open(h.path(), hangar_qemu::EngineOptions::default()).unwrap();
    let _served = serve(h.path(), engine, None);
    let out = hangar(h.path(), "require", &["tenant", "create", "acme", "--max-vcpus", "4"]);
    assert!(out.status.success(), "{out:?}");
    let out = hangar(h.path(), "require", &["tenant", "quota", "acme", "--max-warm", "2"]);
    assert!(out.status.success(), "{out:?}");
    let out = hangar(h.path(), "require", &["tenant", "ls", "--output", "json"]);
    let tenants: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tenants[0]["id"], "acme");
    // `quota` changed one limit and kept the other.
    assert_eq!(tenants[0]["quotas"]["max_vcpus"], 4);
    assert_eq!(tenants[0]["quotas"]["max_warm"], 2);
    // A bad spec file is reported with its diagnostics before anything reaches the daemon.
    let bad = h.path().join("bad.toml");
    std::fs::write(&bad, "schema_version = 1\nname = \"t\"\n[machine]\nmemory_mib = 1\n").unwrap();
    let out = hangar(
        h.path(),
        "require",
        &["pool", "create", "web", "--tenant", "acme", "--spec", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("machine.memory_mib"));
    let out = hangar(h.path(), "require", &["pool", "ls", "--output", "json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = hangar(h.path(), "require", &["tenant", "rm", "acme"]);
    assert!(out.status.success(), "{out:?}");
}

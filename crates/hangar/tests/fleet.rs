//! The fleet end to end on real QEMU, through the `hangar` CLI and an in-process `hangard` with
//! its reconcile loop running: a pool with `warm = 3` converges to three paused guests (the
//! first booted, the others cloned from its base snapshot), a claim hands one out running and
//! the loop refills the warm set, a cloned guest answers on its console, a quota refusal leaves
//! no process, runtime directory or record behind, and a guest whose QEMU is killed is replaced
//! within one pass. Skipped, with the reason, without QEMU or the built image.

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_testkit::{kill9, qemu_pids as qemus, Reaper};
use serde_json::Value;

mod common;
use common::serve;

fn hangar(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", home)
        .env("HANGAR_DAEMON", "require")
        .output()
        .unwrap()
}

/// Runs `hangar args… --output json` and parses stdout; panics with stderr on failure.
fn json(home: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = hangar(home, &all);
    assert!(
        out.status.success(),
        "hangar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = hangar(home, args);
    assert!(
        out.status.success(),
        "hangar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `hangar pool status` until `pred` holds (a bounded wait on a condition the loop is
/// driving toward).
fn wait_for(home: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = json(home, &["pool", "status", "acme--web"]);
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime_dirs(home: &Path) -> usize {
    std::fs::read_dir(home.join("vms")).map(|d| d.count()).unwrap_or(0)
}

fn count(s: &Value, what: &str) -> u64 {
    s["counts"][what].as_u64().unwrap()
}

/// Types a command on a guest's serial console and waits for `expect` in what comes back.
fn console_says(home: &Path, vm: &str, command: &str, expect: &str) {
    let socket = home.join("vms").join(vm).join("console.sock");
    hangar_testkit::console(&socket, command, expect);
}

/// Reconcile-pass events after `since`, as (seq, message).
fn fleet_events(home: &Path, since: u64) -> Vec<(u64, String)> {
    let out = ok(home, &["events", "--since", &since.to_string(), "--output", "json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["vm"] == "fleet")
        .map(|e| {
            (e["seq"].as_u64().unwrap(), e["message"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn last_seq(home: &Path) -> u64 {
    let out = ok(home, &["events", "--output", "json"]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn warm_pool_claim_refill_clone_quota_and_replacement_through_the_cli() {
    if hangar_testkit::skip("warm_pool_claim_refill_clone_quota_and_replacement_through_the_cli") {
        return;
    }
    let dir = hangar_testkit::private_home("hgfl-");
    let home = dir.path();
    let _reaper = Reaper(home.to_path_buf());
    let engine =
        hangar_qemu::QemuEngine::open(home, hangar_qemu::EngineOptions::default()).unwrap();
    let _daemon = serve(home, engine, Some(Duration::from_millis(500)));
    std::fs::write(
        home.join("t.toml"),
        "schema_version = 1\nname = \"t\"\n[machine]\nmemory_mib = 128\n[boot]\nimage = \"minimal\"\n",
    )
    .unwrap();

    // Room for four 128 MiB guests holding memory: three warm plus one claimed.
    ok(home, &["tenant", "create", "acme", "--max-memory-mib", "512"]);
    let spec = home.join("t.toml");
    ok(
        home,
        &[
            "pool",
            "create",
            "web",
            "--tenant",
            "acme",
            "--spec",
            spec.to_str().unwrap(),
            "--warm",
            "3",
        ],
    );
    let s = wait_for(home, "3 warm", |s| count(s, "warm") == 3);
    let names: Vec<&str> =
        s["instances"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme--web-0", "acme--web-1", "acme--web-2"]);
    assert_eq!(s["base_snapshot"], "acme--web-base", "{s:#}");
    assert_eq!(qemus(home).len(), 3);
    // acme--web-0 was booted and saved as the base; the other two were cloned from it.
    // (The pass's report is recorded as it ends, a moment after its last instance settled.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = fleet_events(home, 0);
        if events.iter().any(|(_, m)| m.contains("(cloned 2)") || m.contains("(cloned 1)")) {
            break;
        }
        assert!(Instant::now() < deadline, "no pass reported clones: {events:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A claim hands out a running instance from the warm set.
    let claim = json(home, &["pool", "claim", "acme--web"]);
    assert_eq!(claim["source"], "warm", "{claim:#}");
    assert_eq!(claim["instance"]["state"], "running");
    assert_eq!(claim["instance"]["claimed"], true);
    let claimed = claim["instance"]["name"].as_str().unwrap().to_string();
    let ps = json(home, &["ps"]);
    let row = ps.as_array().unwrap().iter().find(|v| v["name"] == claimed.as_str()).unwrap();
    assert_eq!(row["state"], "running", "{ps:#}");
    // The loop refills the warm set behind it.
    let s =
        wait_for(home, "refilled to 3 warm", |s| count(s, "warm") == 3 && count(s, "claimed") == 1);
    assert_eq!(qemus(home).len(), 4, "{s:#}");

    // A second claim takes the next warm instance: a clone. It is a live guest of its own: its
    // shell answers on its serial console.
    let clone = json(home, &["pool", "claim", "acme--web"]);
    assert_eq!(
        (clone["source"].as_str(), clone["instance"]["name"].as_str()),
        (Some("warm"), Some("acme--web-1")),
        "{clone:#}"
    );
    console_says(home, "acme--web-1", "echo clone-$((6*7))", "clone-42");
    // Its guest agent answers too (the clone's own socket, an agent restored mid-wait).
    let out =
        hangar(home, &["exec", "acme--web-1", "--", "sh", "-c", "echo agent-$((6*7)); exit 3"]);
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()),
        (Some(3), "agent-42\n".to_string()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Released, it is removed, and the loop is back to three warm and one claimed.
    ok(home, &["instance", "rm", clone["instance"]["id"].as_str().unwrap()]);
    wait_for(home, "back to 3 warm after the release", |s| {
        count(s, "warm") == 3
            && count(s, "claimed") == 1
            && s["instances"].as_array().unwrap().iter().all(|i| i["name"] != "acme--web-1")
    });

    // At the memory limit: one more warm instance is refused, and nothing is made.
    let before = (qemus(home).len(), runtime_dirs(home), json(home, &["instance", "ls"]));
    let since = last_seq(home);
    ok(home, &["pool", "scale", "acme--web", "--warm", "4"]);
    let s = wait_for(home, "refused on quota", |s| {
        s["last_change"]["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let (code, message) = (
        s["last_change"]["errors"][0][0].as_str().unwrap(),
        s["last_change"]["errors"][0][1].as_str().unwrap(),
    );
    assert_eq!(code, "E_QUOTA_EXCEEDED");
    assert!(message.contains("max_memory_mib") && message.contains("limit 512"), "{message}");
    let after = (qemus(home).len(), runtime_dirs(home), json(home, &["instance", "ls"]));
    assert_eq!(before, after, "a refused creation left something behind");
    assert!(
        fleet_events(home, since).iter().any(|(_, m)| m.contains("E_QUOTA_EXCEEDED")),
        "the refusal is in the event stream"
    );
    ok(home, &["pool", "scale", "acme--web", "--warm", "3"]);

    // Kill a warm instance's QEMU: the loop removes it and creates a replacement in one pass.
    // The victim is one of the pool's warm instances now (which ordinals they have depends on
    // what the passes above did).
    let status = json(home, &["pool", "status", "acme--web"]);
    let warm_name = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["state"] == "paused" && i["claimed"] == false)
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no warm instance: {status:#}"))
        .to_string();
    let victim = json(home, &["ps"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == warm_name.as_str())
        .and_then(|v| v["pid"].as_i64())
        .unwrap_or_else(|| panic!("{warm_name} has no QEMU")) as i32;
    let since = last_seq(home);
    kill9(victim);
    let s = wait_for(home, "the killed instance replaced", |s| {
        count(s, "warm") == 3
            && s["instances"].as_array().unwrap().iter().all(|i| i["name"] != warm_name.as_str())
    });
    // The pass's report is recorded as it ends, a moment after its instances settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    let acted = loop {
        let acted: Vec<String> = fleet_events(home, since)
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| {
                !m.contains(
                    "created 0 (cloned 0), started 0, warmed 0, slept 0, woken 0, stopped 0",
                )
            })
            .collect();
        if !acted.is_empty() || Instant::now() > deadline {
            break acted;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        acted.first().is_some_and(|m| m.contains("created 1") && m.contains("stopped 1")),
        "the first pass that acted after the kill should replace it: {acted:?}; {s:#}"
    );
    assert_eq!(qemus(home).len(), 4);

    // Removing the pool removes every instance, claimed too, and the base snapshot.
    ok(home, &["pool", "rm", "acme--web"]);
    assert!(qemus(home).is_empty(), "QEMUs left: {:?}", qemus(home));
    assert_eq!(json(home, &["ps", "--all"]), serde_json::json!([]));
    assert_eq!(json(home, &["snapshot", "ls"]), serde_json::json!([]));
    ok(home, &["tenant", "rm", "acme"]);
    assert_eq!(json(home, &["tenant", "ls"]), serde_json::json!([]));

    // The reconciler's steps are in the audit log: the creations, and the removal of the
    // instance whose QEMU was killed.
    let audit: Vec<Value> = std::fs::read_to_string(home.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<(&str, &str, &str)> = audit
        .iter()
        .filter(|e| e["who"] == "reconciler")
        .map(|e| {
            (
                e["what"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(steps.contains(&("fleet.create", "acme--web-0", "ok")), "{steps:?}");
    assert!(steps.contains(&("fleet.remove", "acme--web-2", "ok")), "{steps:?}");
    assert!(hangar_audit::verify(&home.join("audit.log")).unwrap().is_intact());
}

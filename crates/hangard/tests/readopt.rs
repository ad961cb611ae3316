//! Crash safety: `kill -9` the real `hangard` binary while idle, in the middle of a boot and in
//! the middle of a stop; after each restart every VM is found again (same QEMU, by PID and start
//! time), the operations that were in flight are settled in the journal (never left running),
//! and nothing is orphaned. Needs QEMU and the built image; otherwise skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use hangar_api::client::request;

mod common;
use hangar_testkit::{qemu_pids as pids_of, Reaper};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(home: &Path) -> Daemon {
        let child = common::spawn_hangard(home, &[]);
        Daemon { child, socket: home.join("hangard.sock") }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also on a failed assertion: never leave a daemon behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let r =
            request(&self.socket, method, path, body.map(str::as_bytes), Duration::from_secs(120))
                .unwrap();
        (r.status, serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
    }

    /// Waits (server side) until the operation has ended, and returns it.
    fn settled(&self, id: &str) -> serde_json::Value {
        let (s, op) = self.call("GET", &format!("/v1/operations/{id}?wait=true"), None);
        assert_eq!(s, 200, "{op}");
        op
    }

    fn vm(&self, name: &str) -> serde_json::Value {
        self.call("GET", &format!("/v1/vms/{name}"), None).1
    }

    /// Polls until `pred` holds for the VM (a bounded wait on a condition).
    fn wait_for(
        &self, name: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let v = self.vm(name);
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{name} never became {what}: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spec(name: &str, cmdline: &str) -> String {
    format!(
        r#"{{"schema_version":1,"name":"{name}","machine":{{"memory_mib":128}},"boot":{{"image":"minimal","cmdline":"{cmdline}"}}}}"#
    )
}

fn qemus_of(home: &Path) -> usize {
    pids_of(home).len()
}

#[test]
fn kill_9_at_several_points_loses_nothing_and_orphans_nothing() {
    if hangar_testkit::skip("kill_9_at_several_points_loses_nothing_and_orphans_nothing") {
        return;
    }
    let home = hangar_testkit::private_home("hgk-");
    let _reaper = Reaper(home.path().to_path_buf());

    // 1. Idle: a running VM survives the daemon and is re-adopted with the same QEMU.
    let d = Daemon::start(home.path());
    assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&spec("steady", ""))).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/steady/start?wait=true", None);
    let v = &op["result"]["vm"];
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{op}");
    let steady_pid = v["pid"].as_u64().unwrap();
    d.kill9();
    let d = Daemon::start(home.path());
    let v = d.vm("steady");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(steady_pid)),
        "{v}"
    );
    // Its guest agent answers through the restarted daemon (exec is a WebSocket), and the exec
    // is in the audit log with its argv.
    {
        use hangar_core::contracts::{ExitStatus, Guest};
        let remote = hangar_control::Remote::new(home.path().join("hangard.sock"));
        let script = "read x; echo adopted-$x; exit 5";
        let (status, out, err) =
            hangar_testkit::exec_in(&remote, "steady", &["sh", "-c", script], Some(b"42\n"))
                .unwrap();
        assert_eq!((status, out.as_str()), (ExitStatus::Code(5), "adopted-42\n"), "{err}");
        let vm = hangar_core::ids::VmName::new("steady").unwrap();
        let info = remote.guest_info(&vm).unwrap();
        assert!(info.agent.starts_with("hangar-init"), "{info:?}");
        let audit = std::fs::read_to_string(home.path().join("audit.log")).unwrap();
        assert!(
            audit.lines().any(|l| l.contains("guest.exec") && l.contains("adopted-$x")),
            "no audit entry for the exec"
        );
    }

    // 2. Mid-boot: the start's waiter dies with the daemon; the restarted daemon finishes the boot.
    assert_eq!(d.call("POST", "/v1/vms?wait=true", Some(&spec("booting", ""))).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/booting/start", None);
    assert_eq!(s, 202, "{op}");
    let boot_op = op["id"].as_str().unwrap().to_string();
    // Kill the daemon as soon as the VM's QEMU exists: spawn to guest-ready takes seconds, so
    // this is always mid-boot (checked below: the console has no ready line yet).
    let deadline = Instant::now() + Duration::from_secs(60);
    let booting_pid = loop {
        let found = pids_of(home.path()).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("vms/booting/"))
        });
        if let Some(pid) = found {
            break pid as u64;
        }
        assert!(Instant::now() < deadline, "QEMU for booting never appeared");
        std::thread::yield_now();
    };
    d.kill9();
    let console =
        std::fs::read_to_string(home.path().join("vms/booting/console.log")).unwrap_or_default();
    assert!(!console.contains("HANGAR_READY"), "the daemon was not killed mid-boot");
    let d = Daemon::start(home.path());
    let op = d.settled(&boot_op);
    assert_eq!(op["status"], "succeeded", "the interrupted start was finished: {op}");
    let v = d.vm("booting");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(booting_pid)),
        "the same QEMU finished booting: {v}"
    );

    // 3. Mid-stop: a guest that ignores power-off keeps the stop waiting; the daemon dies; the
    //    restarted daemon completes the stop.
    assert_eq!(
        d.call("POST", "/v1/vms?wait=true", Some(&spec("stubborn", "hangar.ignore_poweroff=1"))).0,
        200
    );
    assert_eq!(d.call("POST", "/v1/vms/stubborn/start?wait=true", None).0, 200);
    let (s, op) = d.call("POST", "/v1/vms/stubborn/stop", Some(r#"{"timeout_s": 60}"#));
    assert_eq!(s, 202, "{op}");
    let stop_op = op["id"].as_str().unwrap().to_string();
    d.wait_for("stubborn", "stopping", |v| v["state"] == "stopping");
    d.kill9();
    let d = Daemon::start(home.path());
    let op = d.settled(&stop_op);
    assert_eq!(op["status"], "succeeded", "the interrupted stop was finished: {op}");
    let v = d.vm("stubborn");
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(v["pid"].is_null(), "{v}");
    // No operation is left running, and the journal names what each did.
    let (_, ops) = d.call("GET", "/v1/operations", None);
    assert!(ops.as_array().unwrap().iter().all(|o| o["status"] != "running"), "{ops}");

    // Nothing lost, nothing orphaned: three records, exactly the two running QEMUs.
    let (_, all) = d.call("GET", "/v1/vms", None);
    let names: Vec<_> =
        all.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["booting", "steady", "stubborn"]);
    assert_eq!(qemus_of(home.path()), 2);
    for name in ["booting", "steady", "stubborn"] {
        assert_eq!(d.call("DELETE", &format!("/v1/vms/{name}?force=true&wait=true"), None).0, 200);
    }
    assert_eq!(qemus_of(home.path()), 0, "orphaned QEMU");
    assert!(
        std::fs::read_dir(home.path().join("vms")).unwrap().next().is_none(),
        "runtime dirs left behind"
    );
    d.kill9();
}

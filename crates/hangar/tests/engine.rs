//! `hangar` against real QEMU: the issue's acceptance, end to end. Every test has its own
//! `HANGAR_HOME` (sharing the built image through a symlink). Without QEMU or the built image
//! each test prints `SKIPPED …` with the reason and checks nothing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

mod common;

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    /// A fresh home, or the reason the real engine cannot run here.
    fn new() -> Result<Home, String> {
        if hangar_plan::probe::find_in_path("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 not found (run scripts/setup)".into());
        }
        let images = hangar_testkit::image_dir();
        if !images.join("minimal/vmlinuz").exists() {
            return Err(format!("no built image at {} (run scripts/setup)", images.display()));
        }
        let dir = tempfile::Builder::new()
            .prefix("hge-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&images, dir.path().join("images"))
            .map_err(|e| e.to_string())?;
        Ok(Home { dir })
    }

    /// Writes the spec of a 128 MiB VM called `name` into the home; its path.
    fn small_spec(&self, name: &str) -> std::path::PathBuf {
        let spec = self.path().join(format!("{name}.toml"));
        let text = format!("schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = 128\n");
        std::fs::write(&spec, text).unwrap();
        spec
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn hangar(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", self.path())
            .output()
            .unwrap()
    }

    fn ps(&self) -> serde_json::Value {
        let out = self.hangar(&["ps", "--all", "--output", "json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Leave nothing running, whatever the test did.
        let out = self.hangar(&["ps", "--all", "--output", "json"]);
        if let Ok(serde_json::Value::Array(vms)) = serde_json::from_slice(&out.stdout) {
            for vm in vms {
                if let Some(name) = vm["name"].as_str() {
                    let _ = self.hangar(&["rm", "--force", name]);
                }
            }
        }
    }
}

macro_rules! home_or_skip {
    ($test:literal) => {
        match Home::new() {
            Ok(h) => h,
            Err(reason) => {
                let _ = writeln!(std::io::stderr(), "SKIPPED {}: {reason}", $test);
                return;
            }
        }
    };
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

/// The phases a command printed on stderr (`[  0.1s] boot` lines), in order.
fn phases(stderr: &[u8]) -> Vec<String> {
    text(stderr)
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.split_once("s] ").map(|(_, p)| p.to_string()))
        .collect()
}

#[test]
fn up_through_the_daemon_reports_every_phase() {
    let home = home_or_skip!("up_through_the_daemon_reports_every_phase");
    let engine =
        hangar_qemu::QemuEngine::open(home.path(), hangar_qemu::EngineOptions::default()).unwrap();
    let _served = common::serve(home.path(), engine, None);
    let spec = home.small_spec("phases");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["up", spec.to_str().unwrap()])
        .env("HANGAR_HOME", home.path())
        .env("HANGAR_DAEMON", "require")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `disks` and `engine` last a few milliseconds each: a poll every 50 ms would miss them.
    assert_eq!(phases(&out.stderr), ["disks", "engine", "boot", "ready"], "{}", text(&out.stderr));
}

#[test]
fn run_prints_the_guest_kernel_release_and_its_exit_code() {
    let home = home_or_skip!("run_prints_the_guest_kernel_release_and_its_exit_code");
    let out = home.hangar(&["run", "--rm", "--", "uname", "-r"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let release = text(&out.stdout).trim().to_string();
    // The guest runs Debian's cloud kernel, not the host's.
    let image_kernel =
        std::fs::read_to_string(home.path().join("images/minimal/manifest.json")).unwrap();
    assert!(
        !release.is_empty() && image_kernel.contains(&release),
        "guest printed {release:?}; manifest {image_kernel}"
    );
    assert!(release.ends_with("-cloud-amd64"), "{release}");

    let out = home.hangar(&["run", "--rm", "--", "sh", "-c", "echo hi from the guest; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hi from the guest");
    assert_eq!(home.ps(), serde_json::json!([]), "--rm left a VM behind");
}

#[test]
fn up_ps_stop_rm_leaves_nothing_behind() {
    let home = home_or_skip!("up_ps_stop_rm_leaves_nothing_behind");
    // A spec with a writable disk over a base image (an overlay) and a blank disk. The base
    // lives outside Hangar's state, in a directory `--allow-path` lets specs use.
    let images = tempfile::tempdir().unwrap();
    let base = images.path().join("base.qcow2");
    hangar_testkit::base_qcow2(&base);
    let spec = images.path().join("vm.toml");
    std::fs::write(
        &spec,
        "schema_version = 1\nname = \"hello\"\n[machine]\nmemory_mib = 128\n[[disk]]\nname = \"root\"\nsource = \"base.qcow2\"\n[[disk]]\nname = \"scratch\"\nsize_mib = 8\n",
    )
    .unwrap();
    // Without it, the base is refused and nothing is made.
    let out = home.hangar(&["up", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("E_PATH_NOT_ALLOWED at disk[0].source"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(home.ps(), serde_json::json!([]));
    assert!(!home.path().join("vms/hello").exists());
    let allow = images.path().to_str().unwrap();
    let out = home.hangar(&["up", spec.to_str().unwrap(), "--allow-path", allow]);
    assert!(out.status.success(), "up failed: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello: running"), "{}", text(&out.stdout));

    let ps = home.ps();
    let vm = &ps[0];
    assert_eq!(
        (vm["name"].as_str(), vm["state"].as_str()),
        (Some("hello"), Some("running")),
        "{ps}"
    );
    let pid = vm["pid"].as_u64().expect("a pid");
    assert!(alive(pid));
    // Everything Hangar and its QEMU made is private: the store, the overlays, the console
    // log, the sockets (the shared images are linked in, not made). Nothing is open to
    // others; a group may at most read and search a directory: the QEMU group passes through
    // the home and vms/, a VM's own QEMU reads its runtime directory.
    let mut open_to_others = Vec::new();
    let mut dirs = vec![home.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            let group_may = if meta.is_dir() { 0o050 } else { 0 };
            if mode & 0o077 & !group_may != 0 {
                open_to_others.push(format!("{} {:o}", entry.path().display(), mode & 0o777));
            }
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    assert!(open_to_others.is_empty(), "{open_to_others:#?}");
    let runtime = home.path().join("vms/hello");
    for f in [
        "qmp.sock",
        "console.sock",
        "console.log",
        "disks/root.qcow2",
        "disks/scratch.qcow2",
        "plan.json",
    ] {
        assert!(runtime.join(f).exists(), "{f} missing while running");
    }

    let out = home.hangar(&["stop", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello: stopped"), "{}", text(&out.stdout));
    assert!(
        !text(&out.stdout).contains("forced"),
        "a cooperative guest needed force: {}",
        text(&out.stdout)
    );
    assert!(!alive(pid), "QEMU {pid} still running after stop");
    assert!(!runtime.join("qmp.sock").exists() && !runtime.join("console.sock").exists());
    assert!(runtime.join("disks/root.qcow2").exists(), "a stopped VM keeps its disks");

    let out = home.hangar(&["rm", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!runtime.exists(), "runtime dir left behind");
    assert!(base.exists(), "the base image must never be touched");
    assert_eq!(home.ps(), serde_json::json!([]));
}

#[test]
fn a_killed_qemu_shows_as_failed_with_a_reason() {
    let home = home_or_skip!("a_killed_qemu_shows_as_failed_with_a_reason");
    let spec = home.small_spec("victim");
    let out = home.hangar(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = home.ps()[0]["pid"].as_u64().unwrap();
    let target = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(target, rustix::process::Signal::KILL).unwrap();
    // Wait for the kernel to tear the process down (a bounded wait on a condition, not a sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let vm = &home.ps()[0];
    assert_eq!(vm["state"], "failed", "{vm}");
    let reason = vm["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("pid {pid}")) && reason.contains("exited"), "{reason}");
    let out = home.hangar(&["rm", "victim"]);
    assert!(out.status.success(), "a failed VM can be removed: {}", text(&out.stderr));
}

#[test]
fn a_guest_that_misses_its_boot_timeout_is_killed_and_failed_with_its_console() {
    let home =
        home_or_skip!("a_guest_that_misses_its_boot_timeout_is_killed_and_failed_with_its_console");
    let spec = home.small_spec("slow");
    // A TCG boot takes ~2 s here, so one second is always too short.
    let out = home.hangar(&["up", spec.to_str().unwrap(), "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("E_TIMEOUT"), "{}", text(&out.stderr));
    let vm = &home.ps()[0];
    assert_eq!(vm["state"], "failed", "{vm}");
    assert!(vm["pid"].is_null(), "the QEMU of a failed boot must be gone: {vm}");
    let reason = vm["reason"].as_str().unwrap();
    assert!(reason.contains("boot failed") && reason.contains("last output:"), "{vm}");
    assert!(!home.path().join("vms/slow/qmp.sock").exists());
    // A failed VM can be started again.
    let out = home.hangar(&["stop", "slow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = home.hangar(&["start", "slow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn concurrent_commands_on_one_vm_are_serialised() {
    let home = home_or_skip!("concurrent_commands_on_one_vm_are_serialised");
    let spec = home.small_spec("busy");
    let spec = spec.to_str().unwrap().to_string();
    // Three `hangar up` at once: one boots, the others wait for the VM lock and find it running.
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_hangar"))
                .args(["up", &spec])
                .env("HANGAR_HOME", home.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("busy: running"), "{}", text(&out.stdout));
    }
    let ps = home.ps();
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");
    // Exactly one QEMU runs for it, and the history has exactly one boot.
    let qemus = hangar_testkit::qemu_pids(home.path()).len();
    assert_eq!(qemus, 1);
    let inspect: serde_json::Value =
        serde_json::from_slice(&home.hangar(&["inspect", "busy"]).stdout).unwrap();
    let starts =
        inspect["history"].as_array().unwrap().iter().filter(|e| e["to"] == "starting").count();
    assert_eq!(starts, 1, "{}", inspect["history"]);
}

#[test]
fn exec_runs_commands_in_a_running_vm_with_docker_exit_codes_and_survives_sleep() {
    let home = home_or_skip!(
        "exec_runs_commands_in_a_running_vm_with_docker_exit_codes_and_survives_sleep"
    );
    // Room in the guest's RAM-backed root for the 64 MiB copy below.
    let spec = home.path().join("ex.toml");
    std::fs::write(&spec, "schema_version = 1\nname = \"ex\"\n[machine]\nmemory_mib = 384\n")
        .unwrap();
    let out = home.hangar(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exec = |args: &[&str]| {
        let out = home.hangar(&[&["exec", "ex", "--"][..], args].concat());
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, _) = exec(&["sh", "-c", "uname -r; exit 7"]);
    assert_eq!(code, Some(7));
    assert!(stdout.starts_with("6."), "the guest's kernel release: {stdout:?}");
    // inspect asks the agent about the guest.
    let out = home.hangar(&["inspect", "ex"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["guest"]["kernel"].as_str(), Some(stdout.trim()), "{}", doc["guest"]);
    assert!(doc["guest"]["agent"].as_str().is_some_and(|a| a.starts_with("hangar-init ")));
    let (code, _, stderr) = exec(&["no-such-command"]);
    assert_eq!(code, Some(127), "{stderr}");
    assert_eq!(exec(&["sh", "-c", "kill -9 $$"]).0, Some(137));
    // Standard input with -i.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["exec", "-i", "ex", "--", "cat"])
        .env("HANGAR_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "hi\n".to_string()));
    // Ten at once: each gets its own output and code.
    let results: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (1..=10)
            .map(|i| s.spawn(move || exec(&["sh", "-c", &format!("echo n{i}; exit {i}")])))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (i, (code, stdout, stderr)) in (1..=10).zip(results) {
        assert_eq!((code, stdout), (Some(i), format!("n{i}\n")), "{stderr}");
    }
    // -it under a real pseudo-terminal (ours, made the controlling terminal of hangar's session
    // by util-linux setsid, as a terminal emulator would): the guest sees its size and a
    // resize, a typed Ctrl-C interrupts the program, and our terminal comes back as it was.
    {
        use rustix::pty::OpenptFlags;
        use rustix::termios::{tcgetattr, tcsetwinsize, Winsize};
        let size = |ws_row, ws_col| Winsize { ws_row, ws_col, ws_xpixel: 0, ws_ypixel: 0 };
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        tcsetwinsize(&master, size(31, 97)).unwrap();
        let ours = std::fs::File::from(rustix::pty::ioctl_tiocgptpeer(&master, flags).unwrap());
        let before = tcgetattr(&ours).unwrap();
        let mut child = Command::new("setsid")
            .args(["--ctty", "--wait", env!("CARGO_BIN_EXE_hangar"), "exec", "-it", "ex", "--"])
            // The trap runs between two sleeps: the resize shows within a second.
            .args(["sh", "-c", "trap 'stty size' WINCH; stty size; while :; do sleep 1; done"])
            .env("HANGAR_HOME", home.path())
            .stdin(ours.try_clone().unwrap())
            .stdout(ours.try_clone().unwrap())
            .stderr(ours.try_clone().unwrap())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut screen = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut screen, &mut buf) {
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        let mut seen = String::new();
        let mut wait_for = |want: &str| {
            while !seen.contains(want) {
                match rx.recv_timeout(std::time::Duration::from_secs(60)) {
                    Ok(chunk) => seen.push_str(&chunk),
                    Err(e) => panic!("no {want:?} on the terminal: {seen:?} ({e})"),
                }
            }
        };
        wait_for("31 97");
        tcsetwinsize(&master, size(44, 132)).unwrap();
        wait_for("44 132");
        std::io::Write::write_all(&mut std::fs::File::from(master), &[0x03]).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{status:?}");
        let after = tcgetattr(&ours).unwrap();
        assert_eq!(
            (after.local_modes, after.input_modes, after.output_modes),
            (before.local_modes, before.input_modes, before.output_modes),
            "the terminal is restored"
        );
    }
    // Ctrl-C reaches the program in the guest: `sleep` dies of SIGINT, hangar exits 130.
    let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["exec", "ex", "--", "sh", "-c", "echo started; exec sleep 300"])
        .env("HANGAR_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut started,
    )
    .unwrap();
    assert_eq!(started, "started\n");
    let interrupted_at = std::time::Instant::now();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        interrupted_at.elapsed() < std::time::Duration::from_secs(60),
        "the guest's sleep ended early"
    );
    // 64 MiB of random bytes in and back out: identical, with mode and mtime kept.
    let data: Vec<u8> = {
        let mut f = std::fs::File::open("/dev/urandom").unwrap();
        let mut d = vec![0u8; 64 << 20];
        std::io::Read::read_exact(&mut f, &mut d).unwrap();
        d
    };
    let (local, back) = (home.path().join("rand"), home.path().join("rand.back"));
    std::fs::write(&local, &data).unwrap();
    std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cp = |src: &str, dst: &str| {
        let out = home.hangar(&["cp", src, dst]);
        assert!(out.status.success(), "cp {src} {dst}: {}", text(&out.stderr));
    };
    cp(local.to_str().unwrap(), "ex:/root/rand");
    let (_, sum, _) = exec(&["sha256sum", "/root/rand"]);
    let expected = {
        use sha2::Digest;
        sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(sum.starts_with(&expected), "guest {sum:?} vs host {expected}");
    assert_eq!(exec(&["stat", "-c", "%a", "/root/rand"]).1, "600\n");
    cp("ex:/root/rand", back.to_str().unwrap());
    assert!(std::fs::read(&back).unwrap() == data, "the copy back differs");
    let (l, b) = (std::fs::metadata(&local).unwrap(), std::fs::metadata(&back).unwrap());
    assert_eq!(
        (
            std::os::unix::fs::PermissionsExt::mode(&b.permissions()) & 0o777,
            b.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        ),
        (0o600, l.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
    );
    // A directory, both ways: nested files with their modes; a symlink left out; the copy
    // back identical; a second copy onto the same name refused (never merged).
    let tree = home.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::write(tree.join("top.txt"), "top\n").unwrap();
    std::fs::write(tree.join("sub/deeper/data"), &data[..300_000]).unwrap();
    std::fs::set_permissions(
        tree.join("top.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o751),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
    let out = home.hangar(&["cp", tree.to_str().unwrap(), "ex:/root/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("copied 2 files in 3 directories"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("1 left out"), "{}", text(&out.stdout));
    assert_eq!(exec(&["stat", "-c", "%a", "/root/tree/top.txt"]).1, "751\n");
    assert_eq!(exec(&["cat", "/root/tree/top.txt"]).1, "top\n");
    let again = home.hangar(&["cp", tree.to_str().unwrap(), "ex:/root/"]);
    assert!(!again.status.success(), "a directory is not merged into an existing one");
    let tree_back = home.path().join("tree.back");
    cp("ex:/root/tree", tree_back.to_str().unwrap());
    assert_eq!(std::fs::read(tree_back.join("sub/deeper/data")).unwrap(), &data[..300_000]);
    assert_eq!(std::fs::read_to_string(tree_back.join("top.txt")).unwrap(), "top\n");
    assert!(!tree_back.join("link").exists());
    // Asleep (memory saved, process gone) and woken: the agent answers the new QEMU.
    assert_eq!(exec(&["sh", "-c", "echo kept > /tmp/mark"]).0, Some(0));
    let out = home.hangar(&["snapshot", "save", "--sleep", "ex", "nap"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, stderr) = exec(&["true"]);
    assert_ne!(code, Some(0), "a sleeping VM has no agent to answer: {stderr}");
    assert!(stderr.contains("E_AGENT_UNAVAILABLE"), "{stderr}");
    let out = home.hangar(&["snapshot", "restore", "ex", "nap"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(exec(&["cat", "/tmp/mark"]), (Some(0), "kept\n".to_string(), String::new()));
}

#[test]
fn a_guest_whose_agent_never_answers_is_a_coded_error_within_a_bound() {
    let home = home_or_skip!("a_guest_whose_agent_never_answers_is_a_coded_error_within_a_bound");
    // The guest boots with its agent switched off: the port exists, nobody reads it.
    let spec = home.path().join("mute.toml");
    let text_spec = "schema_version = 1\nname = \"mute\"\n[machine]\nmemory_mib = 128\n[boot]\nimage = \"minimal\"\ncmdline = \"hangar.agent=0\"\n";
    std::fs::write(&spec, text_spec).unwrap();
    let out = home.hangar(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = std::time::Instant::now();
    let out = home.hangar(&["exec", "mute", "--", "true"]);
    let took = started.elapsed();
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("E_AGENT_UNAVAILABLE"), "{}", text(&out.stderr));
    // Three syncs of five seconds each, then the answer: bounded, well below a minute.
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    // inspect says so too, within its own one-second bound, instead of hanging.
    let out = home.hangar(&["inspect", "mute"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["guest"]["error"]["code"], "E_AGENT_UNAVAILABLE", "{}", doc["guest"]);
}

use hangar_testkit::free_port;

/// One HTTP/1.0 GET on loopback; the whole response.
fn http_get(port: u16) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn a_user_nic_guest_is_online_with_its_address_forwards_and_egress() {
    let home = home_or_skip!("a_user_nic_guest_is_online_with_its_address_forwards_and_egress");
    let (published, upstream) = (free_port(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let upstream_port = upstream.local_addr().unwrap().port();
    let spec = home.path().join("web.toml");
    std::fs::write(
        &spec,
        format!(
            "schema_version = 1\nname = \"web\"\n[machine]\nmemory_mib = 128\n\
             [[nic]]\nname = \"net0\"\nforward = [\"{published}:80\"]\n"
        ),
    )
    .unwrap();
    let out = home.hangar(&["up", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The readiness line reports what the kernel has; ps and inspect show the address.
    let logs = text(&home.hangar(&["logs", "web"]).stdout);
    let ready = logs.lines().find(|l| l.starts_with("HANGAR_READY ")).expect("a ready line");
    assert!(ready.contains(r#""addresses":["10.0.2.15/24"]"#), "{ready}");
    assert!(!ready.contains("network_error"), "{ready}");
    assert_eq!(home.ps()[0]["addresses"], serde_json::json!(["10.0.2.15/24"]));
    let doc: serde_json::Value =
        serde_json::from_slice(&home.hangar(&["inspect", "web"]).stdout).unwrap();
    assert_eq!(doc["addresses"], serde_json::json!(["10.0.2.15/24"]));
    let out = home.hangar(&["ps"]);
    assert!(text(&out.stdout).contains("10.0.2.15/24"), "{}", text(&out.stdout));

    let exec = |script: &str| {
        let out = home.hangar(&["exec", "web", "--", "sh", "-c", script]);
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    // Hostname and DNS from the plan, the default route through slirp's gateway.
    assert_eq!(exec("hostname").trim(), "web");
    assert_eq!(exec("cat /etc/resolv.conf").trim(), "nameserver 10.0.2.3");
    assert!(exec("ip route").contains("default via 10.0.2.2"));

    // A published port: host 127.0.0.1:<published> reaches the guest's httpd on port 80.
    exec("mkdir -p /www && echo hello-from-the-guest > /www/index.html && busybox httpd -p 80 -h /www");
    let page = http_get(published);
    assert!(page.contains("200 OK") && page.contains("hello-from-the-guest"), "{page:?}");

    // Egress: the guest reaches a server on the host's loopback through slirp's 10.0.2.2.
    let server = std::thread::spawn(move || {
        use std::io::Read;
        let (mut conn, _) = upstream.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nupstream\n").unwrap();
    });
    let body = exec(&format!("busybox wget -q -O - http://10.0.2.2:{upstream_port}/"));
    assert_eq!(body, "upstream\n");
    server.join().unwrap();
}

/// Guest RAM is a file, which may grow to the guest's whole memory (a write fault the
/// filesystem could not back would kill QEMU mid-run): a home whose filesystem cannot hold it
/// refuses the VM at admission with `E_HOST_CAPACITY` and makes nothing. The home is a 64 MiB tmpfs mounted
/// in a mount namespace of the test's own (`unshare -m`); the machine's mounts are untouched.
#[test]
fn a_home_too_small_for_the_guest_ram_refuses_the_vm_and_makes_nothing() {
    let test = "a_home_too_small_for_the_guest_ram_refuses_the_vm_and_makes_nothing";
    let home = home_or_skip!("a_home_too_small_for_the_guest_ram_refuses_the_vm_and_makes_nothing");
    if !rustix::process::geteuid().is_root()
        || hangar_plan::probe::find_in_path("unshare").is_none()
    {
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs root and unshare(1)");
        return;
    }
    let small = home.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let images = std::fs::read_link(home.path().join("images")).unwrap();
    let spec = home.small_spec("tight");
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs -o size=64m tmpfs {small} && \
         ln -s {images} {small}/images && export HANGAR_HOME={small} && \
         {hangar} up {spec}; echo rc=$?; {hangar} ps --output json; ls -A {small}/vms",
        small = small.display(),
        images = images.display(),
        hangar = env!("CARGO_BIN_EXE_hangar"),
        spec = spec.display(),
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("E_HOST_CAPACITY"), "{stderr}");
    assert!(stderr.contains("128 MiB of new disk"), "{stderr}");
    assert!(stdout.contains("rc=2"), "{stdout}");
    // Not even defined, and no runtime directory.
    assert!(stdout.contains("[]"), "{stdout}");
    assert!(!stdout.contains("tight"), "{stdout}");
    // The tmpfs went with the namespace: the directory is as the test made it.
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0);
}

//! Helpers shared by Hangar's real-engine tests (a dev-dependency only; nothing ships it).
//!
//! A real-engine test boots real guests and checks what they printed. Without QEMU or the built
//! image it must say it was skipped and why, never pass silently: [`skip`] prints the line.
//! Guests started by a test must not outlive it, even when an assertion fails: keep a
//! [`Reaper`] for the test's home.

pub mod etcd;
pub mod golden;
pub mod netns;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A loopback TCP port nothing listens on now, for a server started a moment later. Picked
/// below the kernel's ephemeral range (32768 and up), so that the outgoing connections of a
/// cluster of processes cannot take it in between (they did: a hundred `hangard`s found their
/// kernel-picked ports taken); each call in a process returns another, and processes start
/// from different places.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % COUNT;
    loop {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < COUNT, "no free loopback port in {FIRST}..{}", FIRST + COUNT);
        let port = (FIRST + (start + i) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The spec a TOML text describes (host paths in it are absolute); panics when invalid.
pub fn toml_spec(text: &str) -> hangar_core::spec::VmSpec {
    hangar_spec::parse(text, hangar_spec::Format::Toml, Path::new("/"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .spec
}

/// A spec with one writable disk over `base` (so the VM has an overlay of its own), booting
/// the built-in image.
pub fn spec_over(name: &str, memory_mib: u32, base: &Path) -> hangar_core::spec::VmSpec {
    toml_spec(&format!(
        "schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = {memory_mib}\n[boot]\nimage = \"minimal\"\n[[disk]]\nname = \"root\"\nsource = \"{}\"\n",
        base.display()
    ))
}

/// Where the built images are: `$HANGAR_HOME/images` when it has `minimal`, else the
/// system-wide directory `scripts/setup` builds them into.
pub fn image_dir() -> PathBuf {
    std::env::var_os("HANGAR_HOME")
        .map(|h| PathBuf::from(h).join("images"))
        .filter(|images| images.join("minimal/vmlinuz").exists())
        .unwrap_or_else(|| PathBuf::from(hangar_plan::probe::SYSTEM_IMAGE_DIR))
}

/// Why real-engine tests cannot run here, if they cannot.
pub fn real_engine_missing() -> Option<String> {
    if hangar_plan::probe::find_in_path("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 not found (run scripts/setup)".into());
    }
    let images = image_dir();
    if !images.join("minimal/vmlinuz").exists() {
        return Some(format!(
            "the built-in image is not built at {} (run scripts/setup)",
            images.display()
        ));
    }
    None
}

/// Whether `test` must be skipped; if so, says so on the real stderr (not captured by the
/// test harness, so the skip shows in every run's output).
pub fn skip(test: &str) -> bool {
    match real_engine_missing() {
        None => false,
        Some(reason) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
            true
        }
    }
}

/// For a real-engine networking test: a network namespace of its own, or `None` when `test`
/// must be skipped (no QEMU or image, or no right to make a namespace), said on stderr with
/// the reason as [`skip`] does.
pub fn real_netns(test: &str) -> Option<netns::Netns> {
    if skip(test) {
        return None;
    }
    match netns::Netns::new() {
        Ok(ns) => Some(ns),
        Err(reason) => {
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
            None
        }
    }
}

/// A private Hangar home under /tmp (unix socket paths are limited to 107 bytes) with the built
/// images linked in.
pub fn private_home(prefix: &str) -> tempfile::TempDir {
    let home =
        tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("a temporary home");
    std::os::unix::fs::symlink(image_dir(), home.path().join("images")).expect("link the images");
    home
}

/// PIDs of the QEMUs of `home` (a unique temporary directory): exactly the guests of one test.
/// A QEMU's standard output is its VM's `qemu.log` under `home/vms/` (its command line may not
/// name the home at all: its sockets are passed as descriptors).
pub fn qemu_pids(home: &Path) -> Vec<i32> {
    let needle = format!("{}/vms/", home.display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let out = std::fs::read_link(e.path().join("fd/1")).ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let is_qemu = cmdline.starts_with(b"qemu-system") || {
                let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(argv0).contains("qemu")
            };
            (is_qemu && out.to_string_lossy().starts_with(&needle)).then_some(pid)
        })
        .collect()
}

/// A blank 16 MiB qcow2 image at `path` (a base for VMs' overlays), made by the real
/// `qemu-img`.
pub fn base_qcow2(path: &Path) {
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("16M")
        .status()
        .expect("qemu-img runs");
    assert!(made.success(), "qemu-img create {}", path.display());
}

/// SIGKILL to `pid` (gone already is fine).
pub fn kill9(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Kills every QEMU of a home when dropped, also when an assertion fails, and removes the
/// cgroups Hangar made for the home's VMs once those QEMUs are gone.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pids = qemu_pids(&self.0);
        for pid in &pids {
            kill9(*pid);
        }
        // A cgroup still holding a task cannot be removed: wait (bounded) for them to be reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        remove_cgroups(&self.0);
    }
}

/// Removes the cgroups Hangar made for the VMs of `home` (`hangar/<home tag>-<vm>` under each
/// v1 controller, or under the v2 root) that no process uses any more; other homes' are not
/// touched (their tag differs). A VM's QEMU killed from outside, as tests do, leaves its
/// cgroup behind: Hangar removes it only when it next looks at that VM.
pub fn remove_cgroups(home: &Path) {
    let prefix = format!("{}-", hangar_plan::home_tag(&format!("{}/vms", home.display())));
    for parent in [
        "/sys/fs/cgroup/memory/hangar",
        "/sys/fs/cgroup/cpu/hangar",
        "/sys/fs/cgroup/pids/hangar",
        "/sys/fs/cgroup/hangar",
    ] {
        let Ok(dir) = std::fs::read_dir(parent) else { continue };
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Types `command` on the serial console behind `socket` and waits (up to a minute) for
/// `expect` in what comes back; returns everything read. The console echoes what is typed, so
/// `expect` must not appear in `command` (compute it: `echo done-$((1+1))` expects `done-2`).
pub fn console(socket: &Path, command: &str, expect: &str) -> String {
    assert!(!command.contains(expect), "the console's echo of {command:?} would match {expect:?}");
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("a read timeout");
    stream.write_all(format!("{command}\n").as_bytes()).expect("type on the console");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("console {}: {e}", socket.display()),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(expect) {
            return text.into_owned();
        }
    }
    panic!(
        "{} never printed {expect:?} after {command:?}; it said: {}",
        socket.display(),
        String::from_utf8_lossy(&seen)
    );
}

/// Runs `argv` in VM `vm` through `guest` (an engine, or `hangar_control::Remote`), `stdin` fed
/// in: how it ended, its stdout and its stderr.
pub fn exec_in(
    guest: &dyn hangar_core::contracts::Guest, vm: &str, argv: &[&str],
    stdin: Option<&'static [u8]>,
) -> hangar_core::Result<(hangar_core::contracts::ExitStatus, String, String)> {
    use hangar_core::contracts::{ExecIo, ExecRequest};
    let vm = hangar_core::ids::VmName::new(vm).expect("a valid VM name");
    let request =
        ExecRequest { argv: argv.iter().map(|a| a.to_string()).collect(), ..Default::default() };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo {
        stdin: stdin.map(|b| Box::new(b) as Box<dyn std::io::Read + Send>),
        stdout: &mut out,
        stderr: &mut err,
        control: None,
    };
    let status = guest.exec(&vm, &request, io)?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok((status, text(out), text(err)))
}

/// A guest command line that runs `argv` at boot (`hangar.run=`: unpadded base64url of a JSON
/// array of strings, as the built image's init decodes it).
pub fn run_argument(argv: &[&str]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = serde_json::to_vec(argv).expect("strings serialise");
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    format!("hangar.run={out}")
}

//! Boots the built `minimal` image under QEMU (TCG, microvm) and checks what hangar-init
//! prints on the serial console.
//!
//! Needs `qemu-system-x86_64` and an image built by `scripts/build-image` in
//! `$HANGAR_HOME/images/minimal` or `/usr/local/share/hangar/images/minimal`; without them each test
//! prints `SKIPPED <test>: <reason>` and returns. Every QEMU run has a hard deadline and is
//! killed on any failure; synchronisation is on console lines and process exit, never sleeps.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use sha2::Digest;

use hangar_init::{encode_run_argv, parse_line, EXIT, POWEROFF, POWEROFF_IGNORED, READY};

/// Hard limit for one boot-to-exit (TCG boots take ~2-4 s here).
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

fn image_dir() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HANGAR_HOME") {
        candidates.push(PathBuf::from(home).join("images/minimal"));
    }
    candidates.push(PathBuf::from("/usr/local/share/hangar/images/minimal"));
    for dir in &candidates {
        if dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file() {
            return Ok(dir.clone());
        }
    }
    Err(format!(
        "no built image (looked in {}); run scripts/build-image",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

/// Warns (without failing) when the image was built from a different `hangar-init` than the
/// static binary in this checkout's target directory: the boot tests then test stale code.
fn note_if_stale(test: &str, dir: &std::path::Path) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let init = target.join("x86_64-unknown-linux-gnu/release/hangar-init");
    let (Ok(bin), Ok(manifest)) =
        (std::fs::read(&init), std::fs::read_to_string(dir.join("manifest.json")))
    else {
        return;
    };
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&manifest) else {
        return;
    };
    let digest = sha2::Sha256::digest(&bin);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if manifest["inputs"]["hangar-init"]["sha256"].as_str() != Some(hex.as_str()) {
        let _ = writeln!(
            std::io::stderr(),
            "NOTE {test}: {} was not built from {}; rerun scripts/build-image to test this code",
            dir.display(),
            init.display()
        );
    }
}

fn qemu_available() -> Result<(), String> {
    match Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("qemu-system-x86_64 --version failed: {s}")),
        Err(e) => Err(format!("qemu-system-x86_64 not runnable: {e}")),
    }
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo` "cpu MHz".
fn host_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0).round() as u64)
        .unwrap_or(2_000_000)
}

/// A running guest; dropping it kills QEMU.
struct Guest {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    qmp: Option<PathBuf>,
    started: Instant,
    _tmp: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    /// Boots the image, or returns `None` after printing a SKIPPED line.
    fn boot(test: &str, run: Option<&[&str]>, extra: &str, with_qmp: bool) -> Option<Guest> {
        let dir = match image_dir().and_then(|d| qemu_available().map(|()| d)) {
            Ok(d) => d,
            Err(reason) => {
                skip(test, &reason);
                return None;
            }
        };
        note_if_stale(test, &dir);
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut append = format!(
            "console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests audit=0 nokaslr \
             8250.nr_uarts=1 pci=off tsc_early_khz={}",
            host_khz()
        );
        if let Some(argv) = run {
            append.push_str(&format!(" hangar.run={}", encode_run_argv(argv)));
        }
        if !extra.is_empty() {
            append.push(' ');
            append.push_str(extra);
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "microvm",
            "-accel",
            "tcg",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "256",
        ])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.join("initrd.img"))
        .arg("-append")
        .arg(&append)
        .args(["-serial", "stdio"]);
        let qmp = with_qmp.then(|| tmp.path().join("qmp.sock"));
        if let Some(sock) = &qmp {
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn qemu-system-x86_64");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (stream, tag) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "qemu stderr: "),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    if tx.send(format!("{tag}{text}")).is_err() {
                        break;
                    }
                }
            });
        }
        Some(Guest { child, lines: rx, log: Vec::new(), qmp, started: Instant::now(), _tmp: tmp })
    }

    fn transcript(&self) -> String {
        self.log.join("\n")
    }

    /// Waits for a console line satisfying `pred`, up to `within`. `Err` on timeout or EOF.
    fn wait_line(
        &mut self, within: Duration, pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err("timed out".into()),
                Err(RecvTimeoutError::Disconnected) => return Err("QEMU closed its output".into()),
            }
        }
    }

    /// Waits for a protocol line with `prefix` and returns its JSON payload; panics (killing
    /// QEMU) with the transcript on timeout.
    fn expect(&mut self, prefix: &str) -> serde_json::Value {
        let within = BOOT_DEADLINE.saturating_sub(self.started.elapsed());
        match self.wait_line(within, |l| parse_line(l).is_some_and(|(p, _)| p == prefix)) {
            Ok(line) => parse_line(&line).map(|(_, v)| v).unwrap_or_default(),
            Err(why) => panic!("no {prefix} line ({why}); console so far:\n{}", self.transcript()),
        }
    }

    /// Waits for QEMU to exit within the boot deadline.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = self.started + BOOT_DEADLINE;
        // Drain the console until EOF (QEMU exiting closes it), then reap.
        while self.wait_line(deadline.saturating_duration_since(Instant::now()), |_| false).is_ok()
        {
        }
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU did not exit within {BOOT_DEADLINE:?}; console:\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends QMP `system_powerdown` (after the capabilities handshake).
    fn system_powerdown(&mut self) {
        let sock = self.qmp.clone().expect("booted with QMP");
        let stream = UnixStream::connect(&sock).expect("connect to the QMP socket");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut read_until = |want: &str| {
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).expect("read from QMP");
                assert!(n > 0, "QMP closed while waiting for {want}");
                if line.contains(want) {
                    return line.clone();
                }
            }
        };
        read_until("\"QMP\"");
        writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").expect("write to QMP");
        read_until("\"return\"");
        writer.write_all(b"{\"execute\":\"system_powerdown\"}\n").expect("write to QMP");
        read_until("\"return\"");
    }
}

#[test]
fn run_uname_prints_release_between_ready_and_exit() {
    let Some(mut g) = Guest::boot(
        "run_uname_prints_release_between_ready_and_exit",
        Some(&["uname", "-r"]),
        "",
        false,
    ) else {
        return;
    };
    let ready = g.expect(READY);
    let release = ready["kernel"].as_str().expect("kernel").to_owned();
    assert!(release.starts_with("6.1.0-"), "{ready}");
    assert!(ready["uptime_ms"].as_u64().is_some_and(|ms| ms > 0), "{ready}");
    let after_ready = g.log.len();
    let exit = g.expect(EXIT);
    assert_eq!(exit, serde_json::json!({"code": 0}));
    let between: Vec<&String> = g.log[after_ready..g.log.len() - 1].iter().collect();
    assert!(
        between.iter().any(|l| l.as_str() == release),
        "`uname -r` output {release:?} not between READY and EXIT:\n{}",
        g.transcript()
    );
    let status = g.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", g.transcript());
    let _ = writeln!(
        std::io::stderr(),
        "boot: READY at guest uptime {} ms, QEMU exited {:.2} s after spawn",
        ready["uptime_ms"],
        g.started.elapsed().as_secs_f64()
    );
}

#[test]
fn run_exit_code_is_reported() {
    let Some(mut g) =
        Guest::boot("run_exit_code_is_reported", Some(&["sh", "-c", "exit 7"]), "", false)
    else {
        return;
    };
    g.expect(READY);
    assert_eq!(g.expect(EXIT), serde_json::json!({"code": 7}));
    assert_eq!(g.wait_exit().code(), Some(0), "{}", g.transcript());
}

#[test]
fn run_killed_by_signal_and_missing_command() {
    let Some(mut g) = Guest::boot(
        "run_killed_by_signal_and_missing_command",
        Some(&["sh", "-c", "printf no-final-newline; kill -9 $$"]),
        "",
        false,
    ) else {
        return;
    };
    g.expect(READY);
    // Output without a final newline must not swallow the EXIT line.
    assert_eq!(g.expect(EXIT), serde_json::json!({"code": null, "signal": 9}));
    assert!(g.log.iter().any(|l| l == "no-final-newline"), "{}", g.transcript());
    assert_eq!(g.wait_exit().code(), Some(0));
    drop(g);

    let Some(mut g) = Guest::boot(
        "run_killed_by_signal_and_missing_command",
        Some(&["no-such-command"]),
        "",
        false,
    ) else {
        return;
    };
    g.expect(READY);
    let exit = g.expect(EXIT);
    assert_eq!(exit["code"], 127, "{exit}");
    assert!(exit["error"].as_str().is_some_and(|e| e.contains("no-such-command")), "{exit}");
    assert_eq!(g.wait_exit().code(), Some(0));
}

#[test]
fn power_button_powers_off_interactive_guest() {
    let Some(mut g) = Guest::boot("power_button_powers_off_interactive_guest", None, "", true)
    else {
        return;
    };
    g.expect(READY);
    g.system_powerdown();
    assert_eq!(g.expect(POWEROFF), serde_json::json!({"reason": "power-button"}));
    assert_eq!(g.wait_exit().code(), Some(0), "{}", g.transcript());
}

#[test]
fn ignore_poweroff_keeps_guest_running() {
    let Some(mut g) =
        Guest::boot("ignore_poweroff_keeps_guest_running", None, "hangar.ignore_poweroff=1", true)
    else {
        return;
    };
    g.expect(READY);
    g.system_powerdown();
    // The guest saw the press and said it ignores it...
    assert_eq!(g.expect(POWEROFF_IGNORED), serde_json::json!({"reason": "power-button"}));
    // ...and within a short window neither powers off nor exits.
    let window = Duration::from_secs(3);
    let outcome = g.wait_line(window, |l| {
        parse_line(l).is_some_and(|(p, _)| p == POWEROFF) || l.contains("reboot: Power down")
    });
    assert_eq!(
        outcome,
        Err("timed out".to_owned()),
        "guest powered off despite hangar.ignore_poweroff=1:\n{}",
        g.transcript()
    );
    assert!(g.child.try_wait().expect("try_wait").is_none(), "QEMU exited");
    // Drop kills QEMU by its PID.
}

#[test]
fn bad_run_parameter_is_a_reported_error() {
    let Some(mut g) =
        Guest::boot("bad_run_parameter_is_a_reported_error", None, "hangar.run=not*base64", false)
    else {
        return;
    };
    let err = g.expect(hangar_init::ERROR);
    assert!(err["message"].as_str().is_some_and(|m| m.contains("hangar.run")), "{err}");
    assert_eq!(g.wait_exit().code(), Some(0), "{}", g.transcript());
}

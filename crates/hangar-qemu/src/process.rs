//! Engine processes: spawning detached from the caller, identifying a process so a recycled PID
//! is never mistaken for it, waiting for exit, and signalling the exact process.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_store::ProcessIdentity;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// `PF_EXITING` in `/proc/<pid>/stat`'s flags: set when the process starts to exit, before it
/// is a zombie.
const PF_EXITING: u64 = 0x4;

/// Reads a process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22) and
/// whether it has stopped running: exiting, a zombie or dead. `None` if there is no such
/// process. Counting an exiting process as gone keeps the answer from flipping back: a process
/// caught mid-exit can show a running state after its exit was already observed.
fn stat(pid: u32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    let flags: u64 = fields.get(6)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((start, matches!(state, "Z" | "X") || flags & PF_EXITING != 0))
}

/// The identity of a live process, or `None`.
pub fn identify(pid: u32) -> Option<ProcessIdentity> {
    let (start_time, gone) = stat(pid)?;
    (!gone).then_some(ProcessIdentity { pid, start_time })
}

/// Whether this exact process (same PID *and* start time) is still running.
pub fn alive(p: ProcessIdentity) -> bool {
    identify(p.pid) == Some(p)
}

/// Spawns `argv` in its own session (so terminal signals aimed at the caller do not reach it),
/// stdin from /dev/null, stdout and stderr appended to `log`. A background thread reaps it if
/// it is our child, so no zombie outlives it in long-running callers.
pub fn spawn_detached(argv: &[String], log: &Path) -> std::io::Result<ProcessIdentity> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    new_session(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let identity = identify(pid);
    std::thread::Builder::new()
        .name(format!("reap-{pid}"))
        .spawn(move || {
            let _ = child.wait();
        })?;
    identity.ok_or_else(|| std::io::Error::other(format!("process {pid} exited immediately")))
}

#[allow(unsafe_code)]
fn new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls setsid(2),
    // which is async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
    }
}

/// A handle on one exact process, stable against PID reuse.
pub struct ProcessHandle {
    fd: OwnedFd,
}

impl ProcessHandle {
    /// Opens a handle if `p` is still that process.
    pub fn open(p: ProcessIdentity) -> Option<ProcessHandle> {
        let pid = Pid::from_raw(p.pid as i32)?;
        let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
        // Check the identity *after* opening: from here on the fd pins this process.
        alive(p).then_some(ProcessHandle { fd })
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Ok(_) => return false,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends `signal` to exactly this process.
    pub fn signal(&self, signal: Signal) -> bool {
        pidfd_send_signal(&self.fd, signal).is_ok()
    }
}

/// Whether `p` has exited (or was never there); waits up to `timeout`.
pub fn wait_exit(p: ProcessIdentity, timeout: Duration) -> bool {
    match ProcessHandle::open(p) {
        Some(h) => h.wait_exit(timeout),
        None => true,
    }
}

/// SIGTERM, then SIGKILL, to exactly `p`; waits for it to go. True once it is gone.
pub fn terminate(p: ProcessIdentity, grace: Duration) -> bool {
    let Some(h) = ProcessHandle::open(p) else {
        return true;
    };
    h.signal(Signal::TERM);
    if h.wait_exit(grace) {
        return true;
    }
    h.signal(Signal::KILL);
    h.wait_exit(Duration::from_secs(10))
}

/// The live process one of whose arguments is exactly `argument`, if there is exactly one.
/// Used only to recover a QEMU whose PID was never recorded (its owner died right after
/// spawning it); the argument is the VM's unique QMP socket, so no other process matches.
pub fn find_by_argument(argument: &str) -> Option<ProcessIdentity> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|a| a == argument.as_bytes())
            .then(|| identify(pid))
            .flatten()
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// How long `p` has been running (from `/proc/<pid>/stat` and `/proc/uptime`).
pub fn uptime(p: ProcessIdentity) -> Option<Duration> {
    // Linux reports start times in USER_HZ ticks, which is 100 on every mainstream architecture.
    const TICKS_PER_SEC: f64 = 100.0;
    if !alive(p) {
        return None;
    }
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = p.start_time as f64 / TICKS_PER_SEC;
    Some(Duration::from_secs_f64((up - started).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_and_detects_exit() {
        let dir = tempfile::tempdir().unwrap();
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        let p = spawn_detached(&argv, &dir.path().join("log")).unwrap();
        assert!(alive(p));
        let wrong = ProcessIdentity {
            start_time: p.start_time + 1,
            ..p
        };
        assert!(
            !alive(wrong),
            "a different start time is a different process"
        );
        assert!(ProcessHandle::open(wrong).is_none());
        assert!(!wait_exit(p, Duration::from_millis(50)));
        assert!(terminate(p, Duration::from_secs(5)));
        assert!(!alive(p));
    }

    #[test]
    fn finds_a_process_by_an_exact_argument() {
        let dir = tempfile::tempdir().unwrap();
        let marker = format!("unix:{}/qmp.sock,server=on,wait=off", dir.path().display());
        // sh -c keeps the extra argument in its argv ($0) while it sleeps. The trailing `:`
        // matters: with a lone command dash execs `sleep` in its place and the argument
        // vanishes. Even so, for an instant after sh forks its child (before that child execs
        // `sleep`) two processes carry the argument, and "exactly one" rightly finds none: so
        // wait, bounded, for the state to settle rather than catch that instant.
        let argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            "sleep 30; :".into(),
            marker.clone(),
        ];
        let p = spawn_detached(&argv, &dir.path().join("log")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while find_by_argument(&marker) != Some(p) {
            assert!(
                std::time::Instant::now() < deadline,
                "never found exactly {p:?} by its argument"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            find_by_argument(&format!("{marker}x")),
            None,
            "prefixes do not match"
        );
        assert!(terminate(p, Duration::from_secs(5)));
        assert_eq!(find_by_argument(&marker), None);
    }

    #[test]
    fn stat_parses_names_with_spaces() {
        let me = std::process::id();
        let (start, gone) = stat(me).unwrap();
        assert!(start > 0 && !gone);
        assert!(stat(u32::MAX - 1).is_none());
    }
}

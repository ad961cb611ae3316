//! Engine processes: spawning detached from the caller, identifying a process so a recycled PID
//! is never mistaken for it, waiting for exit, and signalling the exact process.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hangar_store::ProcessIdentity;

use crate::confine::Launch;
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
/// stdin from /dev/null, stdout and stderr appended to `log`, confined as `launch` says (its
/// credentials switched before anything of it runs; its cgroups joined then too, or, with
/// [`Launch::joining_while_starting`], by this call before it returns) and inheriting
/// `launch.fds` at their numbers and no other descriptor (not even one the caller inherited
/// without close-on-exec). A background thread reaps it if it is our child, so no zombie
/// outlives it in long-running callers. If a late join fails, the process is killed.
pub fn spawn_detached(
    argv: &[String], log: &Path, launch: Launch,
) -> std::io::Result<ProcessIdentity> {
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(out).stderr(err);
    // Opened here, written in the child (joining by "0" moves the writer itself) or, joining
    // while it starts, written here with its pid.
    let late = launch.join_while_starting;
    let procs: Vec<OwnedFd> = launch
        .cgroup_procs
        .iter()
        .map(|p| {
            File::options()
                .write(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .collect::<std::io::Result<_>>()?;
    let credentials = launch.credentials.as_ref().map(|(u, g, groups)| {
        (
            rustix::process::Uid::from_raw(*u),
            rustix::process::Gid::from_raw(*g),
            groups.iter().map(|g| rustix::process::Gid::from_raw(*g)).collect::<Vec<_>>(),
        )
    });
    // Every passed descriptor first moves above the numbers being assigned, so placing one can
    // never overwrite another still to be placed.
    let passed: Vec<(RawFd, OwnedFd)> = launch
        .fds
        .iter()
        .map(|(number, fd)| Ok((*number, rustix::io::fcntl_dupfd_cloexec(fd, PASSED_FD_FLOOR)?)))
        .collect::<std::io::Result<_>>()?;
    let procs_raw: Vec<RawFd> =
        if late { Vec::new() } else { procs.iter().map(AsRawFd::as_raw_fd).collect() };
    let passed_raw: Vec<(RawFd, RawFd)> =
        passed.iter().map(|(n, fd)| (*n, fd.as_raw_fd())).collect();
    confine_child(&mut cmd, procs_raw, credentials, passed_raw);
    let mut child = cmd.spawn()?;
    drop(passed);
    drop(launch);
    let pid = child.id();
    if late {
        let joined = procs.iter().try_for_each(|fd| {
            match rustix::io::write(fd, pid.to_string().as_bytes()) {
                // A QEMU that refused its arguments may exit within milliseconds: it stays a
                // zombie (ours, unreaped until the thread below), which the kernel still
                // moves. Gone altogether (a caller whose children are reaped for it) is no
                // error either: nothing of it runs; the caller finds it gone and says why.
                Ok(_) | Err(rustix::io::Errno::SRCH) => Ok(()),
                Err(e) => Err(std::io::Error::from(e)),
            }
        });
        if let Err(e) = joined {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(e.kind(), format!("joining its cgroups: {e}")));
        }
    }
    drop(procs);
    // Our unreaped child: its /proc entry stays until the reaper below waits for it, so its
    // identity is known even if it has already exited (the caller then finds it not alive and
    // reports why, from its log).
    let identity = stat(pid).map(|(start_time, _)| ProcessIdentity { pid, start_time });
    std::thread::Builder::new().name(format!("reap-{pid}")).spawn(move || {
        let _ = child.wait();
    })?;
    identity.ok_or_else(|| std::io::Error::other(format!("process {pid} vanished at once")))
}

type Credentials = (rustix::process::Uid, rustix::process::Gid, Vec<rustix::process::Gid>);

/// Passed descriptors are parked at or above this number until the child places them.
const PASSED_FD_FLOOR: RawFd = 64;

/// What the child does between fork and exec, in this order: a session of its own; into its
/// cgroups (as root, before any memory is charged elsewhere); `no_new_privs`; its groups, gid
/// and uid (switching from root to another uid clears every capability); then the descriptors
/// it must inherit lose close-on-exec.
#[allow(unsafe_code)]
fn confine_child(
    cmd: &mut Command, procs: Vec<RawFd>, credentials: Option<Credentials>,
    passed: Vec<(RawFd, RawFd)>,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child (one thread) and makes only raw system calls
    // (setsid, write, prctl, setgroups, setresgid, setresuid, close_range, dup2), which are
    // async-signal-safe; it allocates nothing (everything it uses was made before the fork),
    // and the descriptors it borrows stay open in the parent until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::setsid()?;
            for fd in &procs {
                rustix::io::write(BorrowedFd::borrow_raw(*fd), b"0")?;
            }
            rustix::thread::set_no_new_privs(true)?;
            if let Some((uid, gid, groups)) = &credentials {
                rustix::thread::set_thread_groups(groups)?;
                rustix::thread::set_thread_res_gid(*gid, *gid, *gid)?;
                rustix::thread::set_thread_res_uid(*uid, *uid, *uid)?;
            }
            // Nothing but the passed descriptors reaches QEMU: whatever our own parent left
            // open without close-on-exec is closed at `exec` too (the dup2s below clear the
            // flag on the passed ones only). A kernel without close_range (< 5.11) leaves
            // them: it is hygiene, the sandbox does not rely on it.
            let _ = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            for (number, fd) in &passed {
                // dup2 leaves the new number without close-on-exec: QEMU inherits it. The
                // target is not ours to close (ManuallyDrop): it becomes QEMU's.
                let mut target = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(*number));
                rustix::io::dup2(BorrowedFd::borrow_raw(*fd), &mut target)?;
            }
            Ok(())
        });
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
            let ts =
                Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
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

/// The live process whose standard output is `log`, if there is exactly one. Used only to
/// recover a QEMU whose PID was never recorded (its owner died right after spawning it): each
/// VM's QEMU writes to its own `qemu.log`, opened by Hangar, so no other process matches.
pub fn find_by_output(log: &Path) -> Option<ProcessIdentity> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        identify(pid).filter(|p| writes_to(*p, log))
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Whether `p`'s standard output is `log` (each VM's QEMU writes to its own `qemu.log`).
pub fn writes_to(p: ProcessIdentity, log: &Path) -> bool {
    std::fs::read_link(format!("/proc/{}/fd/1", p.pid)).is_ok_and(|out| out == log)
}

/// How long `p` has been running (from `/proc/<pid>/stat` and `/proc/uptime`).
pub fn uptime(p: ProcessIdentity) -> Option<Duration> {
    // Linux reports start times in USER_HZ ticks, which is 100 on every mainstream architecture.
    const TICKS_PER_SEC: f64 = 100.0;
    if !alive(p) {
        return None;
    }
    let up: f64 =
        std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
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
        let p = spawn_detached(&argv, &dir.path().join("log"), Launch::default()).unwrap();
        assert!(alive(p));
        let wrong = ProcessIdentity { start_time: p.start_time + 1, ..p };
        assert!(!alive(wrong), "a different start time is a different process");
        assert!(ProcessHandle::open(wrong).is_none());
        assert!(!wait_exit(p, Duration::from_millis(50)));
        assert!(terminate(p, Duration::from_secs(5)));
        assert!(!alive(p));
    }

    #[test]
    fn finds_a_process_by_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("qemu.log");
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        let p = spawn_detached(&argv, &log, Launch::default()).unwrap();
        assert_eq!(find_by_output(&log), Some(p));
        assert_eq!(find_by_output(&dir.path().join("other.log")), None);
        assert!(terminate(p, Duration::from_secs(5)));
        assert_eq!(find_by_output(&log), None);
    }

    #[test]
    fn passes_descriptors_at_their_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out");
        let payload = dir.path().join("payload");
        std::fs::write(&payload, "passed-7").unwrap();
        // Two descriptors whose targets are each other's current numbers would clobber one
        // another if placed naively.
        let a: OwnedFd = File::open(&payload).unwrap().into();
        let argv: Vec<String> = ["sh", "-c", "cat <&5; echo; ls -l /proc/self/fd/ >/dev/null"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = spawn_detached(&argv, &log, Launch::default().pass(5, a)).unwrap();
        assert!(wait_exit(p, Duration::from_secs(10)));
        assert_eq!(std::fs::read_to_string(&log).unwrap().trim(), "passed-7");
    }

    #[test]
    fn passes_no_descriptor_it_was_not_told_to() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out");
        // What a caller's own parent may leave open: a descriptor without close-on-exec.
        let (leaked, _writer) = std::io::pipe().unwrap();
        rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
        let passed: OwnedFd = File::open(dir.path()).unwrap().into();
        let argv: Vec<String> =
            ["sh", "-c", "ls /proc/$$/fd"].iter().map(|s| s.to_string()).collect();
        let p = spawn_detached(&argv, &log, Launch::default().pass(5, passed)).unwrap();
        assert!(wait_exit(p, Duration::from_secs(10)));
        let mut open: Vec<i32> = std::fs::read_to_string(&log)
            .unwrap()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        open.sort_unstable();
        assert_eq!(open, [0, 1, 2, 5], "only stdio and the passed descriptor (leaked: {leaked:?})");
    }

    #[test]
    fn stat_parses_names_with_spaces() {
        let me = std::process::id();
        let (start, gone) = stat(me).unwrap();
        assert!(start > 0 && !gone);
        assert!(stat(u32::MAX - 1).is_none());
    }
}

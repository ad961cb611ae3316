//! `hangar-init`: PID 1 of Hangar's built-in guest images.
//!
//! In order: mount `/proc`, `/sys`, `/dev` (devtmpfs) and `/dev/pts`; load the kernel modules listed in
//! `/etc/hangar/modules`; open the input devices so a press of the ACPI power button is never
//! missed; print `HANGAR_READY {…}` on the console; then either run the `hangar.run=` argv and
//! power off, or supervise an interactive `/bin/sh` until a power-off request.
//!
//! As PID 1 it never exits (that would panic the kernel): every fatal error, panic included,
//! ends in `HANGAR_ERROR {…}` and a power-off. It refuses to run as any other PID, so starting
//! it by mistake on a host does nothing. The one exception is `hangar-init --hangar-tty-exec
//! …`, the guest agent's terminal helper (see `agent::tty_exec`).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hangar_init::agent::Agent;
use hangar_init::reap::Reaper;
use hangar_init::{
    error_line, exit_line, module_name, parse_cmdline, parse_module_list, parse_uptime_ms,
    poweroff_ignored_line, poweroff_line, ready_line, spawn_error_line, BootConfig, ExitOutcome,
    InputEvent, Ready, INPUT_EVENT_SIZE, MODULE_LIST, PATH,
};
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// The console, opened after `/dev` is mounted; before that, stderr (the kernel opens
/// `/dev/console` from the initramfs as fds 0-2).
static CONSOLE: OnceLock<File> = OnceLock::new();
/// Serialises console lines so threads never interleave within a line.
static CONSOLE_LOCK: Mutex<()> = Mutex::new(());
/// `hangar.ignore_poweroff=1`.
static IGNORE_POWEROFF: AtomicBool = AtomicBool::new(false);
/// Set once a shutdown has begun; later requests just wait for it.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);
/// Where the wait loop hands the guest agent the ends of its children.
static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == hangar_init::agent::TTY_EXEC) {
        // Not PID 1: the agent's terminal helper, which becomes the program.
        let error = hangar_init::agent::tty_exec(&args[2..]);
        eprintln!("hangar-init: cannot start the program on its terminal: {error}");
        std::process::exit(if error.kind() == io::ErrorKind::NotFound { 127 } else { 126 });
    }
    if !rustix::process::getpid().is_init() {
        eprintln!(
            "hangar-init: must run as PID 1 inside a Hangar guest image; refusing to run here"
        );
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        fatal(&format!("hangar-init panicked: {info}"));
    }));
    match run() {
        Ok(never) => match never {},
        Err(message) => fatal(&message),
    }
}

/// Writes one line to the console (or stderr before the console is open). Never fails.
fn emit(line: &str) {
    write_console(line, false);
}

/// Like [`emit`], but first writes a `\n` to end whatever partial line a child (a shell
/// prompt, command output without a final newline) may have left, so the protocol line
/// always starts a line. Used for every protocol line that can follow child output: EXIT,
/// POWEROFF, POWEROFF_IGNORED and ERROR. The host drops the empty line this may leave.
fn emit_fresh(line: &str) {
    write_console(line, true);
}

fn write_console(line: &str, fresh: bool) {
    let _guard = CONSOLE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut buf = Vec::with_capacity(line.len() + 2);
    if fresh {
        buf.push(b'\n');
    }
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let _ = match CONSOLE.get() {
        Some(mut console) => console.write_all(&buf),
        None => io::stderr().write_all(&buf),
    };
}

fn warn(message: &str) {
    emit(&format!("hangar-init: warning: {message}"));
}

/// Prints `HANGAR_ERROR` and powers off. Never returns.
fn fatal(message: &str) -> ! {
    shutdown(&error_line(message))
}

/// Prints `line` (starting a fresh console line), syncs and powers off. Only the first
/// caller proceeds; later ones wait forever for the power-off to happen. Never returns.
fn shutdown(line: &str) -> ! {
    if SHUTTING_DOWN.swap(true, Ordering::SeqCst) {
        hang();
    }
    emit_fresh(line);
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        emit(&error_line(&format!("power-off failed: {e}")));
    }
    hang()
}

fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A power-off request (the power button): honoured unless `hangar.ignore_poweroff=1`.
fn power_request(reason: &str) {
    if IGNORE_POWEROFF.load(Ordering::SeqCst) {
        emit_fresh(&poweroff_ignored_line(reason));
    } else {
        shutdown(&poweroff_line(reason));
    }
}

enum Never {}

fn run() -> Result<Never, String> {
    mount_filesystems()?;
    match File::options().read(true).write(true).open("/dev/console") {
        Ok(console) => {
            let _ = CONSOLE.set(console);
        }
        Err(e) => warn(&format!("cannot open /dev/console: {e}; using stderr")),
    }

    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let config = parse_cmdline(&cmdline).map_err(|e| format!("bad kernel command line: {e}"))?;
    IGNORE_POWEROFF.store(config.ignore_poweroff, Ordering::SeqCst);

    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    load_modules(&release);
    // Open the input devices before announcing readiness: a button press before the open
    // would be lost.
    watch_power_button();
    watch_signals();
    if let Err(e) = hangar_init::net::loopback_up() {
        warn(&format!("cannot bring up loopback: {e}"));
    }
    // The network before readiness: a guest announced ready is reachable at its addresses.
    let network_error = config.network.as_ref().and_then(|network| {
        let error = hangar_init::net::apply(network, Path::new("/")).err()?.to_string();
        warn(&format!("cannot configure the network: {error}"));
        Some(error)
    });
    let nics = hangar_init::net::report().unwrap_or_else(|e| {
        warn(&format!("cannot list the network interfaces: {e}"));
        Vec::new()
    });
    if config.no_agent {
        warn("hangar.agent=0: no guest agent");
    } else {
        start_agent();
    }

    let uptime = std::fs::read_to_string("/proc/uptime")
        .map_err(|e| format!("cannot read /proc/uptime: {e}"))?;
    let uptime_ms =
        parse_uptime_ms(&uptime).ok_or_else(|| format!("cannot parse /proc/uptime: {uptime:?}"))?;
    emit(&ready_line(&Ready { kernel: release, uptime_ms, nics, network_error }));

    match config {
        BootConfig { run: Some(argv), .. } => run_command(&argv),
        BootConfig { run: None, .. } => interactive(),
    }
}

fn mount_filesystems() -> Result<(), String> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let mounts: [(&str, &str, MountFlags, &std::ffi::CStr); 4] = [
        ("proc", "/proc", nosuid_nodev_noexec, c""),
        ("sysfs", "/sys", nosuid_nodev_noexec, c""),
        ("devtmpfs", "/dev", MountFlags::NOSUID, c"mode=0755"),
        // Pseudo-terminals, for the agent's `exec -t` (/dev/ptmx opens one here).
        ("devpts", "/dev/pts", MountFlags::NOSUID | MountFlags::NOEXEC, c"mode=0620,ptmxmode=0666"),
    ];
    for (fstype, target, flags, data) in mounts {
        std::fs::create_dir_all(target).map_err(|e| format!("cannot create {target}: {e}"))?;
        match rustix::mount::mount(fstype, target, fstype, flags, data) {
            Ok(()) | Err(Errno::BUSY) => {}
            Err(e) => return Err(format!("cannot mount {fstype} on {target}: {e}")),
        }
    }
    Ok(())
}

/// Loads the modules listed in [`MODULE_LIST`], in order. "Already loaded" is fine; other
/// failures are reported as warnings (the guest may still be useful without, say, virtio-rng).
fn load_modules(release: &str) {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(text) => parse_module_list(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            warn(&format!("cannot read {MODULE_LIST}: {e}"));
            return;
        }
    };
    for rel in list {
        let path = format!("/lib/modules/{release}/{rel}");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn(&format!("module {}: cannot open {path}: {e}", module_name(&rel)));
                continue;
            }
        };
        match rustix::system::finit_module(&file, c"", 0) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => warn(&format!("module {}: cannot load {path}: {e}", module_name(&rel))),
        }
    }
}

/// Opens every `/dev/input/event*` and watches each in a thread for `KEY_POWER` presses.
fn watch_power_button() {
    let mut devices: Vec<_> = match std::fs::read_dir("/dev/input") {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with("event"))
            })
            .collect(),
        Err(e) => {
            warn(&format!("no /dev/input ({e}): the power button will not be handled"));
            return;
        }
    };
    devices.sort();
    if devices.is_empty() {
        warn("no input event devices: the power button will not be handled");
    }
    for path in devices {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn(&format!("cannot open {}: {e}", path.display()));
                continue;
            }
        };
        let name = path.display().to_string();
        let spawned = std::thread::Builder::new().name(format!("input-{name}")).spawn(move || {
            let mut raw = [0u8; INPUT_EVENT_SIZE];
            loop {
                match file.read_exact(&mut raw) {
                    Ok(()) => {
                        if InputEvent::decode(&raw).is_power_press() {
                            power_request("power-button");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn(&format!("reading {name}: {e}; no longer watched"));
                        return;
                    }
                }
            }
        });
        if let Err(e) = spawned {
            warn(&format!("cannot start a thread for {}: {e}", path.display()));
        }
    }
}

/// Busybox's `poweroff`, `halt` and `reboot` (without `-f`) signal PID 1 with SIGUSR2, SIGUSR1
/// and SIGTERM. All three become a power-off request (the VM runs with `-no-reboot`).
fn watch_signals() {
    use signal_hook::consts::{SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals = match signal_hook::iterator::Signals::new([SIGUSR1, SIGUSR2, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            warn(&format!("cannot handle signals: {e}; `poweroff` needs -f"));
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let reason = match signal {
                SIGUSR2 => "poweroff",
                SIGUSR1 => "halt",
                _ => "reboot",
            };
            power_request(reason);
        }
    });
    if let Err(e) = spawned {
        warn(&format!("cannot start the signal thread: {e}"));
    }
}

/// Serves the host's agent sessions on the virtio-serial port `org.hangar.agent.0`, if the VM
/// has one (a VM started without it gets no agent, and says so on the console).
fn start_agent() {
    let reaper = REAPER.get_or_init(|| Arc::new(Reaper::default())).clone();
    let spawned = std::thread::Builder::new().name("agent".into()).spawn(move || {
        // The port appears when virtio_console has probed it, shortly after its module loads.
        let mut port = None;
        for _ in 0..100 {
            port = hangar_init::agent::find_port(std::path::Path::new("/sys/class/virtio-ports"));
            if port.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(port) = port else {
            warn("no virtio-serial port org.hangar.agent.0: no guest agent");
            return;
        };
        let opened = File::options().read(true).write(true).open(&port);
        let (reader, writer) = match opened.and_then(|f| f.try_clone().map(|w| (f, w))) {
            Ok(pair) => pair,
            Err(e) => {
                warn(&format!("cannot open the agent port {}: {e}", port.display()));
                return;
            }
        };
        // This binary is also the terminal helper (`--hangar-tty-exec`).
        let helper = std::path::PathBuf::from("/proc/self/exe");
        let agent = Agent::in_guest(Box::new(writer), reaper, helper);
        // With no host connected the port reads end-of-file at once, and poll() calls it
        // ready all the while: level-triggered readiness says nothing. But the port's wait
        // queue is woken when a host connects (virtio_console's PORT_OPEN), and an
        // edge-triggered epoll reports exactly such wake-ups, so an idle agent sleeps until
        // one comes. The timeouts are a safety net, not the mechanism: 1 ms right after a
        // session (as before), 1 s otherwise.
        match port_waiter(&reader) {
            Ok(mut wait) => agent.serve_until(reader, |recent| {
                wait(if recent { Duration::from_millis(1) } else { Duration::from_secs(1) });
                true
            }),
            Err(e) => {
                warn(&format!("no epoll for the agent port ({e}); polling it every 50 ms"));
                agent.serve(reader, Some(Duration::from_millis(50)));
            }
        }
    });
    if let Err(e) = spawned {
        warn(&format!("cannot start the agent thread: {e}"));
    }
}

/// An edge-triggered epoll on the agent's port: the returned wait blocks until the port's
/// state changes (a host connects or sends) or `timeout` passes.
fn port_waiter(port: &File) -> io::Result<impl FnMut(Duration)> {
    use rustix::event::epoll;
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        port,
        epoll::EventData::new_u64(0),
        epoll::EventFlags::IN | epoll::EventFlags::ET,
    )?;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4);
    Ok(move |timeout: Duration| {
        let timeout = rustix::time::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        events.clear();
        let _ = epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&timeout));
    })
}

fn console_stdio() -> Result<(Stdio, Stdio, Stdio), String> {
    let Some(console) = CONSOLE.get() else {
        return Ok((Stdio::inherit(), Stdio::inherit(), Stdio::inherit()));
    };
    let dup = || {
        console
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("cannot duplicate the console fd: {e}"))
    };
    Ok((dup()?, dup()?, dup()?))
}

fn command(argv: &[String]) -> Result<Command, String> {
    let (stdin, stdout, stderr) = console_stdio()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .env("TERM", "linux")
        .current_dir("/")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    Ok(cmd)
}

/// Waits for `child` to end, reaping every other process that ends meanwhile.
fn wait_for(child: u32) -> Result<ExitOutcome, String> {
    REAPER.get_or_init(|| Arc::new(Reaper::default())).wait_for(child)
}

fn run_command(argv: &[String]) -> Result<Never, String> {
    let mut cmd = command(argv)?;
    match cmd.spawn() {
        Ok(child) => {
            let outcome = wait_for(child.id())?;
            shutdown(&exit_line(outcome))
        }
        Err(e) => shutdown(&spawn_error_line(&format!("cannot start {:?}: {e}", argv[0]))),
    }
}

/// Supervises an interactive shell on the console, respawning it whenever it exits.
fn interactive() -> Result<Never, String> {
    let exists = |p: &str| std::path::Path::new(p).exists();
    let argv: Vec<String> = if exists("/bin/setsid") && exists("/bin/cttyhack") {
        // A new session whose controlling terminal is the real console tty (cttyhack finds
        // it), so job control and ^C work in the shell.
        vec!["/bin/setsid".into(), "/bin/cttyhack".into(), "/bin/sh".into()]
    } else {
        vec!["/bin/sh".into()]
    };
    loop {
        let started = Instant::now();
        let mut cmd = command(&argv)?;
        let child =
            cmd.spawn().map_err(|e| format!("cannot start the shell {:?}: {e}", argv.join(" ")))?;
        let outcome = wait_for(child.id())?;
        let how = match outcome {
            ExitOutcome::Code(c) => format!("exited with code {c}"),
            ExitOutcome::Signal(s) => format!("was killed by signal {s}"),
        };
        emit(&format!("hangar-init: the shell {how}; starting a new one"));
        // Rate-limit a shell that dies at once (not synchronisation: nothing waits on this).
        if started.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

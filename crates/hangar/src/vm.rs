//! The commands that manage real VMs through the QEMU engine.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_api::{ErrorBody, EventView, Operation, OperationRequest, VmView};
use hangar_control::{Control, DaemonMode};
use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Lifecycle, StopMode};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::VmName;
use hangar_qemu::console::{self, LogTail, Marker};
use hangar_qemu::{process, EngineOptions, Phase, QemuEngine, StartOptions};
use hangar_spec::Diagnostic;

use crate::{Failure, Output};

/// Default graceful-stop timeout.
pub const DEFAULT_STOP_TIMEOUT: u64 = 30;

pub fn home() -> PathBuf {
    hangar_plan::probe::hangar_home()
}

pub fn engine() -> Result<QemuEngine, Failure> {
    QemuEngine::open(&home(), EngineOptions::default()).map_err(|e| crate::coded(&e))
}

fn fail(e: Error) -> Failure {
    crate::coded(&e)
}

pub fn vm_name(s: &str) -> Result<VmName, Failure> {
    VmName::new(s).map_err(|e| crate::coded(&Error::InvalidName(e)))
}

/// A one-line progress display on stderr: a spinner with the phase and elapsed time on a TTY,
/// plain phase lines otherwise.
struct Progress {
    phase: Arc<Mutex<String>>,
    done: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
    tty: bool,
    started: Instant,
}

impl Progress {
    fn new(what: String) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let phase = Arc::new(Mutex::new(String::from("starting")));
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ticker = tty.then(|| {
            let (phase, done) = (phase.clone(), done.clone());
            std::thread::spawn(move || {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                let mut i = 0;
                while !done.load(Ordering::SeqCst) {
                    let p = phase.lock().unwrap().clone();
                    eprint!(
                        "\r\x1b[2K{} {what}: {p} ({:.1}s)",
                        frames[i % frames.len()],
                        started.elapsed().as_secs_f64()
                    );
                    i += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                eprint!("\r\x1b[2K");
            })
        });
        Progress {
            phase,
            done,
            ticker,
            tty,
            started,
        }
    }

    fn phase(&self, p: &str) {
        *self.phase.lock().unwrap() = p.to_string();
        if !self.tty {
            eprintln!("[{:>5.1}s] {p}", self.started.elapsed().as_secs_f64());
        }
    }

    fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

static ALLOW_PATHS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Records `--allow-path` for [`control`].
pub fn set_allow_paths(paths: Vec<PathBuf>) {
    let _ = ALLOW_PATHS.set(paths);
}

/// `--allow-path`, as given.
pub fn allow_paths() -> &'static [PathBuf] {
    ALLOW_PATHS.get().map(Vec::as_slice).unwrap_or(&[])
}

/// The [`Control`] every VM command goes through: `hangard` when it runs (see
/// `HANGAR_DAEMON`), else this process, through the same library.
pub fn control() -> Result<Box<dyn Control>, Failure> {
    let mode = DaemonMode::from_env().map_err(from_body)?;
    let control = hangar_control::connect(&home(), mode, allow_paths()).map_err(from_body)?;
    if !allow_paths().is_empty() && !control.describe().starts_with("local") {
        eprintln!(
            "warning: --allow-path applies only without hangard; the daemon allows what `hangard --allow-path` says (`hangar doctor` lists it)"
        );
    }
    Ok(control)
}

/// A failure from an API error body (either side's), keeping its code, path and hint.
pub fn from_body(e: ErrorBody) -> Failure {
    let code = e.error_code().unwrap_or(ErrorCode::EngineFailed);
    let mut message = e.message;
    if let Some(op) = e.operation {
        message = format!("{message} (operation {op})");
    }
    Failure {
        diagnostics: vec![Diagnostic::new(code, e.path.unwrap_or_default(), message).hint(e.hint)],
        exit: None,
    }
}

/// Runs `request` through `control`, showing its phases on stderr.
fn run_op(
    control: &dyn Control,
    what: String,
    request: OperationRequest,
) -> Result<Operation, Failure> {
    let progress = Progress::new(what);
    let result = control.run(request, &|p| progress.phase(p));
    progress.finish();
    result.map_err(from_body)
}

fn vm_after(op: &Operation) -> Result<VmView, Failure> {
    op.result
        .as_ref()
        .and_then(|r| r.vm.clone())
        .ok_or_else(|| {
            crate::failure(
                ErrorCode::EngineFailed,
                format!("operation {} finished without the VM's state", op.id),
                "",
            )
        })
}

fn boot_and_report(
    control: &dyn Control,
    vm: &str,
    no_wait: bool,
    timeout: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let op = run_op(
        control,
        format!("starting {vm}"),
        OperationRequest::Start {
            vm: vm.to_string(),
            no_wait,
            timeout_s: timeout,
        },
    )?;
    let view = vm_after(&op)?;
    let boot = view
        .boot_ms
        .map(|ms| format!(" in {:.2} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    let what = if no_wait {
        "vCPUs running"
    } else {
        "guest ready"
    };
    let _ = writeln!(out, "{vm}: {} ({}), {what}{boot}", view.state, view.accel);
    Ok(())
}

pub fn up(
    file: &Path,
    no_wait: bool,
    timeout: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    // Validate here first: a bad spec is reported with every diagnostic, daemon or not.
    let doc = hangar_spec::load_document(file)?;
    let control = control()?;
    let name = doc.canonical.spec.name.to_string();
    control
        .run(
            OperationRequest::Create {
                spec: doc.document,
                base_dir: Some(doc.base_dir.display().to_string()),
            },
            &|_| {},
        )
        .map_err(from_body)?;
    boot_and_report(&*control, &name, no_wait, timeout, out)
}

pub fn start(
    name: &str,
    no_wait: bool,
    timeout: Option<u64>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    boot_and_report(&*control()?, vm.as_str(), no_wait, timeout, out)
}

pub fn stop(name: &str, force: bool, timeout: u64, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = control()?
        .run(
            OperationRequest::Stop {
                vm: vm.to_string(),
                force,
                timeout_s: Some(timeout),
            },
            &|_| {},
        )
        .map_err(from_body)?;
    let view = vm_after(&op)?;
    let escalated = op.result.as_ref().and_then(|r| r.escalated) == Some(true);
    let how = if escalated {
        format!(", forced after the guest ignored {timeout} s of power-off")
    } else {
        String::new()
    };
    let took = op.result.as_ref().map(|r| r.took_ms).unwrap_or_default();
    let _ = writeln!(
        out,
        "{vm}: {}{how} ({:.2} s)",
        view.state,
        took as f64 / 1000.0
    );
    Ok(())
}

pub fn simple(name: &str, op: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?.to_string();
    let request = match op {
        "pause" => OperationRequest::Pause { vm: vm.clone() },
        "resume" => OperationRequest::Resume { vm: vm.clone() },
        "reboot" => OperationRequest::Reboot { vm: vm.clone() },
        _ => unreachable!("{op}"),
    };
    let done = control()?.run(request, &|_| {}).map_err(from_body)?;
    let _ = writeln!(out, "{vm}: {}", vm_after(&done)?.state);
    Ok(())
}

pub fn rm(name: &str, force: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    control()?
        .run(
            OperationRequest::Delete {
                vm: vm.to_string(),
                force,
            },
            &|_| {},
        )
        .map_err(|e| {
            let mut f = from_body(e);
            if let Some(d) = f.diagnostics.first_mut() {
                if d.code == ErrorCode::InvalidTransition {
                    d.hint = format!(
                        "stop it first (`hangar stop {vm}`), or use `hangar rm --force {vm}`"
                    );
                }
            }
            f
        })?;
    let _ = writeln!(out, "{vm}: removed");
    Ok(())
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn ps(all: bool, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let views = control()?.list().map_err(from_body)?;
    let rows: Vec<_> = views.into_iter().filter(|v| all || v.is_live()).collect();
    if output == Output::Json {
        return print_json(out, &rows);
    }
    let _ = writeln!(
        out,
        "{:<24} {:<9} {:<5} {:>5} {:>8} {:>8} {:>8}  REASON",
        "NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "UPTIME", "PID"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<24} {:<9} {:<5} {:>5} {:>7}M {:>8} {:>8}  {}",
            r.name,
            r.state,
            r.accel,
            r.vcpus,
            r.memory_mib,
            r.uptime_s
                .map(|s| fmt_duration(Duration::from_secs(s)))
                .unwrap_or_else(|| "-".into()),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.reason.unwrap_or_default(),
        );
    }
    Ok(())
}

/// `--output json` for listings: one pretty-printed document.
pub(crate) fn print_json(
    out: &mut dyn Write,
    value: &impl serde::Serialize,
) -> Result<(), Failure> {
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).expect("listings serialise")
    );
    Ok(())
}

fn fmt_time(ms: u64) -> String {
    // Seconds since the epoch, UTC, without a date library: good enough for a listing.
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

/// `hangar ops`: the operation journal, newest first.
pub fn ops(limit: usize, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let list = control()?.operations(limit).map_err(from_body)?;
    if output == Output::Json {
        return print_json(out, &list);
    }
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:<20} {:<11} {:>9}  ERROR",
        "ID", "KIND", "TARGET", "STATUS", "STARTED"
    );
    for op in list {
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:<20} {:<11} {:>9}  {}",
            op.id,
            op.kind,
            op.target,
            op.status,
            fmt_time(op.created_at),
            op.error.map(|e| e.code).unwrap_or_default()
        );
    }
    Ok(())
}

/// `hangar ops show ID`: one operation as JSON.
pub fn op_show(id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let op = control()?.operation(id).map_err(from_body)?;
    print_json(out, &op)
}

/// `hangar images`: the guest images installed in $HANGAR_HOME/images.
pub fn images(output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let home = home();
    let list = hangar_api::images(&home).map_err(|e| {
        crate::failure(
            ErrorCode::Io,
            format!("{}: {e}", home.join("images").display()),
            "",
        )
    })?;
    if output == Output::Json {
        return print_json(out, &list);
    }
    let _ = writeln!(
        out,
        "{:<16} {:<9} {:>8}  KERNEL",
        "NAME", "COMPLETE", "SIZE"
    );
    for i in list {
        let kernel = i
            .manifest
            .as_ref()
            .and_then(|m| m["kernel_release"].as_str())
            .unwrap_or("-");
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:>7}M  {kernel}",
            i.name,
            if i.complete { "yes" } else { "no" },
            i.size_bytes >> 20
        );
    }
    Ok(())
}

pub fn inspect(name: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let rec = engine.record(&vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    let history = engine.history(&vm).map_err(fail)?;
    let doc = serde_json::json!({
        "name": vm.as_str(),
        "state": rec.state,
        "reason": rec.reason,
        "spec_hash": rec.spec_hash,
        "spec": rec.spec,
        "plan": plan,
        "process": rec.process.map(|p| serde_json::json!({"pid": p.pid, "start_time": p.start_time})),
        "boot_ms": rec.boot_ms,
        "sleeping_on": rec.sleeping_on,
        "runtime_dir": rec.runtime_dir,
        "confinement": engine.confinement(&vm).map_err(fail)?,
        "history": history,
    });
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("json"));
    Ok(())
}

fn console_path(engine: &QemuEngine, vm: &VmName) -> Result<PathBuf, Failure> {
    let rec = engine.record(vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    plan.serial.log.map(PathBuf::from).ok_or_else(|| {
        crate::failure(
            ErrorCode::Unsupported,
            format!("{vm} has no console log (serial mode none)"),
            "set [serial] mode = \"log\" or \"socket\"",
        )
    })
}

pub fn logs(name: &str, follow: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let path = console_path(&engine, &vm)?;
    // The half rotated away first, whole (it no longer grows).
    for line in LogTail::from(0).read_lines(&console::rotated(&path)) {
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    let mut tail = LogTail::from(0);
    loop {
        for line in tail.read_lines(&path) {
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        let rec = engine.record(&vm).map_err(fail)?;
        if rec.process.is_none() {
            for line in tail.read_lines(&path) {
                let _ = writeln!(out, "{line}");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_name() -> VmName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let bits = nanos ^ std::process::id().rotate_left(16);
    VmName::new(format!("run-{bits:08x}")).expect("valid")
}

pub struct RunArgs {
    pub image: String,
    pub memory: u32,
    pub vcpus: u32,
    pub rm: bool,
    pub timeout: Option<u64>,
    pub command: Vec<String>,
}

/// Boots a throwaway guest that runs one command, streams its output, and returns its exit code.
pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let name = run_name();
    let spec_text = format!(
        "schema_version = 1\nname = \"{name}\"\n[machine]\nvcpus = {}\nmemory_mib = {}\n[boot]\nimage = {:?}\ncmdline = {:?}\n[serial]\nmode = \"log\"\n",
        args.vcpus,
        args.memory,
        args.image,
        console::run_argument(&args.command)
    );
    let spec = hangar_spec::parse(&spec_text, hangar_spec::Format::Toml, Path::new("/"))?;
    let engine = engine()?;
    engine.define(&spec.spec).map_err(fail)?;
    let cleanup = |engine: &QemuEngine| {
        if args.rm {
            let _ = engine.stop(&name, StopMode::Force, &CancelToken::new());
            let _ = engine.undefine(&name);
        }
    };
    let plan = QemuEngine::plan_of(&engine.record(&name).map_err(fail)?).map_err(fail)?;
    let log = PathBuf::from(plan.serial.log.clone().unwrap_or_default());
    let progress = Progress::new(format!("booting {name}"));
    let report = |p: Phase| progress.phase(p.as_str());
    let opts = StartOptions {
        no_wait: false,
        timeout: args.timeout.map(Duration::from_secs),
        progress: Some(&report),
    };
    let started = engine.start_with(&name, &opts, &CancelToken::new());
    progress.finish();
    if let Err(e) = started {
        cleanup(&engine);
        return Err(fail(e));
    }
    // Stream what the command prints: everything after the ready line, until its exit line.
    let mut tail = LogTail::from(0);
    let mut seen_ready = false;
    // hangar-init puts an empty line before each marker; hold empty lines until we know.
    let mut held_empty = 0usize;
    let deadline = Instant::now() + Duration::from_secs(args.timeout.unwrap_or(24 * 3600));
    let code = loop {
        let mut exit = None;
        for line in tail.read_lines(&log) {
            match console::parse_marker(&line) {
                Some(Marker::Ready { .. }) => seen_ready = true,
                Some(Marker::Exit { code, signal }) => {
                    // Whatever follows (the kernel powering off) is not the command's output.
                    exit = Some(code.unwrap_or(128 + signal.unwrap_or(0)));
                    break;
                }
                Some(_) => held_empty = 0,
                None if seen_ready && line.is_empty() => held_empty += 1,
                None if seen_ready => {
                    for _ in 0..std::mem::take(&mut held_empty) {
                        let _ = writeln!(out);
                    }
                    let _ = writeln!(out, "{line}");
                }
                None => {}
            }
        }
        let _ = out.flush();
        if let Some(code) = exit {
            break code;
        }
        let rec = engine.record(&name).map_err(fail)?;
        if rec.process.is_none() {
            cleanup(&engine);
            return Err(crate::failure(
                ErrorCode::EngineFailed,
                format!(
                    "the guest stopped before the command finished ({})",
                    rec.reason.unwrap_or_else(|| rec.state.to_string())
                ),
                "run `hangar logs` on the VM (without --rm) to see its console",
            ));
        }
        if Instant::now() > deadline {
            cleanup(&engine);
            return Err(crate::coded(&Error::Timeout(
                args.timeout.unwrap_or(0) * 1000,
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The guest powers itself off after the exit line; wait for that, then tidy up.
    if let Ok(rec) = engine.record(&name) {
        if let Some(p) = rec.process {
            process::wait_exit(p, Duration::from_secs(10));
        }
    }
    if args.rm {
        cleanup(&engine);
    } else {
        let _ = engine.stop(&name, StopMode::Force, &CancelToken::new());
    }
    Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

pub fn snapshot_save(
    name: &str,
    id: &str,
    sleep: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = run_op(
        &*control()?,
        format!("saving {vm}"),
        OperationRequest::SnapshotSave {
            vm: vm.to_string(),
            id: id.to_string(),
            sleep,
        },
    )?;
    let result = op.result.unwrap_or_default();
    let size = result.snapshot.map(|s| s.size_bytes).unwrap_or_default();
    let _ = writeln!(
        out,
        "{vm}: saved {id} ({} MiB) in {:.2} s",
        size >> 20,
        result.took_ms as f64 / 1000.0
    );
    Ok(())
}

pub fn snapshot_restore(name: &str, id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let op = run_op(
        &*control()?,
        format!("restoring {vm}"),
        OperationRequest::SnapshotRestore {
            vm: vm.to_string(),
            id: id.to_string(),
        },
    )?;
    let view = vm_after(&op)?;
    let _ = writeln!(
        out,
        "{vm}: {} from {id} in {:.2} s",
        view.state,
        view.boot_ms.unwrap_or(0) as f64 / 1000.0
    );
    Ok(())
}

pub fn snapshot_ls(name: Option<&str>, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let vm = name.map(vm_name).transpose()?;
    let list = control()?
        .snapshots(vm.as_ref().map(|v| v.as_str()))
        .map_err(from_body)?;
    if output == Output::Json {
        return print_json(out, &list);
    }
    let _ = writeln!(out, "{:<24} {:<24} {:>8}  ENGINE", "ID", "VM", "SIZE");
    for s in list {
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:>7}M  {}",
            s.id.as_str(),
            s.vm.as_str(),
            s.size_bytes >> 20,
            s.engine_version
        );
    }
    Ok(())
}

pub fn snapshot_rm(id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    control()?
        .run(
            OperationRequest::SnapshotDelete { id: id.to_string() },
            &|_| {},
        )
        .map_err(from_body)?;
    let _ = writeln!(out, "{id}: removed");
    Ok(())
}

/// Restores the terminal when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            rustix::stdio::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Attaches the terminal to the VM's serial console until Ctrl-] (or the VM stops).
pub fn console(name: &str) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let rec = engine.record(&vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    let Some(socket) = plan.serial.socket.clone() else {
        return Err(crate::failure(
            ErrorCode::Unsupported,
            format!("{vm} has no console socket"),
            "set [serial] mode = \"socket\" (the default) in its spec",
        ));
    };
    if rec.process.is_none() {
        return Err(crate::failure(
            ErrorCode::InvalidTransition,
            format!("{vm} is {}", rec.state),
            &format!("start it first: hangar start {vm}"),
        ));
    }
    // One attacher at a time: QEMU's socket would queue a second client silently.
    let lock_path = Path::new(&plan.runtime_dir).join("console.lock");
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| crate::failure(ErrorCode::Io, e.to_string(), "check the runtime directory"))?;
    if rustix::fs::flock(
        &lock_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        return Err(crate::failure(
            ErrorCode::Busy,
            format!("another `hangar console {vm}` is attached"),
            "detach it first (Ctrl-])",
        ));
    }
    let stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
        crate::failure(
            ErrorCode::EngineFailed,
            format!("cannot connect to {socket}: {e}"),
            "check `hangar ps`",
        )
    })?;
    eprintln!("connected to {vm}'s console; press Ctrl-] to detach\r");
    let raw = RawMode::enter();
    let mut reader = stream
        .try_clone()
        .map_err(|e| crate::failure(ErrorCode::Io, e.to_string(), ""))?;
    let printer = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
            {
                break;
            }
        }
    });
    let mut writer = stream;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(pos) = buf[..n].iter().position(|b| *b == 0x1d) {
            let _ = writer.write_all(&buf[..pos]);
            break;
        }
        if writer.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(raw);
    let _ = printer.join();
    eprintln!("\ndetached from {vm}");
    Ok(())
}

fn check(out: &mut dyn Write, ok: bool, what: &str, detail: &str, fix: &str) -> bool {
    let mark = if ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "[{mark}] {what}: {detail}");
    if !ok && !fix.is_empty() {
        let _ = writeln!(out, "       fix: {fix}");
    }
    ok
}

pub fn doctor(out: &mut dyn Write) -> Result<(), Failure> {
    use hangar_plan::HostProbe;
    let home = home();
    let facts = hangar_plan::probe::SystemProbe { home: home.clone() }.probe();
    let mut healthy = true;
    healthy &= check(
        out,
        facts.qemu.version.is_some(),
        "qemu",
        &match &facts.qemu.version {
            Some(v) => format!("{} {v}", facts.qemu.binary),
            None => format!("{} not found on PATH", facts.qemu.binary),
        },
        "run scripts/setup (installs qemu-system-x86 10.x from bookworm-backports)",
    );
    let qemu_img = hangar_plan::probe::find_in_path("qemu-img");
    healthy &= check(
        out,
        qemu_img.is_some(),
        "qemu-img",
        &qemu_img
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not found".into()),
        "apt-get install qemu-utils",
    );
    let (kvm_ok, why) = facts.kvm.verdict();
    check(
        out,
        true,
        "accelerator",
        &if kvm_ok {
            format!("kvm ({why})")
        } else {
            format!("tcg, because {why}")
        },
        "",
    );
    let image = Path::new(&facts.image_dir).join("minimal");
    let image_ok = image.join("vmlinuz").exists() && image.join("initrd.img").exists();
    healthy &= check(
        out,
        image_ok,
        "guest image minimal",
        &image.display().to_string(),
        "run scripts/setup (builds the built-in image)",
    );
    let writable = std::fs::create_dir_all(&home).is_ok() && tempfile_in(&home);
    healthy &= check(
        out,
        writable,
        "state directory",
        &home.display().to_string(),
        "set HANGAR_HOME to a writable directory, or run as root",
    );
    let free = free_bytes(&home);
    let enough = free.map(|b| b > 1 << 30).unwrap_or(false);
    healthy &= check(
        out,
        enough,
        "disk space",
        &free
            .map(|b| format!("{} MiB free", b >> 20))
            .unwrap_or_else(|| "unknown".into()),
        "free at least 1 GiB for overlays and snapshots",
    );
    if let Some(cap) = facts.capacity {
        check(
            out,
            true,
            "memory",
            &format!(
                "{} MiB available (a VM needs its RAM + {} MiB for QEMU, else E_HOST_CAPACITY)",
                cap.memory_available_mib, facts.confinement.memory_overhead_mib
            ),
            "",
        );
    }
    let c = &facts.confinement;
    let confined = !c.enabled || !c.root || c.qemu_group.is_some();
    healthy &= check(
        out,
        confined,
        "QEMU confinement",
        &if !c.enabled {
            "off (HANGAR_CONFINE=off): QEMU runs as this user, with seccomp but no cgroup".into()
        } else if !c.root {
            "partial: not root, so QEMU runs as this user (no_new_privs, seccomp), with no cgroup"
                .into()
        } else {
            match c.qemu_group {
                Some(g) => format!(
                    "each QEMU as a uid of its own in group {} ({g}), no capabilities, no_new_privs, seccomp",
                    hangar_plan::probe::QEMU_GROUP
                ),
                None => format!("group {} is missing", hangar_plan::probe::QEMU_GROUP),
            }
        },
        "run scripts/setup (it creates the hangar-qemu group)",
    );
    check(
        out,
        true,
        "cgroups",
        &match c.cgroup {
            hangar_plan::CgroupVersion::V1 => {
                "v1 (memory, cpu, pids under /sys/fs/cgroup/NAME/hangar/<vm>)".to_string()
            }
            hangar_plan::CgroupVersion::V2 => "v2 (/sys/fs/cgroup/hangar/<vm>)".to_string(),
            hangar_plan::CgroupVersion::None if !c.root => {
                "none (only root makes cgroups)".to_string()
            }
            hangar_plan::CgroupVersion::None => {
                "none (neither v2 with memory, cpu and pids, nor those v1 controllers)".to_string()
            }
        },
        "",
    );
    check(
        out,
        true,
        "cpus",
        &format!(
            "{} (TCG boots are CPU-bound: boot at most this many VMs at once)",
            facts.cpu_count
        ),
        "",
    );
    healthy &= match hangar_control::allowed_roots(&home, allow_paths()) {
        Ok(roots) => check(
            out,
            true,
            "allowed paths (without hangard)",
            &roots
                .roots()
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            "",
        ),
        Err(e) => check(out, false, "allowed paths", &e.message, &e.hint),
    };
    if let Ok(pem) = std::fs::read(home.join("tls/cert.pem")) {
        let fingerprint = hangar_api::client::fingerprint_of_pem(&pem);
        healthy &= check(
            out,
            fingerprint.is_some(),
            "hangard TLS certificate",
            &fingerprint
                .map(|f| format!("{f} (clients set HANGAR_TLS_FINGERPRINT to it)"))
                .unwrap_or_else(|| "tls/cert.pem is not a PEM certificate".into()),
            "move $HANGAR_HOME/tls aside; hangard --listen-tcp makes a new one",
        );
    }
    if let Ok(Some(remote)) = hangar_control::remote_for(&home, DaemonMode::Auto) {
        match remote.call::<serde_json::Value>("GET", "/v1/host", None) {
            Ok(host) => {
                let roots: Vec<&str> = host["allowed_paths"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                check(out, true, "allowed paths (hangard)", &roots.join(", "), "");
                let audit = host["audit"].as_str().unwrap_or("unknown");
                let head = &host["audit_head"];
                healthy &= check(
                    out,
                    audit == "ok",
                    "audit log",
                    &if audit == "ok" {
                        format!(
                            "ok, signed head at entry {} ({})",
                            head["seq"], host["audit_key"].as_str().unwrap_or("?")
                        )
                    } else {
                        audit.to_string()
                    },
                    "hangard refuses every change until the log is fixed: run `hangar audit verify`, keep the damaged log as evidence, move it aside and restart hangard",
                );
            }
            Err(e) => {
                check(out, false, "hangard", &e.message, &e.hint);
            }
        }
    }
    if healthy {
        Ok(())
    } else {
        Err(Failure {
            diagnostics: vec![],
            exit: Some(2),
        })
    }
}

fn tempfile_in(dir: &Path) -> bool {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"x").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail * st.f_frsize)
}

/// Prints the event stream (from the daemon when it runs, else from the store: the same
/// stream either way).
pub fn events(
    since: u64,
    follow: bool,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let control = control()?;
    let mut after = since;
    loop {
        let page = control.events_since(after, 256).map_err(from_body)?;
        for e in &page {
            after = e.seq();
            let line = if output == Output::Json {
                serde_json::to_string(e).expect("json")
            } else {
                match e {
                    EventView::Transition {
                        seq,
                        vm,
                        from,
                        to,
                        at,
                        cause,
                        operation,
                    } => format!(
                        "{seq:>6}  {}  {vm:<20} {:>9} -> {to:<9} ({cause}){}",
                        fmt_time(*at),
                        from.as_deref().unwrap_or("(new)"),
                        operation
                            .as_ref()
                            .map(|o| format!(" {o}"))
                            .unwrap_or_default()
                    ),
                    EventView::Engine {
                        seq,
                        vm,
                        at,
                        message,
                    } => format!("{seq:>6}  {}  {vm:<20} engine: {message}", fmt_time(*at)),
                }
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if page.is_empty() {
            if !follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

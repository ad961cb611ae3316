//! What goes through a running VM's guest agent: `hangar exec` (docker exec's exit codes: the
//! program's own; 126 not executable, 127 not found, 128+N killed by signal N) and `hangar cp`.

use std::io::Write;

use hangar_agent::Connection;
use hangar_core::contracts::{ExecControl, ExecIo, ExecRequest};
use hangar_core::error::ErrorCode;
use hangar_core::lifecycle::VmState;

use crate::common::*;
use crate::Failure;

/// `hangar exec`'s flags.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Send this terminal's stdin to the program (without, it reads end-of-file).
    #[arg(long, short)]
    pub interactive: bool,
    /// Give the program a pseudo-terminal the size of this one (window size changes follow);
    /// with -i this terminal is in raw mode meanwhile, so Ctrl-C and the like reach the program
    /// as keys, and it is restored however hangar ends.
    #[arg(long, short)]
    pub tty: bool,
    /// Set an environment variable for the program (repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest (default /).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user (default root).
    #[arg(long, short, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// The VM (running, booted from an image with the agent: the built-in ones).
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command; its exit code, docker exec's way. Through hangard when it runs (which
/// checks the caller may and audits it), else straight to the VM's agent.
pub fn exec(args: ExecArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let vm = vm_name(&args.name)?;
    let guest = guest()?;
    let mut env = args.env;
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // The program draws for this terminal, as ssh and docker exec -t arrange.
        env.extend(std::env::var("TERM").ok().map(|t| format!("TERM={t}")));
    }
    let request = ExecRequest {
        argv: args.command,
        env,
        cwd: args.workdir,
        user: args.user,
        tty: args.tty.then(terminal_size),
    };
    let stdin =
        args.interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let (signals, control_rx) = std::sync::mpsc::channel();
    forward_signals(signals);
    // Dropped on every way out of this function, which restores the terminal (a panic unwinds
    // through it too).
    let _raw = (args.tty && args.interactive).then(RawMode::enter).flatten();
    let mut stderr = std::io::stderr();
    let io = ExecIo { stdin, stdout: out, stderr: &mut stderr, control: Some(control_rx) };
    match guest.exec(&vm, &request, io) {
        // A wait status is 0..=255, a signal's 128 + N at most 255.
        Ok(status) => Ok(u8::try_from(status.shell_code()).unwrap_or(255)),
        Err(e) => Err(crate::coded(&e)),
    }
}

/// What the guest agent says of a running VM (for `hangar inspect`): its facts, `null` when
/// the VM does not run or has no agent, or `{"error": …}` when it does not answer within a
/// second (inspect must not hang on a busy or broken guest).
pub fn info(state: &VmState, agent_socket: Option<&str>) -> serde_json::Value {
    let Some(socket) = agent_socket.filter(|_| *state == VmState::Running) else {
        return serde_json::Value::Null;
    };
    let asked =
        Connection::open_with(std::path::Path::new(socket), std::time::Duration::from_secs(1), 1)
            .and_then(|mut c| c.info());
    match asked {
        Ok(info) => info,
        Err(e) => {
            serde_json::json!({"error": {"code": hangar_core::error::Coded::code(&e), "message": e.to_string()}})
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM go to the program in the guest instead of ending this process:
/// the program decides, and its exit (130 for an unhandled SIGINT) comes back as usual. A
/// change of this terminal's size (SIGWINCH) resizes the program's terminal, if it has one.
fn forward_signals(to: std::sync::mpsc::Sender<ExecControl>) {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGWINCH};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGWINCH]) else {
        return; // the defaults stay: a Ctrl-C ends hangar, and the agent's next sync the program
    };
    let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            let _ = to.send(match signal {
                SIGWINCH => ExecControl::Resize(terminal_size()),
                _ => ExecControl::Signal(signal),
            });
        }
    });
}

/// This process's terminal size as `[rows, cols]` (stdout's, else stdin's); 24 × 80 without
/// a terminal.
fn terminal_size() -> [u16; 2] {
    [
        rustix::termios::tcgetwinsize(std::io::stdout()),
        rustix::termios::tcgetwinsize(std::io::stdin()),
    ]
    .into_iter()
    .flatten()
    .find(|w| w.ws_row > 0 && w.ws_col > 0)
    .map_or([24, 80], |w| [w.ws_row, w.ws_col])
}

/// The local terminal (stdin) in raw mode: keys go to the program as typed, without echo or
/// line editing here. Restores the saved settings when dropped.
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin, if stdin is a terminal (piped input needs none).
    fn enter() -> Option<RawMode> {
        use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use rustix::termios::{tcsetattr, OptionalActions};
        // Drain: what the program printed last is written before echo comes back.
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Drain, &self.saved);
    }
}

/// `hangar cp`'s arguments.
#[derive(clap::Args)]
pub struct CpArgs {
    /// What to copy: a local file or directory, or NAME:/path for one in a running VM.
    /// Directories carry regular files and subdirectories with their modes and times;
    /// symlinks, devices and the like are left out (and counted).
    pub src: String,
    /// Where to: NAME:/path when SRC is local, a local path when SRC is in a VM. A path ending
    /// in / (or, locally, an existing directory) gets SRC's name inside it. A directory is
    /// never merged into an existing one: its destination must not exist yet.
    pub dst: String,
}

/// Where guest calls go: hangard when it runs (`HANGAR_DAEMON`), else the VMs' agents.
fn guest() -> Result<Box<dyn hangar_core::contracts::Guest>, Failure> {
    let mode = hangar_control::DaemonMode::from_env().map_err(from_body)?;
    hangar_control::guest_for(&home(), mode).map_err(from_body)
}

/// Whether the guest path `path` of `vm` is a directory (asked with `test -d`).
fn guest_is_dir(
    guest: &dyn hangar_core::contracts::Guest, vm: &hangar_core::ids::VmName, path: &str,
) -> Result<bool, Failure> {
    let request =
        ExecRequest { argv: vec!["test".into(), "-d".into(), path.into()], ..Default::default() };
    let (mut sink_out, mut sink_err) = (std::io::sink(), std::io::sink());
    let io = ExecIo { stdin: None, stdout: &mut sink_out, stderr: &mut sink_err, control: None };
    let status = guest.exec(vm, &request, io).map_err(|e| crate::coded(&e))?;
    Ok(status.shell_code() == 0)
}

/// Copies a directory out of a guest into `dst` (which must not exist): spooled beside it,
/// then unpacked whole. What it held.
fn tree_out(
    guest: &dyn hangar_core::contracts::Guest, vm: &hangar_core::ids::VmName, path: &str,
    dst: &std::path::Path,
) -> Result<hangar_tree::Counts, Failure> {
    let parent =
        dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let io =
        |e: std::io::Error| crate::failure(ErrorCode::Io, format!("{}: {e}", dst.display()), "");
    if std::fs::symlink_metadata(dst).is_ok() {
        return Err(crate::failure(
            ErrorCode::InvalidArgument,
            format!("{} exists; a directory is copied to a new name", dst.display()),
            "choose a destination that does not exist yet",
        ));
    }
    let mut spool = tempfile_in(parent).map_err(io)?;
    guest.read_tree(vm, path, &mut spool).map_err(|e| crate::coded(&e))?;
    std::io::Seek::rewind(&mut spool).map_err(io)?;
    hangar_tree::unpack(std::io::BufReader::new(spool), dst).map_err(io)
}

/// An unnamed file in `dir` (gone when closed).
fn tempfile_in(dir: &std::path::Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Copies the local directory `src` into the guest as the new directory `path`.
fn tree_in(
    guest: &dyn hangar_core::contracts::Guest, vm: &hangar_core::ids::VmName,
    src: &std::path::Path, path: &str,
) -> Result<hangar_core::contracts::TreeCounts, Failure> {
    let (from, to) = rustix::pipe::pipe()
        .map_err(|e| crate::failure(ErrorCode::Io, format!("no pipe: {e}"), ""))?;
    let src_owned = src.to_path_buf();
    let packer = std::thread::spawn(move || hangar_tree::pack(&src_owned, std::fs::File::from(to)));
    let written = guest.write_tree(vm, path, Box::new(std::fs::File::from(from)));
    let packed = packer.join().unwrap_or_else(|_| Err(std::io::Error::other("packing panicked")));
    let mut counts = written.map_err(|e| crate::coded(&e))?;
    let packed =
        packed.map_err(|e| crate::failure(ErrorCode::Io, format!("{}: {e}", src.display()), ""))?;
    // What was left out here never reached the guest.
    counts.skipped += packed.skipped;
    Ok(counts)
}

/// `NAME:/absolute/path` as (NAME, path); anything else is a local path.
fn remote(arg: &str) -> Option<(&str, &str)> {
    let (name, path) = arg.split_once(':')?;
    (path.starts_with('/') && hangar_core::ids::VmName::new(name).is_ok()).then_some((name, path))
}

/// Copies one regular file into or out of a running VM, keeping its mode and mtime.
pub fn cp(args: CpArgs, out: &mut dyn Write) -> Result<(), Failure> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let started = std::time::Instant::now();
    let bytes = match (remote(&args.src), remote(&args.dst)) {
        (Some((name, path)), None) => {
            let mut dst = std::path::PathBuf::from(&args.dst);
            if args.dst.ends_with('/') || dst.is_dir() {
                dst.push(path.trim_end_matches('/').rsplit('/').next().unwrap_or("file"));
            }
            let (guest, vm) = (guest()?, vm_name(name)?);
            if guest_is_dir(&*guest, &vm, path)? {
                let c = tree_out(&*guest, &vm, path, &dst)?;
                return report_tree(out, c.files, c.dirs, c.skipped, c.bytes, started);
            }
            let temp = dst.with_file_name(format!(
                ".{}.hangar-cp",
                dst.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ));
            let io = |what: &str, e: std::io::Error| {
                crate::failure(ErrorCode::Io, format!("{what} {}: {e}", temp.display()), "")
            };
            let mut file = std::fs::File::create(&temp).map_err(|e| io("cannot create", e))?;
            let got = guest.read_file(&vm, path, &mut file);
            let done = got.map_err(|e| crate::coded(&e)).and_then(|meta| {
                file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
                    .and_then(|()| {
                        let when = std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(meta.mtime.max(0) as u64);
                        file.set_modified(when)
                    })
                    .and_then(|()| std::fs::rename(&temp, &dst))
                    .map_err(|e| io("cannot finish", e))
                    .map(|()| meta.size)
            });
            if done.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            done?
        }
        (None, Some((name, path))) => {
            let src = std::path::Path::new(&args.src);
            let io = |e: std::io::Error| {
                crate::failure(ErrorCode::Io, format!("{}: {e}", src.display()), "")
            };
            let mut dst = path.to_string();
            if dst.ends_with('/') {
                dst.push_str(&src.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            }
            if std::fs::metadata(src).map_err(io)?.is_dir() {
                let c = tree_in(&*guest()?, &vm_name(name)?, src, &dst)?;
                return report_tree(out, c.files, c.dirs, c.skipped, c.bytes, started);
            }
            let file = std::fs::File::open(src).map_err(io)?;
            let meta = file.metadata().map_err(io)?;
            if !meta.is_file() {
                return Err(crate::failure(
                    ErrorCode::InvalidArgument,
                    format!("{} is neither a regular file nor a directory", src.display()),
                    "copy regular files and directories",
                ));
            }
            guest()?
                .write_file(
                    &vm_name(name)?,
                    &dst,
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    Box::new(file),
                )
                .map_err(|e| crate::coded(&e))?;
            meta.len()
        }
        _ => {
            return Err(crate::failure(
                ErrorCode::InvalidArgument,
                format!(
                    "one of {:?} and {:?} must be NAME:/path, the other local",
                    args.src, args.dst
                ),
                "hangar cp ./file vm:/root/file, or hangar cp vm:/etc/hostname .",
            ))
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let _ = writeln!(out, "copied {bytes} bytes in {secs:.2} s");
    Ok(())
}

/// `hangar cp`'s line for a directory.
fn report_tree(
    out: &mut dyn Write, files: u64, dirs: u64, skipped: u64, bytes: u64,
    started: std::time::Instant,
) -> Result<(), Failure> {
    let secs = started.elapsed().as_secs_f64();
    let left_out = match skipped {
        0 => String::new(),
        n => format!("; {n} left out (neither files nor directories)"),
    };
    let _ = writeln!(
        out,
        "copied {files} files in {dirs} directories, {bytes} bytes in {secs:.2} s{left_out}"
    );
    Ok(())
}

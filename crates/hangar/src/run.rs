//! `hangar run`: a throwaway guest that runs one command.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Lifecycle, StopMode};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::VmName;
use hangar_core::spec::{BootSource, SerialMode, VmSpec};
use hangar_qemu::console::{self, LogTail, Marker};
use hangar_qemu::{process, Phase, QemuEngine, StartOptions};
use hangar_spec::{limits, BUILTIN_IMAGES};

use crate::Failure;

use crate::common::*;
use crate::progress::Progress;

pub(crate) fn run_name() -> VmName {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let bits = nanos ^ std::process::id().rotate_left(16);
    VmName::new(format!("run-{bits:08x}")).expect("valid")
}

/// `hangar run`'s flags.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Built-in image to boot.
    #[arg(long, default_value = "minimal")]
    pub image: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Remove the VM afterwards (otherwise it stays, stopped, for `hangar logs`).
    #[arg(long)]
    pub rm: bool,
    /// Seconds to wait for boot and for the command.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The spec of a `hangar run` guest, built as a value (the flags are checked against the same
/// limits the spec validator uses, naming the flag).
fn run_spec(name: VmName, args: &RunArgs) -> Result<VmSpec, Failure> {
    let out_of_range = |flag: &str, value: u32, (min, max): (i64, i64)| {
        (!(min..=max).contains(&i64::from(value))).then(|| {
            crate::failure(
                ErrorCode::SpecOutOfRange,
                format!("{flag} {value} is outside {min}..={max}"),
                "",
            )
        })
    };
    if let Some(f) = out_of_range("--vcpus", args.vcpus, limits::VCPUS)
        .or_else(|| out_of_range("--memory", args.memory, limits::MEMORY_MIB))
    {
        return Err(f);
    }
    if !BUILTIN_IMAGES.contains(&args.image.as_str()) {
        return Err(crate::failure(
            ErrorCode::SpecUnknownImage,
            format!("--image {:?} is not a built-in image", args.image),
            &format!("use one of: {}", BUILTIN_IMAGES.join(", ")),
        ));
    }
    let cmdline = console::run_argument(&args.command);
    if cmdline.len() > limits::CMDLINE {
        return Err(crate::failure(
            ErrorCode::SpecOutOfRange,
            format!(
                "the command is {} bytes on the kernel command line, over the {} allowed",
                cmdline.len(),
                limits::CMDLINE
            ),
            "pass a shorter command (put a long script in a file on a disk)",
        ));
    }
    let mut spec = VmSpec::new(name);
    spec.machine.vcpus = args.vcpus;
    spec.machine.memory_mib = args.memory;
    spec.boot = BootSource::Image { image: args.image.clone(), cmdline };
    spec.serial.mode = SerialMode::Log;
    Ok(spec)
}

/// Boots a throwaway guest that runs one command, streams its output, and returns its exit code.
pub fn run(args: RunArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    let name = run_name();
    let spec = run_spec(name.clone(), &args)?;
    let engine = engine()?;
    engine.define(&spec).map_err(fail)?;
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
    // The console file gives no event: it is read every 5 ms (which bounds how late the exit
    // line is seen), the VM's record (is QEMU still there?) looked at every LOOK_EVERY.
    const LOOK_EVERY: Duration = Duration::from_millis(100);
    let mut last_look = Instant::now();
    // QEMU seen gone: the console is read once more (the exit line may have landed just
    // before it went) before that counts as the guest dying early.
    let mut gone: Option<String> = None;
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
        if let Some(why) = gone {
            cleanup(&engine);
            return Err(crate::failure(
                ErrorCode::EngineFailed,
                format!("the guest stopped before the command finished ({why})"),
                "run `hangar logs` on the VM (without --rm) to see its console",
            ));
        }
        if last_look.elapsed() < LOOK_EVERY {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        last_look = Instant::now();
        let rec = engine.record(&name).map_err(fail)?;
        if rec.process.is_none() {
            gone = Some(rec.reason.unwrap_or_else(|| rec.state.to_string()));
            continue;
        }
        if Instant::now() > deadline {
            cleanup(&engine);
            return Err(crate::coded(&Error::Timeout(args.timeout.unwrap_or(0) * 1000)));
        }
    };
    if args.rm {
        // The command has ended and nothing of the VM is kept: no need to wait for the guest
        // to power itself off (its disks are overlays about to be deleted).
        cleanup(&engine);
    } else {
        // The guest powers itself off after the exit line (flushing its disks); wait for
        // that, then tidy up.
        if let Ok(rec) = engine.record(&name) {
            if let Some(p) = rec.process {
                process::wait_exit(p, Duration::from_secs(10));
            }
        }
        let _ = engine.stop(&name, StopMode::Force, &CancelToken::new());
    }
    Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(vcpus: u32, memory: u32, command: &[&str]) -> RunArgs {
        RunArgs {
            image: "minimal".into(),
            memory,
            vcpus,
            rm: true,
            timeout: None,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_run_spec_is_the_one_a_spec_file_with_the_same_settings_gives() {
        let name = VmName::new("run-0000002a").unwrap();
        let a = args(2, 192, &["sh", "-c", "echo 'hi there'; uname -r"]);
        let built = run_spec(name.clone(), &a).unwrap();
        let text = format!(
            "schema_version = 1\nname = \"{name}\"\n[machine]\nvcpus = 2\nmemory_mib = 192\n[boot]\nimage = \"minimal\"\ncmdline = {:?}\n[serial]\nmode = \"log\"\n",
            console::run_argument(&a.command)
        );
        let parsed = hangar_spec::parse(&text, hangar_spec::Format::Toml, Path::new("/")).unwrap();
        assert_eq!(built, parsed.spec);
        assert_eq!(hangar_spec::CanonicalSpec::new(built).hash, parsed.hash);
    }

    #[test]
    fn run_flags_outside_the_spec_limits_are_refused_naming_the_flag() {
        let name = VmName::new("run-0000002a").unwrap();
        let e = run_spec(name.clone(), &args(0, 256, &["true"])).unwrap_err();
        assert_eq!(e.diagnostics[0].code, ErrorCode::SpecOutOfRange);
        assert!(e.diagnostics[0].message.contains("--vcpus 0"), "{:?}", e.diagnostics);
        let e = run_spec(name.clone(), &args(1, 16, &["true"])).unwrap_err();
        assert!(e.diagnostics[0].message.contains("--memory 16"));
        let mut a = args(1, 256, &["true"]);
        a.image = "ubuntu".into();
        let e = run_spec(name, &a).unwrap_err();
        assert_eq!(e.diagnostics[0].code, ErrorCode::SpecUnknownImage);
    }
}

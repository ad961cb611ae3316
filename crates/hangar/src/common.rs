//! What every command shares: the home, the engine, the control (daemon or local), turning
//! errors into failures, and printing listings.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use hangar_api::{ErrorBody, Operation, OperationRequest, VmView};
use hangar_control::{Control, DaemonMode};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::VmName;
use hangar_qemu::{EngineOptions, QemuEngine};
use hangar_spec::Diagnostic;

use crate::Failure;

use crate::progress::Progress;

/// Default graceful-stop timeout.
pub const DEFAULT_STOP_TIMEOUT: u64 = 30;

pub fn home() -> PathBuf {
    hangar_plan::probe::hangar_home()
}

pub fn engine() -> Result<QemuEngine, Failure> {
    QemuEngine::open(&home(), EngineOptions::default()).map_err(|e| crate::coded(&e))
}

pub(crate) fn fail(e: Error) -> Failure {
    crate::coded(&e)
}

pub fn vm_name(s: &str) -> Result<VmName, Failure> {
    VmName::new(s).map_err(|e| crate::coded(&Error::InvalidName(e)))
}

pub(crate) static ALLOW_PATHS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

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
pub fn from_body(e: impl Into<ErrorBody>) -> Failure {
    let e: ErrorBody = e.into();
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
pub(crate) fn run_op(
    control: &dyn Control, what: String, request: OperationRequest,
) -> Result<Operation, Failure> {
    let progress = Progress::new(what);
    let result = control.run(request, &|p| progress.phase(p));
    progress.finish();
    result.map_err(from_body)
}

pub(crate) fn vm_after(op: &Operation) -> Result<VmView, Failure> {
    op.result.as_ref().and_then(|r| r.vm.clone()).ok_or_else(|| {
        crate::failure(
            ErrorCode::EngineFailed,
            format!("operation {} finished without the VM's state", op.id),
            "",
        )
    })
}

/// `--output json` for listings: one pretty-printed document.
pub(crate) fn print_json(
    out: &mut dyn Write, value: &impl serde::Serialize,
) -> Result<(), Failure> {
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(value).expect("listings serialise"));
    Ok(())
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

pub(crate) fn fmt_time(ms: u64) -> String {
    // Seconds since the epoch, UTC, without a date library: good enough for a listing.
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

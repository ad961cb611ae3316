//! `qemu-img`: overlays, blank disks, resize, info, internal snapshots. Running the engine's own
//! tool is the supported interface to its image formats.

use std::path::Path;
use std::process::Command;

use hangar_core::spec::DiskFormat;

/// What `qemu-img` reported when it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("qemu-img {args}: {message}")]
pub struct ImgError {
    /// The arguments it ran with.
    pub args: String,
    /// Its stderr (or why it could not run).
    pub message: String,
}

fn run(args: &[&str]) -> Result<String, ImgError> {
    let fail = |message: String| ImgError { args: args.join(" "), message };
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run qemu-img: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Creates a qcow2 overlay whose base is never written.
pub fn create_overlay(
    path: &Path, backing: &Path, backing_format: DiskFormat,
) -> Result<(), ImgError> {
    run(&["create", "-q", "-f", "qcow2", "-b", s(backing), "-F", backing_format.as_str(), s(path)])
        .map(drop)
}

/// Creates a blank image.
pub fn create_blank(path: &Path, format: DiskFormat, size_mib: u64) -> Result<(), ImgError> {
    sized("create", path, format, size_mib)
}

/// Grows an image.
pub fn resize(path: &Path, format: DiskFormat, size_mib: u64) -> Result<(), ImgError> {
    sized("resize", path, format, size_mib)
}

/// `qemu-img <command> -q -f <format> <path> <size>M`: the two commands that take a size.
fn sized(command: &str, path: &Path, format: DiskFormat, size_mib: u64) -> Result<(), ImgError> {
    let size = format!("{size_mib}M");
    run(&[command, "-q", "-f", format.as_str(), s(path), &size]).map(drop)
}

/// Virtual size in MiB.
pub fn virtual_size_mib(path: &Path) -> Result<u64, ImgError> {
    let text = run(&["info", "--output=json", "-U", s(path)])?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ImgError {
        args: format!("info {}", path.display()),
        message: format!("unreadable JSON: {e}"),
    })?;
    v["virtual-size"].as_u64().map(|b| b.div_ceil(1 << 20)).ok_or_else(|| ImgError {
        args: format!("info {}", path.display()),
        message: "no virtual-size".into(),
    })
}

/// Checks an image's consistency.
pub fn check(path: &Path) -> Result<(), ImgError> {
    run(&["check", "-q", s(path)]).map(drop)
}

/// Creates an internal snapshot (qcow2 only).
pub fn snapshot_create(path: &Path, name: &str) -> Result<(), ImgError> {
    run(&["snapshot", "-c", name, s(path)]).map(drop)
}

/// Deletes an internal snapshot.
pub fn snapshot_delete(path: &Path, name: &str) -> Result<(), ImgError> {
    run(&["snapshot", "-d", name, s(path)]).map(drop)
}

//! Putting an image in place: skipped when the directory already holds exactly this image,
//! otherwise written to a staging sibling and swapped in with one atomic rename or exchange.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::manifest::{FileDigest, Manifest};
use crate::ImageError;

/// True when `out` already holds this manifest and files matching it.
pub(super) fn is_unchanged(out: &Path, manifest_json: &[u8], manifest: &Manifest) -> bool {
    let same = |name: &str, want: &FileDigest| {
        fs::read(out.join(name)).is_ok_and(|bytes| FileDigest::of(&bytes) == *want)
    };
    fs::read(out.join("manifest.json")).is_ok_and(|m| m == manifest_json)
        && same("vmlinuz", &manifest.files.vmlinuz)
        && same("initrd.img", &manifest.files.initrd)
}

/// Removes a staging directory unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `files` into a fresh sibling directory of `out`, then puts it in place with one
/// atomic rename (or an atomic exchange when `out` exists), so readers see either the old
/// image or the new one, never a mix.
pub(super) fn install(out: &Path, files: &[(&str, &[u8])]) -> Result<(), ImageError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(ImageError::io("create the directory", &parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned());
    let staging_path = parent.join(format!(".{name}.staging-{}", std::process::id()));
    if staging_path.exists() {
        fs::remove_dir_all(&staging_path)
            .map_err(ImageError::io("remove the stale directory", &staging_path))?;
    }
    fs::create_dir(&staging_path).map_err(ImageError::io("create the directory", &staging_path))?;
    let mut staging = Staging { path: staging_path, armed: true };
    for (file_name, bytes) in files {
        let path = staging.path.join(file_name);
        let mut f = File::create(&path).map_err(ImageError::io("create", &path))?;
        f.write_all(bytes).map_err(ImageError::io("write", &path))?;
        f.sync_all().map_err(ImageError::io("sync", &path))?;
    }
    sync_dir(&staging.path)?;

    if out.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging.path,
            rustix::fs::CWD,
            out,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| ImageError::io("exchange into place", out)(e.into()))?;
        // The staging path now holds the previous image; the guard removes it.
    } else {
        fs::rename(&staging.path, out).map_err(ImageError::io("rename into place", out))?;
        staging.armed = false;
    }
    sync_dir(&parent)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(ImageError::io("sync the directory", dir))
}

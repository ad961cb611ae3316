//! Hangar's state directory as a trust boundary of its own: private to its owner, and never
//! redirected by a symlink planted in it.
//!
//! `$HANGAR_HOME` is created `0700` and must belong to the user running Hangar (a directory
//! another user owns could be rewritten under us). Nothing Hangar writes under it is reached
//! through a symbolic link: every directory and file on the way is checked with `lstat`, and a
//! link found there is `E_STORE_CORRUPT` naming it, never followed. (`images` may be a link:
//! Hangar only reads it, and test homes point it at shared images.)

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::{Result, StoreError};

fn unavailable(path: &Path, message: impl ToString) -> StoreError {
    StoreError::Unavailable { path: path.display().to_string(), message: message.to_string() }
}

fn symlink(path: &Path) -> StoreError {
    StoreError::Corrupt {
        table: "files",
        key: path.display().to_string(),
        detail: "is a symbolic link inside Hangar's state directory; Hangar never follows one there (move it aside)".into(),
    }
}

/// Creates `home` (`0700`) if absent; refuses one that is a symlink, is not a directory, or
/// belongs to another user; makes an existing one that others may read or write, or its group
/// write, `0700`.
pub fn prepare_home(home: &Path) -> Result<()> {
    match std::fs::symlink_metadata(home) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| unavailable(home, e)),
        Err(e) => Err(unavailable(home, e)),
        Ok(meta) => {
            if meta.file_type().is_symlink() {
                return Err(symlink(home));
            }
            if !meta.is_dir() {
                return Err(unavailable(home, "is not a directory"));
            }
            let me = rustix::process::geteuid().as_raw();
            if meta.uid() != me {
                return Err(unavailable(
                    home,
                    format!(
                        "belongs to uid {}, not to this user (uid {me}): another user's state directory is refused (set HANGAR_HOME to one of your own)",
                        meta.uid()
                    ),
                ));
            }
            // Readable or writable by others, or writable by its group: made private. Search
            // only (0711, so users the daemon maps reach its socket) and a group that may read
            // and search (0750, 0710: the QEMU group passes through) are operators' choices:
            // every file and directory inside is private on its own.
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o026 != 0 {
                std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| unavailable(home, e))?;
            }
            Ok(())
        }
    }
}

/// Refuses `path` if it is a symlink (absent is fine).
pub fn no_symlink(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(symlink(path)),
        _ => Ok(()),
    }
}

/// The directory `home/rel`, created (`0700`) as needed, with no symlink on the way from
/// `home` to it.
pub fn state_dir(home: &Path, rel: impl AsRef<Path>) -> Result<PathBuf> {
    let mut at = home.to_path_buf();
    for c in rel.as_ref().components() {
        let Component::Normal(part) = c else {
            return Err(unavailable(
                &home.join(rel.as_ref()),
                "is not a plain path below the state directory",
            ));
        };
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(symlink(&at)),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(unavailable(&at, "is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o700).create(&at) {
                    Ok(()) => {}
                    // Made by a concurrent process: re-checked on the next component's lstat.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if std::fs::symlink_metadata(&at)
                            .map(|m| m.file_type().is_symlink())
                            .unwrap_or(false)
                        {
                            return Err(symlink(&at));
                        }
                    }
                    Err(e) => return Err(unavailable(&at, e)),
                }
            }
            Err(e) => return Err(unavailable(&at, e)),
        }
    }
    Ok(at)
}

/// Refuses a symlink anywhere in the tree under `dir` (entries are `lstat`ed, never followed).
pub fn no_symlink_in(dir: &Path) -> Result<()> {
    no_symlink(dir)?;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            return Err(symlink(&path));
        }
        if kind.is_dir() {
            no_symlink_in(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink as link;

    #[test]
    fn a_home_is_private_and_symlinks_in_it_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        prepare_home(&home).unwrap();
        let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // One open to everyone is made private; a group-only one is left as the operator chose.
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o777)).unwrap();
        prepare_home(&home).unwrap();
        let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for chosen in [0o750, 0o710, 0o711] {
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(chosen)).unwrap();
            prepare_home(&home).unwrap();
            let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, chosen);
        }
        for open in [0o755, 0o770, 0o703] {
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(open)).unwrap();
            prepare_home(&home).unwrap();
            let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{open:o}");
        }
        // Directories are made private, and a planted link is refused, not followed.
        let made = state_dir(&home, "vms/a/disks").unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        link(&elsewhere, home.join("vms/b")).unwrap();
        let e = state_dir(&home, "vms/b/disks").unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("vms/b"), "{e}");
        assert!(!elsewhere.join("disks").exists());
        link("/etc/passwd", home.join("vms/a/console.log")).unwrap();
        assert!(no_symlink_in(&home.join("vms/a")).is_err());
        let linked_home = dir.path().join("linked");
        link(&home, &linked_home).unwrap();
        assert!(prepare_home(&linked_home).is_err());
    }

    #[test]
    fn another_users_state_directory_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED another_users_state_directory_is_refused: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = prepare_home(&theirs).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
    }
}

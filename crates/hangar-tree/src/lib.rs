//! A directory as a tar stream and back (`hangar cp` of directories, both ways through the
//! guest agent). Either side may be hostile to the other (a guest to the host that runs as
//! root, or the reverse), so [`unpack`] takes only what a copy needs:
//!
//! - regular files and directories; symlinks, hard links, devices and the rest are skipped and
//!   counted (never followed, never created);
//! - paths made of plain names only (no `..`, no absolute paths), so nothing lands outside the
//!   destination;
//! - permission bits without setuid, setgid or sticky, and modification times;
//! - the destination must not exist: everything is unpacked into a fresh sibling directory and
//!   renamed into place at the end (`RENAME_NOREPLACE`), so the tree appears whole or not at
//!   all, and a failure leaves nothing behind.
//!
//! [`pack`] writes the same subset, sorted by name, so a tree packs to the same bytes twice.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// What a pack or unpack did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Regular files.
    pub files: u64,
    /// Directories, the top one included.
    pub dirs: u64,
    /// Entries that are neither (symlinks, devices, …), left out.
    pub skipped: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Writes the tree at `dir` to `out` as a tar stream: `.` (the top directory) first, then
/// every entry by path, sorted.
pub fn pack(dir: &Path, out: impl Write) -> io::Result<Counts> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut builder = tar::Builder::new(out);
    let mut counts = Counts::default();
    append_dir(&mut builder, Path::new("."), &meta)?;
    counts.dirs += 1;
    walk(&mut builder, dir, Path::new(""), &mut counts)?;
    builder.into_inner()?.flush()?;
    Ok(counts)
}

fn header(kind: tar::EntryType, meta: &std::fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

fn append_dir<W: Write>(
    builder: &mut tar::Builder<W>, path: &Path, meta: &std::fs::Metadata,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, meta, 0);
    builder.append_data(&mut h, path, io::empty())
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>, dir: &Path, rel: &Path, counts: &mut Counts,
) -> io::Result<()> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let (path, rel) = (dir.join(&name), rel.join(&name));
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            append_dir(builder, &rel, &meta)?;
            counts.dirs += 1;
            walk(builder, &path, &rel, counts)?;
        } else if meta.is_file() {
            let file = File::open(&path)?;
            let mut h = header(tar::EntryType::Regular, &meta, meta.len());
            builder.append_data(&mut h, &rel, file.take(meta.len()))?;
            counts.files += 1;
            counts.bytes += meta.len();
        } else {
            counts.skipped += 1;
        }
    }
    Ok(())
}

/// The relative path `path` names inside the destination, if it is made of plain names only
/// (`.` parts dropped); `None` for anything that could leave it.
pub fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Unpacks the tar stream `input` into a new directory `dest` (see the crate's rules). On any
/// error nothing is left at `dest` or beside it.
pub fn unpack(input: impl Read, dest: &Path) -> io::Result<Counts> {
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Err(invalid(format!("{} names no directory", dest.display())));
    };
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists; copy to a new name", dest.display()),
        ));
    }
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let staging =
        parent.join(format!(".{}.hangar-tree-{}", name.to_string_lossy(), std::process::id()));
    std::fs::create_dir(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
    let unpacked = unpack_into(input, &staging).and_then(|counts| {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging,
            rustix::fs::CWD,
            dest,
            rustix::fs::RenameFlags::NOREPLACE,
        )?;
        Ok(counts)
    });
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    unpacked
}

fn unpack_into(input: impl Read, root: &Path) -> io::Result<Counts> {
    let mut counts = Counts::default();
    // Directory modes and times are set last, deepest first: a read-only directory would
    // refuse its own contents, and every file written would bump its mtime.
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = inside(&raw)
            .ok_or_else(|| invalid(format!("{} would land outside the copy", raw.display())))?;
        let target = root.join(&rel);
        let (mode, mtime) = (entry.header().mode()? & 0o777, entry.header().mtime()?);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                // Every ancestor is one this function made (plain names only, no links ever
                // created), so nothing here is followed out of `root`.
                std::fs::create_dir_all(&target)?;
                dirs.push((target, mode, mtime));
                counts.dirs += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if rel.as_os_str().is_empty() {
                    return Err(invalid("a file in place of the top directory".into()));
                }
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let mut file =
                    File::options().write(true).create_new(true).mode_private().open(&target)?;
                counts.bytes += io::copy(&mut entry, &mut file)?;
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
                counts.files += 1;
            }
            _ => counts.skipped += 1,
        }
    }
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode, mtime) in dirs {
        File::open(&dir)?.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(counts)
}

/// Files are created owner-only and get their own mode once written.
trait Private {
    fn mode_private(&mut self) -> &mut Self;
}

impl Private for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

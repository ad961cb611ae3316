//! A deterministic writer for the `newc` cpio format (the Linux initramfs format).
//!
//! Every header has mtime 0, uid/gid 0, device 0:0 and no checksum; inode numbers are
//! sequential from 1 in the order entries are written; entries appear in exactly the order
//! they are added, with any missing parent directory (mode 0755) emitted just before its first
//! child; the archive ends with the `TRAILER!!!` entry. The same calls therefore always give
//! the same bytes.
//!
//! Layout of one entry: the 6-byte magic `070701`, thirteen 8-digit upper-case hex fields
//! (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
//! namesize including the NUL, check), the NUL-terminated name padded with NULs to a multiple
//! of 4 bytes (counting the 110-byte header), then the data padded to a multiple of 4.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// File-type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Mode given to parent directories the writer creates implicitly.
pub const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Why an entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The archive path is empty, absolute-after-normalisation, or has `.`/`..`/empty
    /// components or a NUL byte.
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same path was added twice (implicit parent directories count).
    #[error("duplicate archive path {path:?}")]
    Duplicate {
        /// The normalised path.
        path: String,
    },
    /// A file does not fit the format's 32-bit size field.
    #[error(
        "{path:?} is too large for a newc cpio archive ({size} bytes; the limit is 4 GiB - 1)"
    )]
    TooLarge {
        /// The normalised path.
        path: String,
        /// Its size in bytes.
        size: u64,
    },
    /// Writing to the underlying sink failed.
    #[error("writing the cpio archive: {0}")]
    Io(#[from] io::Error),
}

/// Streams a deterministic `newc` archive into `W`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: BTreeSet<String>,
    offset: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an empty archive.
    pub fn new(out: W) -> Self {
        CpioWriter { out, next_ino: 1, written: BTreeSet::new(), offset: 0 }
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        let path = self.prepare(path)?;
        self.entry(&path, S_IFDIR | (mode & 0o7777), 2, 0, 0, &[])
    }

    /// Adds a regular file with permission bits `mode` and contents `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), CpioError> {
        let path = self.prepare(path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, 0, 0, data)
    }

    /// Adds a symbolic link pointing at `target` (stored verbatim, mode 0777).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let path = self.prepare(path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    /// Adds a character device node `major:minor` with permission bits `mode`.
    pub fn char_device(
        &mut self, path: &str, mode: u32, major: u32, minor: u32,
    ) -> Result<(), CpioError> {
        let path = self.prepare(path)?;
        self.entry(&path, S_IFCHR | (mode & 0o7777), 1, major, minor, &[])
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(0, 0, 1, 0, 0, 0, "TRAILER!!!")?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Validates and normalises `path`, checks it is new, and emits missing parents.
    fn prepare(&mut self, path: &str) -> Result<String, CpioError> {
        let normalised = normalise(path)?;
        if self.written.contains(&normalised) {
            return Err(CpioError::Duplicate { path: normalised });
        }
        let mut parent = String::new();
        let components: Vec<&str> = normalised.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if !self.written.contains(&parent) {
                let p = parent.clone();
                self.entry(&p, S_IFDIR | IMPLICIT_DIR_MODE, 2, 0, 0, &[])?;
            }
        }
        Ok(normalised)
    }

    fn entry(
        &mut self, path: &str, mode: u32, nlink: u32, rdev_major: u32, rdev_minor: u32, data: &[u8],
    ) -> Result<(), CpioError> {
        let size = u32::try_from(data.len())
            .map_err(|_| CpioError::TooLarge { path: path.to_owned(), size: data.len() as u64 })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(ino, mode, nlink, size, rdev_major, rdev_minor, path)?;
        self.write(data)?;
        self.pad()?;
        self.written.insert(path.to_owned());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self, ino: u32, mode: u32, nlink: u32, filesize: u32, rdev_major: u32,
        rdev_minor: u32, name: &str,
    ) -> Result<(), CpioError> {
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime
            filesize, 0, // devmajor
            0, // devminor
            rdev_major, rdev_minor, namesize, 0, // check
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let rem = (self.offset % 4) as usize;
        if rem != 0 {
            self.write(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

/// Normalises an archive path: strips leading `/`, rejects empty, `.`, `..` and empty
/// components and NUL bytes.
pub fn normalise(path: &str) -> Result<String, CpioError> {
    let invalid = |reason| CpioError::InvalidPath { path: path.to_owned(), reason };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("empty path"));
    }
    if trimmed.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    for component in trimmed.split('/') {
        match component {
            "" => return Err(invalid("empty component (\"//\" or a trailing \"/\")")),
            "." | ".." => return Err(invalid("\".\" and \"..\" components are not allowed")),
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_of_a_small_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"hi").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();

        // Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check; then name, NUL padding, data, NUL padding.
        #[rustfmt::skip] // A line per entry: its header's fields in the order above, then the rest.
        let expected: &[u8] = concat!(
            // 1: /init -> "init", 0100755, 2 bytes; 110 + 5 = 115 -> 1 NUL; "hi" -> 2 NULs.
            "070701", "00000001", "000081ED", "00000000", "00000000", "00000001", "00000000", "00000002", "00000000", "00000000", "00000000", "00000000", "00000005", "00000000", "init\0", "\0", "hi", "\0\0",
            // 2: implicit parent "bin", 040755, nlink 2; 110 + 4 = 114 -> 2 NULs.
            "070701", "00000002", "000041ED", "00000000", "00000000", "00000002", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000", "bin\0", "\0\0",
            // 3: symlink bin/sh -> busybox, 0120777, 7 bytes; 110 + 7 = 117 -> 3 NULs; 7 -> 1.
            "070701", "00000003", "0000A1FF", "00000000", "00000000", "00000001", "00000000", "00000007", "00000000", "00000000", "00000000", "00000000", "00000007", "00000000", "bin/sh\0", "\0\0\0", "busybox", "\0",
            // 4: implicit parent "dev".
            "070701", "00000004", "000041ED", "00000000", "00000000", "00000002", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000", "dev\0", "\0\0",
            // 5: char device 5:1, 020600; 110 + 12 = 122 -> 2 NULs.
            "070701", "00000005", "00002180", "00000000", "00000000", "00000001", "00000000", "00000000", "00000000", "00000000", "00000005", "00000001", "0000000C", "00000000", "dev/console\0", "\0\0",
            // Trailer: ino 0, mode 0, nlink 1; 110 + 11 = 121 -> 3 NULs.
            "070701", "00000000", "00000000", "00000000", "00000000", "00000001", "00000000", "00000000", "00000000", "00000000", "00000000", "00000000", "0000000B", "00000000", "TRAILER!!!\0", "\0\0\0",
        )
        .as_bytes();

        assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(expected));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn same_inputs_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.dir("etc", 0o755).unwrap();
            w.file("etc/hangar/modules", 0o644, b"a.ko\nb.ko\n").unwrap();
            w.file("init", 0o755, &[0xAB; 1001]).unwrap();
            w.symlink("bin/ls", "busybox").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn parents_come_before_children_once() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a/b/c", 0o644, b"x").unwrap();
        w.file("a/b/d", 0o644, b"y").unwrap();
        w.file("a/e", 0o644, b"z").unwrap();
        let bytes = w.finish().unwrap();
        let names = entry_names(&bytes);
        assert_eq!(names, ["a", "a/b", "a/b/c", "a/b/d", "a/e", "TRAILER!!!"]);
    }

    #[test]
    fn bad_paths_and_duplicates_are_errors() {
        let mut w = CpioWriter::new(Vec::new());
        for bad in ["", "/", "a//b", "a/../b", "./a", "a/", "a\0b"] {
            assert!(
                matches!(w.file(bad, 0o644, b""), Err(CpioError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
        w.file("bin/x", 0o644, b"").unwrap();
        assert!(matches!(
            w.dir("bin", 0o755),
            Err(CpioError::Duplicate { path }) if path == "bin"
        ));
        assert!(matches!(w.symlink("/bin/x", "y"), Err(CpioError::Duplicate { .. })));
    }

    /// Reads back the entry names of an archive (a minimal parser for the tests).
    fn entry_names(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut pos = 0;
        let field = |pos: usize, i: usize| {
            let s = std::str::from_utf8(&bytes[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
            usize::from_str_radix(s, 16).unwrap()
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        loop {
            assert_eq!(&bytes[pos..pos + 6], b"070701");
            let size = field(pos, 6);
            let namesize = field(pos, 11);
            let name = std::str::from_utf8(&bytes[pos + 110..pos + 110 + namesize - 1])
                .unwrap()
                .to_owned();
            pos = align(pos + 110 + namesize);
            pos = align(pos + size);
            let done = name == "TRAILER!!!";
            names.push(name);
            if done {
                assert_eq!(pos, bytes.len());
                return names;
            }
        }
    }
}

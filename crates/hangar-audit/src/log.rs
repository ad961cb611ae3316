//! The appending handle.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::defect::MAX_LINE_BYTES;
use crate::entry::{hash_line, parse_line, Entry, Head, NewEntry};
use crate::lock::Flock;
use crate::sign::{HeadSigner, SignedHead};
use crate::verify::{check_against, HeadCheck};
use crate::AuditError;

/// An open audit log that appends entries.
///
/// Any number of handles, in any number of processes, may append to one file: every append
/// takes an exclusive `flock` on the file, re-reads the chain head from the file under it, writes
/// one line and syncs it, so sequence numbers are never duplicated or skipped. The file must not
/// be renamed, rotated or rewritten while handles are open.
///
/// # Torn tails
/// A crash in the middle of an append can leave the file ending in a partial line with no
/// newline. Under the lock, `open` and `append` remove such bytes **only** when all of these
/// hold, and otherwise fail with [`AuditError::Corrupt`] without touching the file:
/// - they are the very last bytes of the file and contain no newline;
/// - they are at most [`MAX_LINE_BYTES`] long;
/// - they are a prefix of (or begin with) `{"seq":N,"at":` where `N` is the next sequence
///   number, i.e. they look like the unfinished append they must be;
/// - the last complete line before them is a valid entry.
///
/// Such a line was never acknowledged (`append` returns only after the whole line and its
/// newline are written and synced), so removing it loses nothing that was reported as logged.
/// The removed bytes are kept in [`AuditLog::recovered_tail`] for the caller to report.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    head: Head,
    recovered_tail: Option<Vec<u8>>,
    /// With [`AuditLog::open_signed`]: the key and the file the signed head goes to.
    signing: Option<(HeadSigner, PathBuf)>,
}

impl AuditLog {
    /// Opens the log at `path`, creating it (mode `0600`; an existing file with looser
    /// permissions is tightened to `0600`) if absent. The parent directory must exist.
    ///
    /// Reads the last complete line to recover the chain head; does not verify the whole chain
    /// (use [`crate::verify`]). Fails with [`AuditError::Corrupt`] if the last complete line is
    /// not a valid entry or the file ends in bytes that are not a torn append (see the type's
    /// documentation), and with [`AuditError::Io`] if the file cannot be opened, locked or read.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_owned();
        let io = |source| AuditError::Io { path: path.clone(), source };
        // Never through a symlink: a link planted in the log's place is an error, not a
        // redirection of the evidence.
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
        let created = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nofollow)
            .open(&path);
        let file = match created {
            Ok(file) => {
                // Make the new directory entry durable too, or an acknowledged first entry could
                // vanish with its file after a crash.
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                File::open(parent).and_then(|d| d.sync_all()).map_err(io)?;
                file
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .custom_flags(nofollow)
                    .open(&path)
                    .map_err(io)?;
                let meta = file.metadata().map_err(io)?;
                if !meta.is_file() {
                    return Err(io(std::io::Error::other("not a regular file")));
                }
                if meta.permissions().mode() & 0o077 != 0 {
                    file.set_permissions(Permissions::from_mode(0o600)).map_err(io)?;
                }
                file
            }
            Err(e) => return Err(io(e)),
        };
        let mut log = AuditLog {
            path: path.clone(),
            file,
            head: Head::genesis(),
            recovered_tail: None,
            signing: None,
        };
        let _lock = Flock::exclusive(&log.file).map_err(io)?;
        let (head, _, torn) = recover(&log.path, &log.file, &log.head)?;
        log.head = head;
        log.recovered_tail = torn;
        drop(_lock);
        Ok(log)
    }

    /// Opens the log like [`AuditLog::open`], and signs its head after every append with the
    /// Ed25519 key at `key` (created, `0600`, if absent), writing the [`SignedHead`] to `head`.
    ///
    /// Before anything is appended, the log is checked against the signed head found in `head`:
    /// the signature must be by this key and the log's chain must be intact and contain that
    /// head. A truncated log, a rewritten tail (chain recomputed or not), a forged or missing
    /// head file (for a log that has entries and a key that already existed) are
    /// [`AuditError::Corrupt`]: the caller must not build on such a log.
    pub fn open_signed(
        path: impl AsRef<Path>, key: &Path, head: &Path,
    ) -> Result<AuditLog, AuditError> {
        let path = path.as_ref();
        let new_key = !key.exists();
        let signer = HeadSigner::load_or_create(key)?;
        let mut log = AuditLog::open(path)?;
        let corrupt = |reason: String| AuditError::Corrupt { path: path.to_owned(), reason };
        let _lock = Flock::exclusive(&log.file)
            .map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
        match SignedHead::read(head)? {
            Some(signed) => {
                signed.check(&signer.public_key()).map_err(|why| {
                    corrupt(format!("its signed head {} is not valid: {why}", head.display()))
                })?;
                // Read through a descriptor of its own (the append handle's offset is the
                // end), under the lock already held.
                let reader = File::open(path)
                    .map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
                let (report, check) = check_against(&reader, &signed.head())
                    .map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
                if let Some(failure) = report.failure {
                    return Err(corrupt(format!("{failure}")));
                }
                if check != HeadCheck::Contains {
                    return Err(corrupt(format!(
                        "{check} (signed head: entry {}, {})",
                        signed.seq, signed.hash
                    )));
                }
            }
            None if log.head.seq == 0 || new_key => {}
            None => {
                return Err(corrupt(format!(
                    "its signed head {} is missing while the log has {} entries: it was deleted",
                    head.display(),
                    log.head.seq
                )))
            }
        }
        let (current, _, _) = recover(&log.path, &log.file, &log.head)?;
        log.head = current;
        log.signing = Some((signer, head.to_owned()));
        log.write_signed_head()?;
        drop(_lock);
        Ok(log)
    }

    /// Signs the head this handle knows and writes it out (call under the lock).
    fn write_signed_head(&self) -> Result<(), AuditError> {
        if let Some((signer, file)) = &self.signing {
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            signer.sign(&self.head, at).write(file)?;
        }
        Ok(())
    }

    /// The signed head file and the public key that signs it, for a log opened with
    /// [`AuditLog::open_signed`].
    pub fn signing(&self) -> Option<(&Path, String)> {
        self.signing.as_ref().map(|(signer, file)| (file.as_path(), signer.public_key()))
    }

    /// Appends one entry and returns it as written.
    ///
    /// Under an exclusive `flock`: re-reads the head from the file (another handle or process may
    /// have appended), assigns `seq` = head + 1 and `prev` = head hash, writes `line + "\n"` with
    /// one `write_all`, then `sync_data`. When this returns `Ok`, the entry is on disk.
    ///
    /// Errors: [`AuditError::InvalidEntry`] if the entry is malformed or its line would exceed
    /// [`MAX_LINE_BYTES`] (nothing written); [`AuditError::Corrupt`] if the file's tail is
    /// corrupt, or the file now ends *before* the head this handle last saw (it was truncated or
    /// rewritten); [`AuditError::Io`] if writing or syncing fails, in which case the file is
    /// truncated back to its previous length (best effort) and the entry must be treated as not
    /// logged.
    pub fn append(&mut self, entry: NewEntry) -> Result<Entry, AuditError> {
        entry.validate().map_err(|reason| AuditError::InvalidEntry { reason })?;
        let io = |source| AuditError::Io { path: self.path.clone(), source };
        let _lock = Flock::exclusive(&self.file).map_err(io)?;
        let (head, len, torn) = recover(&self.path, &self.file, &self.head)?;
        if torn.is_some() {
            self.recovered_tail = torn;
        }
        self.head = head;

        let entry = entry.chain(&self.head);
        let mut bytes = entry.to_line().into_bytes();
        if bytes.len() > MAX_LINE_BYTES {
            return Err(AuditError::InvalidEntry {
                reason: format!(
                    "the entry's line would be {} bytes, longer than the {MAX_LINE_BYTES}-byte limit",
                    bytes.len()
                ),
            });
        }
        let hash = hash_line(&bytes);
        bytes.push(b'\n');
        if let Err(e) = (&self.file).write_all(&bytes).and_then(|()| self.file.sync_data()) {
            let _ = self.file.set_len(len);
            let _ = self.file.sync_data();
            return Err(io(e));
        }
        self.head = Head { seq: entry.seq, hash };
        // The entry is logged; a head that cannot be signed is still a failure the caller
        // must see (the next verification would find the log ahead of its signed head).
        self.write_signed_head()?;
        drop(_lock);
        Ok(entry)
    }

    /// The head as of this handle's last `open` or `append` (other handles may have appended
    /// since).
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The torn partial line most recently removed by `open` or `append`, if any (see the type's
    /// documentation). Worth reporting: it is an action that was attempted but never logged.
    pub fn recovered_tail(&self) -> Option<&[u8]> {
        self.recovered_tail.as_deref()
    }
}

/// The end of the file: the last complete line and what follows it.
struct Tail {
    /// Offset just past the last newline (0 if none).
    complete_len: u64,
    /// The last complete line, without its newline.
    last_line: Option<Vec<u8>>,
    /// Bytes after the last newline.
    torn: Vec<u8>,
}

/// Reads the tail; `Err(Ok(reason))` if it cannot be a valid log's tail.
fn read_tail(file: &File) -> Result<Result<Tail, String>, std::io::Error> {
    let len = file.metadata()?.len();
    // A torn append (≤ MAX_LINE_BYTES), a newline, the last line (≤ MAX_LINE_BYTES), the
    // newline before it.
    let window = len.min(2 * (MAX_LINE_BYTES as u64 + 1));
    let start = len - window;
    let mut buf = vec![0; window as usize];
    file.read_exact_at(&mut buf, start)?;
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        if start == 0 {
            return Ok(Ok(Tail { complete_len: 0, last_line: None, torn: buf }));
        }
        return Ok(Err(format!("the last {window} bytes contain no newline")));
    };
    let torn = buf[last_nl + 1..].to_vec();
    let last_line = match buf[..last_nl].iter().rposition(|&b| b == b'\n') {
        Some(prev_nl) => buf[prev_nl + 1..last_nl].to_vec(),
        None if start == 0 => buf[..last_nl].to_vec(),
        None => {
            return Ok(Err(format!(
                "the last complete line is longer than the {MAX_LINE_BYTES}-byte limit"
            )))
        }
    };
    Ok(Ok(Tail { complete_len: start + last_nl as u64 + 1, last_line: Some(last_line), torn }))
}

/// Under the exclusive lock: finds the head, checks it did not go backwards from `known`, and
/// removes a torn append. Returns the head, the file length after any removal, and the removed
/// bytes. Modifies the file only when everything checks out.
fn recover(
    path: &Path, file: &File, known: &Head,
) -> Result<(Head, u64, Option<Vec<u8>>), AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let corrupt = |reason: String| AuditError::Corrupt { path: path.to_owned(), reason };
    let tail = read_tail(file)
        .map_err(io)?
        .map_err(|reason| corrupt(format!("{reason}; run verify for the first bad line")))?;
    let head = match &tail.last_line {
        None => Head::genesis(),
        Some(line) => {
            let entry = parse_line(line).map_err(|defect| {
                corrupt(format!(
                    "the last complete line is not a valid entry: {defect}; run verify for the \
                     first bad line"
                ))
            })?;
            Head { seq: entry.seq, hash: hash_line(line) }
        }
    };
    if head.seq < known.seq || (head.seq == known.seq && head.hash != known.hash) {
        return Err(corrupt(format!(
            "the log went backwards: this handle saw entry {} ({}), the file now ends at entry {} \
             ({}); it was truncated or rewritten",
            known.seq, known.hash, head.seq, head.hash
        )));
    }
    if tail.torn.is_empty() {
        return Ok((head, tail.complete_len, None));
    }
    let expected = format!("{{\"seq\":{},\"at\":", head.seq + 1);
    let expected = expected.as_bytes();
    let looks_torn = tail.torn.len() <= MAX_LINE_BYTES
        && (tail.torn.starts_with(expected) || expected.starts_with(&tail.torn));
    if !looks_torn {
        return Err(corrupt(format!(
            "the file ends in {} bytes without a newline that are not the start of entry {}; \
             refusing to append after them (run verify, then inspect the tail)",
            tail.torn.len(),
            head.seq + 1
        )));
    }
    file.set_len(tail.complete_len).and_then(|()| file.sync_data()).map_err(io)?;
    Ok((head, tail.complete_len, Some(tail.torn)))
}

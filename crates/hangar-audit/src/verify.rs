//! Verification of a whole log.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::defect::Defect;
use crate::defect::MAX_LINE_BYTES;
use crate::entry::{hash_line, parse_line, Head};
use crate::lock::Flock;
use crate::AuditError;

/// The first bad line of a log. `Display`: `line 5: prev hash does not match line 4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub defect: Defect,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.defect)
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many lines from the start form a valid chain: all entries when intact, the lines
    /// before [`Failure::line`] otherwise.
    pub entries: u64,
    /// The head of that valid prefix (the whole log's head when intact).
    pub head: Head,
    /// The first bad line, if any.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// Whether every line is a valid entry and the chain is unbroken.
    pub fn is_intact(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies the whole log at `path`.
///
/// Returns `Ok` with a report in every case where the file could be read: intact (entry count
/// and head hash) or naming the first bad line and why. Each line must be valid JSON with the
/// required fields, types and values, must be exactly its entry's serialisation, must carry `seq`
/// = previous + 1 (starting at 1) and `prev` = hash of the previous line (starting at
/// [`crate::GENESIS`]), and must end with a newline. `Err` only for I/O failures.
///
/// Takes a shared `flock` on the file while reading, so it never mistakes an append in progress
/// in another process for a torn line.
///
/// # What a chain alone cannot show
/// Removing whole entries from the *end* of the log, or rewriting the last entry into another
/// valid entry, leaves a valid (shorter or different) chain: nothing later commits to it. An edit
/// that leaves a line well-formed is reported at the *next* line ([`Defect::PrevMismatch`]).
/// Compare [`VerifyReport::head`] with a copy of the head kept elsewhere to detect tail
/// rewrites.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let _lock = Flock::shared(&file).map_err(io)?;
    verify_reader(BufReader::new(&file)).map_err(io)
}

/// How a log relates to a head kept elsewhere (a [`crate::SignedHead`], or one given with
/// `--expect-head`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// The log's entry at the head's `seq` hashes to the head's hash: nothing up to the head was
    /// changed or removed (later entries may follow).
    Contains,
    /// The log's valid chain ends before the head's entry: entries were removed from its end
    /// (or the chain breaks earlier).
    Truncated {
        /// Where the valid chain ends.
        ends_at: u64,
    },
    /// The entry at the head's `seq` is not the one the head names: it was rewritten (with the
    /// chain recomputed up to it, or not).
    Rewritten {
        /// The hash the log has there.
        found: String,
    },
}

impl fmt::Display for HeadCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadCheck::Contains => f.write_str("the log contains the expected head"),
            HeadCheck::Truncated { ends_at } => write!(
                f,
                "the log's valid chain ends at entry {ends_at}, before the expected head: entries were removed"
            ),
            HeadCheck::Rewritten { found } => write!(
                f,
                "the log's entry at the expected head hashes to {found}: it was rewritten"
            ),
        }
    }
}

/// [`verify`], and how the log relates to `expect` (a head kept elsewhere).
pub fn verify_against(path: &Path, expect: &Head) -> Result<(VerifyReport, HeadCheck), AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io)?;
    let _lock = Flock::shared(&file).map_err(io)?;
    check_against(&file, expect).map_err(io)
}

/// [`verify_against`] on an open file, without locking it (the caller holds the lock).
pub(crate) fn check_against(
    file: &File, expect: &Head,
) -> std::io::Result<(VerifyReport, HeadCheck)> {
    use std::io::{Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(0))?;
    let (report, found) = walk(BufReader::new(&file), Some(expect.seq))?;
    let check = match found {
        _ if expect.seq == 0 => HeadCheck::Contains,
        Some(hash) if hash == expect.hash => HeadCheck::Contains,
        Some(found) => HeadCheck::Rewritten { found },
        None => HeadCheck::Truncated { ends_at: report.entries },
    };
    Ok((report, check))
}

/// [`verify`] on any byte stream (a backup, a pipe), without locking.
pub fn verify_reader<R: BufRead>(reader: R) -> std::io::Result<VerifyReport> {
    walk(reader, None).map(|(report, _)| report)
}

/// Verifies the stream; also returns the hash of entry `want` if the valid chain reaches it.
fn walk<R: BufRead>(
    mut reader: R, want: Option<u64>,
) -> std::io::Result<(VerifyReport, Option<String>)> {
    let mut found = None;
    let mut head = Head::genesis();
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most one byte past the limit plus the newline, so garbage without newlines
        // cannot make us buffer the whole file.
        let limit = (MAX_LINE_BYTES + 2) as u64;
        let n = (&mut reader).take(limit).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let fail = |defect| VerifyReport {
            entries: line_no - 1,
            head: head.clone(),
            failure: Some(Failure { line: line_no, defect }),
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            if buf.len() > MAX_LINE_BYTES {
                return Ok((fail(Defect::TooLong { len: buf.len() }), found));
            }
            return Ok((fail(Defect::Incomplete), found));
        };
        let entry = match parse_line(line) {
            Ok(entry) => entry,
            Err(defect) => return Ok((fail(defect), found)),
        };
        let expected = head.seq + 1;
        if entry.seq != expected {
            return Ok((fail(Defect::Seq { found: entry.seq, expected }), found));
        }
        if entry.prev != head.hash {
            let defect = if line_no == 1 {
                Defect::PrevNotGenesis
            } else {
                Defect::PrevMismatch { previous_line: line_no - 1 }
            };
            return Ok((fail(defect), found));
        }
        head = Head { seq: entry.seq, hash: hash_line(line) };
        if want == Some(entry.seq) {
            found = Some(head.hash.clone());
        }
    }
    Ok((VerifyReport { entries: line_no, head, failure: None }, found))
}

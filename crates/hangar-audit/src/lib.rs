//! Hangar's tamper-evident, append-only audit log.
//!
//! One JSON object per line (JSONL). Each line is exactly the `serde_json` serialisation of an
//! [`Entry`], fields in this order:
//!
//! | field    | meaning                                                              |
//! |----------|----------------------------------------------------------------------|
//! | `seq`    | 1, 2, 3, … without holes                                              |
//! | `at`     | milliseconds since the Unix epoch                                     |
//! | `who`    | the principal: `token:abc123`, `local:root`                           |
//! | `what`   | the action: `vm.start`                                                |
//! | `target` | the object: `vm/hello`                                                |
//! | `result` | `requested` (about to be carried out), `accepted` (an operation began), `ok`, or an error code: `E_VM_NOT_FOUND` |
//! | `detail` | optional free-form string (absent, never `null`)                      |
//! | `prev`   | `sha256:<hex>` of the previous line's bytes (without the newline); [`GENESIS`] for line 1 |
//!
//! ```text
//! {"seq":1,"at":1700000000000,"who":"local:root","what":"vm.start","target":"vm/hello","result":"ok","prev":"sha256:0000…0000"}
//! ```
//!
//! Every line commits to the one before it, so editing, deleting, inserting or reordering lines
//! breaks the chain at a specific line, which [`verify`] names. [`AuditLog`] appends under an
//! exclusive `flock` (safe across processes) and syncs each line before returning.
//!
//! What a hash chain cannot show on its own: removal of the *last* entries or a rewrite of the
//! last entry. A log opened with [`AuditLog::open_signed`] therefore signs its head after every
//! append ([`SignedHead`], Ed25519, in a second file), and [`verify_against`] checks a log
//! against such a head, or one kept anywhere else.
//!
//! # Example
//! ```
//! use hangar_audit::{verify, AuditLog, NewEntry};
//! use hangar_core::clock::Timestamp;
//! use hangar_core::error::ErrorCode;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("audit.jsonl");
//!
//! let mut log = AuditLog::open(&path)?;
//! let first = log.append(NewEntry::ok(Timestamp(1_700_000_000_000), "local:root", "vm.start", "vm/hello"))?;
//! assert_eq!(first.seq, 1);
//! let second = log.append(
//!     NewEntry::failed(Timestamp(1_700_000_000_500), "token:abc123", "vm.stop", "vm/nope", ErrorCode::VmNotFound)
//!         .with_detail("no such VM"),
//! )?;
//! assert_eq!(second.prev, first.hash());
//!
//! let report = verify(&path)?;
//! assert!(report.is_intact());
//! assert_eq!(report.entries, 2);
//! assert_eq!(report.head, *log.head());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod defect;
mod entry;
mod error;
mod lock;
mod log;
mod sign;
mod verify;

pub use defect::{Defect, MAX_LINE_BYTES};
pub use entry::{hash_line, Entry, Head, NewEntry, GENESIS};
pub use error::AuditError;
pub use log::AuditLog;
pub use sign::{HeadSigner, SignedHead};
pub use verify::{verify, verify_against, verify_reader, Failure, HeadCheck, VerifyReport};

/// Where Hangar keeps its audit log in a home directory: the log, the key that signs its heads
/// (`0600`), and the latest signed head.
pub fn files_in(
    home: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    (home.join("audit.log"), home.join("audit.key"), home.join("audit.head"))
}

//! The daemon's side of the audit log: what it records, and failing closed when it cannot.
//!
//! Every mutating request is recorded twice: a `requested` entry *before* the handler runs
//! (if it cannot be written the request is refused with `503 E_AUDIT_UNAVAILABLE` and nothing
//! is done), and its outcome after. Operations add an entry when they end; the reconciler
//! records each engine step of a pass; failed authentications are recorded, at most one entry
//! per peer every [`FAILED_AUTH_WINDOW`] (the rest are counted into the next entry).
//!
//! The log is opened with a signed head (`audit.key`, `audit.head` beside `audit.log`): a log
//! that fails its check at start (truncated, tail rewritten, head forged or deleted) is never
//! appended to, so every mutating request fails closed until an administrator looks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hangar_audit::{AuditLog, NewEntry, SignedHead};
use hangar_core::clock::{Clock, SystemClock};

/// Failed authentications from one peer are recorded at most once per this window.
pub const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(10);

/// Peers remembered for rate limiting; beyond this, old ones are forgotten first.
const MAX_PEERS: usize = 4096;

/// The daemon's audit log.
pub struct Trail {
    /// The log, or why it cannot be written.
    log: Mutex<Result<AuditLog, String>>,
    head_file: PathBuf,
    failures: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Trail {
    /// Opens (or creates) the signed log in `home`. A log that cannot be opened or fails its
    /// check is kept as the reason every mutating request will be refused.
    pub fn open(home: &Path) -> Trail {
        let (log, key, head) = hangar_audit::files_in(home);
        let opened = AuditLog::open_signed(&log, &key, &head).map_err(|e| e.to_string());
        match &opened {
            Ok(l) => {
                if let Some(torn) = l.recovered_tail() {
                    tracing::error!(
                        "removed a torn, never-acknowledged audit line: {}",
                        String::from_utf8_lossy(torn)
                    );
                }
            }
            Err(e) => tracing::error!(
                "AUDIT LOG UNAVAILABLE, refusing every change until it is fixed: {e}"
            ),
        }
        Trail { log: Mutex::new(opened), head_file: head, failures: Mutex::new(HashMap::new()) }
    }

    /// Appends an entry; the reason on failure (the caller fails closed).
    pub fn record(&self, entry: NewEntry) -> Result<(), String> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        match log.as_mut() {
            Ok(log) => log.append(entry).map(|_| ()).map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        }
    }

    /// Why the log cannot be written, if it cannot (as known from opening it).
    pub fn unavailable(&self) -> Option<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).as_ref().err().cloned()
    }

    /// The latest signed head, and the key that signs heads.
    pub fn head(&self) -> Option<(SignedHead, String)> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let key = log.as_ref().ok()?.signing()?.1;
        let head = SignedHead::read(&self.head_file).ok()??;
        Some((head, key))
    }

    /// Records a failed authentication from `peer`, unless one from the same peer was recorded
    /// within [`FAILED_AUTH_WINDOW`] (then it is only counted, and the count goes into the
    /// next entry). Best effort: failing to record it refuses nothing more than was refused.
    pub fn failed_auth(&self, peer: &str, what: &str, target: &str, why: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut seen = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_PEERS && !seen.contains_key(peer) {
                seen.retain(|_, (at, _)| now.duration_since(*at) < FAILED_AUTH_WINDOW);
                if seen.len() >= MAX_PEERS {
                    return;
                }
            }
            match seen.get_mut(peer) {
                Some((at, count)) if now.duration_since(*at) < FAILED_AUTH_WINDOW => {
                    *count += 1;
                    return;
                }
                Some((at, count)) => {
                    let before = *count;
                    *at = now;
                    *count = 0;
                    before
                }
                None => {
                    seen.insert(peer.to_string(), (now, 0));
                    0
                }
            }
        };
        let mut detail = why.to_string();
        if suppressed > 0 {
            detail.push_str(&format!(
                "; {suppressed} more failures from this peer since its last entry"
            ));
        }
        let entry = NewEntry {
            at: SystemClock.now(),
            who: format!("anonymous ({peer})"),
            what: format!("auth.failed {what}"),
            target: target.to_string(),
            result: hangar_core::error::ErrorCode::Unauthorized.as_str().into(),
            detail: Some(detail),
        };
        if let Err(e) = self.record(entry) {
            tracing::error!("cannot record a failed authentication: {e}");
        }
    }
}

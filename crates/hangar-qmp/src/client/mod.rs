//! The connection: connect with retry, a writer task, a reader task that dispatches replies by
//! id and events to a broadcast channel, and per-call timeouts.
//!
//! This module holds the handle ([`Qmp`], its options and accessors) and the state it shares
//! with the tasks; `connection` connects and runs the reader and writer tasks, `lines` reads
//! capped lines off the socket, `call` sends one command and waits for its reply, `commands`
//! is the typed commands ([`QmpQuery`], [`QmpControl`]), and `events` the subscriber side
//! ([`EventStream`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::error::QmpError;
use crate::types::{Greeting, QmpEvent, VersionInfo};

mod call;
mod commands;
mod connection;
mod events;
mod lines;

pub use commands::{QmpControl, QmpQuery};
pub use events::{EventItem, EventStream, TryRecv};

/// Default time limit of one command.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of events buffered per subscriber before the oldest are dropped.
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Default cap on one line (one JSON message) from the socket.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Tunables of a connection; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct QmpOptions {
    /// Time limit of a call unless overridden with [`Qmp::with_timeout`].
    pub call_timeout: Duration,
    /// Events buffered per subscriber (see [`EventStream`] for what happens when it fills).
    pub event_capacity: usize,
    /// Longest accepted line from the socket; a longer one is a protocol error.
    pub max_line_bytes: usize,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            call_timeout: DEFAULT_CALL_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// A QMP connection.
///
/// Cheap to clone: clones share the connection (and differ only in their call timeout, see
/// [`Qmp::with_timeout`]). The connection closes when the last clone is dropped.
///
/// Read-only queries are the [`QmpQuery`] trait, state-changing commands the [`QmpControl`]
/// trait, so code that only needs to observe can take `&impl QmpQuery`.
#[derive(Clone)]
pub struct Qmp {
    conn: Arc<Conn>,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.conn.path)
            .field("version", &self.conn.greeting.version)
            .field("timeout", &self.timeout)
            .field("connected", &self.is_connected())
            .finish()
    }
}

struct Conn {
    path: PathBuf,
    greeting: Greeting,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    writes: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// State shared by callers, the reader and the writer.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer to shut the socket down after a fatal error.
    shutdown: Notify,
}

struct State {
    pending: HashMap<u64, Pending>,
    /// Ids whose caller gave up (timeout or cancellation): their late replies are dropped.
    /// Bounded by `call::MAX_ABANDONED`; the oldest are forgotten first.
    abandoned: HashSet<u64>,
    abandoned_order: VecDeque<u64>,
    /// Why the connection closed, once it has.
    closed: Option<CloseReason>,
    /// `None` once closed, which ends every [`EventStream`].
    events: Option<broadcast::Sender<QmpEvent>>,
    event_capacity: usize,
}

struct Pending {
    command: String,
    reply: oneshot::Sender<Result<Value, QmpError>>,
}

#[derive(Debug, Clone)]
enum CloseReason {
    Disconnected(String),
    Protocol(String),
}

impl CloseReason {
    fn to_error(&self, command: &str) -> QmpError {
        match self {
            CloseReason::Disconnected(reason) => QmpError::Disconnected {
                command: Some(command.to_string()),
                reason: reason.clone(),
            },
            CloseReason::Protocol(detail) => {
                QmpError::Protocol { command: Some(command.to_string()), detail: detail.clone() }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover anyway rather than propagate a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection once: fails every pending call, ends the event streams and tells
    /// the writer to drop its half of the socket.
    fn close(&self, reason: CloseReason) {
        let pending = {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason.clone());
            st.events = None;
            st.abandoned.clear();
            st.abandoned_order.clear();
            std::mem::take(&mut st.pending)
        };
        for (_, p) in pending {
            let _ = p.reply.send(Err(reason.to_error(&p.command)));
        }
        self.shutdown.notify_one();
    }
}

impl Qmp {
    /// The greeting QEMU sent.
    pub fn greeting(&self) -> &Greeting {
        &self.conn.greeting
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> &VersionInfo {
        &self.conn.greeting.version
    }

    /// The socket path this connection was made to.
    pub fn path(&self) -> &Path {
        &self.conn.path
    }

    /// The time limit this handle applies to each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle to the same connection whose calls use `timeout` instead; for a per-call
    /// override write `qmp.with_timeout(t).query_migrate().await`.
    pub fn with_timeout(&self, timeout: Duration) -> Qmp {
        Qmp { conn: self.conn.clone(), timeout }
    }

    /// Whether the connection is still open (no EOF, I/O failure or protocol error seen yet).
    pub fn is_connected(&self) -> bool {
        self.conn.shared.lock().closed.is_none()
    }
}

//! The connection: connect with retry, a writer task, a reader task that dispatches replies by
//! id and events to a broadcast channel, and per-call timeouts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::QmpError;
use crate::types::{
    as_object, get_str, kind_of, Greeting, MigrationInfo, QmpEvent, StatusInfo, VersionInfo,
};

/// Default time limit of one command.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of events buffered per subscriber before the oldest are dropped.
pub const DEFAULT_EVENT_CAPACITY: usize = 256;
/// Default cap on one line (one JSON message) from the socket.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// First and largest pause between connect attempts.
const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(50);
/// Abandoned ids remembered so that their late replies are recognised; a late reply to an id
/// forgotten after this many newer abandonments is a protocol error.
const MAX_ABANDONED: usize = 4096;
/// Commands queued for the writer task before callers wait.
const WRITE_QUEUE: usize = 64;

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
    /// Bounded by [`MAX_ABANDONED`]; the oldest are forgotten first.
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
            CloseReason::Protocol(detail) => QmpError::Protocol {
                command: Some(command.to_string()),
                detail: detail.clone(),
            },
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

/// Removes a call's pending entry if the caller stops waiting (timeout or a dropped future), so
/// that a late reply is recognised and discarded instead of being a protocol error.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.pending.remove(&self.id).is_some() {
            st.abandoned.insert(self.id);
            st.abandoned_order.push_back(self.id);
            while st.abandoned_order.len() > MAX_ABANDONED {
                if let Some(old) = st.abandoned_order.pop_front() {
                    st.abandoned.remove(&old);
                }
            }
        }
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path` with default [`QmpOptions`].
    ///
    /// QEMU creates its socket some 20–30 ms after it starts, so a missing socket
    /// (`ENOENT`) or one nobody listens on yet (`ECONNREFUSED`) is retried with a short
    /// back-off (2 ms doubling to 50 ms) until `deadline` has passed since the call. Then the
    /// greeting is read and validated and `qmp_capabilities` is sent; these must also finish
    /// within `deadline`.
    ///
    /// Errors: [`QmpError::Connect`] if the socket could not be connected in time (or failed
    /// with another error), [`QmpError::Timeout`] if QEMU did not greet or negotiate in time,
    /// [`QmpError::Protocol`] for an invalid greeting, [`QmpError::Command`] if
    /// `qmp_capabilities` was refused.
    pub async fn connect(path: impl AsRef<Path>, deadline: Duration) -> Result<Qmp, QmpError> {
        Qmp::connect_with(path, deadline, QmpOptions::default()).await
    }

    /// [`Qmp::connect`] with explicit options.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        deadline: Duration,
        options: QmpOptions,
    ) -> Result<Qmp, QmpError> {
        let path = path.as_ref().to_path_buf();
        let started = Instant::now();
        let until = started + deadline;
        let stream = connect_retrying(&path, started, until).await?;
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(read, options.max_line_bytes);

        let greeting_line = match tokio::time::timeout_at(until, lines.next_line()).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    operation: "greeting".into(),
                    after: deadline,
                })
            }
            Ok(Err(e)) => return Err(e.into_error("reading the greeting")),
            Ok(Ok(None)) => {
                return Err(QmpError::Disconnected {
                    command: None,
                    reason: "the peer closed the connection before greeting".into(),
                })
            }
            Ok(Ok(Some(line))) => line,
        };
        let value: Value = serde_json::from_slice(&greeting_line)
            .map_err(|e| QmpError::protocol(format!("greeting is not valid JSON: {e}")))?;
        let greeting = Greeting::parse(&value).map_err(QmpError::protocol)?;

        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                abandoned: HashSet::new(),
                abandoned_order: VecDeque::new(),
                closed: None,
                events: Some(events),
                event_capacity: options.event_capacity.max(1),
            }),
            shutdown: Notify::new(),
        });
        let (writes, write_rx) = mpsc::channel(WRITE_QUEUE);
        let reader = tokio::spawn(read_loop(lines, shared.clone()));
        let writer = tokio::spawn(write_loop(write, write_rx, shared.clone()));
        let qmp = Qmp {
            conn: Arc::new(Conn {
                path,
                greeting,
                shared,
                next_id: AtomicU64::new(0),
                writes,
                reader,
                writer,
            }),
            timeout: options.call_timeout,
        };
        let remaining = until.saturating_duration_since(Instant::now());
        qmp.call("qmp_capabilities", None, remaining)
            .await
            .map_err(|e| match e {
                QmpError::Timeout { operation, .. } => QmpError::Timeout {
                    operation,
                    after: deadline,
                },
                other => other,
            })?;
        Ok(qmp)
    }

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
        Qmp {
            conn: self.conn.clone(),
            timeout,
        }
    }

    /// Whether the connection is still open (no EOF, I/O failure or protocol error seen yet).
    pub fn is_connected(&self) -> bool {
        self.conn.shared.lock().closed.is_none()
    }

    /// Subscribes to the events that arrive from now on. Events that arrived before the call
    /// are not replayed, so subscribe before sending the command whose events you wait for.
    /// On a closed connection the stream is already ended.
    pub fn events(&self) -> EventStream {
        let st = self.conn.shared.lock();
        let rx = match &st.events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        };
        EventStream {
            rx,
            capacity: st.event_capacity,
        }
    }

    /// Sends `command` with optional `arguments` (a JSON object; QEMU refuses anything else
    /// with a `GenericError`) and returns QEMU's `return` value. This is the escape hatch for commands without a typed method; it may change
    /// state, which is why it lives here and not on [`QmpQuery`].
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.call(command, arguments, self.timeout).await
    }

    async fn call(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &*self.conn.shared;
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if let Some(reason) = &st.closed {
                return Err(reason.to_error(command));
            }
            st.pending.insert(
                id,
                Pending {
                    command: command.to_string(),
                    reply: tx,
                },
            );
        }
        let _guard = PendingGuard { shared, id };
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(command.to_string()));
        if let Some(args) = arguments {
            msg.insert("arguments".into(), args);
        }
        msg.insert("id".into(), json!(id));
        let mut line = serde_json::to_vec(&Value::Object(msg)).map_err(|e| QmpError::Protocol {
            command: Some(command.to_string()),
            detail: format!("cannot encode the command: {e}"),
        })?;
        line.push(b'\n');

        let exchange = async {
            // The writer stops only after the connection was closed, and closing fails every
            // pending call with the reason: if the send fails, `rx` already holds that error.
            let _ = self.conn.writes.send(line).await;
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(QmpError::Disconnected {
                    command: Some(command.to_string()),
                    reason: "the reader has stopped".into(),
                }),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(QmpError::Timeout {
                operation: command.to_string(),
                after: timeout,
            }),
        }
    }

    async fn call_unit(&self, command: &str, arguments: Option<Value>) -> Result<(), QmpError> {
        self.call(command, arguments, self.timeout).await.map(drop)
    }
}

/// Read-only QMP queries: none of these changes the VM.
pub trait QmpQuery {
    /// `query-status`: whether the vCPUs run and the run state. This is how a KVM internal
    /// error is detected: QEMU stays alive, paused, in [`RunState::InternalError`](crate::RunState::InternalError).
    fn query_status(&self) -> impl Future<Output = Result<StatusInfo, QmpError>> + Send;
    /// `query-migrate`: the state of the current or last migration (also memory snapshots).
    fn query_migrate(&self) -> impl Future<Output = Result<MigrationInfo, QmpError>> + Send;
    /// `query-version`: the running QEMU's version.
    fn query_version(&self) -> impl Future<Output = Result<VersionInfo, QmpError>> + Send;
}

/// QMP commands that change the VM's state.
///
/// QEMU emits the event a command causes (`RESUME` for `cont`, `STOP` for `stop`, `SHUTDOWN`
/// for `quit`, …) *before* the command's reply, so subscribe with [`Qmp::events`] before
/// sending the command.
pub trait QmpControl {
    /// `stop`: pause the vCPUs (emits `STOP`).
    fn stop(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `cont`: resume the vCPUs (emits `RESUME`); also starts a VM launched with `-S` and one
    /// restored with `-incoming`.
    fn cont(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `system_powerdown`: press the ACPI power button (emits `POWERDOWN`). The guest may ignore
    /// it; escalate if it does not shut down.
    fn system_powerdown(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `system_reset`: reset the machine (emits `RESET`).
    fn system_reset(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `quit`: make QEMU exit (emits `SHUTDOWN` with `guest: false, reason: "host-qmp-quit"`,
    /// replies, then closes the socket — often with a reset rather than a clean EOF). A
    /// connection that closes before the reply arrives (or was already closed by the peer)
    /// also counts as success, since that is the command's effect; a protocol error does not.
    fn quit(&self) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `migrate` to `uri` (QEMU 10: `{"uri": "file:/path"}` for a memory snapshot). Returns once
    /// the migration has started; poll [`QmpQuery::query_migrate`] until it is terminal.
    fn migrate(&self, uri: &str) -> impl Future<Output = Result<(), QmpError>> + Send;
    /// `migrate-incoming` from `uri`; only valid when QEMU was started with `-incoming defer`.
    fn migrate_incoming(&self, uri: &str) -> impl Future<Output = Result<(), QmpError>> + Send;
}

impl QmpQuery for Qmp {
    async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        let v = self.call("query-status", None, self.timeout).await?;
        StatusInfo::parse(&v).map_err(|d| QmpError::bad_reply("query-status", d))
    }

    async fn query_migrate(&self) -> Result<MigrationInfo, QmpError> {
        let v = self.call("query-migrate", None, self.timeout).await?;
        MigrationInfo::parse(&v).map_err(|d| QmpError::bad_reply("query-migrate", d))
    }

    async fn query_version(&self) -> Result<VersionInfo, QmpError> {
        let v = self.call("query-version", None, self.timeout).await?;
        VersionInfo::parse(&v, "return").map_err(|d| QmpError::bad_reply("query-version", d))
    }
}

impl QmpControl for Qmp {
    async fn stop(&self) -> Result<(), QmpError> {
        self.call_unit("stop", None).await
    }

    async fn cont(&self) -> Result<(), QmpError> {
        self.call_unit("cont", None).await
    }

    async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.call_unit("system_powerdown", None).await
    }

    async fn system_reset(&self) -> Result<(), QmpError> {
        self.call_unit("system_reset", None).await
    }

    async fn quit(&self) -> Result<(), QmpError> {
        match self.call_unit("quit", None).await {
            Err(QmpError::Disconnected { .. }) => Ok(()),
            other => other,
        }
    }

    async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.call_unit("migrate", Some(json!({ "uri": uri }))).await
    }

    async fn migrate_incoming(&self, uri: &str) -> Result<(), QmpError> {
        self.call_unit("migrate-incoming", Some(json!({ "uri": uri })))
            .await
    }
}

/// One item of an [`EventStream`].
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    /// An event.
    Event(QmpEvent),
    /// This subscriber fell behind and `missed` of the oldest events were dropped for it; the
    /// stream continues with the oldest event still buffered.
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// What [`EventStream::try_recv`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum TryRecv {
    /// An event or a lag notice.
    Item(EventItem),
    /// Nothing buffered right now.
    Empty,
    /// The connection is closed and the buffer drained.
    Ended,
}

/// The events of one connection, for one subscriber ([`Qmp::events`]).
///
/// **Slow consumers:** each subscriber has a ring buffer of [`QmpOptions::event_capacity`]
/// events. The reader never waits for a subscriber (replies keep flowing), so when a buffer is
/// full the oldest events are overwritten and the subscriber's next [`EventStream::recv`]
/// returns [`EventItem::Lagged`] with the number lost, never a silent gap. Other subscribers
/// are unaffected.
///
/// **End:** when the connection closes (EOF, I/O error, protocol error, or the last [`Qmp`]
/// handle dropped), `recv` returns the events still buffered and then `None`.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<QmpEvent>,
    capacity: usize,
}

impl EventStream {
    /// The next event, a lag notice, or `None` once the connection is closed and the buffer is
    /// drained. Cancel-safe.
    pub async fn recv(&mut self) -> Option<EventItem> {
        match self.rx.recv().await {
            Ok(e) => Some(EventItem::Event(e)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(EventItem::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Like [`EventStream::recv`] but never waits.
    pub fn try_recv(&mut self) -> TryRecv {
        use broadcast::error::TryRecvError;
        match self.rx.try_recv() {
            Ok(e) => TryRecv::Item(EventItem::Event(e)),
            Err(TryRecvError::Lagged(missed)) => TryRecv::Item(EventItem::Lagged { missed }),
            Err(TryRecvError::Empty) => TryRecv::Empty,
            Err(TryRecvError::Closed) => TryRecv::Ended,
        }
    }

    /// How many events this subscriber buffers before lagging.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

async fn connect_retrying(
    path: &Path,
    started: Instant,
    until: Instant,
) -> Result<UnixStream, QmpError> {
    let mut backoff = BACKOFF_START;
    loop {
        let err = match tokio::time::timeout_at(until, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect did not complete"),
        };
        let retryable = matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        );
        let now = Instant::now();
        if !retryable || now >= until {
            return Err(QmpError::Connect {
                path: path.to_path_buf(),
                waited: now - started,
                source: err,
            });
        }
        tokio::time::sleep_until((now + backoff).min(until)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.notified() => break,
            msg = queue.recv() => {
                let Some(line) = msg else { break };
                // One whole line per write: a cancelled caller can never leave half a message.
                let result = async {
                    write.write_all(&line).await?;
                    write.flush().await
                }
                .await;
                if let Err(e) = result {
                    shared.close(CloseReason::Disconnected(format!("write failed: {e}")));
                    break;
                }
            }
        }
    }
    let _ = write.shutdown().await;
}

async fn read_loop(mut lines: LineReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let reason = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break CloseReason::Disconnected("the peer closed the connection".into()),
            Err(LineError::Io(e)) => break CloseReason::Disconnected(format!("read failed: {e}")),
            Err(e) => break CloseReason::Protocol(e.detail()),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Err(detail) = dispatch(&line, &shared) {
            break CloseReason::Protocol(detail);
        }
    };
    shared.close(reason);
}

/// Handles one message. `Err` is a protocol violation that closes the connection.
fn dispatch(line: &[u8], shared: &Shared) -> Result<(), String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        format!(
            "malformed JSON ({e}) in {:?}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )
    })?;
    let obj = as_object(&value, "message")?;
    if obj.contains_key("event") {
        let event = QmpEvent::parse(obj)?;
        let st = shared.lock();
        if let Some(tx) = &st.events {
            // Fails only when nobody is subscribed: then nobody wants it.
            let _ = tx.send(event);
        }
        return Ok(());
    }
    if !(obj.contains_key("return") || obj.contains_key("error")) {
        if obj.contains_key("QMP") {
            return Err("unexpected second greeting".into());
        }
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!("unrecognised message with keys {keys:?}"));
    }
    let id = match obj.get("id") {
        None => {
            let what = obj
                .get("error")
                .map(|e| format!(" (error {e})"))
                .unwrap_or_default();
            return Err(format!("reply without an id{what}"));
        }
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("reply id {v} is {}, not an id this client sent", kind_of(v)))?,
    };
    let pending = {
        let mut st = shared.lock();
        match st.pending.remove(&id) {
            Some(p) => p,
            None if st.abandoned.remove(&id) => return Ok(()),
            None => return Err(format!("reply with unknown id {id}")),
        }
    };
    let result = match obj.get("error") {
        Some(err) => {
            let ctx = format!("error reply to {}", pending.command);
            let err = as_object(err, &ctx);
            let parsed = err.and_then(|e| {
                Ok((
                    get_str(e, "class", &ctx)?.to_string(),
                    get_str(e, "desc", &ctx)?.to_string(),
                ))
            });
            match parsed {
                Ok((class, desc)) => Err(QmpError::Command {
                    command: pending.command.clone(),
                    class,
                    desc,
                }),
                Err(detail) => {
                    let _ = pending
                        .reply
                        .send(Err(QmpError::bad_reply(&pending.command, detail.clone())));
                    return Err(detail);
                }
            }
        }
        None => Ok(obj.get("return").cloned().unwrap_or(Value::Null)),
    };
    let _ = pending.reply.send(result);
    Ok(())
}

/// Reads `\n`-terminated lines with a length cap.
struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

#[derive(Debug)]
enum LineError {
    Io(io::Error),
    TooLong(usize),
    Truncated(usize),
}

impl LineError {
    fn detail(&self) -> String {
        match self {
            LineError::Io(e) => format!("read failed: {e}"),
            LineError::TooLong(max) => format!("a message is longer than the {max}-byte limit"),
            LineError::Truncated(n) => {
                format!("the connection closed in the middle of a message ({n} bytes unterminated)")
            }
        }
    }

    fn into_error(self, doing: &str) -> QmpError {
        match self {
            LineError::Io(e) => QmpError::Disconnected {
                command: None,
                reason: format!("{doing}: {e}"),
            },
            other => QmpError::protocol(format!("{doing}: {}", other.detail())),
        }
    }
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(read: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(64 * 1024, read),
            max,
        }
    }

    /// The next line without its terminator; `None` at a clean EOF. Cancel-safe only between
    /// lines (the reader task never cancels it).
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        let mut line = Vec::new();
        loop {
            let buf = self.inner.fill_buf().await.map_err(LineError::Io)?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(LineError::Truncated(line.len()))
                };
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if line.len() + take > self.max {
                return Err(LineError::TooLong(self.max));
            }
            line.extend_from_slice(&buf[..take]);
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<Result<Option<Vec<u8>>, String>> {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        loop {
            let item = r.next_line().await.map_err(|e| e.detail());
            let stop = !matches!(item, Ok(Some(_)));
            out.push(item);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn line_reader_splits_strips_cr_and_caps() {
        let got = lines_of(b"{\"a\":1}\r\n\n{}\n", 100).await;
        assert_eq!(
            got,
            vec![
                Ok(Some(b"{\"a\":1}".to_vec())),
                Ok(Some(vec![])),
                Ok(Some(b"{}".to_vec())),
                Ok(None)
            ]
        );
        let got = lines_of(b"0123456789\n", 10).await;
        assert_eq!(got, vec![Ok(Some(b"0123456789".to_vec())), Ok(None)]);
        let got = lines_of(b"01234567890\n", 10).await;
        assert!(got[0].as_ref().unwrap_err().contains("10-byte limit"));
        let got = lines_of(b"{}\n{\"trunc", 100).await;
        assert!(got[1].as_ref().unwrap_err().contains("middle of a message"));
    }

    #[tokio::test]
    async fn line_reader_caps_across_buffer_refills() {
        // Longer than the BufReader's capacity so the cap is checked across refills.
        let big = vec![b'x'; 200 * 1024];
        let got = lines_of(&big, 100 * 1024).await;
        assert!(got[0].is_err());
        let mut ok = big.clone();
        ok.push(b'\n');
        let got = lines_of(&ok, 300 * 1024).await;
        assert_eq!(got[0].as_ref().unwrap().as_ref().unwrap().len(), 200 * 1024);
    }
}

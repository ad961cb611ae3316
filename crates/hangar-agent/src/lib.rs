//! The host side of the guest agent (`docs/agent-protocol.md`): a [`Connection`] to a VM's
//! agent socket (the unix socket QEMU serves the virtio-serial port `org.hangar.agent.0` on).
//!
//! [`Connection::open`] resynchronises (the port drops what the guest wrote while nobody was
//! connected, so the first bytes may be the tail of an old frame) and shakes hands; then
//! sessions run one at a time on the connection. The socket serves one client at a time: a
//! second one waits in its backlog until the first hangs up, which is why every wait here is
//! bounded.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hangar_agent_proto::{
    AgentError, Decoder, Frame, Hello, ProtoError, Request, Welcome, CONTROL_SESSION, VERSIONS,
};
use hangar_core::contracts::{ExitStatus, TreeCounts};
use hangar_core::error::{Coded, ErrorCode};

/// Bytes of a stream either side may send before the receiver's first credit.
const WINDOW: u32 = 64 * 1024;
/// Credit granted on top of [`WINDOW`] for each output stream when a session opens.
const EXTRA_CREDIT: u32 = 4 << 20;
/// Largest chunk of stdin in one frame.
const CHUNK: usize = 32 * 1024;
/// How long one sync attempt waits for its answer.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// Sync attempts before the agent is declared unavailable.
const SYNC_TRIES: u32 = 3;

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// No answer: no socket, nobody listening, or no sync answered in time.
    #[error("the guest agent at {socket} does not answer: {why}")]
    Unavailable {
        /// The agent socket.
        socket: PathBuf,
        /// What was tried.
        why: String,
    },
    /// The agent speaks no common version, or lacks a capability.
    #[error("{0}")]
    Unsupported(String),
    /// The agent refused or failed a session (its code and message).
    #[error("{}: {}", .0.code, .0.message)]
    Agent(AgentError),
    /// The stream broke mid-session.
    #[error("the agent connection broke: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before the agent said anything about the session: QEMU sometimes
    /// closes a connection it has just accepted while it tears down the previous client's.
    /// Whatever the session started was killed by the agent's next sync; a call with no input
    /// consumed may be retried on a new connection.
    #[error("the agent connection closed before the session began: {0}")]
    Dropped(std::io::Error),
    /// The agent sent bytes that are not the protocol.
    #[error("the agent sent a malformed frame: {0}")]
    Protocol(#[from] ProtoError),
    /// The agent sent a frame that does not belong here.
    #[error("the agent answered out of turn: {0}")]
    Unexpected(String),
}

impl Coded for AgentClientError {
    fn code(&self) -> ErrorCode {
        match self {
            AgentClientError::Unavailable { .. }
            | AgentClientError::Io(_)
            | AgentClientError::Dropped(_) => ErrorCode::AgentUnavailable,
            AgentClientError::Unsupported(_) => ErrorCode::AgentUnsupported,
            AgentClientError::Agent(e) if e.code == "E_AGENT_UNSUPPORTED" => {
                ErrorCode::AgentUnsupported
            }
            AgentClientError::Agent(e) if e.code == "E_INVALID_ARGUMENT" => {
                ErrorCode::InvalidArgument
            }
            AgentClientError::Agent(_)
            | AgentClientError::Protocol(_)
            | AgentClientError::Unexpected(_) => ErrorCode::AgentFailed,
        }
    }

    fn hint(&self) -> Option<String> {
        Some(self.code().typical_fix().to_string())
    }
}

/// Shorthand.
pub type Result<T, E = AgentClientError> = std::result::Result<T, E>;

/// What to run: the `Guest` contract's request, which the agent protocol carries as is.
pub type Exec = hangar_core::contracts::ExecRequest;

/// A guest file's metadata, as `get` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Bytes.
    pub size: u64,
}

/// One connection to an agent, synchronised and past the handshake.
pub struct Connection {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    decoder: Decoder,
    welcome: Welcome,
    next_session: u32,
    /// The exec session running now (0: none), for [`Signaller`]s.
    running: Arc<std::sync::atomic::AtomicU32>,
}

/// Sends signals to the program of whatever exec a [`Connection`] is running; usable from
/// another thread (a signal handler's) while `exec` blocks.
#[derive(Clone)]
pub struct Signaller {
    writer: Arc<Mutex<UnixStream>>,
    running: Arc<std::sync::atomic::AtomicU32>,
}

impl Signaller {
    /// Sends `signal` to the running program; nothing when no exec runs.
    pub fn signal(&self, signal: i32) -> Result<()> {
        match self.running.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(()),
            session => send(&self.writer, &Frame::Signal { session, signal }),
        }
    }

    /// Resizes the running program's terminal (its foreground programs get SIGWINCH);
    /// nothing when no exec runs or it has no terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        match self.running.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(()),
            session => send(&self.writer, &Frame::Resize { session, rows, cols }),
        }
    }
}

impl Connection {
    /// Connects to the agent socket, resynchronises and shakes hands; gives up with
    /// `E_AGENT_UNAVAILABLE` after [`SYNC_TRIES`] unanswered syncs.
    pub fn open(socket: &Path) -> Result<Connection> {
        Connection::open_with(socket, SYNC_WAIT, SYNC_TRIES)
    }

    /// [`Connection::open`] with `tries` syncs of `wait` each.
    pub fn open_with(socket: &Path, wait: Duration, tries: u32) -> Result<Connection> {
        let unavailable =
            |why: String| AgentClientError::Unavailable { socket: socket.to_path_buf(), why };
        let connect = || -> Result<Connection> {
            let stream = UnixStream::connect(socket).map_err(|e| unavailable(e.to_string()))?;
            let writer = Arc::new(Mutex::new(stream.try_clone()?));
            Ok(Connection {
                reader: stream,
                writer,
                decoder: Decoder::new(),
                welcome: Welcome { version: 0, agent: String::new(), capabilities: vec![] },
                next_session: 1,
                running: Arc::default(),
            })
        };
        let mut c = connect()?;
        let mut synced = false;
        for attempt in 0..tries {
            let nonce = nonce(attempt);
            // QEMU may close a connection it accepted as the previous client's was still being
            // torn down: then connect again, as one of the tries.
            let answered =
                c.send(&Frame::Sync { nonce }).and_then(|()| c.await_sync_ok(nonce, wait));
            match answered {
                Ok(true) => {
                    synced = true;
                    break;
                }
                Ok(false) => {}
                Err(AgentClientError::Io(_)) => c = connect()?,
                Err(e) => return Err(e),
            }
        }
        if !synced {
            return Err(unavailable(format!(
                "{tries} syncs went unanswered, {} ms each",
                wait.as_millis()
            )));
        }
        c.send(&Frame::Hello(Hello {
            versions: VERSIONS.to_vec(),
            client: concat!("hangar ", env!("CARGO_PKG_VERSION")).into(),
        }))?;
        c.reader.set_read_timeout(Some(wait))?;
        match c.next()? {
            Frame::Welcome(w) => c.welcome = w,
            Frame::Error { error, .. } => return Err(AgentClientError::Unsupported(error.message)),
            other => return Err(unexpected(&other)),
        }
        c.reader.set_read_timeout(None)?;
        Ok(c)
    }

    /// Bounds every later wait for the agent (`None`: wait as long as it takes, the default
    /// after the handshake); a wait that runs out is an [`AgentClientError::Io`].
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        Ok(self.reader.set_read_timeout(timeout)?)
    }

    /// A handle that signals the program of this connection's running exec.
    pub fn signaller(&self) -> Signaller {
        Signaller { writer: self.writer.clone(), running: self.running.clone() }
    }

    /// What the agent said of itself in the handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Reads until the SyncOk answering `nonce` (true) or `wait` passes (false); everything
    /// before it is an older connection's and is dropped.
    fn await_sync_ok(&mut self, nonce: u64, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.reader.set_read_timeout(Some(left))?;
            match self.next() {
                Ok(Frame::SyncOk { nonce: n }) if n == nonce => return Ok(true),
                Ok(_) | Err(AgentClientError::Protocol(_)) => {}
                Err(AgentClientError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&self, frame: &Frame) -> Result<()> {
        send(&self.writer, frame)
    }

    /// The next frame; an end of stream is an error (the agent never hangs up first).
    fn next(&mut self) -> Result<Frame> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let n = match self.reader.read(&mut buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the agent socket closed",
                    )
                    .into())
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.decoder.push(&buf[..n]);
        }
    }

    fn require(&self, capability: &str) -> Result<()> {
        if self.welcome.capabilities.iter().any(|c| c == capability) {
            Ok(())
        } else {
            Err(AgentClientError::Unsupported(format!(
                "the guest agent ({}) cannot {capability}",
                self.welcome.agent
            )))
        }
    }

    fn open_session(&mut self, request: Request) -> Result<u32> {
        let session = self.next_session;
        self.next_session += 1;
        self.send(&Frame::Open { session, request })?;
        Ok(session)
    }

    /// A request answered by one Reply (`info`, `sync`).
    fn ask(&mut self, capability: &str, request: Request) -> Result<serde_json::Value> {
        self.require(capability)?;
        let session = self.open_session(request)?;
        loop {
            match self.next()? {
                Frame::Reply { session: s, value } if s == session => return Ok(value),
                Frame::Error { session: s, error } if s == session || s == CONTROL_SESSION => {
                    return Err(AgentClientError::Agent(error))
                }
                _ => {}
            }
        }
    }

    /// The guest's facts: agent version, kernel, uptime, load, memory, filesystems, addresses.
    pub fn info(&mut self) -> Result<serde_json::Value> {
        self.ask("info", Request::Info)
    }

    /// Configures the guest's network: interfaces (found by MAC or name) with their addresses,
    /// MTU and default route, DNS servers, hostname. What the agent did.
    pub fn configure_network(
        &mut self, config: hangar_core::contracts::GuestNetwork,
    ) -> Result<serde_json::Value> {
        self.ask("network", Request::Network { config })
    }

    /// Flushes the guest's filesystems.
    pub fn sync(&mut self) -> Result<()> {
        self.ask("sync", Request::Sync).map(drop)
    }

    /// Copies the guest's regular file `path` to `out`; its mode, mtime and size.
    pub fn get(&mut self, path: &str, out: &mut dyn Write) -> Result<FileMeta> {
        self.require("files")?;
        let value = self.download(Request::Get { path: path.into() }, out)?;
        let field = |k: &str| value[k].as_i64();
        match (field("mode"), field("mtime"), field("size")) {
            (Some(mode), Some(mtime), Some(size)) => {
                Ok(FileMeta { mode: mode as u32, mtime, size: size as u64 })
            }
            _ => Err(AgentClientError::Unexpected(format!("file metadata {value}"))),
        }
    }

    /// Writes the guest directory `path` to `out` as a tar stream (regular files and
    /// directories only); what it held.
    pub fn get_tree(&mut self, path: &str, out: &mut dyn Write) -> Result<TreeCounts> {
        self.require("tree")?;
        let value = self.download(Request::GetTree { path: path.into() }, out)?;
        serde_json::from_value(value.clone())
            .map_err(|_| AgentClientError::Unexpected(format!("tree counts {value}")))
    }

    /// Opens a session whose bytes come on stream 1 into `out` and which ends with a Reply.
    fn download(&mut self, request: Request, out: &mut dyn Write) -> Result<serde_json::Value> {
        let session = self.open_session(request)?;
        self.send(&Frame::Credit { session, stream: 1, bytes: EXTRA_CREDIT })?;
        loop {
            match self.next()? {
                Frame::Data { session: s, stream: 1, bytes } if s == session => {
                    out.write_all(&bytes)?;
                    self.send(&Frame::Credit { session, stream: 1, bytes: bytes.len() as u32 })?;
                }
                Frame::Reply { session: s, value } if s == session => return Ok(value),
                Frame::Error { session: s, error } if s == session || s == CONTROL_SESSION => {
                    return Err(AgentClientError::Agent(error))
                }
                _ => {}
            }
        }
    }

    /// Writes `input` to the guest's `path` (atomically: a temporary file renamed over it)
    /// with `mode` and `mtime`.
    pub fn put(
        &mut self, path: &str, mode: u32, mtime: i64, input: Box<dyn Read + Send>,
    ) -> Result<()> {
        self.require("files")?;
        self.upload(Request::Put { path: path.into(), mode, mtime }, input).map(drop)
    }

    /// Unpacks the tar stream `input` into the new guest directory `path`; what it held.
    pub fn put_tree(&mut self, path: &str, input: Box<dyn Read + Send>) -> Result<TreeCounts> {
        self.require("tree")?;
        let value = self.upload(Request::PutTree { path: path.into() }, input)?;
        serde_json::from_value(value.clone())
            .map_err(|_| AgentClientError::Unexpected(format!("tree counts {value}")))
    }

    /// Opens a session fed `input` on stream 0 (within the agent's credit) and which ends with
    /// a Reply.
    fn upload(
        &mut self, request: Request, input: Box<dyn Read + Send>,
    ) -> Result<serde_json::Value> {
        let session = self.open_session(request)?;
        let window = Credit::new();
        let feeder = feed(input, session, self.writer.clone(), window.clone());
        let result = loop {
            match self.next() {
                Ok(Frame::Credit { session: s, stream: 0, bytes }) if s == session => {
                    window.grant(bytes);
                }
                Ok(Frame::Reply { session: s, value }) if s == session => break Ok(value),
                Ok(Frame::Error { session: s, error }) if s == session || s == CONTROL_SESSION => {
                    break Err(AgentClientError::Agent(error))
                }
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        window.open();
        let _ = feeder.join();
        result
    }

    /// Runs a program: `stdin` (if any) is copied to it, its stdout and stderr to `stdout` and
    /// `stderr` as they come; returns how it ended. A program that cannot be started is an
    /// [`AgentClientError::Agent`] with code `E_AGENT_NOT_FOUND` or `E_AGENT_DENIED`.
    pub fn exec(
        &mut self, exec: Exec, stdin: Option<Box<dyn Read + Send>>, stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitStatus> {
        self.require("exec")?;
        if exec.tty.is_some() {
            self.require("tty")?;
        }
        let request = Request::Exec(exec);
        let session = self.open_session(request)?;
        // More room than the protocol's first window, which is one round trip's worth: the
        // output is written out as it comes, so the host can take it.
        for stream in [1, 2] {
            self.send(&Frame::Credit { session, stream, bytes: EXTRA_CREDIT })?;
        }
        let window = Credit::new();
        let feeder = match stdin {
            Some(input) => Some(feed(input, session, self.writer.clone(), window.clone())),
            None => {
                self.send(&Frame::Eof { session, stream: 0 })?;
                None
            }
        };
        self.running.store(session, std::sync::atomic::Ordering::SeqCst);
        let mut begun = false;
        let result = self.pump(session, &window, stdout, stderr, &mut begun);
        let result = match result {
            Err(AgentClientError::Io(e)) if !begun => Err(AgentClientError::Dropped(e)),
            other => other,
        };
        self.running.store(0, std::sync::atomic::Ordering::SeqCst);
        // Unblock a feeder still waiting for credit; it ends on its own when its input does.
        window.open();
        drop(feeder);
        result
    }

    fn pump(
        &mut self, session: u32, window: &Credit, stdout: &mut dyn Write, stderr: &mut dyn Write,
        begun: &mut bool,
    ) -> Result<ExitStatus> {
        loop {
            let frame = self.next()?;
            *begun |= frame.session() == session;
            match frame {
                Frame::Data { session: s, stream, bytes } if s == session => {
                    let out: &mut dyn Write = if stream == 2 { stderr } else { stdout };
                    out.write_all(&bytes)?;
                    out.flush()?;
                    self.send(&Frame::Credit { session, stream, bytes: bytes.len() as u32 })?;
                }
                Frame::Credit { session: s, stream: 0, bytes } if s == session => {
                    window.grant(bytes);
                }
                Frame::Exit { session: s, status } if s == session => return Ok(status),
                Frame::Error { session: s, error } if s == session || s == CONTROL_SESSION => {
                    return Err(AgentClientError::Agent(error))
                }
                _ => {}
            }
        }
    }
}

/// How many more bytes of stdin the agent will take: the first window plus its credits.
struct Credit {
    bytes: Mutex<u64>,
    changed: Condvar,
}

impl Credit {
    fn new() -> Arc<Credit> {
        Arc::new(Credit { bytes: Mutex::new(u64::from(WINDOW)), changed: Condvar::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent's `Credit` frame.
    fn grant(&self, bytes: u32) {
        *self.lock() += u64::from(bytes);
        self.changed.notify_all();
    }

    /// Unblocks a feeder for good (the session is over; its writes go nowhere).
    fn open(&self) {
        *self.lock() = u64::MAX;
        self.changed.notify_all();
    }

    /// Takes up to `want` bytes, waiting while there are none.
    fn take(&self, want: usize) -> usize {
        let mut avail = self.lock();
        while *avail == 0 {
            avail = self.changed.wait(avail).unwrap_or_else(|e| e.into_inner());
        }
        let granted = (*avail).min(want as u64);
        *avail -= granted;
        granted as usize
    }
}

/// Copies `input` to the session's stream 0 within the agent's credit, then sends its end.
fn feed(
    mut input: Box<dyn Read + Send>, session: u32, writer: Arc<Mutex<UnixStream>>,
    window: Arc<Credit>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut sent = 0;
            while sent < n {
                let granted = window.take(n - sent);
                let bytes = buf[sent..sent + granted].to_vec();
                if send(&writer, &Frame::Data { session, stream: 0, bytes }).is_err() {
                    return;
                }
                sent += granted;
            }
        }
        let _ = send(&writer, &Frame::Eof { session, stream: 0 });
    })
}

fn send(writer: &Mutex<UnixStream>, frame: &Frame) -> Result<()> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(&bytes)?;
    Ok(())
}

fn unexpected(frame: &Frame) -> AgentClientError {
    AgentClientError::Unexpected(format!("{frame:?}"))
}

/// A nonce no earlier connection used: time, process and attempt.
fn nonce(attempt: u32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(attempt)
}

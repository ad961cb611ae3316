//! The guest agent (`docs/agent-protocol.md`): serves the host's sessions over one byte stream,
//! the virtio-serial port `org.hangar.agent.0` in a guest, a socket pair in tests.
//!
//! Not split yet (927 lines; PID 1's reaping already left for `reap`): exec sessions, file
//! transfer and guest facts are the three parts that would be modules of their own; left as
//! they are because each change here needs a rebuilt image and a real-guest run to verify.
//!
//! One thread reads and dispatches frames; each exec session has a thread per output stream
//! (waiting for the host's credit before sending), one writing the program's stdin, and one
//! waiting for the program to end. Frames go out whole under one lock. Every sync the reader
//! finds starts a new connection: the old one's programs are killed and its sessions forgotten.
//!
//! The agent never waits for a child itself: as PID 1 `hangar-init` reaps every process, so it
//! is handed a [`Reap`](crate::reap::Reap) that returns a child's end however the process is
//! organised.
//!
//! Why this file is still one (~930 lines; the reaping moved to `crate::reap`): the sessions
//! share `Session`, `Window`, `pump` and the connection counter. The split it still wants is by
//! concern: the session machinery here; `exec` (pipes, terminals, `tty_exec`, `find_program`) in
//! `agent/exec.rs`; files and trees (`get`, `put`, `get_tree`, `put_tree`, `StreamIn`,
//! `finish_put`) in `agent/files.rs`; `info`/`local_addresses`/`find_port` in `agent/facts.rs`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hangar_agent_proto::{
    AgentError, Decoder, ExecRequest, ExitStatus, Frame, Hello, Request, Welcome, CONTROL_SESSION,
    VERSIONS,
};

use crate::reap::Reap;
use crate::{lock, ExitOutcome, PATH};

/// The virtio-serial port's name (`virtserialport,name=`).
pub const PORT_NAME: &str = "org.hangar.agent.0";

/// Bytes of a stream either side may send before the receiver's first credit.
pub const WINDOW: u32 = 64 * 1024;

/// What every agent reports it can do; one started [`Agent::in_guest`] adds `tty` and
/// `network`.
pub const CAPABILITIES: &[&str] = &["exec", "files", "info", "sync", "tree"];

/// The first argument that makes `hangar-init` the terminal helper ([`tty_exec`]) instead of
/// PID 1.
pub const TTY_EXEC: &str = "--hangar-tty-exec";

/// The agent's own name and version, as the handshake reports it.
pub const AGENT: &str = concat!("hangar-init ", env!("CARGO_PKG_VERSION"));

/// Largest chunk of a stream in one frame: with the frame's 10 header bytes it fits one
/// virtio-serial write, which the guest driver caps at 32 KiB (a larger one costs two round
/// trips to the host).
const CHUNK: usize = 32 * 1024 - 16;

/// Credit granted on top of [`WINDOW`] when a session opens: the window is one round trip's
/// worth of bytes, and a round trip through virtio-serial under TCG takes milliseconds.
pub const EXTRA_CREDIT: u32 = 4 << 20;

/// How much more of a stream may be sent; senders block at zero.
struct Window {
    state: Mutex<(u64, bool)>,
    changed: Condvar,
}

impl Window {
    fn new() -> Arc<Window> {
        Arc::new(Window { state: Mutex::new((u64::from(WINDOW), false)), changed: Condvar::new() })
    }

    /// Takes up to `want` bytes of credit, waiting while there is none; 0 once closed.
    fn take(&self, want: usize) -> usize {
        let mut s = lock(&self.state);
        loop {
            if s.1 {
                return 0;
            }
            if s.0 > 0 {
                let n = (want as u64).min(s.0);
                s.0 -= n;
                return n as usize;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn grant(&self, bytes: u32) {
        lock(&self.state).0 += u64::from(bytes);
        self.changed.notify_all();
    }

    fn close(&self) {
        lock(&self.state).1 = true;
        self.changed.notify_all();
    }
}

/// One session the host has open: an exec (with its program) or a file copy.
struct Session {
    /// The program, for an exec.
    pid: Option<u32>,
    /// The pseudo-terminal's controlling side, for an exec with a terminal (resized there).
    tty: Option<Arc<std::fs::File>>,
    stdin: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    windows: [Arc<Window>; 2],
}

/// The agent on one transport: frames out through `out`.
pub struct Agent {
    out: Mutex<Box<dyn Write + Send>>,
    sessions: Mutex<HashMap<u32, Session>>,
    reap: Arc<dyn Reap>,
    /// Bumped on every sync: frames of an older connection's sessions are not sent.
    connection: Mutex<u64>,
    /// The program that gives an exec its terminal ([`tty_exec`]): `hangar-init` itself in a
    /// guest; none in tests that run the agent inside a test binary.
    tty_helper: Option<std::path::PathBuf>,
}

impl Agent {
    /// An agent writing to `out` whose children are reaped by `reap`.
    pub fn new(out: Box<dyn Write + Send>, reap: Arc<dyn Reap>) -> Arc<Agent> {
        Agent::build(out, reap, None)
    }

    /// The agent as it runs in a guest: it also gives programs terminals (`tty`), through
    /// `helper` (a `hangar-init` binary, run as `helper --hangar-tty-exec PROGRAM ARGV0 ARGS…`,
    /// see [`tty_exec`]), and configures the network (`network`: links, addresses and routes
    /// of the machine it runs on, so never in a test on a host).
    pub fn in_guest(
        out: Box<dyn Write + Send>, reap: Arc<dyn Reap>, helper: std::path::PathBuf,
    ) -> Arc<Agent> {
        Agent::build(out, reap, Some(helper))
    }

    fn build(
        out: Box<dyn Write + Send>, reap: Arc<dyn Reap>, tty_helper: Option<std::path::PathBuf>,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            out: Mutex::new(out),
            sessions: Mutex::new(HashMap::new()),
            reap,
            connection: Mutex::new(0),
            tty_helper,
        })
    }

    /// What this agent announces in its Welcome.
    pub fn capabilities(&self) -> Vec<String> {
        let guest_only = self.tty_helper.as_ref().map(|_| ["tty", "network"]);
        CAPABILITIES
            .iter()
            .copied()
            .chain(guest_only.into_iter().flatten())
            .map(String::from)
            .collect()
    }

    /// Reads frames from `input` and serves them. A read of 0 bytes means the host side is
    /// closed: with `idle` set, the agent waits and reads again (a virtio-serial port without
    /// a host), 1 ms apart for two seconds after the last bytes (a host that just hung up
    /// often comes back at once: the next `hangar exec`), then `idle` apart; without, it
    /// returns.
    pub fn serve(self: &Arc<Agent>, input: impl Read, idle: Option<Duration>) {
        match idle {
            Some(pause) => self.serve_until(input, |recent| {
                std::thread::sleep(if recent { Duration::from_millis(1) } else { pause });
                true
            }),
            None => self.serve_until(input, |_| false),
        }
    }

    /// [`Agent::serve`] with its own idle wait: `idle(recent)` is called whenever the input
    /// reads end-of-file (no host on the other side) and returns once a host may be there
    /// (`recent`: bytes came in the last 2 s, when the next command often comes at once), or
    /// `false` to stop serving.
    pub fn serve_until(
        self: &Arc<Agent>, mut input: impl Read, mut idle: impl FnMut(bool) -> bool,
    ) {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_bytes = std::time::Instant::now();
        loop {
            let n = match input.read(&mut buf) {
                Ok(n) if n > 0 => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // End of file or an error: no host on the other side.
                _ => {
                    if idle(last_bytes.elapsed() < Duration::from_secs(2)) {
                        continue;
                    }
                    return;
                }
            };
            last_bytes = std::time::Instant::now();
            decoder.push(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => self.handle(frame),
                    Ok(None) => break,
                    // The decoder is lost until the host's next sync; nothing else to do.
                    Err(_) => {}
                }
            }
        }
    }

    fn send(&self, frame: &Frame) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        let mut out = lock(&self.out);
        // A write fails only when the transport is gone; the reader notices that.
        let _ = out.write_all(&bytes).and_then(|()| out.flush());
    }

    /// Sends `frame` if `connection` is still the current one.
    fn send_for(&self, connection: u64, frame: &Frame) {
        if *lock(&self.connection) == connection {
            self.send(frame);
        }
    }

    fn error(&self, session: u32, code: &str, message: impl Into<String>) {
        let error = AgentError { code: code.into(), message: message.into() };
        self.send(&Frame::Error { session, error });
    }

    fn handle(self: &Arc<Agent>, frame: Frame) {
        match frame {
            Frame::Sync { nonce } => {
                *lock(&self.connection) += 1;
                for (_, s) in lock(&self.sessions).drain() {
                    end_session(&s);
                }
                self.send(&Frame::SyncOk { nonce });
            }
            Frame::Hello(Hello { versions, .. }) => {
                match VERSIONS.iter().filter(|v| versions.contains(v)).max() {
                    Some(&version) => self.send(&Frame::Welcome(Welcome {
                        version,
                        agent: AGENT.into(),
                        capabilities: self.capabilities(),
                    })),
                    None => self.error(
                        CONTROL_SESSION,
                        "E_AGENT_UNSUPPORTED",
                        format!(
                            "{AGENT} speaks protocol versions {VERSIONS:?}, the host {versions:?}"
                        ),
                    ),
                }
            }
            Frame::Open { session, request } => self.open(session, request),
            // An empty chunk is how the agent marks a stream's end inside itself.
            Frame::Data { session, stream: 0, bytes } if !bytes.is_empty() => {
                let sessions = lock(&self.sessions);
                if let Some(stdin) = sessions.get(&session).and_then(|s| s.stdin.as_ref()) {
                    let _ = stdin.send(bytes);
                }
            }
            Frame::Eof { session, stream: 0 } => {
                if let Some(tx) =
                    lock(&self.sessions).get_mut(&session).and_then(|s| s.stdin.take())
                {
                    // The end, marked: a channel that merely closes means the session was ended.
                    let _ = tx.send(Vec::new());
                }
            }
            Frame::Credit { session, stream: stream @ 1..=2, bytes } => {
                if let Some(s) = lock(&self.sessions).get(&session) {
                    s.windows[usize::from(stream) - 1].grant(bytes);
                }
            }
            Frame::Signal { session, signal } => {
                if let Some(pid) = lock(&self.sessions).get(&session).and_then(|s| s.pid) {
                    kill(pid, signal);
                }
            }
            Frame::Resize { session, rows, cols } => {
                if let Some(tty) = lock(&self.sessions).get(&session).and_then(|s| s.tty.clone()) {
                    // The kernel sends the terminal's foreground programs SIGWINCH.
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(&*tty, size);
                }
            }
            other => {
                if other.session() != CONTROL_SESSION {
                    self.error(other.session(), "E_AGENT_PROTOCOL", "unexpected frame");
                }
            }
        }
    }

    fn open(self: &Arc<Agent>, session: u32, request: Request) {
        if session == CONTROL_SESSION || lock(&self.sessions).contains_key(&session) {
            return self.error(session, "E_AGENT_PROTOCOL", format!("session {session} in use"));
        }
        match request {
            Request::Exec(ExecRequest { tty: Some(_), .. }) if self.tty_helper.is_none() => self
                .error(
                    session,
                    "E_AGENT_UNSUPPORTED",
                    format!("this {AGENT} cannot give a program a terminal"),
                ),
            Request::Exec(ExecRequest { argv, env, cwd, user, tty }) => {
                self.exec(session, &argv, &env, cwd.as_deref(), user.as_deref(), tty)
            }
            Request::Info => self.send(&Frame::Reply { session, value: info() }),
            Request::Network { .. } if self.tty_helper.is_none() => self.error(
                session,
                "E_AGENT_UNSUPPORTED",
                format!("this {AGENT} does not configure the network"),
            ),
            Request::Network { config } => {
                match crate::net::apply(&config, std::path::Path::new("/")) {
                    Ok(value) => self.send(&Frame::Reply { session, value }),
                    Err(e) if e.kind() == ErrorKind::InvalidInput => {
                        self.error(session, "E_INVALID_ARGUMENT", e.to_string())
                    }
                    Err(e) => self.error(session, "E_IO", format!("network: {e}")),
                }
            }
            Request::Sync => {
                rustix::fs::sync();
                self.send(&Frame::Reply { session, value: serde_json::json!({}) });
            }
            Request::Get { path } => self.get(session, &path),
            Request::GetTree { path } => self.get_tree(session, &path),
            Request::PutTree { path } => self.put_tree(session, &path),
            Request::Put { path, mode, mtime } => self.put(session, &path, mode, mtime),
        }
    }

    fn exec(
        self: &Arc<Agent>, session: u32, argv: &[String], env: &[String], cwd: Option<&str>,
        user: Option<&str>, tty: Option<[u16; 2]>,
    ) {
        let Some((program, args)) = argv.split_first() else {
            return self.error(session, "E_AGENT_NOT_FOUND", "an empty argv names no program");
        };
        let (mut cmd, terminal) = match (tty, &self.tty_helper) {
            (Some([rows, cols]), Some(helper)) => {
                // The helper starts a session on the terminal and then becomes the program, so
                // a missing or non-executable program is found here, where it can be reported
                // with its code.
                let resolved = match find_program(program) {
                    Ok(path) => path,
                    Err((code, why)) => return self.error(session, code, why),
                };
                let terminal = match open_terminal(rows, cols) {
                    Ok(t) => t,
                    Err(e) => {
                        return self.error(session, "E_IO", format!("no pseudo-terminal: {e}"))
                    }
                };
                let mut cmd = Command::new(helper);
                cmd.arg(TTY_EXEC).arg(resolved).arg(program).args(args);
                (cmd, Some(terminal))
            }
            _ => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                (cmd, None)
            }
        };
        cmd.env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("TERM", "linux")
            .current_dir(cwd.unwrap_or("/"));
        match &terminal {
            Some((_, child_side)) => {
                let stdio = || child_side.try_clone().map(Stdio::from);
                match (stdio(), stdio(), stdio()) {
                    (Ok(i), Ok(o), Ok(e)) => cmd.stdin(i).stdout(o).stderr(e),
                    _ => return self.error(session, "E_IO", "cannot duplicate the terminal"),
                };
            }
            None => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        for pair in env {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    cmd.env(k, v);
                }
                _ => {
                    return self.error(
                        session,
                        "E_INVALID_ARGUMENT",
                        format!("environment entry {pair:?} is not KEY=VALUE"),
                    )
                }
            }
        }
        if let Some(user) = user {
            use std::os::unix::process::CommandExt;
            match parse_user(user) {
                Some((uid, gid)) => {
                    cmd.uid(uid).gid(gid);
                }
                None => {
                    return self.error(
                        session,
                        "E_INVALID_ARGUMENT",
                        format!("user {user:?} is not UID or UID:GID"),
                    )
                }
            }
        }
        let spawned = self.reap.spawn(&mut cmd);
        // The agent keeps only the controlling side: once the program (and whatever it
        // started) has closed the terminal, reading it ends.
        drop(cmd);
        let master = terminal.map(|(master, _)| Arc::new(master));
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let code = match e.kind() {
                    ErrorKind::NotFound => "E_AGENT_NOT_FOUND",
                    ErrorKind::PermissionDenied => "E_AGENT_DENIED",
                    _ => "E_IO",
                };
                return self.error(session, code, format!("cannot start {program:?}: {e}"));
            }
        };
        let connection = *lock(&self.connection);
        let pid = child.id();
        let (stdin_tx, stdin_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let windows = [Window::new(), Window::new()];
        lock(&self.sessions).insert(
            session,
            Session {
                pid: Some(pid),
                tty: master.clone(),
                stdin: Some(stdin_tx),
                windows: windows.clone(),
            },
        );
        // More room for stdin than the protocol's first window: a pipe takes it at once.
        self.send(&Frame::Credit { session, stream: 0, bytes: EXTRA_CREDIT });
        let (stdin, outputs): (Box<dyn Write + Send>, Vec<(u8, Output)>) = match &master {
            // A terminal has one output: stdout and stderr both are the terminal.
            Some(m) => (Box::new(m.clone()), vec![(1, Box::new(m.clone()) as Output)]),
            None => (
                Box::new(child.stdin.take().expect("piped")),
                vec![
                    (1, Box::new(child.stdout.take().expect("piped"))),
                    (2, Box::new(child.stderr.take().expect("piped"))),
                ],
            ),
        };
        let agent = self.clone();
        spawn("exec-stdin", move || {
            let mut stdin = stdin;
            for bytes in stdin_rx {
                if bytes.is_empty() {
                    break; // the host's end of stdin
                }
                if stdin.write_all(&bytes).is_err() {
                    break;
                }
                agent.send_for(
                    connection,
                    &Frame::Credit { session, stream: 0, bytes: bytes.len() as u32 },
                );
            }
            // Dropping `stdin` closes the program's input (a pipe; a terminal stays open).
        });
        let pumps: Vec<_> = outputs
            .into_iter()
            .map(|(stream, from)| {
                let window = windows[usize::from(stream) - 1].clone();
                self.pump(connection, session, stream, from, window)
            })
            .collect();
        let agent = self.clone();
        spawn("exec-wait", move || {
            let outcome = agent.reap.wait(pid);
            for pump in pumps.into_iter().flatten() {
                let _ = pump.join();
            }
            let status = match outcome {
                ExitOutcome::Code(c) => ExitStatus::Code(c),
                ExitOutcome::Signal(s) => ExitStatus::Signal(s),
            };
            lock(&agent.sessions).remove(&session);
            agent.send_for(connection, &Frame::Exit { session, status });
        });
    }

    /// Sends a regular file's bytes on stream 1, its end, then a Reply with its mode, mtime and
    /// size.
    fn get(self: &Arc<Agent>, session: u32, path: &str) {
        let opened = std::fs::File::open(path).and_then(|f| f.metadata().map(|m| (f, m)));
        let (file, meta) = match opened {
            Ok((f, m)) if m.is_file() => (f, m),
            Ok(_) => {
                return self.error(
                    session,
                    "E_INVALID_ARGUMENT",
                    format!("{path} is not a regular file"),
                )
            }
            Err(e) => return self.error(session, "E_IO", format!("{path}: {e}")),
        };
        use std::os::unix::fs::MetadataExt;
        let reply = serde_json::json!({"mode": meta.mode() & 0o7777, "mtime": meta.mtime(), "size": meta.len()});
        let connection = *lock(&self.connection);
        let window = Window::new();
        lock(&self.sessions).insert(
            session,
            Session { pid: None, tty: None, stdin: None, windows: [window.clone(), Window::new()] },
        );
        let pump = self.pump(connection, session, 1, Box::new(file), window);
        let agent = self.clone();
        spawn("file-get", move || {
            if let Some(p) = pump {
                let _ = p.join();
            }
            lock(&agent.sessions).remove(&session);
            agent.send_for(connection, &Frame::Reply { session, value: reply });
        });
    }

    /// Writes stream 0 to a temporary file beside `path`; at its end sets the mode and mtime
    /// and renames it over `path`, then replies. A failure leaves no temporary file behind.
    fn put(self: &Arc<Agent>, session: u32, path: &str, mode: u32, mtime: i64) {
        let target = std::path::PathBuf::from(path);
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return self.error(session, "E_INVALID_ARGUMENT", format!("{path} names no file"));
        };
        let temp = dir.join(format!(".{}.hangar-{session}", name.to_string_lossy()));
        let mut file = match std::fs::File::options().write(true).create_new(true).open(&temp) {
            Ok(f) => f,
            Err(e) => return self.error(session, "E_IO", format!("{}: {e}", temp.display())),
        };
        let connection = *lock(&self.connection);
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        lock(&self.sessions).insert(
            session,
            Session {
                pid: None,
                tty: None,
                stdin: Some(tx),
                windows: [Window::new(), Window::new()],
            },
        );
        self.send(&Frame::Credit { session, stream: 0, bytes: EXTRA_CREDIT });
        let (agent, path) = (self.clone(), path.to_string());
        spawn("file-put", move || {
            let mut failed = None;
            let mut ended_well = false;
            for bytes in rx {
                if bytes.is_empty() {
                    ended_well = true;
                    break;
                }
                if failed.is_none() {
                    failed = file.write_all(&bytes).err();
                }
                agent.send_for(
                    connection,
                    &Frame::Credit { session, stream: 0, bytes: bytes.len() as u32 },
                );
            }
            // The host's Eof is marked; a channel that just closes was ended by a sync.
            let done = match failed {
                Some(e) => Err(e),
                None if !ended_well => {
                    Err(std::io::Error::other("the session ended before its end of file"))
                }
                None => finish_put(&file, &temp, &target, mode, mtime),
            };
            lock(&agent.sessions).remove(&session);
            match done {
                Ok(()) => agent
                    .send_for(connection, &Frame::Reply { session, value: serde_json::json!({}) }),
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    let error = AgentError { code: "E_IO".into(), message: format!("{path}: {e}") };
                    agent.send_for(connection, &Frame::Error { session, error });
                }
            }
        });
    }

    /// Sends the directory `path` as a tar stream on stream 1, its end, then a Reply with what
    /// it held (an Error if packing failed part way).
    fn get_tree(self: &Arc<Agent>, session: u32, path: &str) {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return self.error(
                    session,
                    "E_INVALID_ARGUMENT",
                    format!("{path} is not a directory"),
                )
            }
            Err(e) => return self.error(session, "E_IO", format!("{path}: {e}")),
        }
        let (from, to) = match rustix::pipe::pipe() {
            Ok((r, w)) => (std::fs::File::from(r), std::fs::File::from(w)),
            Err(e) => return self.error(session, "E_IO", format!("no pipe: {e}")),
        };
        let dir = std::path::PathBuf::from(path);
        let packer = std::thread::Builder::new()
            .name("tree-pack".into())
            .spawn(move || hangar_tree::pack(&dir, to));
        let Ok(packer) = packer else {
            return self.error(session, "E_IO", "cannot start packing");
        };
        let connection = *lock(&self.connection);
        let window = Window::new();
        lock(&self.sessions).insert(
            session,
            Session { pid: None, tty: None, stdin: None, windows: [window.clone(), Window::new()] },
        );
        let pump = self.pump(connection, session, 1, Box::new(from), window);
        let (agent, path) = (self.clone(), path.to_string());
        spawn("tree-get", move || {
            if let Some(p) = pump {
                let _ = p.join();
            }
            let packed = packer.join().unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
            lock(&agent.sessions).remove(&session);
            agent.send_for(connection, &tree_answer(session, &path, packed));
        });
    }

    /// Unpacks stream 0 (a tar stream) into the new directory `path`, then replies.
    fn put_tree(self: &Arc<Agent>, session: u32, path: &str) {
        let connection = *lock(&self.connection);
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        lock(&self.sessions).insert(
            session,
            Session {
                pid: None,
                tty: None,
                stdin: Some(tx),
                windows: [Window::new(), Window::new()],
            },
        );
        self.send(&Frame::Credit { session, stream: 0, bytes: EXTRA_CREDIT });
        let input =
            StreamIn { rx, chunk: Vec::new(), at: 0, agent: self.clone(), connection, session };
        let (agent, path) = (self.clone(), path.to_string());
        spawn("tree-put", move || {
            let unpacked = hangar_tree::unpack(input, std::path::Path::new(&path));
            lock(&agent.sessions).remove(&session);
            agent.send_for(connection, &tree_answer(session, &path, unpacked));
        });
    }

    /// Copies one output stream to the host within its window, then sends its end.
    fn pump(
        self: &Arc<Agent>, connection: u64, session: u32, stream: u8,
        mut from: Box<dyn Read + Send>, window: Arc<Window>,
    ) -> Option<std::thread::JoinHandle<()>> {
        let agent = self.clone();
        spawn("exec-out", move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut sent = 0;
                while sent < n {
                    let granted = window.take(n - sent);
                    if granted == 0 {
                        return; // the session ended under us
                    }
                    let bytes = buf[sent..sent + granted].to_vec();
                    agent.send_for(connection, &Frame::Data { session, stream, bytes });
                    sent += granted;
                }
            }
            agent.send_for(connection, &Frame::Eof { session, stream });
        })
    }
}

/// How a tree session ends: a Reply with its counts, or the Error that stopped it.
fn tree_answer(session: u32, path: &str, done: std::io::Result<hangar_tree::Counts>) -> Frame {
    match done {
        Ok(c) => Frame::Reply {
            session,
            value: serde_json::json!({"files": c.files, "dirs": c.dirs, "skipped": c.skipped, "bytes": c.bytes}),
        },
        Err(e) => Frame::Error {
            session,
            error: AgentError { code: "E_IO".into(), message: format!("{path}: {e}") },
        },
    }
}

/// Stream 0 of a session as a reader: each chunk is credited back as it is taken; the host's
/// end of stream is end-of-file, a session ended by a sync an error (so nothing half-copied is
/// kept).
struct StreamIn {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    agent: Arc<Agent>,
    connection: u64,
    session: u32,
}

impl Read for StreamIn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) if chunk.is_empty() => return Ok(0),
                Ok(chunk) => {
                    let credit = Frame::Credit {
                        session: self.session,
                        stream: 0,
                        bytes: chunk.len() as u32,
                    };
                    self.agent.send_for(self.connection, &credit);
                    (self.chunk, self.at) = (chunk, 0);
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the session ended before its end of file",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// One output stream of a program: its stream number and where it is read.
type Output = Box<dyn Read + Send>;

/// Kills a session's program and releases its senders.
fn end_session(s: &Session) {
    if let Some(pid) = s.pid {
        kill(pid, 9);
    }
    for w in &s.windows {
        w.close();
    }
}

fn kill(pid: u32, signal: i32) {
    let (Some(pid), Some(signal)) = (
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Signal::from_named_raw(signal),
    ) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, signal);
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Option<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f).ok()
}

/// `UID` or `UID:GID` (the group defaults to the uid).
pub fn parse_user(user: &str) -> Option<(u32, u32)> {
    match user.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, g.parse().ok()?)),
        None => {
            let u = user.parse().ok()?;
            Some((u, u))
        }
    }
}

/// The guest's facts for an `info` request, read from /proc and /sys.
fn info() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let uname = rustix::system::uname();
    let meminfo = read("/proc/meminfo");
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let load: Vec<f64> =
        read("/proc/loadavg").split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect();
    let uptime_s = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_default();
    let filesystems: Vec<serde_json::Value> = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| serde_json::json!({"device": f[0], "path": f[1], "type": f[2]}))
        })
        .collect();
    serde_json::json!({
        "agent": AGENT,
        "kernel": uname.release().to_string_lossy(),
        "uptime_s": uptime_s,
        "load": load,
        "memory": {"total_kib": kib("MemTotal:"), "available_kib": kib("MemAvailable:")},
        "filesystems": filesystems,
        "addresses": local_addresses(&read("/proc/net/fib_trie")),
    })
}

/// The IPv4 addresses of this host's interfaces: the `/32 host LOCAL` leaves of
/// `/proc/net/fib_trie`, each preceded by its address line.
pub fn local_addresses(fib_trie: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = None;
    for line in fib_trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        // `/8 host LOCAL` under 127.0.0.0 is the loopback range, not an address.
        if t.starts_with("/32 host LOCAL") {
            if let Some(addr) = last.take() {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        } else if t.split('.').count() == 4 && t.parse::<std::net::Ipv4Addr>().is_ok() {
            last = Some(t.to_string());
        }
    }
    out
}

/// The device node of the agent's port: the `/dev/<port>` whose
/// `/sys/class/virtio-ports/<port>/name` is [`PORT_NAME`].
pub fn find_port(sys_class: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = std::fs::read_dir(sys_class).ok()?;
    for entry in dir.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(std::path::Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

/// Mode, mtime, data on disk, then the rename that makes the file appear whole.
fn finish_put(
    file: &std::fs::File, temp: &std::path::Path, target: &std::path::Path, mode: u32, mtime: i64,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    let when = std::time::UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64);
    file.set_modified(when)?;
    file.sync_all()?;
    std::fs::rename(temp, target)
}

/// A new pseudo-terminal of `rows` × `cols`: (the agent's controlling side, the program's
/// side).
fn open_terminal(rows: u16, cols: u16) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let size = rustix::termios::Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&master, size)?;
    let child_side = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((master.into(), child_side.into()))
}

/// Where `program` is, the way `execvp` would look for it in [`PATH`]; or the agent's error
/// code for a program that is missing (`E_AGENT_NOT_FOUND`) or not executable
/// (`E_AGENT_DENIED`).
pub fn find_program(program: &str) -> Result<std::path::PathBuf, (&'static str, String)> {
    use rustix::fs::Access;
    let candidates: Vec<std::path::PathBuf> = if program.contains('/') {
        vec![program.into()]
    } else {
        PATH.split(':').map(|dir| std::path::Path::new(dir).join(program)).collect()
    };
    let mut denied = None;
    for path in candidates {
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && rustix::fs::access(&path, Access::EXEC_OK).is_ok() => {
                return Ok(path)
            }
            Ok(_) => denied = denied.or(Some(path)),
            Err(_) => {}
        }
    }
    match denied {
        Some(path) => Err(("E_AGENT_DENIED", format!("{} is not executable", path.display()))),
        None => Err(("E_AGENT_NOT_FOUND", format!("{program:?} not found in {PATH}"))),
    }
}

/// The terminal helper, `hangar-init --hangar-tty-exec PROGRAM ARGV0 ARGS…`: started by the
/// agent with a pseudo-terminal on its stdin, stdout and stderr, it makes itself a session
/// leader with that terminal as its controlling terminal (so the terminal's Ctrl-C, job control
/// and SIGWINCH reach the program) and then becomes PROGRAM. Returns only if that fails, with
/// the error.
pub fn tty_exec(args: &[std::ffi::OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let [program, argv0, rest @ ..] = args else {
        return std::io::Error::new(ErrorKind::InvalidInput, "usage: PROGRAM ARGV0 [ARGS...]");
    };
    if let Err(e) = rustix::process::setsid() {
        return e.into();
    }
    if let Err(e) = rustix::process::ioctl_tiocsctty(std::io::stdin()) {
        return e.into();
    }
    Command::new(program).arg0(argv0).args(rest).exec()
}

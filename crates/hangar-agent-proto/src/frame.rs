//! Frames: encoding, and the incremental decoder with resynchronisation.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{AgentError, ExitStatus, Hello, Request, Welcome, MARKER, MAX_FRAME};

/// The kind byte of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Frame::Hello`].
    Hello = 0x01,
    /// [`Frame::Welcome`].
    Welcome = 0x02,
    /// [`Frame::Sync`].
    Sync = 0x03,
    /// [`Frame::SyncOk`].
    SyncOk = 0x04,
    /// [`Frame::Open`].
    Open = 0x10,
    /// [`Frame::Data`].
    Data = 0x11,
    /// [`Frame::Eof`].
    Eof = 0x12,
    /// [`Frame::Credit`].
    Credit = 0x13,
    /// [`Frame::Signal`].
    Signal = 0x14,
    /// [`Frame::Resize`].
    Resize = 0x15,
    /// [`Frame::Exit`].
    Exit = 0x16,
    /// [`Frame::Error`].
    Error = 0x17,
    /// [`Frame::Reply`].
    Reply = 0x18,
}

impl Kind {
    fn of(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Welcome,
            0x03 => Kind::Sync,
            0x04 => Kind::SyncOk,
            0x10 => Kind::Open,
            0x11 => Kind::Data,
            0x12 => Kind::Eof,
            0x13 => Kind::Credit,
            0x14 => Kind::Signal,
            0x15 => Kind::Resize,
            0x16 => Kind::Exit,
            0x17 => Kind::Error,
            0x18 => Kind::Reply,
            _ => return None,
        })
    }
}

/// One message. `session` 0 is the connection's own ([`crate::CONTROL_SESSION`]); the host
/// picks a new non-zero id for every session it opens.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Host → agent, first: the versions it speaks.
    Hello(Hello),
    /// Agent → host: the chosen version and what the agent can do.
    Welcome(Welcome),
    /// Either way, after a [`MARKER`]: "discard everything before this"; answered with the
    /// same nonce.
    Sync {
        /// Picked by the sender, echoed back.
        nonce: u64,
    },
    /// The answer to [`Frame::Sync`].
    SyncOk {
        /// The nonce of the sync it answers.
        nonce: u64,
    },
    /// Host → agent: start a session.
    Open {
        /// The new session.
        session: u32,
        /// What it does.
        request: Request,
    },
    /// Bytes of one stream of a session (0 stdin or file in, 1 stdout or file out, 2 stderr).
    Data {
        /// The session.
        session: u32,
        /// The stream.
        stream: u8,
        /// The bytes (at most [`MAX_FRAME`] minus the headers).
        bytes: Vec<u8>,
    },
    /// A stream has ended (stdin closed, file complete).
    Eof {
        /// The session.
        session: u32,
        /// The stream.
        stream: u8,
    },
    /// Backpressure: the receiver of a stream may be sent this many more bytes of it.
    Credit {
        /// The session.
        session: u32,
        /// The stream.
        stream: u8,
        /// Bytes granted on top of what was granted before.
        bytes: u32,
    },
    /// Host → agent: send a signal to the session's program.
    Signal {
        /// The session.
        session: u32,
        /// The signal number.
        signal: i32,
    },
    /// Host → agent: the terminal's new size.
    Resize {
        /// The session.
        session: u32,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Agent → host: the session's program ended (after its output streams' ends).
    Exit {
        /// The session.
        session: u32,
        /// How.
        status: ExitStatus,
    },
    /// Either way: the session failed (or, on session 0, the connection is ending).
    Error {
        /// The session.
        session: u32,
        /// Why.
        error: AgentError,
    },
    /// Agent → host: a session's JSON result (info, a got file's metadata, sync done).
    Reply {
        /// The session.
        session: u32,
        /// The result.
        value: serde_json::Value,
    },
}

/// Why a byte stream cannot be read as frames. Every one ends the connection (the reader
/// resynchronises on the next one); none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A frame claims more than [`MAX_FRAME`] bytes (nothing of it is buffered).
    #[error("frame of {len} bytes is over the {MAX_FRAME}-byte limit")]
    Oversized {
        /// What the length field said.
        len: usize,
    },
    /// A frame too short for its header.
    #[error("frame of {len} bytes is shorter than its 5-byte header")]
    Short {
        /// What the length field said.
        len: usize,
    },
    /// An unknown kind byte.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A payload that does not fit its kind.
    #[error("bad {kind:?} payload: {detail}")]
    BadPayload {
        /// The frame's kind.
        kind: Kind,
        /// What was wrong.
        detail: String,
    },
}

impl Frame {
    fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Welcome(_) => Kind::Welcome,
            Frame::Sync { .. } => Kind::Sync,
            Frame::SyncOk { .. } => Kind::SyncOk,
            Frame::Open { .. } => Kind::Open,
            Frame::Data { .. } => Kind::Data,
            Frame::Eof { .. } => Kind::Eof,
            Frame::Credit { .. } => Kind::Credit,
            Frame::Signal { .. } => Kind::Signal,
            Frame::Resize { .. } => Kind::Resize,
            Frame::Exit { .. } => Kind::Exit,
            Frame::Error { .. } => Kind::Error,
            Frame::Reply { .. } => Kind::Reply,
        }
    }

    /// The session the frame belongs to (0 for the connection's own frames).
    pub fn session(&self) -> u32 {
        match self {
            Frame::Hello(_) | Frame::Welcome(_) | Frame::Sync { .. } | Frame::SyncOk { .. } => 0,
            Frame::Open { session, .. }
            | Frame::Data { session, .. }
            | Frame::Eof { session, .. }
            | Frame::Credit { session, .. }
            | Frame::Signal { session, .. }
            | Frame::Resize { session, .. }
            | Frame::Exit { session, .. }
            | Frame::Error { session, .. }
            | Frame::Reply { session, .. } => *session,
        }
    }

    /// Appends the frame's bytes to `out`. A sync is preceded by its [`MARKER`].
    ///
    /// # Panics
    /// If a data frame is longer than [`MAX_FRAME`] allows: writers split their streams.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("protocol values serialise")
        }
        let payload: Vec<u8> = match self {
            Frame::Hello(h) => json(h),
            Frame::Welcome(w) => json(w),
            Frame::Sync { nonce } | Frame::SyncOk { nonce } => nonce.to_be_bytes().to_vec(),
            Frame::Open { request, .. } => json(request),
            Frame::Data { stream, bytes, .. } => [&[*stream][..], bytes].concat(),
            Frame::Eof { stream, .. } => vec![*stream],
            Frame::Credit { stream, bytes, .. } => [&[*stream][..], &bytes.to_be_bytes()].concat(),
            Frame::Signal { signal, .. } => signal.to_be_bytes().to_vec(),
            Frame::Resize { rows, cols, .. } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
            Frame::Exit { status, .. } => json(status),
            Frame::Error { error, .. } => json(error),
            Frame::Reply { value, .. } => json(value),
        };
        let len = 5 + payload.len();
        assert!(len <= MAX_FRAME, "a {len}-byte frame: split the stream");
        if matches!(self, Frame::Sync { .. } | Frame::SyncOk { .. }) {
            out.push(MARKER);
        }
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.kind() as u8);
        out.extend_from_slice(&self.session().to_be_bytes());
        out.extend_from_slice(&payload);
    }

    fn decode(kind: Kind, session: u32, p: &[u8]) -> Result<Frame, ProtoError> {
        let bad = |detail: String| ProtoError::BadPayload { kind, detail };
        let json = |p: &[u8]| -> Result<serde_json::Value, ProtoError> {
            serde_json::from_slice(p).map_err(|e| bad(e.to_string()))
        };
        fn typed<T: DeserializeOwned>(kind: Kind, p: &[u8]) -> Result<T, ProtoError> {
            serde_json::from_slice(p)
                .map_err(|e| ProtoError::BadPayload { kind, detail: e.to_string() })
        }
        let fixed = |n: usize| -> Result<&[u8], ProtoError> {
            (p.len() == n)
                .then_some(p)
                .ok_or_else(|| bad(format!("{} bytes where {n} belong", p.len())))
        };
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Ok(match kind {
            Kind::Hello => Frame::Hello(typed(kind, p)?),
            Kind::Welcome => Frame::Welcome(typed(kind, p)?),
            Kind::Sync => Frame::Sync { nonce: u64_of(fixed(8)?) },
            Kind::SyncOk => Frame::SyncOk { nonce: u64_of(fixed(8)?) },
            Kind::Open => Frame::Open { session, request: typed(kind, p)? },
            Kind::Data => {
                let (stream, bytes) =
                    p.split_first().ok_or_else(|| bad("no stream byte".into()))?;
                Frame::Data { session, stream: *stream, bytes: bytes.to_vec() }
            }
            Kind::Eof => Frame::Eof { session, stream: fixed(1)?[0] },
            Kind::Credit => {
                let b = fixed(5)?;
                Frame::Credit {
                    session,
                    stream: b[0],
                    bytes: u32::from_be_bytes(b[1..5].try_into().expect("4 bytes")),
                }
            }
            Kind::Signal => Frame::Signal {
                session,
                signal: i32::from_be_bytes(fixed(4)?.try_into().expect("4 bytes")),
            },
            Kind::Resize => {
                let b = fixed(4)?;
                Frame::Resize {
                    session,
                    rows: u16::from_be_bytes([b[0], b[1]]),
                    cols: u16::from_be_bytes([b[2], b[3]]),
                }
            }
            Kind::Exit => Frame::Exit { session, status: typed(kind, p)? },
            Kind::Error => Frame::Error { session, error: typed(kind, p)? },
            Kind::Reply => Frame::Reply { session, value: json(p)? },
        })
    }
}

/// Reads frames out of a byte stream fed in any chunks. It starts lost (a new connection may
/// begin mid-frame): it skips bytes up to a [`MARKER`] that starts a sync; after an error it
/// is lost again.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    synced: bool,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder waiting for a [`MARKER`].
    pub fn new() -> Decoder {
        Decoder { buf: Vec::new(), synced: false }
    }

    /// A decoder that trusts the stream from its first byte (a fresh pipe in tests).
    pub fn synced() -> Decoder {
        Decoder { buf: Vec::new(), synced: true }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has arrived. After an `Err` the decoder is lost
    /// and skips to the next marker that starts a sync.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        loop {
            if !self.synced && !self.find_sync() {
                return Ok(None);
            }
            // A marker between frames: a resync in the stream; skip it.
            if self.buf.first() == Some(&MARKER) {
                self.buf.remove(0);
                continue;
            }
            if self.buf.len() < 4 {
                return Ok(None);
            }
            let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
            let checked = if len > MAX_FRAME {
                Err(ProtoError::Oversized { len })
            } else if len < 5 {
                Err(ProtoError::Short { len })
            } else if self.buf.len() < 4 + len {
                return Ok(None);
            } else {
                let frame = &self.buf[4..4 + len];
                let session = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes"));
                match Kind::of(frame[0]) {
                    Some(kind) => Frame::decode(kind, session, &frame[5..]),
                    None => Err(ProtoError::UnknownKind(frame[0])),
                }
            };
            return match checked {
                Ok(f) => {
                    self.buf.drain(..4 + len);
                    Ok(Some(f))
                }
                Err(e) => {
                    // Lost: whatever this was, the next sync may start inside it.
                    self.buf.remove(0);
                    self.synced = false;
                    Err(e)
                }
            };
        }
    }

    /// Skips to the first marker followed by a sync's header (ten fixed bytes, which random
    /// or torn data all but never holds), leaving the sync frame first. False when there is
    /// none yet (the last bytes are kept: a sync may straddle two reads).
    fn find_sync(&mut self) -> bool {
        let header = |kind: Kind| {
            let mut h = vec![MARKER];
            h.extend_from_slice(&13u32.to_be_bytes());
            h.push(kind as u8);
            h.extend_from_slice(&0u32.to_be_bytes());
            h
        };
        let (sync, ok) = (header(Kind::Sync), header(Kind::SyncOk));
        let found =
            self.buf.windows(sync.len()).position(|w| w == sync.as_slice() || w == ok.as_slice());
        match found {
            Some(at) => {
                self.buf.drain(..=at);
                self.synced = true;
                true
            }
            None => {
                let keep = self.buf.len().min(sync.len() - 1);
                self.buf.drain(..self.buf.len() - keep);
                false
            }
        }
    }
}

//! The guest agent's wire protocol (issue 14, `docs/agent-protocol.md`): what the host and the
//! agent in `hangar-init` say to each other over the VM's virtio-serial port. Pure: frames in,
//! bytes out, and an incremental [`Decoder`]; the transports live with the host client and the
//! agent.
//!
//! A frame is `len: u32 BE` (what follows, at most [`MAX_FRAME`]), `kind: u8`, `session: u32
//! BE`, then the payload. Because `MAX_FRAME` is below 2^24, a frame's first byte is always 0,
//! so [`MARKER`] (0xFF) can never start one: a writer puts it before a [`Frame::Sync`] after a
//! (re)connect, and a reader that lost its place (the port drops what the guest writes while
//! nobody listens) skips bytes up to the next marker.

use serde::{Deserialize, Serialize};

/// The domain's types that cross the wire as they are: what to run, how it ended, a network.
pub use hangar_core::contracts::{ExecRequest, ExitStatus, GuestNetwork, GuestNic};

mod frame;

pub use frame::{Decoder, Frame, Kind, ProtoError};

/// The protocol versions this crate speaks; the handshake picks the highest both sides know.
pub const VERSIONS: &[u32] = &[1];

/// The largest frame (after its length field): 1 MiB. A longer one ends the connection.
pub const MAX_FRAME: usize = 1 << 20;

/// The byte that starts a resynchronisation; no frame starts with it.
pub const MARKER: u8 = 0xFF;

/// The session every connection-level frame (hello, sync, ping) uses.
pub const CONTROL_SESSION: u32 = 0;

/// The host's first frame: which versions it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Versions the host speaks, any order.
    pub versions: Vec<u32>,
    /// Who is asking (`hangar 0.1.0`), for the agent's log.
    pub client: String,
}

/// The agent's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both speak from now on.
    pub version: u32,
    /// The agent's own version (`hangar-init 0.1.0`).
    pub agent: String,
    /// What it can do (`exec`, `files`, `info`, `sync`, `network`); a host must not open a
    /// session of a kind missing here (it reports `E_AGENT_UNSUPPORTED`).
    pub capabilities: Vec<String>,
}

/// What a session does, sent in its [`Frame::Open`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Runs a program; its stdin, stdout and stderr are streams 0, 1 and 2 of the session
    /// (one stream, 1, with a terminal). The fields are the `Guest` contract's request.
    Exec(ExecRequest),
    /// Sends a file's bytes on stream 1, then a [`Frame::Reply`] with its mode and mtime.
    Get {
        /// Absolute path in the guest.
        path: String,
    },
    /// Writes stream 0's bytes to a file (atomically, on its end of stream).
    Put {
        /// Absolute path in the guest.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Modification time, seconds since the epoch.
        mtime: i64,
    },
    /// Sends a directory as a tar stream (regular files and directories only, `hangar-tree`)
    /// on stream 1, its end, then a [`Frame::Reply`] with what it held.
    GetTree {
        /// Absolute path of a directory in the guest.
        path: String,
    },
    /// Unpacks the tar stream on stream 0 into a new directory (it must not exist), whole or
    /// not at all; then a [`Frame::Reply`] with what it held.
    PutTree {
        /// Absolute path in the guest; must not exist.
        path: String,
    },
    /// Configures the guest's network (capability `network`), then a [`Frame::Reply`] with
    /// what was done.
    Network {
        /// Interfaces, DNS, hostname.
        config: GuestNetwork,
    },
    /// The guest's facts, in a [`Frame::Reply`].
    Info,
    /// Flushes the guest's filesystems (before a memory snapshot).
    Sync,
}

/// A session's failure, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// A stable code (`E_AGENT_NOT_FOUND`: no such program, `E_AGENT_DENIED`, `E_IO`, …).
    pub code: String,
    /// What happened.
    pub message: String,
}

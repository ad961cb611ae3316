//! An in-process fake QMP server: a tokio `UnixListener` in a temporary directory whose peer
//! side each test scripts message by message.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use hangar_qmp::{Qmp, QmpOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

/// Generous: only reached when a test is broken.
pub const CONNECT: Duration = Duration::from_secs(10);

/// The greeting QEMU 10.0.2 sends.
pub fn greeting() -> Value {
    json!({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10},
        "package": "Debian 1:10.0.2+ds-1~bpo12+1"}, "capabilities": ["oob"]}})
}

/// A timestamp in QEMU's shape.
pub fn ts() -> Value {
    json!({"seconds": 1_700_000_000, "microseconds": 123_456})
}

/// A listening fake server.
pub struct Fake {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub listener: UnixListener,
}

impl Fake {
    pub fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Fake { dir, path, listener }
    }

    pub async fn accept(&self) -> Peer {
        let (stream, _) = self.listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        Peer { r: BufReader::new(r), w }
    }
}

/// The server side of one connection.
pub struct Peer {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Peer {
    pub async fn send(&mut self, v: Value) {
        // QEMU ends its lines with CRLF.
        let mut line = serde_json::to_vec(&v).unwrap();
        line.extend_from_slice(b"\r\n");
        self.send_raw(&line).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// The next command from the client, or `None` at EOF.
    pub async fn try_recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).await.unwrap();
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).expect("the client sent valid JSON"))
    }

    /// The next command; asserts its name.
    pub async fn expect(&mut self, command: &str) -> Value {
        let cmd = self.try_recv().await.expect("a command, not EOF");
        assert_eq!(cmd["execute"], command, "{cmd}");
        cmd
    }

    /// Replies `{"return": ret}` to `cmd`.
    pub async fn reply(&mut self, cmd: &Value, ret: Value) {
        self.send(json!({"return": ret, "id": cmd["id"]})).await;
    }

    /// Replies with a QMP error to `cmd`.
    pub async fn reply_error(&mut self, cmd: &Value, class: &str, desc: &str) {
        self.send(json!({"error": {"class": class, "desc": desc}, "id": cmd["id"]})).await;
    }

    /// Sends an event.
    pub async fn event(&mut self, name: &str, data: Option<Value>) {
        let mut ev = json!({"event": name, "timestamp": ts()});
        if let Some(d) = data {
            ev["data"] = d;
        }
        self.send(ev).await;
    }

    /// Greets and answers `qmp_capabilities`.
    pub async fn handshake(&mut self) {
        self.send(greeting()).await;
        let cmd = self.expect("qmp_capabilities").await;
        assert!(cmd.get("arguments").is_none(), "{cmd}");
        self.reply(&cmd, json!({})).await;
    }
}

/// A connected client and its scripted peer.
pub async fn connected_with(options: QmpOptions) -> (Qmp, Peer, Fake) {
    let fake = Fake::new();
    let (qmp, peer) = tokio::join!(Qmp::connect_with(&fake.path, CONNECT, options), async {
        let mut p = fake.accept().await;
        p.handshake().await;
        p
    });
    (qmp.unwrap(), peer, fake)
}

/// [`connected_with`] default options.
pub async fn connected() -> (Qmp, Peer, Fake) {
    connected_with(QmpOptions::default()).await
}

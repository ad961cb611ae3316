//! Connecting (retried until QEMU's socket appears, then greeting and capabilities), and the
//! two tasks of a connection: the writer, which writes whole lines from a queue, and the
//! reader, which hands each reply to the call waiting for its id and each event to the
//! subscribers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio::time::Instant;

use super::lines::{LineError, LineReader};
use super::{CloseReason, Conn, Qmp, QmpOptions, Shared, State};
use crate::error::QmpError;
use crate::types::{as_object, get_str, kind_of, Greeting, QmpEvent};

/// First and largest pause between connect attempts.
const BACKOFF_START: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_millis(50);
/// Commands queued for the writer task before callers wait.
const WRITE_QUEUE: usize = 64;

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
        path: impl AsRef<Path>, deadline: Duration, options: QmpOptions,
    ) -> Result<Qmp, QmpError> {
        let path = path.as_ref().to_path_buf();
        let started = Instant::now();
        let until = started + deadline;
        let stream = connect_retrying(&path, started, until).await?;
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(read, options.max_line_bytes);

        let greeting_line = match tokio::time::timeout_at(until, lines.next_line()).await {
            Err(_) => {
                return Err(QmpError::Timeout { operation: "greeting".into(), after: deadline })
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
        qmp.call("qmp_capabilities", None, remaining).await.map_err(|e| match e {
            QmpError::Timeout { operation, .. } => QmpError::Timeout { operation, after: deadline },
            other => other,
        })?;
        Ok(qmp)
    }
}

async fn connect_retrying(
    path: &Path, started: Instant, until: Instant,
) -> Result<UnixStream, QmpError> {
    let mut backoff = BACKOFF_START;
    loop {
        let err = match tokio::time::timeout_at(until, UnixStream::connect(path)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect did not complete"),
        };
        let retryable =
            matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused);
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
    mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>, shared: Arc<Shared>,
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
            let what = obj.get("error").map(|e| format!(" (error {e})")).unwrap_or_default();
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
                Ok((get_str(e, "class", &ctx)?.to_string(), get_str(e, "desc", &ctx)?.to_string()))
            });
            match parsed {
                Ok((class, desc)) => {
                    Err(QmpError::Command { command: pending.command.clone(), class, desc })
                }
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

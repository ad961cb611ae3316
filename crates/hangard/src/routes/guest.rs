//! Inside a running guest, through its agent: `GET /v1/vms/{name}/guest` (its facts),
//! `GET|PUT /v1/vms/{name}/files?path=` (a file's bytes, mode and mtime) and
//! `POST /v1/vms/{name}/exec` (a WebSocket; frames in `docs/agent-protocol.md`, "Through
//! hangard"). Every exec and file write is an audit entry naming who, the VM and the argv or
//! path, never the data.

use std::io::{Read, Write};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use hangar_api::ErrorBody;
use hangar_core::access::Action;
use hangar_core::contracts::{ExecControl, ExecIo, ExecRequest, GuestInfo};
use hangar_core::error::ErrorCode;
use hangar_core::ids::VmName;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::body::vm_name;
use crate::error::*;
use crate::middleware::Ctx;
use crate::state::Daemon;

/// The largest WebSocket message a client may send (a stdin chunk or a control message).
const MAX_MESSAGE: usize = 1 << 20;

impl Daemon {
    /// The running-or-not VM `name` means to the caller, if it may do `action` to it.
    async fn guest_vm(
        &self, caller: &crate::auth::Caller, action: Action, name: &str,
    ) -> ApiResult<VmName> {
        let view = self.visible_vm(caller, action, name).await?;
        vm_name(&view.name)
    }

    /// An audit entry for an action inside a guest; `Err` (fail closed) when it cannot be
    /// written.
    fn audit_guest(&self, who: &str, what: &str, vm: &VmName, detail: String) -> ApiResult<()> {
        let entry = hangar_audit::NewEntry {
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
            who: who.into(),
            what: what.into(),
            target: format!("vm/{vm}"),
            result: "requested".into(),
            detail: Some(detail),
        };
        self.trail.record(entry).map_err(|why| {
            ApiError::new(
                ErrorCode::AuditUnavailable,
                format!("the audit log cannot be written, so nothing was done: {why}"),
                None,
                None,
            )
        })
    }
}

/// `GET /v1/vms/{name}/guest`: what the guest's agent says of it.
#[utoipa::path(get, path = "/v1/vms/{name}/guest", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Object, description = "Agent version, kernel, uptime, load, memory, filesystems, addresses"),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody, description = "E_AGENT_UNAVAILABLE: not running, or no answer")))]
pub(crate) async fn guest_info(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<GuestInfo>> {
    let vm = d.guest_vm(&caller, Action::VmRead, &name).await?;
    let local = d.local.clone();
    Ok(Json(blocking(move || local.engine().guest_info(&vm)).await??))
}

/// `?path=` (and, for a write, `mode` and `mtime`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FileQuery {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits for a write (default 0644).
    pub mode: Option<u32>,
    /// Modification time for a write, seconds since the epoch (default now).
    pub mtime: Option<i64>,
    /// A directory as a tar stream (regular files and directories only) instead of one file;
    /// a write needs a path that does not exist yet.
    #[serde(default)]
    pub tree: bool,
}

fn absolute(path: &str) -> ApiResult<()> {
    if path.starts_with('/') && !path.contains('\0') {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::InvalidArgument,
        format!("path {path:?} is not an absolute guest path"),
        Some("path".into()),
        Some("give ?path=/absolute/path".into()),
    ))
}

/// `GET /v1/vms/{name}/files?path=`: a regular file's bytes; its mode and mtime in the
/// `X-Hangar-Mode` (octal) and `X-Hangar-Mtime` headers. With `tree=true`, a directory as a
/// tar stream, what it held in `X-Hangar-Tree`. Spooled to disk on the host first (the agent
/// reports the metadata at the end), then streamed.
#[utoipa::path(get, path = "/v1/vms/{name}/files", params(("name" = String, Path, description = "VM name"), FileQuery),
    responses((status = 200, content_type = "application/octet-stream", description = "The file's bytes"),
        (status = 404, body = ErrorBody), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_file(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>, Query(q): Query<FileQuery>,
) -> ApiResult<Response> {
    absolute(&q.path)?;
    let vm = d.guest_vm(&caller, Action::GuestExec, &name).await?;
    let (local, path) = (d.local.clone(), q.path.clone());
    let home = d.local.home().to_path_buf();
    let tree = q.tree;
    let (meta, counts, spool) = blocking(move || -> Result<_, ApiError> {
        let mut spool = tempfile::tempfile_in(&home).map_err(|e| {
            ApiError::new(ErrorCode::Io, format!("cannot spool the file: {e}"), None, None)
        })?;
        if tree {
            let counts = local.engine().read_tree(&vm, &path, &mut spool)?;
            let size = std::io::Seek::stream_position(&mut spool).unwrap_or_default();
            let meta = hangar_core::contracts::GuestFile { mode: 0o755, mtime: 0, size };
            return Ok((meta, Some(counts), spool));
        }
        let meta = local.engine().read_file(&vm, &path, &mut spool)?;
        Ok((meta, None, spool))
    })
    .await??;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut spool = spool;
        let mut buf = vec![0u8; 256 * 1024];
        let _ = std::io::Seek::rewind(&mut spool);
        loop {
            match spool.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if tx.blocking_send(Ok(buf[..n].to_vec())).is_ok() => {}
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    match counts {
        Some(c) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
            let json = serde_json::to_string(&c).expect("counts serialise");
            headers.insert("x-hangar-tree", HeaderValue::from_str(&json).expect("ASCII JSON"));
        }
        None => {
            headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            let mode = HeaderValue::from_str(&format!("{:o}", meta.mode)).expect("octal");
            headers.insert("x-hangar-mode", mode);
            headers.insert("x-hangar-mtime", HeaderValue::from(meta.mtime));
        }
    }
    Ok(response)
}

/// Bytes arriving from an async producer, read by a blocking consumer (the agent client).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> ChannelReader {
        ChannelReader { rx, chunk: Vec::new(), at: 0 }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.chunk, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `PUT /v1/vms/{name}/files?path=&mode=&mtime=`: writes the body to the guest file whole (a
/// temporary file renamed over it); with `tree=true`, unpacks the tar body into a new
/// directory.
#[utoipa::path(put, path = "/v1/vms/{name}/files", params(("name" = String, Path, description = "VM name"), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses((status = 204, description = "Written"), (status = 200, body = Object, description = "A tree written: files, dirs, skipped, bytes"),
        (status = 404, body = ErrorBody), (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn put_file(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>, Query(q): Query<FileQuery>, body: Body,
) -> ApiResult<Response> {
    absolute(&q.path)?;
    let vm = d.guest_vm(&caller, Action::GuestExec, &name).await?;
    let what = if q.tree { "directory" } else { "path" };
    d.audit_guest(&caller.who, "guest.write", &vm, format!("{what} {}", q.path))?;
    let mode = q.mode.unwrap_or(0o644);
    let mtime = q.mtime.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let local = d.local.clone();
    let (path, tree) = (q.path.clone(), q.tree);
    let writer = blocking(move || {
        let input = Box::new(ChannelReader::new(rx));
        match tree {
            true => local.engine().write_tree(&vm, &path, input).map(Some),
            false => local.engine().write_file(&vm, &path, mode, mtime, input).map(|()| None),
        }
    });
    let mut stream = body.into_data_stream();
    let feed = async move {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("the body broke: {e}"),
                    None,
                    None,
                )
            })?;
            if tx.send(chunk.to_vec()).await.is_err() {
                break; // the write ended early; its error says why
            }
        }
        Ok::<(), ApiError>(())
    };
    let (fed, written) = tokio::join!(feed, writer);
    let counts = written??;
    fed?;
    Ok(match counts {
        Some(c) => Json(c).into_response(),
        None => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
    })
}

/// `POST /v1/vms/{name}/exec`, upgraded to a WebSocket: the client's first message is the
/// exec request (JSON text); then binary messages carry the streams (first byte 0 stdin, 1
/// stdout, 2 stderr; a lone 0 ends stdin), text messages carry signals and resizes
/// (`{"signal":2}`, `{"resize":[rows,cols]}`) and, last, how the program ended
/// (`{"exit":{"code":7}}` or `{"error":{…}}`).
#[utoipa::path(post, path = "/v1/vms/{name}/exec", params(("name" = String, Path, description = "VM name")),
    responses((status = 101, description = "Switched to a WebSocket (frames in docs/agent-protocol.md)"),
        (status = 400, body = ErrorBody, description = "Not a WebSocket upgrade"), (status = 404, body = ErrorBody)))]
pub(crate) async fn exec(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>, mut request: axum::extract::Request,
) -> ApiResult<Response> {
    let vm = d.guest_vm(&caller, Action::GuestExec, &name).await?;
    let headers = request.headers();
    let has = |name: header::HeaderName, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(want)))
    };
    let key = headers.get("sec-websocket-key").map(|k| k.as_bytes().to_vec());
    let (true, true, Some(key)) =
        (has(header::UPGRADE, "websocket"), has(header::CONNECTION, "upgrade"), key)
    else {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "exec is a WebSocket: send Connection: Upgrade, Upgrade: websocket and a Sec-WebSocket-Key",
            None,
            Some("use `hangar exec`, or a WebSocket client".into()),
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config))
                .await;
        run_exec(d, caller.who.clone(), vm, ws).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-accept", HeaderValue::from_str(&accept).expect("base64"));
    Ok(response)
}

/// One output stream of the program, as binary messages with its stream byte.
struct StreamWriter {
    tx: tokio::sync::mpsc::Sender<Message>,
    stream: u8,
}

impl Write for StreamWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut message = Vec::with_capacity(buf.len() + 1);
        message.push(self.stream);
        message.extend_from_slice(buf);
        self.tx
            .blocking_send(Message::Binary(message.into()))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves one exec on an upgraded connection.
async fn run_exec<S>(
    d: Arc<Daemon>, who: String, vm: VmName, ws: tokio_tungstenite::WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let fail = |e: ApiError| Message::Text(serde_json::json!({ "error": *e.1 }).to_string().into());
    // The request comes first, within a bound.
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), incoming.next()).await;
    let request = match first {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<ExecRequest>(&text)
            .map_err(|e| bad_body("exec request", e, "send {\"argv\":[\"program\",…]} first"))
            .and_then(|r| {
                if r.argv.is_empty() {
                    Err(ApiError::new(
                        ErrorCode::InvalidArgument,
                        "argv names no program",
                        Some("argv".into()),
                        None,
                    ))
                } else {
                    Ok(r)
                }
            }),
        _ => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "no exec request (a JSON text message) came first",
            None,
            None,
        )),
    };
    let request = match request.and_then(|r| {
        let argv = serde_json::to_string(&r.argv).expect("strings serialise");
        d.audit_guest(&who, "guest.exec", &vm, format!("argv {argv}")).map(|()| r)
    }) {
        Ok(r) => r,
        Err(e) => {
            let _ = sink.send(fail(e)).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (control_tx, control_rx) = std::sync::mpsc::channel::<ExecControl>();
    let engine = d.local.engine().clone();
    std::thread::spawn(move || {
        let mut stdout = StreamWriter { tx: out_tx.clone(), stream: 1 };
        let mut stderr = StreamWriter { tx: out_tx.clone(), stream: 2 };
        let io = ExecIo {
            stdin: Some(Box::new(ChannelReader::new(in_rx))),
            stdout: &mut stdout,
            stderr: &mut stderr,
            control: Some(control_rx),
        };
        let last = match engine.exec(&vm, &request, io) {
            Ok(status) => serde_json::json!({ "exit": status }),
            Err(e) => serde_json::json!({ "error": ErrorBody::from(e) }),
        };
        let _ = out_tx.blocking_send(Message::Text(last.to_string().into()));
    });
    // The client's messages: stdin, its end, signals, resizes. A client that leaves kills the
    // program (nobody could read its output or stop it).
    let reader = tokio::spawn(async move {
        let mut stdin = Some(in_tx);
        while let Some(Ok(message)) = incoming.next().await {
            match message {
                Message::Binary(b) if b.first() == Some(&0) => match (b.len(), &stdin) {
                    (1, _) => stdin = None,
                    (_, Some(tx)) => {
                        let _ = tx.send(b[1..].to_vec()).await;
                    }
                    (_, None) => {}
                },
                Message::Text(t) => {
                    if let Ok(control) = serde_json::from_str::<ExecControl>(&t) {
                        let _ = control_tx.send(control);
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = control_tx.send(ExecControl::Signal(9));
    });
    while let Some(message) = out_rx.recv().await {
        let last = message.is_text();
        if sink.send(message).await.is_err() {
            break;
        }
        if last {
            let _ = sink.send(Message::Close(None)).await;
            break;
        }
    }
    // Ends stdin and control: the agent connection closes behind the exec.
    reader.abort();
}

//! [`Guest`] through `hangard`: `GET /v1/vms/{name}/guest`, `GET|PUT /v1/vms/{name}/files`,
//! and `POST /v1/vms/{name}/exec` as a WebSocket (frames in `docs/agent-protocol.md`).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_api::client::{self, Response};
use hangar_api::ws::{self, BINARY, CLOSE, TEXT};
use hangar_api::ErrorBody;
use hangar_core::contracts::*;
use hangar_core::error::{Error, ErrorCode, Result};
use hangar_core::ids::VmName;

use crate::remote::{encode, Remote};

/// Files go through one exchange each; a large one takes a while.
const FILE_TIMEOUT: Duration = Duration::from_secs(600);

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Backend {
        code: ErrorCode::EngineUnavailable,
        message: format!("hangard: {e}; start it with `hangard &`, or set HANGAR_DAEMON=never"),
    }
}

fn from_body(body: ErrorBody) -> Error {
    Error::Backend {
        code: body.error_code().unwrap_or(ErrorCode::EngineFailed),
        message: if body.hint.is_empty() {
            body.message
        } else {
            format!("{} ({})", body.message, body.hint)
        },
    }
}

fn refused(response: &Response) -> Error {
    match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => from_body(body),
        Err(_) => Error::Backend {
            code: ErrorCode::EngineFailed,
            message: format!("hangard answered {} without an error body", response.status),
        },
    }
}

/// `?path=` with the path percent-encoded.
fn path_query(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

impl Remote {
    fn exchange(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response> {
        let response =
            client::send(&self.endpoint, method, path, body, FILE_TIMEOUT).map_err(unavailable)?;
        if (200..300).contains(&response.status) {
            Ok(response)
        } else {
            Err(refused(&response))
        }
    }
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(writer: &Writer, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    ws::write_message(&mut **w, opcode, payload)
}

impl Guest for Remote {
    fn exec(&self, vm: &VmName, request: &ExecRequest, io: ExecIo<'_>) -> Result<ExitStatus> {
        let path = format!("/v1/vms/{}/exec", encode(vm.as_str()));
        let (mut reader, writer) = match client::websocket(&self.endpoint, &path) {
            Ok(halves) => halves,
            Err(Ok(response)) => return Err(refused(&response)),
            Err(Err(e)) => return Err(unavailable(e)),
        };
        let writer: Writer = Arc::new(Mutex::new(writer));
        let first = serde_json::to_vec(request).expect("a request serialises");
        send(&writer, TEXT, &first).map_err(unavailable)?;
        let ExecIo { stdin, stdout, stderr, control } = io;
        match stdin {
            Some(mut input) => {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    buf[0] = 0;
                    loop {
                        match input.read(&mut buf[1..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if send(&writer, BINARY, &buf[..=n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = send(&writer, BINARY, &[0]);
                });
            }
            None => send(&writer, BINARY, &[0]).map_err(unavailable)?,
        }
        if let Some(control) = control {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for message in control {
                    let text = serde_json::to_vec(&message).expect("control serialises");
                    if send(&writer, TEXT, &text).is_err() {
                        break;
                    }
                }
            });
        }
        loop {
            let (opcode, payload) = ws::read_message(&mut *reader).map_err(unavailable)?;
            match (opcode, payload.split_first()) {
                (BINARY, Some((1, bytes))) => {
                    stdout.write_all(bytes).and_then(|()| stdout.flush()).map_err(unavailable)?
                }
                (BINARY, Some((2, bytes))) => {
                    stderr.write_all(bytes).and_then(|()| stderr.flush()).map_err(unavailable)?
                }
                (TEXT, _) => {
                    let value: serde_json::Value =
                        serde_json::from_slice(&payload).map_err(unavailable)?;
                    if let Ok(status) = serde_json::from_value::<ExitStatus>(value["exit"].clone())
                    {
                        let _ = send(&writer, CLOSE, &[]);
                        return Ok(status);
                    }
                    if let Ok(body) = serde_json::from_value::<ErrorBody>(value["error"].clone()) {
                        return Err(from_body(body));
                    }
                }
                (CLOSE, _) => return Err(unavailable("the exec ended without an exit status")),
                _ => {}
            }
        }
    }

    fn read_file(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<GuestFile> {
        let url = format!("/v1/vms/{}/files?path={}", encode(vm.as_str()), path_query(path));
        let response = self.exchange("GET", &url, None)?;
        out.write_all(&response.body)
            .map_err(|e| Error::Backend { code: ErrorCode::Io, message: e.to_string() })?;
        let mode = response.header("x-hangar-mode").and_then(|m| u32::from_str_radix(m, 8).ok());
        let mtime = response.header("x-hangar-mtime").and_then(|m| m.parse().ok());
        Ok(GuestFile {
            mode: mode.unwrap_or(0o644),
            mtime: mtime.unwrap_or_default(),
            size: response.body.len() as u64,
        })
    }

    fn write_file(
        &self, vm: &VmName, path: &str, mode: u32, mtime: i64, mut input: Box<dyn Read + Send>,
    ) -> Result<()> {
        let mut body = Vec::new();
        input
            .read_to_end(&mut body)
            .map_err(|e| Error::Backend { code: ErrorCode::Io, message: e.to_string() })?;
        let url = format!(
            "/v1/vms/{}/files?path={}&mode={mode}&mtime={mtime}",
            encode(vm.as_str()),
            path_query(path)
        );
        self.exchange("PUT", &url, Some(&body)).map(drop)
    }

    fn read_tree(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<TreeCounts> {
        let url =
            format!("/v1/vms/{}/files?path={}&tree=true", encode(vm.as_str()), path_query(path));
        let response = self.exchange("GET", &url, None)?;
        out.write_all(&response.body)
            .map_err(|e| Error::Backend { code: ErrorCode::Io, message: e.to_string() })?;
        Ok(response
            .header("x-hangar-tree")
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default())
    }

    fn write_tree(
        &self, vm: &VmName, path: &str, mut input: Box<dyn Read + Send>,
    ) -> Result<TreeCounts> {
        let mut body = Vec::new();
        input
            .read_to_end(&mut body)
            .map_err(|e| Error::Backend { code: ErrorCode::Io, message: e.to_string() })?;
        let url =
            format!("/v1/vms/{}/files?path={}&tree=true", encode(vm.as_str()), path_query(path));
        let response = self.exchange("PUT", &url, Some(&body))?;
        serde_json::from_slice(&response.body).map_err(|e| Error::Backend {
            code: ErrorCode::EngineFailed,
            message: format!("hangard's tree counts are unreadable: {e}"),
        })
    }

    fn guest_info(&self, vm: &VmName) -> Result<GuestInfo> {
        let response =
            self.exchange("GET", &format!("/v1/vms/{}/guest", encode(vm.as_str())), None)?;
        serde_json::from_slice(&response.body).map_err(|e| Error::Backend {
            code: ErrorCode::AgentFailed,
            message: format!("hangard's guest info is unreadable: {e}"),
        })
    }

    fn sync_guest(&self, _vm: &VmName) -> Result<()> {
        Err(Error::Unsupported("flushing a guest's filesystems through hangard".into()))
    }

    fn configure_network(&self, _vm: &VmName, _network: &GuestNetwork) -> Result<()> {
        Err(Error::Unsupported("configuring a guest's network through hangard".into()))
    }
}

//! [`Remote`]: the same requests, sent to `hangard`.

use std::path::PathBuf;
use std::time::Duration;

use hangar_api::client::Endpoint;
use hangar_api::{
    ErrorBody, EventView, Operation, OperationRequest, OperationStatus, ProgressLine, VmView,
};
use hangar_core::contracts::SnapshotInfo;
use hangar_core::error::ErrorCode;
use serde_json::Value;

use crate::{Control, ControlError, Result};

/// How long one read of an HTTP exchange may wait (an operation's progress stream sends a
/// keep-alive line at least every 10 s, however long its guest takes).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// `hangard` over its unix socket.
#[derive(Debug, Clone)]
pub struct Remote {
    pub(crate) endpoint: Endpoint,
}

impl Remote {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: PathBuf) -> Remote {
        Remote::at(Endpoint::Unix(socket))
    }

    /// A client for the daemon at `endpoint` (a unix socket, or TCP with a token).
    pub fn at(endpoint: Endpoint) -> Remote {
        Remote { endpoint }
    }

    /// One exchange; a 2xx body is decoded as `T`, anything else as the coded error body.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self, method: &str, path: &str, body: Option<&Value>,
    ) -> Result<T> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
        let response = hangar_api::client::send(
            &self.endpoint,
            method,
            path,
            bytes.as_deref(),
            EXCHANGE_TIMEOUT,
        )
        .map_err(|e| {
            let mut body = ErrorBody::new(ErrorCode::EngineUnavailable, e.to_string());
            body.hint =
                "start it with `hangard &`, or set HANGAR_DAEMON=never to work without it".into();
            ControlError::from(body)
        })?;
        let unreadable = |e: serde_json::Error| {
            ErrorBody::new(
                ErrorCode::EngineFailed,
                format!("hangard answered {} with an unreadable body: {e}", response.status),
            )
        };
        if (200..300).contains(&response.status) {
            let body = if response.body.is_empty() { b"null".as_slice() } else { &response.body };
            return serde_json::from_slice(body).map_err(|e| unreadable(e).into());
        }
        Err(serde_json::from_slice::<ErrorBody>(&response.body).map_err(unreadable)?.into())
    }
}

pub(crate) fn encode(segment: &str) -> String {
    // Names and ids are [a-z0-9-]; anything else is refused by the daemon with a coded error,
    // so only characters that would break the request line need escaping.
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Control for Remote {
    fn list(&self) -> Result<Vec<VmView>> {
        self.call("GET", "/v1/vms", None)
    }

    fn get(&self, vm: &str) -> Result<VmView> {
        self.call("GET", &format!("/v1/vms/{}", encode(vm)), None)
    }

    fn run(&self, request: OperationRequest, progress: &dyn Fn(&str)) -> Result<Operation> {
        let body = serde_json::to_vec(&request).expect("requests serialise");
        // The daemon streams each phase as it happens and then the ended operation: no phase
        // is lost to a poll interval, however short it was.
        let mut ended: Option<Operation> = None;
        let mut unreadable: Option<String> = None;
        let mut on_line = |line: &[u8]| {
            if line.iter().all(u8::is_ascii_whitespace) {
                return; // a keep-alive
            }
            match serde_json::from_slice::<ProgressLine>(line) {
                Ok(ProgressLine::Phase(phase)) => progress(&phase),
                Ok(ProgressLine::Operation(op)) => ended = Some(*op),
                Err(e) => unreadable = Some(format!("{e}: {}", String::from_utf8_lossy(line))),
            }
        };
        let response = hangar_api::client::send_streaming(
            &self.endpoint,
            "POST",
            "/v1/operations?stream=true",
            Some(&body),
            EXCHANGE_TIMEOUT,
            Some(&mut on_line),
        );
        let operation =
            response.as_ref().ok().and_then(|r| r.header("x-hangar-operation")).map(str::to_string);
        let lost = |why: String| {
            let mut e = ErrorBody::new(ErrorCode::EngineUnavailable, why);
            e.operation = operation.clone();
            e.hint = match &operation {
                Some(id) => format!("the operation goes on in hangard: `hangar ops show {id}`"),
                None => "check that hangard runs (`hangar doctor`)".into(),
            };
            ControlError::from(e)
        };
        let response = response.map_err(|e| lost(format!("hangard: {e}")))?;
        if !(200..300).contains(&response.status) {
            return Err(serde_json::from_slice::<ErrorBody>(&response.body)
                .map_err(|e| lost(format!("hangard answered {}: {e}", response.status)))?
                .into());
        }
        if let Some(why) = unreadable {
            return Err(lost(format!("hangard sent an unreadable progress line: {why}")));
        }
        let op = ended.ok_or_else(|| lost("hangard's progress stream ended early".into()))?;
        match op.status {
            OperationStatus::Succeeded => Ok(op),
            _ => Err(op
                .error
                .clone()
                .unwrap_or_else(|| {
                    let mut e = ErrorBody::new(
                        ErrorCode::EngineFailed,
                        format!("operation {} ended {} without an error", op.id, op.status),
                    );
                    e.operation = Some(op.id.clone());
                    e
                })
                .into()),
        }
    }

    fn operation(&self, id: &str) -> Result<Operation> {
        self.call("GET", &format!("/v1/operations/{}", encode(id)), None)
    }

    fn operations(&self, limit: usize) -> Result<Vec<Operation>> {
        self.call("GET", &format!("/v1/operations?limit={limit}"), None)
    }

    fn snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        match vm {
            Some(vm) => self.call("GET", &format!("/v1/vms/{}/snapshots", encode(vm)), None),
            None => self.call("GET", "/v1/snapshots", None),
        }
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<EventView>> {
        self.call("GET", &format!("/v1/events/page?since={after}&limit={limit}"), None)
    }

    fn guest(&self) -> &dyn hangar_core::contracts::Guest {
        self
    }

    fn networks(&self) -> Result<Vec<hangar_api::NetworkView>> {
        self.call("GET", "/v1/networks", None)
    }

    fn create_network(&self, req: &hangar_api::NetworkRequest) -> Result<hangar_api::NetworkView> {
        self.call("POST", "/v1/networks", Some(&serde_json::to_value(req).expect("serialises")))
    }

    fn remove_network(&self, name: &str) -> Result<()> {
        let _: serde_json::Value =
            self.call("DELETE", &format!("/v1/networks/{}", encode(name)), None)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("hangard ({})", self.endpoint)
    }
}

//! Sending one command: a fresh id, a pending entry the reader answers, one whole line queued
//! for the writer, and the call's time limit. A caller that gives up leaves its id abandoned so
//! that the late reply is recognised.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::{Pending, Qmp, Shared};
use crate::error::QmpError;

/// Abandoned ids remembered so that their late replies are recognised; a late reply to an id
/// forgotten after this many newer abandonments is a protocol error.
const MAX_ABANDONED: usize = 4096;

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
    /// Sends `command` with optional `arguments` (a JSON object; QEMU refuses anything else
    /// with a `GenericError`) and returns QEMU's `return` value. This is the escape hatch for commands without a typed method; it may change
    /// state, which is why it lives here and not on [`QmpQuery`](super::QmpQuery).
    pub async fn execute(
        &self, command: &str, arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.call(command, arguments, self.timeout).await
    }

    pub(super) async fn call(
        &self, command: &str, arguments: Option<Value>, timeout: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &*self.conn.shared;
        let id = self.conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if let Some(reason) = &st.closed {
                return Err(reason.to_error(command));
            }
            st.pending.insert(id, Pending { command: command.to_string(), reply: tx });
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
            Err(_) => Err(QmpError::Timeout { operation: command.to_string(), after: timeout }),
        }
    }

    pub(super) async fn call_unit(
        &self, command: &str, arguments: Option<Value>,
    ) -> Result<(), QmpError> {
        self.call(command, arguments, self.timeout).await.map(drop)
    }
}

//! The QMP client's error type and its mapping onto Hangar's stable error codes.

use std::path::PathBuf;
use std::time::Duration;

use hangar_core::error::{Coded, ErrorCode};

/// Everything that can go wrong talking QMP. Each variant carries the context needed to act on
/// it and maps to one [`ErrorCode`] through [`Coded`].
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected before the connect deadline (it never appeared, nobody
    /// listened on it, or connecting failed with an error that retrying cannot fix).
    #[error("cannot connect to QMP socket {}: {source} (gave up after {} ms)", .path.display(), .waited.as_millis())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// How long connecting was tried.
        waited: Duration,
        /// The last connect error.
        #[source]
        source: std::io::Error,
    },

    /// An operation did not finish within its time limit. For a command the command may still
    /// run in QEMU; its late reply is discarded.
    #[error("QMP {operation} timed out after {} ms", .after.as_millis())]
    Timeout {
        /// What timed out: a command name, or `greeting` while connecting.
        operation: String,
        /// The time limit that expired.
        after: Duration,
    },

    /// QEMU answered a command with `{"error": {"class": …, "desc": …}}`.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, `DeviceNotFound`, …).
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },

    /// The peer violated the protocol: malformed JSON, a line over the size cap, a missing or
    /// mistyped field, a reply to an id never sent, an unrecognised message. The connection is
    /// torn down when this comes from the reader (the stream cannot be trusted any more).
    #[error("QMP protocol error{}: {detail}", fmt_command(.command))]
    Protocol {
        /// The command this error was delivered to, if any.
        command: Option<String>,
        /// What was wrong.
        detail: String,
    },

    /// The connection is gone (EOF, a read or write failure, or a previous protocol error shut
    /// it down). Pending and later calls fail with this.
    #[error("QMP connection closed{}: {reason}", fmt_command(.command))]
    Disconnected {
        /// The command this error was delivered to, if any.
        command: Option<String>,
        /// Why the connection closed.
        reason: String,
    },
}

fn fmt_command(command: &Option<String>) -> String {
    match command {
        Some(c) => format!(" (command {c})"),
        None => String::new(),
    }
}

impl QmpError {
    /// A protocol error not tied to a command.
    pub(crate) fn protocol(detail: impl Into<String>) -> QmpError {
        QmpError::Protocol { command: None, detail: detail.into() }
    }

    /// A protocol error in the reply to `command`.
    pub(crate) fn bad_reply(command: &str, detail: impl Into<String>) -> QmpError {
        QmpError::Protocol { command: Some(command.to_string()), detail: detail.into() }
    }
}

impl Coded for QmpError {
    fn code(&self) -> ErrorCode {
        match self {
            QmpError::Connect { .. } => ErrorCode::EngineUnavailable,
            QmpError::Timeout { .. } => ErrorCode::Timeout,
            QmpError::Command { .. }
            | QmpError::Protocol { .. }
            | QmpError::Disconnected { .. } => ErrorCode::EngineFailed,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            QmpError::Connect { path, .. } => Some(format!(
                "check that QEMU is running with `-qmp unix:{},server=on,wait=off`",
                path.display()
            )),
            QmpError::Disconnected { .. } => {
                Some("QEMU probably exited: read the VM's log (`hangar logs NAME`)".to_string())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_registry() {
        let connect = QmpError::Connect {
            path: PathBuf::from("/x.sock"),
            waited: Duration::from_millis(5),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(connect.code(), ErrorCode::EngineUnavailable);
        assert!(connect.hint().unwrap().contains("/x.sock"));
        assert!(connect.to_string().contains("/x.sock"));
        let timeout =
            QmpError::Timeout { operation: "stop".into(), after: Duration::from_millis(7) };
        assert_eq!(timeout.code(), ErrorCode::Timeout);
        assert_eq!(timeout.to_string(), "QMP stop timed out after 7 ms");
        let cmd = QmpError::Command {
            command: "cont".into(),
            class: "GenericError".into(),
            desc: "nope".into(),
        };
        assert_eq!(cmd.code(), ErrorCode::EngineFailed);
        assert_eq!(cmd.to_string(), "QMP command cont failed: GenericError: nope");
        let proto = QmpError::bad_reply("query-status", "missing field running");
        assert_eq!(proto.code(), ErrorCode::EngineFailed);
        assert_eq!(
            proto.to_string(),
            "QMP protocol error (command query-status): missing field running"
        );
        assert_eq!(QmpError::protocol("bad").to_string(), "QMP protocol error: bad");
        let gone = QmpError::Disconnected { command: None, reason: "EOF".into() };
        assert_eq!(gone.code(), ErrorCode::EngineFailed);
        assert_eq!(gone.to_string(), "QMP connection closed: EOF");
    }
}

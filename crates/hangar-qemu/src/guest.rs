//! [`Guest`] on QEMU: through the guest agent on the VM's virtio-serial port
//! (`docs/agent-protocol.md`), one connection per call to the socket the plan names.

use std::io::{Read, Write};
use std::path::PathBuf;

use hangar_agent::{AgentClientError, Connection};
use hangar_core::contracts::*;
use hangar_core::error::{AdapterError, Error, ErrorCode, Result};
use hangar_core::ids::VmName;
use hangar_core::lifecycle::VmState;

use crate::QemuEngine;

fn agent_error(e: AgentClientError) -> Error {
    Error::Adapter(AdapterError::new(e))
}

impl QemuEngine {
    /// The agent socket of running VM `vm`.
    fn agent_socket(&self, vm: &VmName) -> Result<PathBuf> {
        let rec = self.record(vm)?;
        if rec.state != VmState::Running {
            return Err(Error::Backend {
                code: ErrorCode::AgentUnavailable,
                message: format!("{vm} is {}, not running: its agent cannot answer", rec.state),
            });
        }
        QemuEngine::plan_of(&rec)?.agent_socket.map(PathBuf::from).ok_or_else(|| Error::Backend {
            code: ErrorCode::AgentUnsupported,
            message: format!(
                "{vm} boots its own kernel, which has no Hangar agent; boot a built-in image (boot.image) to use it"
            ),
        })
    }

    /// Configures the guest behind agent socket `socket` (a VM not yet marked running: a clone
    /// being re-addressed). A connection QEMU dropped as the guest woke is retried once.
    pub(crate) fn configure_network_at(&self, socket: &str, network: &GuestNetwork) -> Result<()> {
        let attempt = || {
            Connection::open(std::path::Path::new(socket))
                .and_then(|mut agent| agent.configure_network(network.clone()))
        };
        match attempt() {
            Err(AgentClientError::Dropped(_)) => attempt(),
            other => other,
        }
        .map(drop)
        .map_err(agent_error)
    }

    /// A connection to `vm`'s agent, synchronised and past the handshake.
    pub fn agent(&self, vm: &VmName) -> Result<Connection> {
        Connection::open(&self.agent_socket(vm)?).map_err(agent_error)
    }
}

impl Guest for QemuEngine {
    fn exec(&self, vm: &VmName, request: &ExecRequest, io: ExecIo<'_>) -> Result<ExitStatus> {
        let ExecIo { stdin, stdout, stderr, control } = io;
        let no_input = stdin.is_none();
        let mut agent = self.agent(vm)?;
        if let Some(control) = control {
            let signaller = agent.signaller();
            // Ends when the caller drops its sender, or the connection is gone.
            let _ = std::thread::Builder::new().name("exec-control".into()).spawn(move || {
                for message in control {
                    let sent = match message {
                        ExecControl::Signal(signal) => signaller.signal(signal),
                        ExecControl::Resize([rows, cols]) => signaller.resize(rows, cols),
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            });
        }
        let mut ran = agent.exec(request.clone(), stdin, stdout, stderr);
        if no_input && matches!(ran, Err(AgentClientError::Dropped(_))) {
            // QEMU dropped the fresh connection (see `AgentClientError::Dropped`): once more on
            // a new one. Signals sent meanwhile went to the old one and are lost.
            agent = self.agent(vm)?;
            ran = agent.exec(request.clone(), None, stdout, stderr);
        }
        match ran {
            Ok(status) => Ok(status),
            // A shell's answers: 127 for a missing program, 126 for one it cannot run.
            Err(AgentClientError::Agent(e)) if e.code == "E_AGENT_NOT_FOUND" => {
                let _ = writeln!(stderr, "{}", e.message);
                Ok(ExitStatus::Code(127))
            }
            Err(AgentClientError::Agent(e)) if e.code == "E_AGENT_DENIED" => {
                let _ = writeln!(stderr, "{}", e.message);
                Ok(ExitStatus::Code(126))
            }
            Err(e) => Err(agent_error(e)),
        }
    }

    fn read_file(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<GuestFile> {
        let meta = self.agent(vm)?.get(path, out).map_err(agent_error)?;
        Ok(GuestFile { mode: meta.mode, mtime: meta.mtime, size: meta.size })
    }

    fn write_file(
        &self, vm: &VmName, path: &str, mode: u32, mtime: i64, input: Box<dyn Read + Send>,
    ) -> Result<()> {
        self.agent(vm)?.put(path, mode, mtime, input).map_err(agent_error)
    }

    fn read_tree(&self, vm: &VmName, path: &str, out: &mut dyn Write) -> Result<TreeCounts> {
        self.agent(vm)?.get_tree(path, out).map_err(agent_error)
    }

    fn write_tree(
        &self, vm: &VmName, path: &str, input: Box<dyn Read + Send>,
    ) -> Result<TreeCounts> {
        self.agent(vm)?.put_tree(path, input).map_err(agent_error)
    }

    fn guest_info(&self, vm: &VmName) -> Result<GuestInfo> {
        // Idempotent: a connection QEMU dropped at once is retried (`AgentClientError::Dropped`).
        let value = match self.agent(vm)?.info() {
            Err(AgentClientError::Io(_)) => self.agent(vm)?.info(),
            other => other,
        }
        .map_err(agent_error)?;
        serde_json::from_value(value.clone()).map_err(|e| Error::Backend {
            code: ErrorCode::AgentFailed,
            message: format!("the agent's info does not read as guest facts ({e}): {value}"),
        })
    }

    fn configure_network(&self, vm: &VmName, network: &GuestNetwork) -> Result<()> {
        // The same JSON on both sides of the crate boundary (core's type, the wire's type).
        let config =
            serde_json::to_value(network).and_then(serde_json::from_value).map_err(|e| {
                Error::Backend { code: ErrorCode::InvalidArgument, message: e.to_string() }
            })?;
        self.agent(vm)?.configure_network(config).map(drop).map_err(agent_error)
    }

    fn sync_guest(&self, vm: &VmName) -> Result<()> {
        match self.agent(vm)?.sync() {
            Err(AgentClientError::Io(_)) => self.agent(vm)?.sync(),
            other => other,
        }
        .map_err(agent_error)
    }
}

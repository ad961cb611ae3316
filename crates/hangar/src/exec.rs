//! `hangar exec`: runs a command in a running VM through its guest agent, with docker exec's
//! exit codes (the program's own; 126 not executable, 127 not found, 128+N killed by signal N).

use std::io::Write;

use hangar_agent::{AgentClientError, Connection, Exec};
use hangar_core::error::ErrorCode;
use hangar_core::lifecycle::VmState;
use hangar_qemu::QemuEngine;

use crate::common::*;
use crate::Failure;

/// `hangar exec`'s flags.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Send this terminal's stdin to the program (without, it reads end-of-file).
    #[arg(long, short)]
    pub interactive: bool,
    /// Give the program a terminal (the agent does not offer one yet: refused).
    #[arg(long, short)]
    pub tty: bool,
    /// Set an environment variable for the program (repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest (default /).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as this user (default root).
    #[arg(long, short, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// The VM (running, booted from an image with the agent: the built-in ones).
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command; its exit code, docker exec's way.
pub fn exec(args: ExecArgs, out: &mut dyn Write) -> Result<u8, Failure> {
    if args.tty {
        return Err(crate::failure(
            ErrorCode::AgentUnsupported,
            "the guest agent cannot give a program a terminal yet".into(),
            "run without -t (stdin still works with -i)",
        ));
    }
    let vm = vm_name(&args.name)?;
    let engine = engine()?;
    let rec = engine.record(&vm).map_err(fail)?;
    if rec.state != VmState::Running {
        return Err(crate::failure(
            ErrorCode::AgentUnavailable,
            format!("{vm} is {}, not running: its agent cannot answer", rec.state),
            &format!("start it first: hangar start {vm}"),
        ));
    }
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    let Some(socket) = plan.agent_socket else {
        return Err(crate::failure(
            ErrorCode::AgentUnsupported,
            format!("{vm} boots its own kernel, which has no Hangar agent"),
            "boot a built-in image (boot.image) to use hangar exec",
        ));
    };
    let mut agent =
        Connection::open(std::path::Path::new(&socket)).map_err(|e| crate::coded(&e))?;
    let request = Exec { argv: args.command, env: args.env, cwd: args.workdir, user: args.user };
    let stdin =
        args.interactive.then(|| Box::new(std::io::stdin()) as Box<dyn std::io::Read + Send>);
    let mut stderr = std::io::stderr();
    match agent.exec(request, stdin, out, &mut stderr) {
        // A wait status is 0..=255, a signal's 128 + N at most 255.
        Ok(status) => Ok(u8::try_from(status.shell_code()).unwrap_or(255)),
        Err(AgentClientError::Agent(e)) if e.code == "E_AGENT_NOT_FOUND" => {
            let _ = writeln!(stderr, "hangar exec: {}", e.message);
            Ok(127)
        }
        Err(AgentClientError::Agent(e)) if e.code == "E_AGENT_DENIED" => {
            let _ = writeln!(stderr, "hangar exec: {}", e.message);
            Ok(126)
        }
        Err(e) => Err(crate::coded(&e)),
    }
}

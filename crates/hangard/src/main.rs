//! `hangard`: serves Hangar's REST API v1 on `$HANGAR_HOME/hangard.sock` (mode 0600).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use hangar_qemu::{EngineOptions, QemuEngine};

/// The Hangar node daemon. Needs no configuration: `hangard &` and the CLI uses it.
#[derive(Parser)]
#[command(name = "hangard", version, about)]
struct Args {
    /// State directory (default: $HANGAR_HOME, /var/lib/hangar as root, ~/.local/share/hangar).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Unix socket to listen on (default: <home>/hangard.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.openapi {
        print!("{}", hangard::openapi_json());
        return std::process::ExitCode::SUCCESS;
    }
    let home = args.home.unwrap_or_else(hangar_plan::probe::hangar_home);
    let socket = args.socket.unwrap_or_else(|| home.join("hangard.sock"));
    let engine = match QemuEngine::open(&home, EngineOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hangard: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match hangard::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hangard: cannot listen on {}: {e}", socket.display());
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!("hangard: listening on {}", socket.display());
    let daemon = match hangard::Daemon::new(engine) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("hangard: audit log: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    };
    let served = hangard::serve(listener, daemon, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hangard: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

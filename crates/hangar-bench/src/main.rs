//! `hangar-bench`: the measurements behind BENCHMARKS.md. Every comparison is a ratio measured in
//! the same run with A and B alternated, and every figure a median over rounds, because these
//! machines are shared and noisy. Results are one JSON object on stdout; `scripts/bench` runs
//! the subcommands and collects them into `bench/results/latest.json`.

use clap::{Parser, Subcommand};

mod api;
mod stats;

#[derive(Parser)]
#[command(name = "hangar-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// hangard's read path under load: bursts of concurrent `GET /v1/vms` with many VMs in the
    /// store, alternated with `GET /v1/health` as the same-run baseline; plus the daemon's RSS.
    Api(api::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Api(args) => api::run(&args),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hangar-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

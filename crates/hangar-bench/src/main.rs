//! `hangar-bench`: the measurements behind BENCHMARKS.md. Every comparison is a ratio measured in
//! the same run with A and B alternated, and every figure a median over rounds, because these
//! machines are shared and noisy. Each subcommand prints one JSON object; `all` runs them in
//! turn, adds the criterion results, writes `bench/results/latest.json` and prints a table.
//! `scripts/bench` is the one command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod agent;
mod api;
mod cluster;
mod criterion;
mod engine;
mod fleet;
mod gateway;
mod net;
mod raw;
mod stats;
mod table;

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
    /// Cold boot: `hangar up` to guest-ready vs the plan's argv launched directly.
    Boot(engine::Args),
    /// `hangar run --rm -- true` vs the same plan's argv run until QEMU exits.
    Run(engine::Args),
    /// Restore and save in both snapshot layouts (mapped, stream) vs raw QEMU, QEMU's start-up
    /// floor and a cold boot.
    Restore(engine::Args),
    /// PSS of 10 clones of one base snapshot vs 10 cold-booted guests of the same spec.
    Memory(engine::Args),
    /// What confining QEMU costs: cold boot and clone, confined vs `HANGAR_CONFINE=off`.
    Confinement(engine::Args),
    /// N guests started at once (N = 2, 4, 8): time until all are ready, Hangar vs raw.
    Throughput(engine::Args),
    /// hangard RSS with 0/10/50/100 VMs; a running guest's runtime-dir bytes and QEMU RSS.
    Footprint(engine::Args),
    /// A pool on real QEMU: claim latency from the warm set, wake from sleep, cold boot.
    Fleet(engine::Args),
    /// The guest agent: `hangar exec -- true` (CLI and library) vs `hangar run -- true`; stdout MiB/s.
    Exec(engine::Args),
    /// Networking, in a namespace of its own: cold boot with a bridged NIC vs none, TCP
    /// throughput and round trips (bridged vs user), nf_tables syncs per second.
    Net(engine::Args),
    /// The gateway, in a namespace of its own: time to first byte through it when the
    /// instance runs, is paused or sleeps, against direct; requests per second, against direct.
    Gateway(engine::Args),
    /// A cluster on etcd, on the fake engine: placement of 999 instances end to end against
    /// the pure placement, and failover after a node's kill -9 against the lease TTL.
    Cluster(cluster::Args),
    /// Everything above plus the criterion results; writes the JSON and prints the table.
    All {
        #[command(flatten)]
        engine: engine::Args,
        /// Where criterion left its results (`cargo bench` runs before this).
        #[arg(long, default_value = "target/criterion")]
        criterion_dir: PathBuf,
        /// The JSON to write.
        #[arg(long, default_value = "bench/results/latest.json")]
        out: PathBuf,
    },
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let t = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", t / 3600, (t / 60) % 60, t % 60)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| stats::round(kib / 1024.0 / 1024.0, 1));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": kernel,
    })
}

/// Runs one benchmark, keeping its error in the results instead of aborting the rest.
fn attempt(name: &str, f: impl FnOnce() -> Result<Value, String>) -> Value {
    eprintln!("hangar-bench: {name}…");
    let started = std::time::Instant::now();
    let mut v = f().unwrap_or_else(|e| json!({ "benchmark": name, "error": e }));
    v["seconds"] = json!(stats::round(started.elapsed().as_secs_f64(), 1));
    v
}

fn run(command: Command) -> Result<Value, String> {
    match command {
        Command::Api(args) => api::run(&args),
        Command::Boot(args) => engine::boot(&args),
        Command::Run(args) => engine::run_rm(&args),
        Command::Restore(args) => engine::restore(&args),
        Command::Memory(args) => engine::memory(&args, 10),
        Command::Throughput(args) => engine::throughput(&args, &[2, 4, 8], 2),
        Command::Confinement(args) => engine::confinement(&args),
        Command::Footprint(args) => engine::footprint(&args),
        Command::Fleet(args) => fleet::run(&args, 50, 5, 5),
        Command::Exec(args) => agent::exec(&args, 50),
        Command::Net(args) => net::run(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::All { engine, criterion_dir, out } => {
            let api_args = api::Args::with_hangard(engine.hangard.clone());
            let results = json!({
                "when": now_utc(),
                "machine": machine(),
                "accel": "see `hangar doctor`; the figures are from the accelerator plans resolve to on this host",
                "cold_boot": attempt("cold_boot", || engine::boot(&engine)),
                "run_rm": attempt("run_rm", || engine::run_rm(&engine)),
                "restore": attempt("restore", || engine::restore(&engine)),
                "memory": attempt("memory", || engine::memory(&engine, 10)),
                "fleet": attempt("fleet", || fleet::run(&engine, 50, 5, 5)),
                "exec": attempt("exec", || agent::exec(&engine, 50)),
                "net": attempt("net", || net::run(&engine)),
                "gateway": attempt("gateway", || gateway::run(&engine)),
                "cluster": attempt("cluster", || cluster::run(&cluster::Args {
                    hangard: engine.hangard.clone(),
                    ttls: vec![3, 6],
                    simulate_nodes: 100,
                })),
                "resume_via_api": attempt("resume_via_api", || engine::warm_proxy(&engine, 50)),
                "confinement": attempt("confinement", || engine::confinement(&engine)),
                "throughput": attempt("throughput", || engine::throughput(&engine, &[2, 4, 8], 2)),
                "footprint": attempt("footprint", || engine::footprint(&engine)),
                "api": attempt("api", || api::run(&api_args)),
                "control_plane": criterion::collect(&criterion_dir),
            });
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            let text = serde_json::to_string_pretty(&results).expect("json") + "\n";
            std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()))?;
            eprint!("{}", table::render(&results));
            eprintln!("hangar-bench: wrote {}", out.display());
            Ok(results)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
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

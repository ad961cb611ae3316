//! The guest agent: `hangar exec NAME -- true` from CLI process start to exit, and the same
//! through the client library alone (no CLI process, no daemon), alternated; then through
//! hangard: the API alone (the WebSocket exec, as `hangar_control::Remote` speaks it) and the
//! CLI routed through the daemon, alternated; against `hangar run -- true` (a throwaway guest's
//! cold boot) in the same run; and stdout streaming throughput (64 MiB of zeros from `head`
//! and from `dd` in the guest).

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use hangar_agent::{Connection, Exec};
use serde_json::{json, Value};

use crate::engine::{Args, Home};
use crate::stats::{median, quantile, round};

/// Latency over `runs` execs of each kind, and throughput.
pub fn exec(args: &Args, runs: usize) -> Result<Value, String> {
    let home = Home::new(args, "exec")?;
    let spec = home.spec("x0");
    // The 64 MiB copy lands in the guest's RAM-backed root.
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec)
            .map_err(|e| e.to_string())?
            .replace("memory_mib = 256", "memory_mib = 384"),
    )
    .map_err(|e| e.to_string())?;
    home.hangar(&["up", spec.to_str().unwrap()])?;
    let socket = home.dir.join("vms/x0/agent.sock");
    // One untimed exec of each first (page cache, the agent's first connection).
    home.hangar(&["exec", "x0", "--", "true"])?;
    library_true(&socket)?;
    let (mut cli, mut library) = (Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            cli.push(home.timed(&["exec", "x0", "--", "true"])?);
            library.push(library_true(&socket)?);
        } else {
            library.push(library_true(&socket)?);
            cli.push(home.timed(&["exec", "x0", "--", "true"])?);
        }
    }
    // Through hangard.
    let (daemon, api_socket) = crate::engine::daemon(args, &home, &[])?;
    let remote = hangar_control::Remote::new(api_socket);
    api_true(&remote)?;
    home.hangar_via("require", &["exec", "x0", "--", "true"])?;
    let (mut api, mut cli_daemon) = (Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            api.push(api_true(&remote)?);
            cli_daemon.push(home.timed_via("require", &["exec", "x0", "--", "true"])?);
        } else {
            cli_daemon.push(home.timed_via("require", &["exec", "x0", "--", "true"])?);
            api.push(api_true(&remote)?);
        }
    }
    drop(daemon);
    let mut cold = Vec::new();
    for _ in 0..args.rounds.max(1) {
        cold.push(home.timed(&["run", "--rm", "--", "true"])?);
    }
    // `head` as the issue words it; busybox's reads small blocks, and under TCG the guest
    // CPU is the limit, so `dd bs=32K` shows what the channel itself carries.
    let head = stream_mib_s(&socket, &["head", "-c", &(64u64 << 20).to_string(), "/dev/zero"], 64)?;
    let dd = stream_mib_s(&socket, &["dd", "if=/dev/zero", "bs=32768", "count=2048"], 64)?;
    let (cp_in, cp_out) = copy_mib_s(&socket, 64)?;
    home.hangar(&["rm", "--force", "x0"])?;
    Ok(json!({
        "benchmark": "exec",
        "cli_exec_true": latency(&cli),
        "library_exec_true": latency(&library),
        "api_exec_true": latency(&api),
        "cli_via_daemon_exec_true": latency(&cli_daemon),
        "cold_run_true": latency(&cold),
        "cli_speedup_vs_cold_run": round(median(&cold) / median(&cli), 1),
        "stdout_mib_s": {"head_64_mib": head, "dd_bs32k_64_mib": dd},
        "copy_mib_s": {"into_guest_64_mib": cp_in, "out_of_guest_64_mib": cp_out},
        "targets": {"cli_p50_ms": 40, "api_p50_ms": 15, "stdout_mib_s": 50},
    }))
}

fn latency(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    json!({
        "p50_ms": round(quantile(&v, 0.5), 1),
        "p99_ms": round(quantile(&v, 0.99), 1),
        "samples": v.len(),
    })
}

/// One connection and one `true`, in milliseconds.
fn library_true(socket: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let mut c = Connection::open(socket).map_err(|e| e.to_string())?;
    let exec = Exec { argv: vec!["true".into()], ..Exec::default() };
    let status = c
        .exec(exec, None, &mut std::io::sink(), &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    if status.shell_code() != 0 {
        return Err(format!("true exited {status:?}"));
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// One `true` through hangard's WebSocket exec (connect, upgrade, run, exit), in milliseconds.
fn api_true(remote: &hangar_control::Remote) -> Result<f64, String> {
    use hangar_core::contracts::{ExecIo, ExecRequest, Guest};
    let vm = hangar_core::ids::VmName::new("x0").map_err(|e| e.to_string())?;
    let request = ExecRequest { argv: vec!["true".into()], ..ExecRequest::default() };
    let started = Instant::now();
    let (mut out, mut err) = (std::io::sink(), std::io::sink());
    let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, control: None };
    let status = remote.exec(&vm, &request, io).map_err(|e| e.to_string())?;
    if status.shell_code() != 0 {
        return Err(format!("true exited {status:?}"));
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// MiB/s of the `mib` MiB `argv` writes on its stdout in the guest, to the host.
fn stream_mib_s(socket: &Path, argv: &[&str], mib: u64) -> Result<f64, String> {
    struct Count(u64);
    impl Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Connection::open(socket).map_err(|e| e.to_string())?;
    let argv = argv.iter().map(|a| a.to_string()).collect();
    let mut out = Count(0);
    let started = Instant::now();
    c.exec(Exec { argv, ..Exec::default() }, None, &mut out, &mut std::io::sink())
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    if out.0 != mib << 20 {
        return Err(format!("{} bytes arrived of {}", out.0, mib << 20));
    }
    Ok(round(mib as f64 / secs, 1))
}

/// MiB/s of a `mib` MiB file copied into the guest and back through the client library (what
/// `hangar cp` does), checked byte for byte.
fn copy_mib_s(socket: &Path, mib: u64) -> Result<(f64, f64), String> {
    let data: Vec<u8> =
        (0..(mib << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let input: &'static [u8] = Box::leak(data.clone().into_boxed_slice());
    let mut c = Connection::open(socket).map_err(|e| e.to_string())?;
    let started = Instant::now();
    c.put("/root/bench-copy", 0o600, 0, Box::new(input)).map_err(|e| e.to_string())?;
    let put = started.elapsed().as_secs_f64();
    let mut back = Vec::with_capacity(data.len());
    let started = Instant::now();
    c.get("/root/bench-copy", &mut back).map_err(|e| e.to_string())?;
    let get = started.elapsed().as_secs_f64();
    if back != data {
        return Err("the copy back differs".into());
    }
    Ok((round(mib as f64 / put, 1), round(mib as f64 / get, 1)))
}

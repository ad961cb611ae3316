//! API load: N connections, each sends one request at the same instant, per burst.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::stats::{median, quantile, round};

/// `hangar-bench api` options.
#[derive(clap::Args)]
pub struct Args {
    /// The hangard binary.
    #[arg(long, default_value = "target/release/hangard")]
    hangard: PathBuf,
    /// VMs defined in the store (not booted).
    #[arg(long, default_value_t = 100)]
    vms: usize,
    /// Concurrent requests per burst (one connection each, all sent at once).
    #[arg(long, default_value_t = 1000)]
    concurrency: usize,
    /// Bursts per endpoint, alternated with the baseline; figures are medians over them.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

impl Args {
    /// The defaults, with this hangard.
    pub fn with_hangard(hangard: PathBuf) -> Args {
        Args { hangard, vms: 100, concurrency: 1000, rounds: 7 }
    }
}

/// Kills the daemon and removes its home on every exit path.
struct Daemon {
    child: Child,
    home: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| round(kib / 1024.0, 1))
        .unwrap_or(f64::NAN)
}

pub fn call(
    socket: &Path, method: &str, path: &str, body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), String> {
    hangar_api::client::request(socket, method, path, body, Duration::from_secs(60))
        .map(|r| (r.status, r.body))
        .map_err(|e| e.to_string())
}

/// Sends one keep-alive request on `conn` and reads the whole response; returns its status.
async fn exchange(conn: &mut BufReader<UnixStream>, request: &[u8]) -> std::io::Result<u16> {
    conn.get_mut().write_all(request).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok(status)
}

/// One burst: every connection sends `path` at the same instant. Returns sorted latencies
/// (ms), the error count and the burst's wall time.
async fn burst(conns: &mut Vec<BufReader<UnixStream>>, path: &str) -> (Vec<f64>, usize, f64) {
    let request: Arc<[u8]> =
        format!("GET {path} HTTP/1.1\r\nHost: hangard\r\n\r\n").into_bytes().into();
    let gate = Arc::new(tokio::sync::Barrier::new(conns.len()));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            let (request, gate) = (request.clone(), gate.clone());
            tokio::spawn(async move {
                gate.wait().await;
                let t = Instant::now();
                let status = exchange(&mut conn, &request).await;
                (conn, status, t.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for task in tasks {
        let (conn, status, ms) = task.await.expect("burst task");
        if !matches!(status, Ok(200)) {
            errors += 1;
        }
        latencies.push(ms);
        conns.push(conn);
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, errors, started.elapsed().as_secs_f64())
}

/// Runs the load test; returns the result object.
pub fn run(args: &Args) -> Result<serde_json::Value, String> {
    if !args.hangard.exists() {
        return Err(format!(
            "{} not found; run `cargo build --release -p hangard` first",
            args.hangard.display()
        ));
    }
    let home = std::env::temp_dir().join(format!("hgb-{}", std::process::id()));
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let socket = home.join("hangard.sock");
    let child = Command::new(&args.hangard)
        .arg("--home")
        .arg(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.hangard.display()))?;
    let daemon = Daemon { child, home };
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(&socket, "GET", "/v1/health", None).is_err() {
        if Instant::now() > deadline {
            return Err("hangard did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..args.vms {
        let spec = json!({"schema_version": 1, "name": format!("load-{i:03}"), "machine": {"memory_mib": 128}});
        let (status, body) =
            call(&socket, "POST", "/v1/vms?wait=true", Some(spec.to_string().as_bytes()))?;
        if status != 200 {
            return Err(format!(
                "defining load-{i:03}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    let (_, body) = call(&socket, "GET", "/v1/vms", None)?;
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if listed.len() != args.vms {
        return Err(format!("GET /v1/vms listed {} VMs, expected {}", listed.len(), args.vms));
    }
    let rss_idle = rss_mib(daemon.child.id());
    // The client gets one thread, so the daemon keeps the machine's other core(s).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let measured = rt.block_on(async {
        let mut conns = Vec::with_capacity(args.concurrency);
        for _ in 0..args.concurrency {
            let stream = UnixStream::connect(&socket).await.map_err(|e| e.to_string())?;
            conns.push(BufReader::new(stream));
        }
        // Warm-up: first requests pay for connection setup in the server.
        burst(&mut conns, "/v1/health").await;
        let mut vms = Vec::new();
        let mut health = Vec::new();
        for _ in 0..args.rounds {
            vms.push(burst(&mut conns, "/v1/vms").await);
            health.push(burst(&mut conns, "/v1/health").await);
        }
        Ok::<_, String>((vms, health))
    })?;
    let rss_loaded = rss_mib(daemon.child.id());
    let summarise = |bursts: &[(Vec<f64>, usize, f64)]| {
        let p = |q: f64| median(&bursts.iter().map(|b| quantile(&b.0, q)).collect::<Vec<_>>());
        json!({
            "p50_ms": round(p(0.50), 2),
            "p99_ms": round(p(0.99), 2),
            "max_ms": round(p(1.0), 2),
            "throughput_rps": round(median(&bursts.iter().map(|b| b.0.len() as f64 / b.2).collect::<Vec<_>>()), 0),
            "errors": bursts.iter().map(|b| b.1).sum::<usize>(),
        })
    };
    let (vms, health) = measured;
    let get_vms = summarise(&vms);
    let baseline = summarise(&health);
    let ratio = get_vms["p99_ms"].as_f64().unwrap_or(f64::NAN)
        / baseline["p99_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "benchmark": "api",
        "vms": args.vms,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "get_vms": get_vms,
        "baseline_health": baseline,
        "p99_ratio_vs_baseline": round(ratio, 2),
        "rss_idle_mib": rss_idle,
        "rss_after_mib": rss_loaded,
    }))
}

//! Real-engine benchmarks: Hangar (the `hangar` CLI, as a user runs it) against the same plan's
//! argv launched directly by a minimal launcher that waits for the same signal. A and B
//! alternate within each round; figures are medians.
//!
//! Over 700 lines, one file on purpose for now: every benchmark here shares `Home`, the raw
//! launcher's rounds and `daemon`; the next one added should move its own into a module, as
//! `gateway` and `net` did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::raw::{raw_boot, raw_floor, raw_restore, raw_run, RawPlan};
use crate::stats::{median, quantile, round};

/// Options shared by the engine benchmarks.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// The hangar binary.
    #[arg(long, default_value = "target/release/hangar")]
    pub hangar: PathBuf,
    /// The hangard binary (footprint and warm-claim proxy).
    #[arg(long, default_value = "target/release/hangard")]
    pub hangard: PathBuf,
    /// Where the built images are (`scripts/setup` puts them in /usr/local/share/hangar/images).
    #[arg(long, default_value = "/usr/local/share/hangar/images")]
    pub images: PathBuf,
    /// Rounds (each runs A and B once, alternating).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// A private Hangar home (short path: unix sockets are limited to 107 bytes) with the images
/// linked in. Dropping it kills every QEMU that names it and removes it.
pub struct Home {
    /// The directory.
    pub dir: PathBuf,
    hangar: PathBuf,
    /// Extra environment for every `hangar` command.
    env: Vec<(String, String)>,
}

impl Home {
    pub fn new(args: &Args, tag: &str) -> Result<Home, String> {
        if !args.images.join("minimal/vmlinuz").exists() {
            return Err(format!("no built image in {} (run scripts/setup)", args.images.display()));
        }
        if !args.hangar.exists() {
            return Err(format!(
                "{} not found; run `cargo build --release -p hangar`",
                args.hangar.display()
            ));
        }
        let dir = PathBuf::from(format!("/tmp/hgb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&args.images, dir.join("images")).map_err(|e| e.to_string())?;
        Ok(Home { dir, hangar: args.hangar.clone(), env: Vec::new() })
    }

    /// The same home with QEMU unconfined (`HANGAR_CONFINE=off`): the baseline of the
    /// confinement benchmark.
    pub fn unconfined(mut self) -> Home {
        self.env.push(("HANGAR_CONFINE".into(), "off".into()));
        self
    }

    /// Writes spec `name` (the example guest: 1 vCPU, 256 MiB, the minimal image).
    pub fn spec(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.toml"));
        let text = format!(
            "schema_version = 1\nname = \"{name}\"\n\n[machine]\nvcpus = 1\nmemory_mib = 256\n\n[boot]\nimage = \"minimal\"\n"
        );
        std::fs::write(&path, text).expect("write spec");
        path
    }

    /// Runs `hangar` on this home, without a daemon; fails on a non-zero exit.
    pub fn hangar(&self, args: &[&str]) -> Result<String, String> {
        self.hangar_via("never", args)
    }

    /// [`Home::hangar`] with `HANGAR_DAEMON=daemon` (`require`: through a running hangard).
    pub fn hangar_via(&self, daemon: &str, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.hangar)
            .args(args)
            .env("HANGAR_HOME", &self.dir)
            .env("HANGAR_DAEMON", daemon)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", self.hangar.display()))?;
        if !out.status.success() {
            return Err(format!(
                "hangar {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Wall time of one `hangar` command.
    pub fn timed(&self, args: &[&str]) -> Result<f64, String> {
        self.timed_via("never", args)
    }

    /// [`Home::timed`] with `HANGAR_DAEMON=daemon`.
    pub fn timed_via(&self, daemon: &str, args: &[&str]) -> Result<f64, String> {
        let t = Instant::now();
        self.hangar_via(daemon, args)?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }

    /// The plan Hangar would run for `spec`.
    pub fn plan(&self, spec: &Path) -> Result<RawPlan, String> {
        let text = self.hangar(&["plan", spec.to_str().unwrap(), "--output", "json"])?;
        let plan: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let argv = plan["argv"]
            .as_array()
            .ok_or("plan has no argv")?
            .iter()
            .map(|a| a.as_str().unwrap_or_default().to_string())
            .collect();
        let s = |k: &str| plan[k].as_str().map(PathBuf::from);
        Ok(RawPlan {
            argv,
            runtime_dir: s("runtime_dir").ok_or("plan has no runtime_dir")?,
            qmp_socket: s("qmp_socket").ok_or("plan has no qmp_socket")?,
            console_socket: plan["serial"]["socket"].as_str().map(PathBuf::from),
            agent_socket: s("agent_socket"),
            console: plan["serial"]["log"]
                .as_str()
                .map(PathBuf::from)
                .ok_or("plan has no console log")?,
        })
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let needle = self.dir.display().to_string();
        for pid in pids_naming(&needle) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pids_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
                    String::from_utf8_lossy(&cmd).contains(needle).then_some(pid)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn summary(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    json!({
        "median_ms": round(median(values), 1),
        "min_ms": round(v.first().copied().unwrap_or(f64::NAN), 1),
        "max_ms": round(v.last().copied().unwrap_or(f64::NAN), 1),
        "samples": values.len(),
    })
}

/// Cold boot: `hangar up` to guest-ready vs the plan's argv to the same ready line.
pub fn boot(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "boot")?;
    let spec = home.spec("b0");
    let plan = home.plan(&spec)?;
    let spec = spec.to_str().unwrap();
    // What RAM in a file costs a boot: the same argv with plain memory.
    let anonymous = plan.with_ram(hangar_plan::anonymous_ram_object)?;
    let (mut hangar, mut raw, mut raw_anonymous) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed boot of each first: page cache, image files.
    home.hangar(&["up", spec])?;
    home.hangar(&["rm", "--force", "b0"])?;
    raw_boot(&plan)?;
    for round in 0..args.rounds {
        let order = turns(round);
        for hangar_turn in order {
            if hangar_turn {
                hangar.push(home.timed(&["up", spec])?);
                home.hangar(&["rm", "--force", "b0"])?;
            } else {
                raw.push(raw_boot(&plan)?);
                raw_anonymous.push(raw_boot(&anonymous)?);
            }
        }
    }
    let ratio = median(&hangar) / median(&raw);
    Ok(json!({
        "benchmark": "cold_boot",
        "hangar_up": summary(&hangar),
        "raw_qemu": summary(&raw),
        "ratio": round(ratio, 3),
        "target_ratio": 1.02,
        "raw_qemu_anonymous_ram": summary(&raw_anonymous),
        "file_ram_vs_anonymous": round(median(&raw) / median(&raw_anonymous), 3),
    }))
}

/// `hangar run --rm -- true` (define, boot, run, report the exit, remove everything) vs the
/// plan of the same spec run raw: its guest runs `true` and powers off, and QEMU exits.
pub fn run_rm(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "run")?;
    // The spec `hangar run -- true` makes (its defaults: 1 vCPU, 256 MiB, a console log).
    let spec = home.dir.join("r0.toml");
    let cmdline = hangar_qemu::console::run_argument(&["true".to_string()]);
    let text = format!(
        "schema_version = 1\nname = \"r0\"\n[machine]\nvcpus = 1\nmemory_mib = 256\n\
         [boot]\nimage = \"minimal\"\ncmdline = {cmdline:?}\n[serial]\nmode = \"log\"\n"
    );
    std::fs::write(&spec, text).map_err(|e| e.to_string())?;
    let plan = home.plan(&spec)?;
    let run = ["run", "--rm", "--", "true"];
    // One untimed run of each first: page cache, image files.
    home.hangar(&run)?;
    raw_run(&plan)?;
    let (mut hangar, mut raw) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for hangar_turn in turns(round) {
            if hangar_turn {
                hangar.push(home.timed(&run)?);
            } else {
                raw.push(raw_run(&plan)?);
            }
        }
    }
    if home.hangar(&["ps", "--all", "--output", "json"])?.trim() != "[]" {
        return Err("`hangar run --rm` left a VM behind".into());
    }
    Ok(json!({
        "benchmark": "run_rm",
        "hangar_run_rm": summary(&hangar),
        "raw_qemu": summary(&raw),
        "ratio": round(median(&hangar) / median(&raw), 3),
        "target_ratio": 1.02,
    }))
}

/// Which side goes first in `round`: Hangar on even rounds, the baseline on odd ones, so drift
/// in the machine's load hits both equally. `true` is Hangar's turn.
fn turns(round: usize) -> [bool; 2] {
    if round % 2 == 0 {
        [true, false]
    } else {
        [false, true]
    }
}

/// Restore and save, in both snapshot layouts, each against its raw QEMU baseline and against
/// QEMU's own start-up floor, all alternated in the same rounds:
/// - `mapped` (`s0`, saved from the cold-booted VM, whose RAM is its own file): the restore
///   maps the RAM file copy-on-write and loads only device state;
/// - `stream` (`s1`, saved from the same VM after a restore, whose RAM is then private): the
///   restore reads the whole RAM back, as every restore did before mapped snapshots.
///
/// Each round also cold-boots the VM (the restore-vs-boot ratio) and saves it with `--sleep`
/// twice: right after the boot (mapped) and after one restore (stream).
pub fn restore(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "restore")?;
    let spec = home.spec("r0");
    let plan = home.plan(&spec)?;
    let spec = spec.to_str().unwrap();
    let mut cold = Vec::new();
    cold.push(home.timed(&["up", spec])?);
    home.hangar(&["snapshot", "save", "r0", "s0", "--sleep"])?;
    home.hangar(&["snapshot", "restore", "r0", "s0"])?;
    home.hangar(&["snapshot", "save", "r0", "s1", "--sleep"])?;
    let layouts = home.hangar(&["snapshot", "ls", "--output", "json"])?;
    let layouts: Value = serde_json::from_str(&layouts).map_err(|e| e.to_string())?;
    let layout_of = |id: &str| {
        layouts
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["id"] == id)
            .map(|s| s["layout"].clone())
    };
    if layout_of("s0") != Some(json!("mapped")) || layout_of("s1") != Some(json!("stream")) {
        return Err(format!("unexpected snapshot layouts: {layouts}"));
    }
    let file = |name: &str| home.dir.join("snapshots").join(name);
    let (mapped_state, mapped_ram, stream) =
        (file("s0@r0.state"), file("s0@r0.ram"), file("s1@r0.state"));
    // Warm-up, untimed.
    home.hangar(&["snapshot", "restore", "r0", "s1"])?;
    home.hangar(&["stop", "--force", "r0"])?;
    raw_restore(&plan, &mapped_state, Some(&mapped_ram))?;
    raw_restore(&plan, &stream, None)?;
    raw_floor(&plan)?;
    let mut t: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..args.rounds {
        for mapped_turn in turns(round) {
            if mapped_turn {
                t.entry("mapped")
                    .or_default()
                    .push(home.timed(&["snapshot", "restore", "r0", "s0"])?);
                home.hangar(&["stop", "--force", "r0"])?;
                t.entry("raw_mapped").or_default().push(raw_restore(
                    &plan,
                    &mapped_state,
                    Some(&mapped_ram),
                )?);
                t.entry("floor").or_default().push(raw_floor(&plan)?);
            } else {
                t.entry("stream")
                    .or_default()
                    .push(home.timed(&["snapshot", "restore", "r0", "s1"])?);
                home.hangar(&["stop", "--force", "r0"])?;
                t.entry("raw_stream").or_default().push(raw_restore(&plan, &stream, None)?);
            }
        }
        // A cold boot of the same VM in the same round, then its two kinds of save.
        home.hangar(&["rm", "--force", "r0"])?;
        for s in ["s0", "s1"] {
            home.hangar(&["snapshot", "rm", s]).ok();
        }
        cold.push(home.timed(&["up", spec])?);
        // A save that keeps the VM (a pool's base): the RAM file's data blocks are copied.
        t.entry("save_kept_mapped")
            .or_default()
            .push(home.timed(&["snapshot", "save", "r0", "k0"])?);
        home.hangar(&["snapshot", "rm", "k0"])?;
        t.entry("save_mapped")
            .or_default()
            .push(home.timed(&["snapshot", "save", "r0", "s0", "--sleep"])?);
        home.hangar(&["snapshot", "restore", "r0", "s0"])?;
        t.entry("save_stream")
            .or_default()
            .push(home.timed(&["snapshot", "save", "r0", "s1", "--sleep"])?);
        home.hangar(&["stop", "--force", "r0"])?;
    }
    // The same save (`--sleep`, mapped) and restore through hangard's API, timed from the call
    // to its answer (`wait=true`: the operation has ended).
    {
        let (_daemon, socket) = daemon(args, &home, &["--reconcile-interval", "3600"])?;
        let api = |method: &str, path: &str, body: Option<Value>| -> Result<f64, String> {
            let bytes = body.map(|b| b.to_string());
            let started = Instant::now();
            let (status, answer) =
                crate::api::call(&socket, method, path, bytes.as_deref().map(str::as_bytes))?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            if status != 200 || answer["status"] != "succeeded" {
                return Err(format!("{method} {path}: {status} {answer}"));
            }
            Ok(ms)
        };
        for round in 0..args.rounds {
            home.hangar_via("require", &["up", spec])?;
            let id = format!("a{round}");
            let save = json!({ "id": id, "sleep": true });
            t.entry("api_save_mapped").or_default().push(api(
                "POST",
                "/v1/vms/r0/snapshots?wait=true",
                Some(save),
            )?);
            let restore = format!("/v1/vms/r0/snapshots/{id}/restore?wait=true");
            t.entry("api_wake_mapped").or_default().push(api("POST", &restore, None)?);
            home.hangar_via("require", &["rm", "--force", "r0"])?;
            home.hangar_via("require", &["snapshot", "rm", &id])?;
        }
    }
    let m = |k: &str| median(&t[k]);
    let summaries: serde_json::Map<String, Value> =
        t.iter().map(|(k, v)| (k.to_string(), summary(v))).collect();
    Ok(json!({
        "benchmark": "restore",
        "medians_ms": summaries,
        "hangar_cold_boot": summary(&cold),
        "mapped_ratio_vs_raw": round(m("mapped") / m("raw_mapped"), 3),
        "stream_ratio_vs_raw": round(m("stream") / m("raw_stream"), 3),
        "mapped_ratio_vs_floor": round(m("mapped") / m("floor"), 2),
        "raw_mapped_ratio_vs_floor": round(m("raw_mapped") / m("floor"), 2),
        "stream_vs_mapped": round(m("stream") / m("mapped"), 2),
        "save_stream_vs_mapped": round(m("save_stream") / m("save_mapped"), 2),
        "speedup_vs_cold_boot": round(median(&cold) / m("mapped"), 1),
        "note": "hangar figures are whole `hangar` CLI commands (process start, store, plan, QEMU); raw ones the QEMU launch alone",
        "snapshot_bytes_on_disk": {
            "mapped_ram": hangar_qemu::allocated_bytes(&mapped_ram),
            "mapped_state": hangar_qemu::allocated_bytes(&mapped_state),
            "stream": hangar_qemu::allocated_bytes(&stream),
        },
    }))
}

/// The PSS of `vm`'s QEMU in bytes, as `hangar inspect` reports it (`/proc/PID/smaps_rollup`).
pub fn pss(home: &Home, vm: &str) -> Result<u64, String> {
    let doc: Value =
        serde_json::from_str(&home.hangar(&["inspect", vm])?).map_err(|e| e.to_string())?;
    doc["memory"]["pss_bytes"].as_u64().ok_or_else(|| format!("{vm}: no memory in inspect"))
}

/// Memory of clones against cold-booted guests: `n` clones of one base snapshot (each maps the
/// snapshot's RAM file copy-on-write) and `n` cold-booted guests of the same spec, all running
/// at once within each set; the PSS (`/proc/PID/smaps_rollup`, as `hangar inspect` reports it)
/// of each set's QEMUs summed.
pub fn memory(args: &Args, n: usize) -> Result<Value, String> {
    let home = Home::new(args, "memory")?;
    let pss = |vm: &str| pss(&home, vm);
    let settle = |vms: &[String]| -> Result<(), String> {
        // Each guest answers its agent once: every one has finished waking or booting.
        for vm in vms {
            home.hangar(&["exec", vm, "--", "true"])?;
        }
        Ok(())
    };
    home.hangar(&["up", home.spec("base").to_str().unwrap()])?;
    home.hangar(&["snapshot", "save", "base", "seed"])?;
    home.hangar(&["stop", "--force", "base"])?;
    let clones: Vec<String> = (0..n).map(|i| format!("base-c{i}")).collect();
    for c in &clones {
        // Defined by a boot cut short (a clone differs from its base only by name).
        home.hangar(&["up", "--no-wait", home.spec(c).to_str().unwrap()])?;
        home.hangar(&["stop", "--force", c])?;
        home.hangar(&["snapshot", "restore", c, "seed"])?;
    }
    settle(&clones)?;
    let clone_pss: Vec<u64> = clones.iter().map(|c| pss(c)).collect::<Result<_, _>>()?;
    for c in &clones {
        home.hangar(&["rm", "--force", c])?;
    }
    let cold: Vec<String> = (0..n).map(|i| format!("cold{i}")).collect();
    for c in &cold {
        home.hangar(&["up", home.spec(c).to_str().unwrap()])?;
    }
    settle(&cold)?;
    let cold_pss: Vec<u64> = cold.iter().map(|c| pss(c)).collect::<Result<_, _>>()?;
    let mib = |v: &[u64]| round(v.iter().sum::<u64>() as f64 / f64::from(1 << 20), 1);
    let (clones_total, cold_total) = (clone_pss.iter().sum::<u64>(), cold_pss.iter().sum::<u64>());
    Ok(json!({
        "benchmark": "memory",
        "guests": n,
        "memory_mib_each": 256,
        "clones_pss_mib": mib(&clone_pss),
        "cold_pss_mib": mib(&cold_pss),
        "ratio": round(clones_total as f64 / cold_total as f64, 3),
        "target_ratio": 0.4,
    }))
}

/// What confining QEMU costs: cold boot (`hangar up`) and clone (`hangar snapshot restore` of
/// one VM's snapshot into another), with confinement (its own user, seccomp, cgroup) and
/// without (`HANGAR_CONFINE=off`), alternating within each round.
pub fn confinement(args: &Args) -> Result<Value, String> {
    let confined = Home::new(args, "conf")?;
    let plain = Home::new(args, "noconf")?.unconfined();
    let mut boot = [Vec::new(), Vec::new()];
    let mut clone = [Vec::new(), Vec::new()];
    let homes = [&confined, &plain];
    for home in homes {
        let (b0, c0, c1) = (home.spec("b0"), home.spec("c0"), home.spec("c1"));
        // Untimed: page cache warm, the base snapshot taken, the clone target defined.
        home.hangar(&["up", b0.to_str().unwrap()])?;
        home.hangar(&["rm", "--force", "b0"])?;
        home.hangar(&["up", c0.to_str().unwrap()])?;
        home.hangar(&["snapshot", "save", "c0", "base", "--sleep"])?;
        home.hangar(&["up", c1.to_str().unwrap()])?;
        home.hangar(&["stop", "--force", "c1"])?;
        home.hangar(&["snapshot", "restore", "c1", "base"])?;
        home.hangar(&["stop", "--force", "c1"])?;
    }
    for round in 0..args.rounds {
        for confined_turn in turns(round) {
            let i = usize::from(!confined_turn);
            let home = homes[i];
            let b0 = home.dir.join("b0.toml");
            boot[i].push(home.timed(&["up", b0.to_str().unwrap()])?);
            home.hangar(&["rm", "--force", "b0"])?;
            clone[i].push(home.timed(&["snapshot", "restore", "c1", "base"])?);
            home.hangar(&["stop", "--force", "c1"])?;
        }
    }
    let view: Value =
        serde_json::from_str(&confined.hangar(&["inspect", "c1"])?).map_err(|e| e.to_string())?;
    Ok(json!({
        "benchmark": "confinement",
        "cold_boot": {
            "confined": summary(&boot[0]),
            "unconfined": summary(&boot[1]),
            "ratio": round(median(&boot[0]) / median(&boot[1]), 3),
        },
        "clone": {
            "confined": summary(&clone[0]),
            "unconfined": summary(&clone[1]),
            "ratio": round(median(&clone[0]) / median(&clone[1]), 3),
        },
        "target_ratio": 1.03,
        "confinement": view["plan"]["confinement"],
    }))
}

/// N guests started at once: time until all are ready, Hangar vs raw.
pub fn throughput(args: &Args, sizes: &[usize], rounds: usize) -> Result<Value, String> {
    let home = Home::new(args, "tput")?;
    let max = sizes.iter().copied().max().unwrap_or(0);
    let specs: Vec<PathBuf> = (0..max).map(|i| home.spec(&format!("t{i}"))).collect();
    let plans: Vec<RawPlan> = specs.iter().map(|s| home.plan(s)).collect::<Result<_, _>>()?;
    let mut results = Vec::new();
    for &n in sizes {
        let (mut hangar, mut raw) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = turns(round);
            for hangar_turn in order {
                let t = Instant::now();
                let outcomes: Vec<Result<(), String>> = std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..n)
                        .map(|i| {
                            let (home, spec, plan) = (&home, &specs[i], &plans[i]);
                            scope.spawn(move || {
                                if hangar_turn {
                                    home.hangar(&["up", spec.to_str().unwrap()]).map(drop)
                                } else {
                                    raw_boot(plan).map(drop)
                                }
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                        .collect()
                });
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                outcomes.into_iter().collect::<Result<Vec<()>, String>>()?;
                if hangar_turn {
                    hangar.push(ms);
                    for i in 0..n {
                        home.hangar(&["rm", "--force", &format!("t{i}")])?;
                    }
                } else {
                    raw.push(ms);
                }
            }
        }
        results.push(json!({
            "guests": n,
            "hangar_all_ready": summary(&hangar),
            "raw_all_ready": summary(&raw),
            "ratio": round(median(&hangar) / median(&raw), 3),
        }));
    }
    Ok(
        json!({ "benchmark": "throughput", "accel_note": "TCG on this host: guests share 2 cores, so time grows with N", "runs": results }),
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A hangard on `home`, killed on drop.
pub(crate) struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn daemon(
    args: &Args, home: &Home, extra: &[&str],
) -> Result<(Daemon, PathBuf), String> {
    // `HANGAR_BENCH_DAEMON_LOG=FILE` keeps the daemon's log (with `HANGARD_LOG=debug`, where
    // its operations' and the gateway's time goes).
    let log = match std::env::var_os("HANGAR_BENCH_DAEMON_LOG") {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", PathBuf::from(&path).display()))?,
        ),
        None => Stdio::null(),
    };
    let child = Command::new(&args.hangard)
        .arg("--home")
        .arg(&home.dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", args.hangard.display()))?;
    let socket = home.dir.join("hangard.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::api::call(&socket, "GET", "/v1/health", None).is_err() {
        if Instant::now() > deadline {
            return Err("hangard did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Daemon(child), socket))
}

/// hangard RSS with 0/10/50/100 VMs defined, a running guest's runtime-dir bytes and QEMU RSS.
pub fn footprint(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "foot")?;
    let (d, socket) = daemon(args, &home, &[])?;
    let mut rss = Vec::new();
    let mut defined = 0;
    for target in [0usize, 10, 50, 100] {
        while defined < target {
            let spec = json!({"schema_version": 1, "name": format!("f{defined:03}"), "machine": {"memory_mib": 128}});
            let (s, body) = crate::api::call(
                &socket,
                "POST",
                "/v1/vms?wait=true",
                Some(spec.to_string().as_bytes()),
            )?;
            if s != 200 {
                return Err(format!("define: {s} {}", String::from_utf8_lossy(&body)));
            }
            defined += 1;
        }
        // A listing touches every record, as a client would.
        crate::api::call(&socket, "GET", "/v1/vms", None)?;
        let kib = rss_kib(d.0.id()).ok_or("cannot read hangard RSS")?;
        rss.push(json!({ "vms": target, "rss_mib": round(kib as f64 / 1024.0, 1) }));
    }
    drop(d);
    let spec = home.spec("g0");
    home.hangar(&["up", spec.to_str().unwrap()])?;
    let view: Value = serde_json::from_str(&home.hangar(&["ps", "--output", "json"])?)
        .map_err(|e| e.to_string())?;
    let pid = view[0]["pid"].as_u64().unwrap_or(0) as u32;
    let qemu_rss = rss_kib(pid).map(|k| round(k as f64 / 1024.0, 1));
    let runtime = dir_bytes(&home.dir.join("vms/g0"));
    home.hangar(&["rm", "--force", "g0"])?;
    Ok(json!({
        "benchmark": "footprint",
        "hangard_rss_mib": rss,
        "vm_note": "VMs defined in the store (not booted): the daemon holds no per-guest process state; each guest is its own QEMU",
        "running_guest": { "runtime_dir_bytes": runtime, "qemu_rss_mib": qemu_rss, "memory_mib": 256 },
    }))
}

/// An API resume of a paused guest (a warm claim's last step, through the daemon): call →
/// operation finished with vCPUs running.
pub fn warm_proxy(args: &Args, claims: usize) -> Result<Value, String> {
    let home = Home::new(args, "warm")?;
    let spec = home.spec("w0");
    home.hangar(&["up", spec.to_str().unwrap()])?;
    let (_d, socket) = daemon(args, &home, &[])?;
    let mut ms = Vec::new();
    for _ in 0..claims {
        let (s, body) = crate::api::call(&socket, "POST", "/v1/vms/w0/pause?wait=true", None)?;
        if s != 200 {
            return Err(format!("pause: {s} {}", String::from_utf8_lossy(&body)));
        }
        let t = Instant::now();
        let (s, body) = crate::api::call(&socket, "POST", "/v1/vms/w0/resume?wait=true", None)?;
        let elapsed = t.elapsed().as_secs_f64() * 1000.0;
        let op: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if s != 200 || op["result"]["vm"]["state"] != "running" {
            return Err(format!("resume: {s} {op}"));
        }
        ms.push(elapsed);
    }
    let mut sorted = ms.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "benchmark": "resume_via_api",
        "what": "POST /v1/vms/{name}/resume?wait=true on a paused guest: a warm claim's last step, through the daemon",
        "samples": claims,
        "p50_ms": round(quantile(&sorted, 0.5), 2),
        "p99_ms": round(quantile(&sorted, 0.99), 2),
    }))
}

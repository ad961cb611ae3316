//! The baselines: a plan's argv launched directly by a minimal launcher (its sockets bound and
//! passed, nothing else: no user switch, no cgroup), timed to the same signal Hangar waits for.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_qmp::{Qmp, QmpControl, QmpQuery, RunState};

/// What the raw launcher needs from a plan.
#[derive(Clone)]
pub struct RawPlan {
    pub(crate) argv: Vec<String>,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) qmp_socket: PathBuf,
    pub(crate) console_socket: Option<PathBuf>,
    pub(crate) agent_socket: Option<PathBuf>,
    pub(crate) console: PathBuf,
}

impl RawPlan {
    /// The same plan with its guest RAM backend replaced by `backend(size in MiB)`.
    pub fn with_ram(&self, backend: impl FnOnce(u32) -> String) -> Result<RawPlan, String> {
        let mut plan = self.clone();
        let prefix = format!("memory-backend-file,id={},", hangar_plan::RAM_BACKEND);
        let at = plan.argv.iter().position(|a| a.starts_with(&prefix)).ok_or("no RAM backend")?;
        let size = plan.argv[at]
            .split(',')
            .find_map(|kv| kv.strip_prefix("size=")?.strip_suffix('M')?.parse::<u32>().ok())
            .ok_or("RAM backend without a size")?;
        plan.argv[at] = backend(size);
        Ok(plan)
    }
}

/// A QEMU launched directly; killed and its runtime dir emptied on drop.
struct Raw {
    process: hangar_store::ProcessIdentity,
    runtime_dir: PathBuf,
}

impl Drop for Raw {
    fn drop(&mut self) {
        hangar_qemu::process::terminate(self.process, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

impl Raw {
    fn alive(&self) -> bool {
        hangar_qemu::process::alive(self.process)
    }
}

/// Launches the plan's argv the way any launcher must: the QMP and console sockets bound and
/// passed at the descriptors the argv names, nothing else (no user switch, no cgroup).
fn launch(plan: &RawPlan, extra: &[String]) -> Result<Raw, String> {
    use hangar_qemu::confine;
    let _ = std::fs::remove_dir_all(&plan.runtime_dir);
    std::fs::create_dir_all(&plan.runtime_dir).map_err(|e| e.to_string())?;
    let mut launch = confine::Launch::default()
        .pass(hangar_plan::QMP_FD, confine::listen(&plan.qmp_socket).map_err(|e| e.to_string())?);
    if let Some(socket) = &plan.console_socket {
        launch = launch
            .pass(hangar_plan::CONSOLE_FD, confine::listen(socket).map_err(|e| e.to_string())?);
    }
    if let Some(socket) = &plan.agent_socket {
        launch =
            launch.pass(hangar_plan::AGENT_FD, confine::listen(socket).map_err(|e| e.to_string())?);
    }
    let mut argv = plan.argv.clone();
    argv.extend(extra.iter().cloned());
    let process =
        hangar_qemu::process::spawn_detached(&argv, &plan.runtime_dir.join("qemu.log"), launch)
            .map_err(|e| format!("{}: {e}", plan.argv[0]))?;
    Ok(Raw { process, runtime_dir: plan.runtime_dir.clone() })
}

/// The raw baseline for a cold boot: spawn the argv, poll the console file for the ready line
/// at the same 10 ms interval Hangar uses. Returns ms from spawn to ready.
pub fn raw_boot(plan: &RawPlan) -> Result<f64, String> {
    let started = Instant::now();
    let raw = launch(plan, &[])?;
    let deadline = started + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        if let Ok(mut f) = std::fs::File::open(&plan.console) {
            seen.clear();
            let _ = f.read_to_end(&mut seen);
            if seen.windows(12).any(|w| w == b"HANGAR_READY") {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if !raw.alive() {
            return Err("raw QEMU exited before ready".into());
        }
        if Instant::now() > deadline {
            return Err("raw QEMU not ready within 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A runtime and a QMP session (past its greeting and capabilities) to the raw QEMU of `plan`.
fn raw_qmp(plan: &RawPlan) -> Result<(tokio::runtime::Runtime, Qmp), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let qmp = rt
        .block_on(Qmp::connect(&plan.qmp_socket, Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok((rt, qmp))
}

/// QEMU's own start-up floor for the plan's argv: spawn it with `-S` (no vCPU runs, no guest),
/// and return ms from spawn to its first QMP answer. Nothing that starts a VM from this argv
/// can be faster.
pub fn raw_floor(plan: &RawPlan) -> Result<f64, String> {
    let started = Instant::now();
    let _raw = launch(plan, &["-S".into()])?;
    let (rt, qmp) = raw_qmp(plan)?;
    rt.block_on(async {
        let s = qmp.query_status().await.map_err(|e| e.to_string())?;
        if s.running {
            return Err("QEMU started with -S is running its vCPUs".to_string());
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    })
}

/// The raw baseline for a restore: spawn the argv with `-incoming file:…`, wait over QMP for
/// the state to load, `cont`, and return ms from spawn to vCPUs running. With `ram` (a
/// `mapped` snapshot's RAM file) the way any launcher must restore one: the RAM backend
/// pointed at that file, mapped private, `-incoming defer`, `x-ignore-shared` set, then
/// `migrate-incoming`.
pub fn raw_restore(plan: &RawPlan, state: &Path, ram: Option<&Path>) -> Result<f64, String> {
    let started = Instant::now();
    let uri = format!("file:{}", state.display());
    // The same RAM Hangar gives a restore: the snapshot's file mapped private (mapped), or
    // plain memory (stream).
    let plan = match ram {
        Some(ram) => {
            plan.with_ram(|size| hangar_plan::ram_object(&ram.display().to_string(), size, false))?
        }
        None => plan.with_ram(hangar_plan::anonymous_ram_object)?,
    };
    let incoming = if ram.is_some() { "defer".to_string() } else { uri.clone() };
    let _raw = launch(&plan, &["-incoming".into(), incoming])?;
    let (rt, qmp) = raw_qmp(&plan)?;
    rt.block_on(async {
        if ram.is_some() {
            let caps = serde_json::json!({
                "capabilities": [{ "capability": "x-ignore-shared", "state": true }]
            });
            qmp.execute("migrate-set-capabilities", Some(caps)).await.map_err(|e| e.to_string())?;
            let args = serde_json::json!({ "uri": uri });
            qmp.execute("migrate-incoming", Some(args)).await.map_err(|e| e.to_string())?;
        }
        let deadline = started + Duration::from_secs(120);
        loop {
            let s = qmp.query_status().await.map_err(|e| e.to_string())?;
            if !matches!(s.status, RunState::InMigrate | RunState::Prelaunch) {
                break;
            }
            if Instant::now() > deadline {
                return Err("raw restore did not finish loading".to_string());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        qmp.cont().await.map_err(|e| e.to_string())?;
        let s = qmp.query_status().await.map_err(|e| e.to_string())?;
        if !s.running {
            return Err(format!("raw restore left QEMU {:?}", s.status));
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    })
}

/// The raw baseline for `hangar run`: spawn the argv (whose guest runs the command and powers
/// off) and wait for QEMU to exit, polling every 5 ms. Returns ms from spawn to exit.
pub fn raw_run(plan: &RawPlan) -> Result<f64, String> {
    let started = Instant::now();
    let raw = launch(plan, &[])?;
    let deadline = started + Duration::from_secs(120);
    while raw.alive() {
        if Instant::now() > deadline {
            return Err("raw QEMU still running after 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let console = std::fs::read_to_string(&plan.console).unwrap_or_default();
    if !console.contains("HANGAR_EXIT") {
        let qemu = std::fs::read_to_string(plan.runtime_dir.join("qemu.log")).unwrap_or_default();
        return Err(format!(
            "the raw guest never printed its exit line; console: {:?}; QEMU: {qemu:?}",
            console.lines().rev().take(3).collect::<Vec<_>>()
        ));
    }
    Ok(ms)
}

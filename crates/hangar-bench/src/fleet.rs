//! The fleet on real QEMU through `hangard`'s API (the release binary, on a private home): claim
//! latency from the warm set measured from the API call to the answer (the instance's vCPUs
//! run before the daemon answers), from a spare (and a spare's memory), wake from sleep, and a new instance cloned from the pool's
//! base snapshot against a cold boot of the same template (a `cold_boot` pool), in one run.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::engine::{daemon, Args, Home};
use crate::stats::{median, quantile, round};

/// The template every pool uses: the example guest (1 vCPU, 256 MiB, the minimal image).
fn template() -> Value {
    json!({"schema_version": 1, "name": "template", "machine": {"vcpus": 1, "memory_mib": 256}, "boot": {"image": "minimal"}})
}

fn call(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let bytes = body.map(|b| b.to_string());
    let (status, body) =
        crate::api::call(socket, method, path, bytes.as_deref().map(str::as_bytes))?;
    if !(200..300).contains(&status) {
        return Err(format!("{method} {path}: {status} {}", String::from_utf8_lossy(&body)));
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{method} {path}: {e}"))
}

/// Runs passes until the pool's unclaimed counts are as desired (each call is one whole pass,
/// answered when it ends).
fn converge(socket: &Path, pool: &str) -> Result<(), String> {
    for _ in 0..10 {
        let pass = call(socket, "POST", "/v1/fleet/reconcile", None)?;
        if pass["errors"].as_array().is_some_and(|e| !e.is_empty()) {
            return Err(format!("reconcile: {pass}"));
        }
        let s = call(socket, "GET", &format!("/v1/pools/{pool}"), None)?;
        let (c, d) = (&s["pool"]["desired"], &s["counts"]);
        if ["running", "warm", "sleeping", "spare"].iter().all(|k| c[k] == d[k]) && d["other"] == 0
        {
            return Ok(());
        }
    }
    Err(format!("pool {pool} did not converge in 10 passes"))
}

/// One timed claim: (client-side ms from the call to the answer, the claim).
fn claim(socket: &Path, pool: &str, expect: &str) -> Result<(f64, Value), String> {
    let t = Instant::now();
    let c = call(socket, "POST", &format!("/v1/pools/{pool}/claim"), None)?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if c["source"] != expect || c["instance"]["state"] != "running" {
        return Err(format!("claim from {pool}: expected {expect}, running; got {c}"));
    }
    Ok((ms, c))
}

fn release(socket: &Path, c: &Value) -> Result<(), String> {
    let id = c["instance"]["id"].as_str().unwrap_or_default();
    call(socket, "DELETE", &format!("/v1/instances/{id}"), None).map(|_| ())
}

/// Makes pool `id` of tenant `bench` (ids are tenant-qualified: `bench--…`).
fn pool(socket: &Path, id: &str, desired: Value, cold_boot: bool) -> Result<(), String> {
    call(
        socket,
        "POST",
        "/v1/pools",
        Some(&json!({
            "id": id, "tenant": "bench", "spec": template(), "desired": desired,
            "policy": {"min_running_s": 0, "cold_boot": cold_boot},
        })),
    )
    .map(|_| ())
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// `claims` warm claims (each followed by an untimed release and refill), `wakes` claims from
/// a sleeping set, and `creations` claims that create (cloned, then cold-booted).
pub fn run(args: &Args, claims: usize, wakes: usize, creations: usize) -> Result<Value, String> {
    let home = Home::new(args, "fleet")?;
    // The loop's own passes would race the timed calls; this run drives every pass itself.
    let (_d, socket) = daemon(args, &home, &["--reconcile-interval", "3600"])?;
    call(&socket, "PUT", "/v1/tenants/bench", Some(&json!({})))?;

    // Warm claims.
    pool(&socket, "bench--warm", json!({"running": 0, "warm": 2, "sleeping": 0}), false)?;
    converge(&socket, "bench--warm")?;
    let (mut warm_ms, mut warm_server_ms) = (Vec::new(), Vec::new());
    for _ in 0..claims {
        let (ms, c) = claim(&socket, "bench--warm", "warm")?;
        warm_ms.push(ms);
        warm_server_ms.push(c["took_ms"].as_f64().unwrap_or(f64::NAN));
        release(&socket, &c)?;
        converge(&socket, "bench--warm")?;
    }

    // Spares: a spare set of one, refilled after each claim; a spare's PSS, and the same
    // instance's once claimed (a running clone of the base).
    call(
        &socket,
        "PATCH",
        "/v1/pools/bench--warm",
        Some(&json!({"desired": {"running": 0, "warm": 0, "sleeping": 0, "spare": 1}})),
    )?;
    let (mut spare_ms, mut spare_server_ms) = (Vec::new(), Vec::new());
    let (mut spare_pss, mut claimed_pss) = (Vec::new(), Vec::new());
    for round in 0..claims {
        converge(&socket, "bench--warm")?;
        let status = call(&socket, "GET", "/v1/pools/bench--warm", None)?;
        let spare = status["instances"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i["state"] == "spare"))
            .and_then(|i| i["name"].as_str().map(String::from))
            .ok_or_else(|| format!("no spare in {status}"))?;
        // A few samples of memory are enough (each `inspect` is a whole `hangar` process).
        let sample_memory = round < 5;
        if sample_memory {
            spare_pss.push(crate::engine::pss(&home, &spare)? as f64);
        }
        let (ms, c) = claim(&socket, "bench--warm", "spare")?;
        spare_ms.push(ms);
        spare_server_ms.push(c["took_ms"].as_f64().unwrap_or(f64::NAN));
        if sample_memory {
            // Once its guest answers (the claim returns when the vCPUs run).
            home.hangar(&["exec", &spare, "--", "true"])?;
            claimed_pss.push(crate::engine::pss(&home, &spare)? as f64);
        }
        release(&socket, &c)?;
    }

    // Wakes: a sleeping set of one, refilled after each claim.
    call(
        &socket,
        "PATCH",
        "/v1/pools/bench--warm",
        Some(&json!({"desired": {"running": 0, "warm": 0, "sleeping": 1, "spare": 0}})),
    )?;
    let mut wake_ms = Vec::new();
    for _ in 0..wakes {
        converge(&socket, "bench--warm")?;
        let (ms, c) = claim(&socket, "bench--warm", "sleeping")?;
        wake_ms.push(ms);
        release(&socket, &c)?;
    }
    call(&socket, "DELETE", "/v1/pools/bench--warm", None)?;

    // Creation: cloned from the base snapshot vs booted, same template, alternating.
    pool(&socket, "bench--clone", json!({}), false)?;
    pool(&socket, "bench--cold", json!({}), true)?;
    // The clone pool's first creation boots and takes its base.
    let (_, first) = claim(&socket, "bench--clone", "created")?;
    release(&socket, &first)?;
    // QEMU's own start-up floor for the same machine (spawn with -S to its first QMP answer).
    let floor_plan = home.plan(&home.spec("floor"))?;
    let (mut clone_ms, mut cold_ms, mut floor_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..creations {
        let (ms, c) = claim(&socket, "bench--clone", "cloned")?;
        clone_ms.push(ms);
        release(&socket, &c)?;
        floor_ms.push(crate::raw::raw_floor(&floor_plan)?);
        let (ms, c) = claim(&socket, "bench--cold", "created")?;
        cold_ms.push(ms);
        release(&socket, &c)?;
    }
    call(&socket, "DELETE", "/v1/pools/bench--clone", None)?;
    call(&socket, "DELETE", "/v1/pools/bench--cold", None)?;

    let (warm, server, wake) = (sorted(warm_ms), sorted(warm_server_ms), sorted(wake_ms));
    let (spare, spare_server) = (sorted(spare_ms), sorted(spare_server_ms));
    let mib = |v: &[f64]| round(median(&sorted(v.to_vec())) / f64::from(1 << 20), 1);
    let (clone, cold) = (sorted(clone_ms), sorted(cold_ms));
    Ok(json!({
        "benchmark": "fleet",
        "through": "hangard's API (release binary, unix socket), real QEMU; times from the API call to the answer, which comes once the vCPUs run",
        "warm_claim": {
            "samples": warm.len(),
            "p50_ms": round(quantile(&warm, 0.5), 2),
            "p99_ms": round(quantile(&warm, 0.99), 2),
            "server_p50_ms": round(quantile(&server, 0.5), 2),
            "target_p50_ms": 10.0,
        },
        "spare_claim": {
            "samples": spare.len(),
            "p50_ms": round(quantile(&spare, 0.5), 2),
            "p99_ms": round(quantile(&spare, 0.99), 2),
            "server_p50_ms": round(quantile(&spare_server, 0.5), 2),
            "target_p50_ms": 10.0,
            "spare_pss_median_mib": mib(&spare_pss),
            "target_spare_pss_mib": 40.0,
            "claimed_clone_pss_median_mib": mib(&claimed_pss),
        },
        "wake_claim": { "samples": wake.len(), "median_ms": round(median(&wake), 1) },
        "create_claim": {
            "samples": clone.len(),
            "cloned_median_ms": round(median(&clone), 1),
            "floor_median_ms": round(median(&floor_ms), 1),
            "cloned_ratio_vs_floor": round(median(&clone) / median(&floor_ms), 2),
            "target_cloned_median_ms": 45.0,
            "target_ratio_vs_floor": 1.3,
            "cold_boot_median_ms": round(median(&cold), 1),
            "clone_speedup_vs_cold_boot": round(median(&cold) / median(&clone), 1),
            "target_speedup": 5.0,
        },
        "wake_speedup_vs_cold_boot": round(median(&cold) / median(&wake), 1),
    }))
}

//! The fleet on real QEMU, through the `hangar-fleet` library (the daemon's pool endpoints are
//! not built yet): claim latency from the warm set, wake from sleep, and a cold boot of the
//! same spec for comparison.

use std::sync::Arc;
use std::time::Instant;

use hangar_core::clock::SystemClock;
use hangar_core::ids::{PoolId, TenantId};
use hangar_fleet::{ClaimSource, Desired, Fleet, Policy, Pool, Quotas, Tenant};
use hangar_qemu::{EngineOptions, QemuEngine};
use serde_json::{json, Value};

use crate::engine::{Args, Home};
use crate::stats::{median, quantile, round};

fn template() -> Result<hangar_core::spec::VmSpec, String> {
    hangar_spec::parse(
        "schema_version = 1\nname = \"template\"\n[machine]\nvcpus = 1\nmemory_mib = 256\n[boot]\nimage = \"minimal\"\n",
        hangar_spec::Format::Toml,
        std::path::Path::new("/"),
    )
    .map(|c| c.spec)
    .map_err(|e| format!("{e:?}"))
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// `claims` warm claims (each followed by an untimed refill pass and the claimed instance's
/// release), `wakes` claims from a sleeping set, and the pool's cold boots for comparison.
pub fn run(args: &Args, claims: usize, wakes: usize) -> Result<Value, String> {
    let home = Home::new(args, "fleet")?;
    let engine =
        QemuEngine::open(&home.dir, EngineOptions::default()).map_err(|e| e.to_string())?;
    let fleet = Fleet::new(Arc::new(engine), Arc::new(SystemClock));
    let tenant = TenantId::new("bench").map_err(|e| e.to_string())?;
    fleet.put_tenant(Tenant {
        id: tenant.clone(),
        quotas: Quotas::default(),
    });
    let pool = PoolId::new("warm").map_err(|e| e.to_string())?;
    fleet
        .add_pool(Pool {
            id: pool.clone(),
            tenant,
            template: template()?,
            desired: Desired {
                running: 0,
                warm: 2,
                sleeping: 0,
            },
            policy: Policy::default(),
        })
        .map_err(|e| e.to_string())?;
    let first = fleet.pass();
    if !first.errors.is_empty() {
        return Err(format!("filling the warm set: {:?}", first.errors));
    }
    let (mut warm_ms, mut refill_ms) = (Vec::new(), Vec::new());
    for _ in 0..claims {
        let claim = fleet.claim(&pool).map_err(|e| e.to_string())?;
        if claim.source != ClaimSource::Warm {
            return Err(format!(
                "claim came from {:?}, not the warm set",
                claim.source
            ));
        }
        warm_ms.push(claim.took_ms);
        fleet
            .release(&claim.instance.id)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let refill = fleet.pass();
        if refill.created != 1 || !refill.errors.is_empty() {
            return Err(format!("refill: {refill:?}"));
        }
        refill_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The sleeping set: one instance, woken by each claim and refilled (boot + save) after.
    fleet
        .scale(
            &pool,
            Desired {
                running: 0,
                warm: 0,
                sleeping: 1,
            },
            None,
        )
        .map_err(|e| e.to_string())?;
    let mut wake_ms = Vec::new();
    for _ in 0..wakes {
        let pass = fleet.pass();
        if !pass.errors.is_empty() {
            return Err(format!("filling the sleeping set: {:?}", pass.errors));
        }
        let claim = fleet.claim(&pool).map_err(|e| e.to_string())?;
        if claim.source != ClaimSource::Sleeping {
            return Err(format!(
                "claim came from {:?}, not the sleeping set",
                claim.source
            ));
        }
        wake_ms.push(claim.took_ms);
        fleet
            .release(&claim.instance.id)
            .map_err(|e| e.to_string())?;
    }
    fleet.remove_pool(&pool).map_err(|e| e.to_string())?;
    let (warm, wake, refill) = (sorted(warm_ms), sorted(wake_ms), sorted(refill_ms));
    Ok(json!({
        "benchmark": "fleet",
        "through": "the hangar-fleet library on real QEMU (pool endpoints in hangard are not built yet)",
        "warm_claim": { "samples": warm.len(), "p50_ms": round(quantile(&warm, 0.5), 2), "p99_ms": round(quantile(&warm, 0.99), 2), "target_p50_ms": 10.0 },
        "wake_claim": { "samples": wake.len(), "median_ms": round(median(&wake), 1) },
        "cold_boot_refill": { "samples": refill.len(), "median_ms": round(median(&refill), 1) },
        "wake_speedup_vs_cold_boot": round(median(&refill) / median(&wake), 1),
    }))
}

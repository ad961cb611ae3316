//! Reconcile benchmark: a pass over 10,000 desired instances in 100 pools with nothing to do
//! (the steady state the loop spends its life in). `plan_10k` is the pure planner; `pass_10k`
//! adds observing every instance through the fake engine.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hangar_core::clock::{Clock, ManualClock};
use hangar_core::fake::{FakeConfig, FakeEngine};
use hangar_core::ids::{PoolId, TenantId};
use hangar_fleet::{reconcile, Desired, Fleet, Policy, Pool, Quotas, Tenant};

#[path = "../tests/common/mod.rs"]
mod common;
use common::template;

fn benches(c: &mut Criterion) {
    let clock = Arc::new(ManualClock::default());
    let engine = FakeEngine::new(FakeConfig { clock: clock.clone(), ..FakeConfig::default() });
    let fleet = Fleet::new(Arc::new(engine), clock.clone());
    fleet.put_tenant(Tenant { id: TenantId::new("bench").unwrap(), quotas: Quotas::default() });
    for p in 0..100 {
        fleet
            .add_pool(Pool {
                id: PoolId::new(format!("pool{p:03}")).unwrap(),
                tenant: TenantId::new("bench").unwrap(),
                template: template(),
                desired: Desired { running: 40, warm: 40, sleeping: 20, spare: 0 },
                policy: Policy::default(),
            })
            .unwrap();
    }
    let setup = fleet.pass();
    assert!(setup.errors.is_empty(), "{:?}", setup.errors.first());
    assert_eq!(fleet.instances(None).len(), 10_000);
    let pools: Vec<Pool> = fleet.pools();
    let instances: Vec<_> = fleet.instances(None);
    let now = clock.now();
    assert!(reconcile::plan(&pools, &instances, now).is_empty());
    c.bench_function("reconcile_plan_10k_instances_100_pools", |b| {
        b.iter(|| black_box(reconcile::plan(&pools, &instances, now)))
    });
    c.bench_function("reconcile_pass_10k_instances_100_pools", |b| {
        b.iter(|| black_box(fleet.pass()))
    });
}

criterion_group!(reconcile_benches, benches);
criterion_main!(reconcile_benches);

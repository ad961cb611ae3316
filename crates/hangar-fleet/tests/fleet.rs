//! The fleet against the in-memory fake engine: convergence, claims, replacement of dead
//! instances, quotas, scale-down order. The same `Fleet` drives real QEMU.

use std::sync::Arc;
use std::time::Duration;

use hangar_core::clock::ManualClock;
use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::fake::{FakeConfig, FakeEngine};
use hangar_core::ids::{PoolId, TenantId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_fleet::reconcile;
use hangar_fleet::{ClaimSource, Desired, Fleet, Policy, Pool, Quotas, Tenant};

mod common;
use common::template;

/// Desired counts: running, warm, sleeping.
fn want(running: u32, warm: u32, sleeping: u32) -> Desired {
    Desired { running, warm, sleeping, spare: 0 }
}

fn fleet(quotas: Quotas) -> (Fleet<FakeEngine>, Arc<ManualClock>) {
    let (fleet, clock, _) = fleet_with_engine(quotas);
    (fleet, clock)
}

fn fleet_with_engine(quotas: Quotas) -> (Fleet<FakeEngine>, Arc<ManualClock>, Arc<FakeEngine>) {
    let clock = Arc::new(ManualClock::default());
    let engine = FakeEngine::new(FakeConfig { clock: clock.clone(), ..FakeConfig::default() });
    let engine = Arc::new(engine);
    let fleet = Fleet::new(engine.clone(), clock.clone());
    fleet.put_tenant(Tenant { id: TenantId::new("acme").unwrap(), quotas });
    (fleet, clock, engine)
}

fn pool(name: &str, desired: Desired, policy: Policy) -> Pool {
    Pool {
        id: PoolId::new(name).unwrap(),
        tenant: TenantId::new("acme").unwrap(),
        template: template(),
        desired,
        policy,
    }
}

/// Adds pool `name` wanting `desired`, with the default policy.
fn add<E: Lifecycle + Snapshots>(fleet: &Fleet<E>, name: &str, desired: Desired) {
    fleet.add_pool(pool(name, desired, Policy::default())).unwrap();
}

/// Every registry the fleet saves from now on.
fn saved_registries(
    fleet: &Fleet<FakeEngine>,
) -> Arc<std::sync::Mutex<Vec<hangar_fleet::Registry>>> {
    let saved = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = saved.clone();
    fleet.persist_with(move |r| sink.lock().unwrap().push(r.clone()));
    saved
}

fn states(fleet: &Fleet<FakeEngine>) -> Vec<(String, VmState, bool)> {
    fleet.instances(None).iter().map(|i| (i.name.to_string(), i.state, i.claimed)).collect()
}

#[test]
fn a_warm_pool_converges_hands_out_claims_and_refills() {
    let (fleet, _) = fleet(Quotas::default());
    add(&fleet, "web", want(0, 3, 0));
    let report = fleet.pass();
    assert_eq!((report.created, report.errors.len()), (3, 0), "{report:?}");
    assert_eq!(
        states(&fleet),
        [
            ("web-0".into(), VmState::Paused, false),
            ("web-1".into(), VmState::Paused, false),
            ("web-2".into(), VmState::Paused, false)
        ]
    );
    // Converged: the next pass has nothing to do.
    let idle = fleet.pass();
    assert_eq!(idle.created + idle.started + idle.stopped, 0, "{idle:?}");

    let claim = fleet.claim(&PoolId::new("web").unwrap()).unwrap();
    assert_eq!(claim.source, ClaimSource::Warm);
    assert_eq!(claim.instance.name.as_str(), "web-0", "the oldest warm instance");
    assert_eq!(claim.instance.state, VmState::Running);
    let engine_state = fleet.engine().status(&VmName::new("web-0").unwrap()).unwrap();
    assert_eq!(engine_state.state, VmState::Running);

    let refill = fleet.pass();
    assert_eq!(refill.created, 1, "{refill:?}");
    let warm =
        fleet.instances(None).iter().filter(|i| !i.claimed && i.state == VmState::Paused).count();
    assert_eq!(warm, 3, "the warm set is back to 3: {:?}", states(&fleet));
    // The claimed instance is left alone by later passes.
    fleet.pass();
    assert!(states(&fleet).contains(&("web-0".into(), VmState::Running, true)));
}

#[test]
fn a_dead_instance_is_replaced_within_one_pass() {
    let (fleet, _) = fleet(Quotas::default());
    add(&fleet, "svc", want(2, 0, 0));
    fleet.pass();
    fleet.engine().crash(&VmName::new("svc-0").unwrap(), "qemu killed").unwrap();
    let report = fleet.pass();
    assert_eq!((report.stopped, report.created), (1, 1), "{report:?}");
    let running: Vec<_> = states(&fleet)
        .into_iter()
        .filter(|(_, s, _)| *s == VmState::Running)
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(running, ["svc-1", "svc-2"]);
    assert!(
        fleet.engine().status(&VmName::new("svc-0").unwrap()).is_err(),
        "the dead VM's record is gone"
    );
}

#[test]
fn a_quota_refusal_names_the_quota_and_leaves_nothing_behind() {
    let (fleet, _) = fleet(Quotas { max_memory_mib: Some(600), ..Quotas::default() });
    add(&fleet, "big", want(0, 3, 0));
    let report = fleet.pass();
    assert_eq!(report.created, 2, "256 MiB each fits twice in 600: {report:?}");
    assert_eq!(report.errors.len(), 1, "{report:?}");
    let (code, message) = &report.errors[0];
    assert_eq!(code, "E_QUOTA_EXCEEDED");
    assert!(
        message.contains("max_memory_mib")
            && message.contains("limit 600")
            && message.contains("in use 512"),
        "{message}"
    );
    // Exactly the two instances exist, in the fleet and in the engine.
    assert_eq!(fleet.instances(None).len(), 2);
    assert_eq!(fleet.engine().list().unwrap().len(), 2);
    // Sleeping instances hold no memory, so they fit.
    fleet.scale(&PoolId::new("big").unwrap(), want(0, 2, 2), None).unwrap();
    let report = fleet.pass();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(fleet.instances(None).len(), 4);
}

#[test]
fn scale_down_removes_the_newest_and_defers_young_instances() {
    let (fleet, clock) = fleet(Quotas::default());
    let id = PoolId::new("api").unwrap();
    fleet
        .add_pool(pool(
            "api",
            want(3, 0, 0),
            Policy {
                idle_sleep_s: None,
                min_running_s: 600,
                cold_boot: false,
                ..Policy::default()
            },
        ))
        .unwrap();
    fleet.pass();
    fleet.scale(&id, want(1, 0, 0), None).unwrap();
    let early = fleet.pass();
    assert_eq!(early.stopped, 0);
    assert_eq!(early.deferred.len(), 2, "{early:?}");
    assert!(early.deferred[0].why.contains("min_running_s"), "{early:?}");
    clock.advance(Duration::from_secs(601));
    let late = fleet.pass();
    assert_eq!(late.stopped, 2, "{late:?}");
    assert_eq!(states(&fleet), [("api-0".into(), VmState::Running, false)]);
}

#[test]
fn scale_up_prefers_booted_instances_and_sleep_wake_round_trips() {
    let (fleet, _) = fleet(Quotas::default());
    let id = PoolId::new("mix").unwrap();
    add(&fleet, "mix", want(0, 1, 1));
    let first = fleet.pass();
    assert_eq!(
        (first.created, first.slept, first.warmed),
        (2, 0, 0),
        "created straight into their states: {first:?}"
    );
    let by_state: Vec<_> = states(&fleet).into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(by_state, [VmState::Paused, VmState::Sleeping]);
    // One running wanted: the warm one is resumed rather than a new one booted.
    fleet.scale(&id, want(1, 1, 1), None).unwrap();
    let up = fleet.pass();
    assert_eq!((up.started, up.created), (1, 1), "{up:?}");
    // A claim with no warm instance left wakes the sleeping one.
    fleet.scale(&id, want(0, 0, 1), None).unwrap();
    fleet.pass();
    let claim = fleet.claim(&id).unwrap();
    assert_eq!(claim.source, ClaimSource::Sleeping, "{claim:?}");
    assert_eq!(claim.instance.state, VmState::Running);
}

#[test]
fn a_converged_fleet_plans_nothing() {
    let (fleet, clock) = fleet(Quotas::default());
    for (i, d) in [(0, want(2, 2, 1)), (1, want(0, 4, 0))] {
        add(&fleet, &format!("p{i}"), d);
    }
    fleet.pass();
    let pools: Vec<Pool> = fleet.pools();
    let instances: Vec<_> = fleet.instances(None);
    let plan = reconcile::plan(&pools, &instances, hangar_core::clock::Clock::now(&*clock));
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn every_saved_registry_names_the_vms_the_fleet_made_so_a_restart_never_creates_twice() {
    let (fleet, clock, engine) = fleet_with_engine(Quotas::default());
    let id = PoolId::new("app").unwrap();
    add(&fleet, "app", want(0, 2, 0));
    // Every registry the fleet hands to its sink, with the VMs the engine had at that moment.
    let saved = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sink, probe) = (saved.clone(), engine.clone());
    fleet.persist_with(move |r| {
        let vms: Vec<String> = probe.list().unwrap().iter().map(|v| v.name.to_string()).collect();
        sink.lock().unwrap().push((r.clone(), vms));
    });
    fleet.pass();
    let saved = saved.lock().unwrap().clone();
    assert!(saved.len() > 2, "{saved:?}");
    for (registry, vms) in &saved {
        let owned: Vec<String> = registry
            .instances
            .iter()
            .map(|i| i.name.to_string())
            .chain(registry.retired.iter().map(|r| r.to_string()))
            .collect();
        for vm in vms {
            assert!(
                owned.contains(vm),
                "{vm} exists but the saved registry does not own it: {registry:?}"
            );
        }
    }
    // The save that reserves app-1 precedes its VM. A process that dies just after it (its
    // engine step carried on, or not) comes back knowing app-1: nothing is created twice.
    let (reserved, vms) = saved
        .iter()
        .find(|(r, _)| r.instances.iter().any(|i| i.name.as_str() == "app-1"))
        .unwrap()
        .clone();
    assert!(!vms.contains(&"app-1".to_string()), "{vms:?}");
    let app1 = reserved.instances.iter().find(|i| i.name.as_str() == "app-1").unwrap();
    assert_eq!(app1.state, VmState::Starting);
    drop(fleet); // the process dies; the engine's VMs live on
    let restored = Fleet::restore(engine.clone(), clock.clone(), reserved);
    let report = restored.pass();
    assert_eq!(report.created, 0, "{report:?}");
    let names: Vec<_> =
        restored.instances(Some(&id)).iter().map(|i| (i.name.to_string(), i.state)).collect();
    assert_eq!(
        names,
        [("app-0".to_string(), VmState::Paused), ("app-1".to_string(), VmState::Paused)]
    );
    // Had the process died before app-1's VM existed, the instance is dropped and made anew.
    restored.observe().unwrap();
    engine
        .stop(
            &VmName::new("app-1").unwrap(),
            hangar_core::contracts::StopMode::Force,
            &hangar_core::cancel::CancelToken::new(),
        )
        .unwrap();
    engine.undefine(&VmName::new("app-1").unwrap()).unwrap();
    let report = restored.pass();
    assert_eq!(report.created, 1, "{report:?}");
    // The registry round-trips through JSON (what the store keeps).
    let json = serde_json::to_string(&restored.registry()).unwrap();
    let back: hangar_fleet::Registry = serde_json::from_str(&json).unwrap();
    assert_eq!(back, restored.registry());
}

#[test]
fn a_vm_the_fleet_did_not_make_is_never_touched_whatever_its_name() {
    let (fleet, clock, engine) = fleet_with_engine(Quotas::default());
    let c = hangar_core::cancel::CancelToken::new();
    // Plain VMs named like instances of pool web, one of them with the first name it would use.
    for n in ["web-0", "web-7"] {
        let mut spec = template();
        spec.name = VmName::new(n).unwrap();
        spec.machine.memory_mib = 128;
        engine.define(&spec).unwrap();
        engine.start(&VmName::new(n).unwrap(), &c).unwrap();
    }
    let id = PoolId::new("web").unwrap();
    add(&fleet, "web", want(1, 1, 0));
    for _ in 0..3 {
        let report = fleet.pass();
        assert!(report.errors.is_empty(), "{report:?}");
        clock.advance(Duration::from_secs(60));
    }
    let names: Vec<_> = fleet.instances(Some(&id)).iter().map(|i| i.name.to_string()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    for n in ["web-0", "web-7"] {
        let vm = VmName::new(n).unwrap();
        assert_eq!(engine.status(&vm).unwrap().state, VmState::Running, "{n}");
        let moves = engine.history().iter().filter(|t| t.vm == vm).count();
        assert_eq!(moves, 3, "{n} saw no transition but the user's define and start");
    }
    // Removing the pool removes its instances only.
    fleet.remove_pool(&id).unwrap();
    let left: Vec<_> = engine.list().unwrap().iter().map(|v| v.name.to_string()).collect();
    assert_eq!(left, ["web-0", "web-7"]);
}

#[test]
fn a_fleet_vm_whose_pool_is_gone_is_removed_by_the_next_pass_even_after_a_crash() {
    let (fleet, clock, engine) = fleet_with_engine(Quotas::default());
    let id = PoolId::new("web").unwrap();
    add(&fleet, "web", want(0, 2, 0));
    fleet.pass();
    // What `pool rm` saves before it touches anything: the pool gone, its VMs retired.
    let saved = saved_registries(&fleet);
    let registry = {
        // Hold the engine's VMs as they are: the process "dies" right after the first save.
        let mut r = fleet.registry();
        r.retired = r.instances.drain(..).map(|i| i.name).collect();
        r.pools.clear();
        r.bases.clear();
        r
    };
    fleet.remove_pool(&id).unwrap();
    let first = saved.lock().unwrap()[0].clone();
    assert!(first.pools.is_empty() && first.instances.is_empty());
    assert_eq!(first.retired.len(), 2, "{first:?}");
    // Put the VMs back as they were at that save, then restart from it.
    let c = hangar_core::cancel::CancelToken::new();
    for n in &registry.retired {
        let mut spec = template();
        spec.name = n.clone();
        spec.tenant = Some(TenantId::new("acme").unwrap());
        spec.pool = Some(id.clone());
        engine.define(&spec).unwrap();
        engine.start(n, &c).unwrap();
    }
    let restored = Fleet::restore(engine.clone(), clock, registry);
    let report = restored.pass();
    assert_eq!(report.stopped, 2, "{report:?}");
    assert!(report.steps.iter().all(|s| s.action == "discard" && s.result == "ok"), "{report:?}");
    assert!(engine.list().unwrap().is_empty());
    assert!(restored.registry().retired.is_empty());
}

#[test]
fn pool_ids_too_long_for_their_derived_names_are_refused() {
    let (fleet, _) = fleet(Quotas::default());
    let long = "p".repeat(hangar_fleet::MAX_POOL_ID_LEN + 1);
    let e = fleet.add_pool(pool(&long, want(0, 1, 0), Policy::default())).unwrap_err();
    assert_eq!(hangar_core::error::Coded::code(&e), hangar_core::error::ErrorCode::InvalidName);
    let ok = "p".repeat(hangar_fleet::MAX_POOL_ID_LEN);
    add(&fleet, &ok, want(1, 0, 1));
    let report = fleet.pass();
    assert!(report.errors.is_empty(), "{report:?}");
}

#[test]
fn later_instances_are_cloned_from_the_base_snapshot_until_the_template_changes() {
    let (fleet, _, engine) = fleet_with_engine(Quotas::default());
    let id = PoolId::new("web").unwrap();
    add(&fleet, "web", want(0, 3, 0));
    let report = fleet.pass();
    assert_eq!((report.created, report.cloned), (3, 2), "{report:?}");
    let base = fleet.base(&id).expect("the first boot left a base snapshot");
    assert_eq!(base.template, template());
    let snapshots = engine.list_snapshots(None).unwrap();
    assert_eq!(
        snapshots.iter().map(|s| s.id.to_string()).collect::<Vec<_>>(),
        ["web-base"],
        "one base, taken from the first instance"
    );
    assert_eq!(snapshots[0].vm.as_str(), "web-0");
    // A claim with nothing ready is a clone too.
    fleet.scale(&id, want(0, 0, 0), None).unwrap();
    fleet.pass();
    let claim = fleet.claim(&id).unwrap();
    assert_eq!(claim.source, ClaimSource::Cloned);
    // A new template makes the base stale: the next creation boots and retakes it.
    let mut bigger = template();
    bigger.machine.memory_mib = 512;
    fleet.set_template(&id, bigger.clone()).unwrap();
    fleet.scale(&id, want(1, 0, 0), None).unwrap();
    let report = fleet.pass();
    assert_eq!((report.created, report.cloned), (1, 0), "{report:?}");
    assert_eq!(fleet.base(&id).unwrap().template, bigger);
    // Removing the pool removes its base snapshot with its instances.
    fleet.remove_pool(&id).unwrap();
    assert!(engine.list_snapshots(None).unwrap().is_empty());
    assert!(engine.list().unwrap().is_empty());
}

#[test]
fn cold_boot_pools_never_take_a_base() {
    let (fleet, _, engine) = fleet_with_engine(Quotas::default());
    let policy = Policy { cold_boot: true, ..Policy::default() };
    fleet.add_pool(pool("web", want(2, 0, 0), policy)).unwrap();
    let report = fleet.pass();
    assert_eq!((report.created, report.cloned), (2, 0), "{report:?}");
    assert!(engine.list_snapshots(None).unwrap().is_empty());
}

#[test]
fn a_claim_does_not_wait_for_a_pass_that_is_booting() {
    let clock = Arc::new(ManualClock::default());
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    // Every start and restore announces itself and waits for a release while armed: a way
    // to hold a pass in the middle of a boot.
    let engine =
        Arc::new(FakeEngine::new(FakeConfig { clock: clock.clone(), ..FakeConfig::default() }));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (gate, entered_tx, release_rx) =
        (armed.clone(), std::sync::Mutex::new(entered_tx), std::sync::Mutex::new(release_rx));
    engine.on_boot(move || {
        if gate.load(std::sync::atomic::Ordering::SeqCst) {
            entered_tx.lock().unwrap().send(()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    });
    let fleet = Fleet::new(engine.clone(), clock);
    fleet.put_tenant(Tenant { id: TenantId::new("acme").unwrap(), quotas: Quotas::default() });
    let id = PoolId::new("web").unwrap();
    add(&fleet, "web", want(0, 1, 0));
    assert_eq!(fleet.pass().created, 1);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    fleet.scale(&id, want(0, 3, 0), None).unwrap();
    std::thread::scope(|s| {
        let pass = s.spawn(|| fleet.pass());
        // The pass is now inside the engine, creating web-1.
        entered.recv().unwrap();
        let claim = fleet.claim(&id).expect("a claim while the pass is booting");
        assert_eq!(
            (claim.source, claim.instance.name.as_str(), claim.instance.state),
            (ClaimSource::Warm, "web-0", VmState::Running)
        );
        // Let the pass's two creations through.
        armed.store(false, std::sync::atomic::Ordering::SeqCst);
        release.send(()).unwrap();
        let report = pass.join().unwrap();
        assert_eq!((report.created, report.errors.len()), (2, 0), "{report:?}");
    });
    // The claimed instance is left alone; the next pass refills the warm set to three.
    let refill = fleet.pass();
    assert_eq!(refill.created, 1, "{refill:?}");
    let warm = fleet
        .instances(Some(&id))
        .iter()
        .filter(|i| !i.claimed && i.state == VmState::Paused)
        .count();
    assert_eq!(warm, 3);
}

#[test]
fn a_claim_is_persisted_before_its_engine_step() {
    let (fleet, _) = fleet(Quotas::default());
    let id = PoolId::new("web").unwrap();
    add(&fleet, "web", want(0, 1, 0));
    fleet.pass();
    let saved = saved_registries(&fleet);
    fleet.claim(&id).unwrap();
    let saved = saved.lock().unwrap();
    let web0 = |r: &hangar_fleet::Registry| {
        let i = &r.instances[0];
        (i.claimed, i.state)
    };
    // First the reservation (claimed, still paused), then the outcome (claimed, running).
    assert_eq!(
        saved.iter().map(web0).collect::<Vec<_>>(),
        [(true, VmState::Paused), (true, VmState::Running)]
    );
}

#[test]
fn quotas_count_a_tenants_own_vms_next_to_its_pools_and_reserve_room_atomically() {
    use hangar_fleet::{Admit, TenantVm, Usage};
    let quotas = Quotas { max_vcpus: Some(2), max_memory_mib: Some(1024), ..Quotas::default() };
    let (fleet, _) = fleet(quotas);
    let fleet = Arc::new(fleet);
    let acme = TenantId::new("acme").unwrap();
    // One running VM of the tenant's own, outside any pool: 1 vCPU, 256 MiB.
    let own = Arc::new(std::sync::Mutex::new(vec![TenantVm {
        name: VmName::new("acme--db").unwrap(),
        tenant: acme.clone(),
        usage: Usage::of_vm(VmState::Running, 1, 256, 0),
    }]));
    let read = own.clone();
    fleet.count_tenant_vms(Box::new(move || Ok(read.lock().unwrap().clone())));
    assert_eq!(fleet.usage(&acme).unwrap().vcpus, 1);

    let mut big = template();
    big.name = VmName::new("acme--big").unwrap();
    big.tenant = Some(acme.clone());
    big.machine.vcpus = 64;
    let e = fleet.admit(&big, Admit::Define).err().unwrap();
    assert_eq!(hangar_core::error::Coded::code(&e), hangar_core::error::ErrorCode::QuotaExceeded);
    assert!(e.to_string().contains("max_vcpus"), "{e}");

    let mut small = template();
    small.name = VmName::new("acme--small").unwrap();
    small.tenant = Some(acme.clone());
    // While one start holds the last vCPU, a second one is refused.
    let held = fleet.admit(&small, Admit::Run).unwrap();
    assert_eq!(fleet.usage(&acme).unwrap().vcpus, 2);
    let mut other = small.clone();
    other.name = VmName::new("acme--other").unwrap();
    assert!(fleet.admit(&other, Admit::Run).is_err());
    // ... and so is a pool instance: pools and own VMs share one quota.
    add(&fleet, "web", want(1, 0, 0));
    let report = fleet.pass();
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(report.errors[0].0, "E_QUOTA_EXCEEDED");
    drop(held);
    assert_eq!(fleet.usage(&acme).unwrap().vcpus, 1);
    // A VM of an unknown tenant is refused; one without a tenant is not counted.
    let mut stray = template();
    stray.tenant = Some(TenantId::new("nobody").unwrap());
    let e = fleet.admit(&stray, Admit::Define).err().unwrap();
    assert_eq!(hangar_core::error::Coded::code(&e), hangar_core::error::ErrorCode::TenantNotFound);
    assert!(fleet.admit(&template(), Admit::Run).is_ok());
}

#[test]
fn spares_wait_for_the_base_are_claimed_before_sleeping_ones_and_refilled() {
    let (fleet, _, engine) = fleet_with_engine(Quotas::default());
    let id = PoolId::new("sp").unwrap();
    add(&fleet, "sp", Desired { spare: 2, sleeping: 1, ..Desired::default() });
    let first = fleet.pass();
    assert_eq!((first.created, first.errors.len()), (3, 0), "{first:?}");
    // The first spare booted to make the base; then every spare waits for it.
    let base = fleet.base(&id).expect("a base was taken");
    let spares: Vec<_> =
        fleet.instances(None).into_iter().filter(|i| i.state == VmState::Spare).collect();
    assert_eq!(spares.len(), 2, "{:?}", states(&fleet));
    for s in &spares {
        assert_eq!(engine.status(&s.name).unwrap().state, VmState::Spare);
    }
    assert!(fleet.pass().created == 0, "converged");
    // Warm (none) → spare → sleeping: the oldest spare, running now.
    let claim = fleet.claim(&id).unwrap();
    assert_eq!(claim.source, ClaimSource::Spare, "{claim:?}");
    assert_eq!(claim.instance.state, VmState::Running);
    assert_eq!(claim.instance.name, spares[0].name);
    assert_eq!(engine.status(&claim.instance.name).unwrap().state, VmState::Running);
    let refill = fleet.pass();
    assert_eq!(refill.created, 1, "the spare taken is replaced: {refill:?}");
    // The base is unchanged (the spares wait for it) and survives the claims.
    assert_eq!(fleet.base(&id), Some(base));
    // Scaled down: spares go, newest first.
    fleet.scale(&id, Desired { sleeping: 1, ..Desired::default() }, None).unwrap();
    let down = fleet.pass();
    assert_eq!(down.stopped, 2, "{down:?}");
    assert!(fleet.instances(None).iter().all(|i| i.state != VmState::Spare));
}

#[test]
fn a_spare_counts_its_real_cost_against_quotas_and_its_guest_once_claimed() {
    let spare_cost = u64::from(hangar_fleet::quota::SPARE_MEMORY_MIB);
    let memory = u64::from(template().machine.memory_mib);
    assert!(memory > spare_cost, "the template is bigger than a spare");
    // Room for two spares' memory but not for one running guest more than the base's boot.
    let (fleet, _) = fleet(Quotas { max_memory_mib: Some(memory), ..Quotas::default() });
    let id = PoolId::new("q").unwrap();
    add(&fleet, "q", Desired { spare: 2, ..Desired::default() });
    let pass = fleet.pass();
    assert_eq!(pass.created, 2, "{pass:?}");
    let usage = fleet.usage(&TenantId::new("acme").unwrap()).unwrap();
    assert_eq!((usage.memory_mib, usage.vcpus, usage.running), (2 * spare_cost, 0, 0));
    // A claim needs the rest of a guest's memory: over the quota, refused, nothing changes.
    let refused = fleet.claim(&id).unwrap_err();
    let code = hangar_core::error::Coded::code(&refused);
    assert_eq!(code, hangar_core::error::ErrorCode::QuotaExceeded, "{refused}");
    let spares = fleet.instances(None).iter().filter(|i| i.state == VmState::Spare).count();
    assert_eq!(spares, 2, "{:?}", states(&fleet));
}

#[test]
fn a_cold_boot_pool_has_no_spares_and_says_why() {
    let plan = reconcile::plan(
        &[pool(
            "cold",
            Desired { spare: 2, ..Desired::default() },
            Policy { cold_boot: true, ..Policy::default() },
        )],
        &[],
        hangar_core::clock::Timestamp(0),
    );
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert!(plan.deferred.iter().any(|d| d.why.contains("cold_boot")), "{plan:?}");
}

#[test]
fn spares_of_an_old_template_are_not_handed_out_and_go_when_the_base_is_retaken() {
    let (fleet, _) = fleet(Quotas::default());
    let id = PoolId::new("tpl").unwrap();
    add(&fleet, "tpl", Desired { spare: 1, ..Desired::default() });
    fleet.pass();
    let old = fleet.instances(None).into_iter().find(|i| i.state == VmState::Spare).unwrap();
    let mut newer = template();
    newer.machine.memory_mib += 64;
    fleet.set_template(&id, newer).unwrap();
    // Not the old spare: a new instance, booted from the new template (and its base retaken,
    // which removes the old spare).
    let claim = fleet.claim(&id).unwrap();
    assert_eq!(claim.source, ClaimSource::Created, "{claim:?}");
    assert_ne!(claim.instance.name, old.name);
    assert_eq!(claim.instance.memory_mib, template().machine.memory_mib + 64);
    assert!(fleet.instances(None).iter().all(|i| i.id != old.id), "{:?}", states(&fleet));
    // The next pass makes a spare of the new base, and claims take it again.
    fleet.pass();
    assert_eq!(fleet.claim(&id).unwrap().source, ClaimSource::Spare);
}

#[test]
fn running_grows_a_tenants_use_by_what_the_state_it_leaves_did_not_hold() {
    use hangar_fleet::Usage;
    let grow = |from| Usage::growth(from, VmState::Running, 2, 256, 100);
    let run = Usage { running: 1, ..Usage::default() };
    // Warm: the process is held already; only the running count grows.
    assert_eq!(grow(VmState::Paused), run);
    // Sleeping: vCPUs and memory come back (the disk its memory took is freed: not a growth).
    assert_eq!(grow(VmState::Sleeping), Usage { vcpus: 2, memory_mib: 256, ..run });
    // A spare holds its measured cost already.
    let spare = u64::from(hangar_fleet::quota::SPARE_MEMORY_MIB);
    assert_eq!(grow(VmState::Spare), Usage { vcpus: 2, memory_mib: 256 - spare, ..run });
    // Nothing grows by staying where it is.
    assert_eq!(Usage::growth(VmState::Running, VmState::Running, 2, 256, 100), Usage::default());
}

#[test]
fn the_gateways_instances_wake_again_and_rest_by_the_idle_policy() {
    use hangar_fleet::{Activity, GATEWAY_HOLDER};
    let (fleet, clock) = fleet(Quotas::default());
    let policy = Policy {
        idle_pause_after_s: Some(5),
        idle_sleep_after_s: Some(30),
        idle_stop_after_s: Some(600),
        ..Policy::default()
    };
    let id = PoolId::new("gw").unwrap();
    fleet.add_pool(pool("gw", want(0, 0, 1), policy)).unwrap();
    fleet.pass();
    // Scale to zero: the gateway's claim takes the sleeping instance, and the pool refills.
    let claim = fleet.claim_held(&id).unwrap();
    assert_eq!(claim.source, ClaimSource::Sleeping);
    let held = claim.instance.id.clone();
    assert_eq!(claim.instance.holder.as_deref(), Some(GATEWAY_HOLDER));
    let pass = fleet.pass();
    assert_eq!(pass.created, 1, "the sleeping set is refilled: {pass:?}");
    let find =
        |f: &Fleet<FakeEngine>| f.instances(None).into_iter().find(|i| i.id == held).unwrap();
    // An open connection keeps it running however long it lasts.
    let now = hangar_core::clock::Clock::now(&*clock);
    fleet.set_activity(
        &held,
        Activity { open: 1, connections: 1, last: now, ..Activity::default() },
    );
    clock.advance(Duration::from_secs(60));
    fleet.pass();
    assert_eq!(find(&fleet).state, VmState::Running);
    // Closed and idle past idle_pause_after_s: paused; past idle_sleep_after_s: asleep.
    let now = hangar_core::clock::Clock::now(&*clock);
    fleet.set_activity(
        &held,
        Activity { open: 0, connections: 1, last: now, ..Activity::default() },
    );
    clock.advance(Duration::from_secs(6));
    fleet.pass();
    assert_eq!(find(&fleet).state, VmState::Paused);
    clock.advance(Duration::from_secs(31));
    fleet.pass();
    let asleep = find(&fleet);
    assert_eq!((asleep.state, asleep.claimed), (VmState::Sleeping, true));
    // The gateway wakes its own instance again; the pool's sleeping one stays where it is.
    let woken = fleet.wake_held(&held, GATEWAY_HOLDER).unwrap();
    assert_eq!(woken.state, VmState::Running);
    let unclaimed_sleeping =
        fleet.instances(None).iter().filter(|i| !i.claimed && i.state == VmState::Sleeping).count();
    assert_eq!(unclaimed_sleeping, 1, "{:?}", states(&fleet));
    // Someone else's claim is not the gateway's to wake.
    let other = fleet.claim(&id).unwrap().instance.id;
    assert!(fleet.wake_held(&other, GATEWAY_HOLDER).is_err());
    // Unused past idle_stop_after_s, it goes.
    clock.advance(Duration::from_secs(601));
    fleet.pass();
    assert!(fleet.instances(None).iter().all(|i| i.id != held), "{:?}", states(&fleet));
}

#[test]
fn the_gateways_claim_is_saved_with_its_holder_before_the_engine_wakes_it() {
    use hangar_fleet::GATEWAY_HOLDER;
    let (fleet, clock, engine) = fleet_with_engine(Quotas::default());
    let id = PoolId::new("gw").unwrap();
    fleet.add_pool(pool("gw", want(0, 0, 1), Policy::default())).unwrap();
    fleet.pass();
    let saved = saved_registries(&fleet);
    // What a daemon killed during the wake would restart from: the last registry saved when
    // the engine begins the restore.
    let at_wake = Arc::new(std::sync::Mutex::new(None));
    let (registries, seen) = (saved.clone(), at_wake.clone());
    engine.on_boot(move || *seen.lock().unwrap() = registries.lock().unwrap().last().cloned());
    let claim = fleet.claim_held(&id).unwrap();
    let registry = at_wake.lock().unwrap().clone().expect("a registry saved before the wake");
    let i = registry.instances.iter().find(|i| i.id == claim.instance.id).unwrap();
    assert_eq!((i.claimed, i.holder.as_deref()), (true, Some(GATEWAY_HOLDER)), "{i:?}");
    // Restarted from there: the instance is the gateway's, counted once; the pool makes one
    // replacement for its sleeping set and nothing else.
    let restarted = Fleet::restore(engine.clone(), clock.clone(), registry);
    restarted.pass();
    let instances = restarted.instances(None);
    let held = instances.iter().filter(|i| i.holder.as_deref() == Some(GATEWAY_HOLDER)).count();
    let resting = instances.iter().filter(|i| !i.claimed && i.state == VmState::Sleeping).count();
    assert_eq!((instances.len(), held, resting), (2, 1, 1), "{:?}", states(&restarted));
}

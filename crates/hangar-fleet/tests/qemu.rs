//! The fleet on real QEMU: a warm pool converges to paused guests, a claim hands one out
//! running, a quota refusal leaves no process, runtime dir or record behind, and a guest whose
//! QEMU is killed is replaced within one pass. Skipped, with the reason, without QEMU or the
//! built image (scripts/setup installs both).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::clock::SystemClock;
use hangar_core::contracts::{Lifecycle, SnapshotLayout, Snapshots};
use hangar_core::ids::{PoolId, TenantId};
use hangar_core::lifecycle::VmState;
use hangar_fleet::{ClaimSource, Desired, Fleet, Policy, Pool, Quotas, Tenant};
use hangar_qemu::{EngineOptions, QemuEngine};

fn runtime_dirs(home: &Path) -> usize {
    std::fs::read_dir(home.join("vms")).map(|d| d.count()).unwrap_or(0)
}

fn warm(fleet: &Fleet<QemuEngine>) -> Vec<String> {
    fleet
        .instances(None)
        .iter()
        .filter(|i| !i.claimed && i.state == VmState::Paused)
        .map(|i| i.name.to_string())
        .collect()
}

#[test]
fn warm_pool_claim_quota_and_replacement_on_real_qemu() {
    if hangar_testkit::skip("warm_pool_claim_quota_and_replacement_on_real_qemu") {
        return;
    }
    let home = hangar_testkit::private_home("hgf-");
    // Ephemeral: the engine stops its guests when dropped, also when an assertion fails.
    let engine = QemuEngine::open(
        home.path(),
        EngineOptions {
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: None,
            ephemeral: true,
        },
    )
    .unwrap();
    let fleet = Fleet::new(Arc::new(engine), Arc::new(SystemClock));
    let tenant = TenantId::new("acme").unwrap();
    // Room for exactly three 128 MiB guests holding memory.
    fleet.put_tenant(Tenant {
        id: tenant.clone(),
        quotas: Quotas { max_memory_mib: Some(384), ..Quotas::default() },
    });
    let template = hangar_testkit::toml_spec("schema_version = 1\nname = \"t\"\n[machine]\nmemory_mib = 128\n[boot]\nimage = \"minimal\"\n");
    let pool = PoolId::new("web").unwrap();
    fleet
        .add_pool(Pool {
            id: pool.clone(),
            tenant,
            template,
            desired: Desired { running: 0, warm: 3, sleeping: 0, spare: 0 },
            policy: Policy::default(),
        })
        .unwrap();

    let first = fleet.pass();
    assert_eq!((first.created, first.errors.len()), (3, 0), "{first:?}");
    assert_eq!(warm(&fleet), ["web-0", "web-1", "web-2"]);
    for n in warm(&fleet) {
        let rec = fleet.engine().record(&n.parse().unwrap()).unwrap();
        assert_eq!(rec.state, VmState::Paused, "{n}");
        assert!(rec.process.is_some(), "{n} holds a QEMU");
        // The base was taken by putting web-0 to sleep (its RAM file became the base's, no
        // copy), and web-0 runs on as a clone of it: every instance maps the base's RAM.
        let pid = rec.process.unwrap().pid;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(
            maps.lines().any(|l| l.contains("/web-base@web-0.ram")),
            "{n} does not map the base's RAM: {maps}"
        );
    }

    let claim = fleet.claim(&pool).unwrap();
    assert_eq!(claim.source, ClaimSource::Warm);
    let claimed = claim.instance.name.clone();
    assert_eq!(fleet.engine().status(&claimed).unwrap().state, VmState::Running);

    // Refilling would need a fourth guest's memory: refused, and nothing is left behind.
    let refused = fleet.pass();
    assert_eq!(refused.created, 0, "{refused:?}");
    assert_eq!(refused.errors.len(), 1, "{refused:?}");
    assert_eq!(refused.errors[0].0, "E_QUOTA_EXCEEDED", "{refused:?}");
    assert!(refused.errors[0].1.contains("max_memory_mib"), "{refused:?}");
    assert_eq!(fleet.engine().list().unwrap().len(), 3);
    assert_eq!(runtime_dirs(home.path()), 3, "no runtime dir for the refused guest");

    // Giving the claimed guest back frees its memory; the warm set refills (after the
    // backoff the refusal started, which `scale` clears).
    fleet.release(&claim.instance.id).unwrap();
    fleet.scale(&pool, Desired { running: 0, warm: 3, sleeping: 0, spare: 0 }, None).unwrap();
    let refill = fleet.pass();
    assert_eq!((refill.created, refill.errors.len()), (1, 0), "{refill:?}");
    assert_eq!(warm(&fleet).len(), 3);

    // Kill one guest's QEMU outright: the next pass removes it and boots a replacement.
    let victim = warm(&fleet)[0].clone();
    let qemu = fleet.engine().record(&victim.parse().unwrap()).unwrap().process.unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(qemu.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(hangar_qemu::process::wait_exit(qemu, Duration::from_secs(10)));
    let healed = fleet.pass();
    assert_eq!((healed.stopped, healed.created), (1, 1), "{healed:?}");
    let now_warm = warm(&fleet);
    assert_eq!(now_warm.len(), 3, "{now_warm:?}");
    assert!(!now_warm.contains(&victim), "{victim} was replaced: {now_warm:?}");
    assert_eq!(runtime_dirs(home.path()), 3, "the dead guest's runtime dir is gone");

    // An instance made for the sleeping set is cloned with RAM of its own, so its sleep is a
    // mapped snapshot (device state + its RAM file), and a claim wakes it.
    fleet.scale(&pool, Desired { running: 0, warm: 0, sleeping: 0, spare: 0 }, None).unwrap();
    let emptied = fleet.pass();
    assert!(emptied.errors.is_empty(), "{emptied:?}");
    fleet.scale(&pool, Desired { running: 0, warm: 0, sleeping: 1, spare: 0 }, None).unwrap();
    let slept = fleet.pass();
    assert_eq!((slept.created, slept.errors.len()), (1, 0), "{slept:?}");
    let snapshots = fleet.engine().list_snapshots(None).unwrap();
    let sleep = snapshots.iter().find(|s| s.id.as_str().ends_with("-sleep"));
    let sleep = sleep.unwrap_or_else(|| panic!("no sleep snapshot in {snapshots:?}"));
    assert_eq!(sleep.layout, SnapshotLayout::Mapped, "{sleep:?}");
    let woken = fleet.claim(&pool).unwrap();
    assert_eq!(woken.source, ClaimSource::Sleeping);
    let status = fleet.engine().status(&woken.instance.name).unwrap();
    assert_eq!(status.state, VmState::Running);

    // Spares: QEMUs waiting for the base, no guest; a claim takes one before anything that
    // sleeps, and its guest runs (its agent answers).
    fleet.release(&woken.instance.id).unwrap();
    fleet.scale(&pool, Desired { running: 0, warm: 0, sleeping: 1, spare: 1 }, None).unwrap();
    let spared = fleet.pass();
    assert_eq!((spared.created, spared.errors.len()), (2, 0), "{spared:?}");
    let spare = fleet.instances(None).into_iter().find(|i| i.state == VmState::Spare);
    let spare = spare.unwrap_or_else(|| panic!("no spare in {:?}", fleet.instances(None)));
    let rec = fleet.engine().record(&spare.name).unwrap();
    assert_eq!(rec.state, VmState::Spare);
    assert!(rec.process.is_some(), "a spare holds a QEMU");
    let claim = fleet.claim(&pool).unwrap();
    assert_eq!(claim.source, ClaimSource::Spare, "{claim:?}");
    assert_eq!(claim.instance.name, spare.name);
    let (status, out, _) =
        hangar_testkit::exec_in(fleet.engine(), spare.name.as_str(), &["echo", "alive"], None)
            .unwrap();
    assert_eq!((status, out.as_str()), (hangar_core::contracts::ExitStatus::Code(0), "alive\n"));
}

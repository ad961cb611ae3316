//! The conformance suite against the in-memory fakes: the contract's own check.

use hangar_conformance::{conformance_suite, run, FakeHarness, Outcome, SCENARIOS};
use hangar_core::contracts::Capability;

conformance_suite!(fake_full, hangar_conformance::FakeHarness::default());

conformance_suite!(
    fake_minimal,
    hangar_conformance::FakeHarness::without(&[
        hangar_core::contracts::Capability::Pause,
        hangar_core::contracts::Capability::MemorySnapshots,
        hangar_core::contracts::Capability::DiskSnapshots,
        hangar_core::contracts::Capability::NicHotplug,
        hangar_core::contracts::Capability::Reboot,
        hangar_core::contracts::Capability::GuestAgent,
    ])
);

#[test]
fn at_least_twenty_scenarios_with_unique_ids() {
    assert!(SCENARIOS.len() >= 20);
    let mut ids: Vec<_> = SCENARIOS.iter().map(|s| s.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), SCENARIOS.len());
}

#[test]
fn full_fakes_pass_everything_but_the_capability_refusal_check() {
    let h = FakeHarness::default();
    for s in SCENARIOS {
        let outcome = run(&h, s.id);
        if s.id == "CONF-C-01" {
            assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
        } else {
            assert_eq!(outcome, Outcome::Passed, "{}", s.id);
        }
    }
}

#[test]
fn a_missing_capability_skips_with_a_reason_and_never_passes() {
    let h = FakeHarness::without(&[Capability::MemorySnapshots]);
    match run(&h, "CONF-S-01") {
        Outcome::Skipped(reason) => assert!(reason.contains("MemorySnapshots"), "{reason}"),
        other => panic!("expected a skip, got {other:?}"),
    }
    assert_eq!(run(&h, "CONF-C-01"), Outcome::Passed);
}

#[test]
fn an_engine_the_host_cannot_run_skips_every_scenario() {
    struct NoEngine;
    impl hangar_conformance::Harness for NoEngine {
        fn engine(
            &self, _: hangar_conformance::Knobs,
        ) -> Result<Box<dyn hangar_core::contracts::Engine>, String> {
            Err("qemu-system-x86_64 not found".into())
        }
        fn spec(&self, name: &str) -> hangar_core::spec::VmSpec {
            FakeHarness::default().spec(name)
        }
        fn graceful_timeout(&self) -> std::time::Duration {
            std::time::Duration::from_secs(1)
        }
    }
    for s in SCENARIOS {
        assert_eq!(run(&NoEngine, s.id), Outcome::Skipped("qemu-system-x86_64 not found".into()));
    }
}

//! Property tests: random operation sequences against the fake engine.
//!
//! Whatever the sequence, (1) every transition anyone observes is a legal move of the table,
//! (2) each VM's moves chain (`from` of one is `to` of the previous), (3) the observers, the event
//! stream and the engine's own machines agree on the history, (4) a failed call changes nothing,
//! and (5) `status` always reports the state the history ends in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_conformance::{FakeHarness, Harness};
use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::fake::{FakeConfig, FakeEngine};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent, VmState};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Define(usize, bool),
    Start(usize),
    Stop(usize, bool),
    Pause(usize),
    Resume(usize),
    Reboot(usize),
    Undefine(usize),
    Save(usize, usize, bool),
    Restore(usize, usize),
    DeleteSnapshot(usize),
    Crash(usize),
    GuestPoweroff(usize),
    FailNext,
    IgnoreStops(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let vm = 0..3usize;
    let snap = 0..2usize;
    prop_oneof![
        3 => (vm.clone(), any::<bool>()).prop_map(|(v, b)| Op::Define(v, b)),
        3 => vm.clone().prop_map(Op::Start),
        2 => (vm.clone(), any::<bool>()).prop_map(|(v, f)| Op::Stop(v, f)),
        2 => vm.clone().prop_map(Op::Pause),
        2 => vm.clone().prop_map(Op::Resume),
        1 => vm.clone().prop_map(Op::Reboot),
        2 => vm.clone().prop_map(Op::Undefine),
        2 => (vm.clone(), snap.clone(), any::<bool>()).prop_map(|(v, s, b)| Op::Save(v, s, b)),
        2 => (vm.clone(), snap.clone()).prop_map(|(v, s)| Op::Restore(v, s)),
        1 => snap.prop_map(Op::DeleteSnapshot),
        1 => vm.clone().prop_map(Op::Crash),
        1 => vm.prop_map(Op::GuestPoweroff),
        1 => Just(Op::FailNext),
        1 => any::<bool>().prop_map(Op::IgnoreStops),
    ]
}

#[derive(Default)]
struct Log(Mutex<Vec<TransitionEvent>>);
impl LifecycleObserver for Log {
    fn on_transition(&self, e: &TransitionEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

fn apply(engine: &FakeEngine, op: &Op) -> Result<(), ErrorCode> {
    use hangar_core::Coded;
    let h = FakeHarness::default();
    let vm = |i: usize| VmName::new(format!("vm-{i}")).unwrap();
    let snap = |i: usize| SnapshotId::new(format!("snap-{i}")).unwrap();
    let c = CancelToken::new();
    let r: hangar_core::Result<()> = match op {
        Op::Define(i, big) => {
            let mut spec = h.spec(&format!("vm-{i}"));
            if *big {
                spec.machine.memory_mib = 512;
            }
            engine.define(&spec).map(drop)
        }
        Op::Start(i) => engine.start(&vm(*i), &c).map(drop),
        Op::Stop(i, force) => {
            let mode = if *force {
                StopMode::Force
            } else {
                StopMode::Graceful { timeout: Duration::from_secs(5) }
            };
            engine.stop(&vm(*i), mode, &c).map(drop)
        }
        Op::Pause(i) => engine.pause(&vm(*i)).map(drop),
        Op::Resume(i) => engine.resume(&vm(*i)).map(drop),
        Op::Reboot(i) => engine.reboot(&vm(*i), &c).map(drop),
        Op::Undefine(i) => engine.undefine(&vm(*i)),
        Op::Save(i, s, sleep) => {
            let mode = if *sleep { SaveMode::Sleep } else { SaveMode::KeepPaused };
            engine.save(&vm(*i), &snap(*s), mode, &c).map(drop)
        }
        Op::Restore(i, s) => engine.restore(&vm(*i), &snap(*s), &c).map(drop),
        Op::DeleteSnapshot(s) => engine.delete_snapshot(&snap(*s)),
        Op::Crash(i) => engine.crash(&vm(*i), "proptest").map(drop),
        Op::GuestPoweroff(i) => engine.guest_poweroff(&vm(*i)).map(drop),
        Op::FailNext => {
            engine.fail_call(1, ErrorCode::EngineFailed);
            Ok(())
        }
        Op::IgnoreStops(b) => {
            engine.set_ignore_graceful_stop(*b);
            Ok(())
        }
    };
    r.map_err(|e| e.code())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_respect_the_state_machine(ops in prop::collection::vec(op(), 1..60)) {
        let engine = FakeEngine::new(FakeConfig::default());
        let log = Arc::new(Log::default());
        engine.observe(log.clone());

        for op in &ops {
            let before = log.0.lock().unwrap().len();
            let result = apply(&engine, op);
            let after = log.0.lock().unwrap().len();
            if result.is_err() {
                prop_assert_eq!(before, after, "failed op {:?} made transitions", op);
            }
            prop_assert!(result != Err(ErrorCode::InvalidName));
        }

        engine.clear_faults();
        let observed = log.0.lock().unwrap().clone();
        // (1) + (2): legal, chained moves per VM.
        let mut last: BTreeMap<VmName, VmState> = BTreeMap::new();
        for e in &observed {
            match e.from {
                None => {
                    prop_assert_eq!(e.to, VmState::Defined);
                    if let Some(prev) = last.get(&e.vm) {
                        prop_assert_eq!(*prev, VmState::Deleted, "redefined a live VM");
                    }
                }
                Some(from) => {
                    prop_assert!(from.can_transition_to(e.to), "illegal {:?} -> {:?}", from, e.to);
                    prop_assert_eq!(last.get(&e.vm).copied(), Some(from), "broken chain at {:?}", e);
                }
            }
            last.insert(e.vm.clone(), e.to);
        }
        // (3): observers == the machines' history == the event stream.
        prop_assert_eq!(&observed, &engine.history());
        let mut cursor = EventCursor::after(0);
        let mut streamed = Vec::new();
        loop {
            let page = cursor.next_page(&engine, 100).unwrap();
            prop_assert!(page.gap.is_none());
            if page.events.is_empty() { break; }
            streamed.extend(page.events.into_iter().filter_map(|e| match e.kind {
                EventKind::Transition(t) => Some(t),
                _ => None,
            }));
        }
        prop_assert_eq!(&observed, &streamed);
        // (5): status agrees with the history's last word.
        for (vm, state) in &last {
            match engine.status(vm) {
                Ok(status) => prop_assert_eq!(status.state, *state),
                Err(_) => prop_assert_eq!(*state, VmState::Deleted),
            }
        }
    }

    #[test]
    fn a_small_event_buffer_reports_gaps_instead_of_losing_silently(n in 1usize..40) {
        let engine = FakeEngine::new(FakeConfig { event_capacity: 4, ..FakeConfig::default() });
        let h = FakeHarness::default();
        for i in 0..n {
            engine.define(&h.spec(&format!("vm-{i}"))).unwrap();
        }
        let mut cursor = EventCursor::after(0);
        let page = cursor.next_page(&engine, 100).unwrap();
        let total = n as u64;
        if total > 4 {
            let gap = page.gap.expect("gap");
            prop_assert_eq!((gap.from, gap.to), (1, total - 4));
        } else {
            prop_assert!(page.gap.is_none());
        }
        prop_assert_eq!(page.events.last().map(|e| e.seq), Some(total));
    }
}

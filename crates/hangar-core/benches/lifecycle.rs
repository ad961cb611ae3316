//! Control-plane benchmark: state-machine transitions (the table lookup, the event, the
//! observers). One iteration is a full start → pause → resume → stop cycle: 8 transitions.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use hangar_core::clock::ManualClock;
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{Cause, Observers, StateMachine, VmState};

fn benches(c: &mut Criterion) {
    let mut machine = StateMachine::new(
        VmName::new("bench").unwrap(),
        Arc::new(ManualClock::default()),
        Observers::default(),
        Cause::User,
        None,
    );
    let cycle = [
        VmState::Starting,
        VmState::Running,
        VmState::Pausing,
        VmState::Paused,
        VmState::Resuming,
        VmState::Running,
        VmState::Stopping,
        VmState::Stopped,
    ];
    c.bench_function("lifecycle_cycle_8_transitions", |b| {
        b.iter(|| {
            for to in cycle {
                black_box(machine.transition(to, Cause::User, None).unwrap());
            }
        })
    });
}

criterion_group!(lifecycle_benches, benches);
criterion_main!(lifecycle_benches);

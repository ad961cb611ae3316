//! Lifecycle observers: every transition in order, and a panicking observer harms nothing.

use std::sync::Arc;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent, VmState};

use crate::Ctx;

use VmState::*;

use super::*;

pub(super) fn o01_observers_in_order(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-o01")?;
    ok(ctx.engine.stop(&vm, StopMode::Force, &CancelToken::new()), "stop")?;
    ok(ctx.engine.undefine(&vm), "undefine")?;
    let want = vec![
        (None, Defined),
        (Some(Defined), Starting),
        (Some(Starting), Running),
        (Some(Running), Stopping),
        (Some(Stopping), Stopped),
        (Some(Stopped), Deleted),
    ];
    let got = rec.moves();
    ensure!(got == want, "observer saw {got:?}, expected {want:?}");
    let events = rec.0.lock().unwrap().clone();
    ensure!(events.iter().all(|e| e.vm == vm), "events name the wrong VM");
    ensure!(events.windows(2).all(|w| w[0].at <= w[1].at), "event timestamps go backwards");
    Ok(())
}

pub(super) struct Panicker;
impl LifecycleObserver for Panicker {
    fn on_transition(&self, _: &TransitionEvent) {
        panic!("conformance: this observer always panics");
    }
}

pub(super) fn o02_panicking_observer(ctx: &Ctx<'_>) -> Check {
    ctx.engine.observe(Arc::new(Panicker));
    let rec = recorder(ctx);
    let vm = running(ctx, "conf-o02")?;
    ensure!(rec.moves().len() == 3, "observer after a panicking one saw {:?}", rec.moves());
    teardown(ctx, &vm)
}

//! The VM lifecycle state machine.
//!
//! The legal moves live in one place, [`TRANSITIONS`]; everything that changes a VM's state goes
//! through [`StateMachine::transition`] (or, for the reconciler only, [`StateMachine::force`]).
//! Observers are told after the state changed, in registration order; a panicking observer is
//! contained and reported, never allowed to break the machine.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Timestamp};
use crate::ids::{OperationId, VmName};

/// A VM's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Known to Hangar, never started (or undefined resources only).
    Defined,
    /// The engine is booting it.
    Starting,
    /// vCPUs running.
    Running,
    /// Being paused.
    Pausing,
    /// vCPUs stopped, memory resident.
    Paused,
    /// Being resumed.
    Resuming,
    /// Memory being written to a snapshot.
    Saving,
    /// Memory on disk, no engine process.
    Sleeping,
    /// Being restored from a memory snapshot.
    Waking,
    /// A spare: an engine process waiting, with no guest yet, for one snapshot's state
    /// ([`Snapshots::prepare_restore`](crate::contracts::Snapshots::prepare_restore)); a restore
    /// of that snapshot then only loads it.
    Spare,
    /// Being shut down.
    Stopping,
    /// No engine process; disks kept.
    Stopped,
    /// Something went wrong; needs a stop, a restart or removal.
    Failed,
    /// Removed. Terminal.
    Deleted,
}

use VmState::*;

/// The state every VM enters when it is created (the move from "(new)").
pub const INITIAL_STATE: VmState = Defined;

/// The legal moves: for each state, the states it may move to. This table *is* the lifecycle
/// contract; tests check it exhaustively and the conformance suite checks every engine against it.
pub const TRANSITIONS: &[(VmState, &[VmState])] = &[
    (Defined, &[Starting, Deleted]),
    (Starting, &[Running, Spare, Stopping, Failed]),
    (Running, &[Pausing, Stopping, Failed]),
    (Pausing, &[Paused, Failed]),
    (Paused, &[Resuming, Saving, Stopping]),
    (Resuming, &[Running, Failed]),
    (Saving, &[Sleeping, Paused, Failed]),
    (Sleeping, &[Waking, Stopped, Deleted]),
    (Waking, &[Running, Failed]),
    (Spare, &[Waking, Stopping, Failed]),
    (Stopping, &[Stopped, Failed]),
    (Stopped, &[Starting, Deleted]),
    (Failed, &[Stopping, Stopped, Deleted]),
    (Deleted, &[]),
];

impl VmState {
    /// Every state, in table order.
    pub const ALL: [VmState; 14] = [
        Defined, Starting, Running, Pausing, Paused, Resuming, Saving, Sleeping, Waking, Spare,
        Stopping, Stopped, Failed, Deleted,
    ];

    /// The states this one may move to.
    pub fn allowed_targets(self) -> &'static [VmState] {
        TRANSITIONS.iter().find(|(from, _)| *from == self).map(|(_, to)| *to).unwrap_or(&[])
    }

    /// Whether `self → to` is a legal move.
    pub fn can_transition_to(self, to: VmState) -> bool {
        self.allowed_targets().contains(&to)
    }

    /// Whether this is a state a command passes through (`starting`, `stopping`, …) rather than
    /// one a VM rests in. Finding a VM in one with nobody working on it means its command's
    /// owner died.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Starting | Stopping | Pausing | Resuming | Saving | Waking)
    }

    /// Whether no move leaves this state.
    pub fn is_terminal(self) -> bool {
        self.allowed_targets().is_empty()
    }

    /// The lower-case name used in output and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Defined => "defined",
            Starting => "starting",
            Running => "running",
            Pausing => "pausing",
            Paused => "paused",
            Resuming => "resuming",
            Saving => "saving",
            Sleeping => "sleeping",
            Waking => "waking",
            Spare => "spare",
            Stopping => "stopping",
            Stopped => "stopped",
            Failed => "failed",
            Deleted => "deleted",
        }
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the name [`VmState::as_str`] gives (the same as its serde name), so that a state
/// written as text reads back as the same state.
impl FromStr for VmState {
    type Err = String;
    fn from_str(s: &str) -> Result<VmState, String> {
        VmState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// Who or what caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A user's request (CLI or API).
    User,
    /// The reconcile loop converging on desired state.
    Reconciler,
    /// The engine reported it (guest powered off, QEMU stopped).
    Engine,
    /// Something broke (process died, timeout).
    Fault,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 4] = [Cause::User, Cause::Reconciler, Cause::Engine, Cause::Fault];

    /// The lower-case name (the same as its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::User => "user",
            Cause::Reconciler => "reconciler",
            Cause::Engine => "engine",
            Cause::Fault => "fault",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the name [`Cause::as_str`] gives.
impl FromStr for Cause {
    type Err = String;
    fn from_str(s: &str) -> Result<Cause, String> {
        Cause::ALL
            .into_iter()
            .find(|cause| cause.as_str() == s)
            .ok_or_else(|| format!("unknown cause {s:?}"))
    }
}

/// A completed state change, as observers and the event stream see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionEvent {
    /// The VM.
    pub vm: VmName,
    /// The previous state; `None` for the creation move into [`INITIAL_STATE`].
    pub from: Option<VmState>,
    /// The new state.
    pub to: VmState,
    /// When it happened.
    pub at: Timestamp,
    /// Why.
    pub cause: Cause,
    /// The operation it belongs to, if any.
    pub operation: Option<OperationId>,
}

/// A move the table forbids. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM {vm} cannot go from {from} to {to}")]
pub struct InvalidTransition {
    /// The VM.
    pub vm: VmName,
    /// Its current state.
    pub from: VmState,
    /// The refused target.
    pub to: VmState,
}

impl InvalidTransition {
    /// What the VM may do instead.
    pub fn hint(&self) -> String {
        let targets = self.from.allowed_targets();
        if targets.is_empty() {
            format!("{} is {}, which is final", self.vm, self.from)
        } else {
            let names: Vec<&str> = targets.iter().map(|s| s.as_str()).collect();
            format!("from {} the VM can only go to: {}", self.from, names.join(", "))
        }
    }
}

/// Told about every transition, after the state changed.
///
/// Observers run synchronously on the thread that made the transition, while the engine may hold
/// its own locks: they must be quick and must not call back into the engine.
pub trait LifecycleObserver: Send + Sync {
    /// Called once per transition, in order.
    fn on_transition(&self, event: &TransitionEvent);
}

/// An observer that panicked. The machine carried on; this records what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserverFault {
    /// Registration index of the observer.
    pub observer: usize,
    /// The event it was handling.
    pub event: TransitionEvent,
    /// The panic message.
    pub message: String,
}

/// An ordered, shareable list of observers. Clones share the list, so one registration reaches
/// every VM's machine.
#[derive(Clone, Default)]
pub struct Observers(Arc<RwLock<Vec<Arc<dyn LifecycleObserver>>>>);

impl fmt::Debug for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Observers({})", self.len())
    }
}

impl Observers {
    /// Adds an observer after the existing ones.
    pub fn register(&self, observer: Arc<dyn LifecycleObserver>) {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push(observer);
    }

    /// How many are registered.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls every observer in registration order; panics are caught and returned.
    pub fn notify(&self, event: &TransitionEvent) -> Vec<ObserverFault> {
        // Snapshot the list so an observer may register another without deadlocking.
        let list: Vec<_> = self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut faults = Vec::new();
        for (index, observer) in list.iter().enumerate() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| observer.on_transition(event))) {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "observer panicked".to_string());
                faults.push(ObserverFault { observer: index, event: event.clone(), message });
            }
        }
        faults
    }
}

/// One VM's lifecycle: current state, full history, and the observers to tell.
pub struct StateMachine {
    vm: VmName,
    state: VmState,
    history: Vec<TransitionEvent>,
    observers: Observers,
    clock: Arc<dyn Clock>,
    faults: Vec<ObserverFault>,
}

impl fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachine")
            .field("vm", &self.vm)
            .field("state", &self.state)
            .field("history", &self.history.len())
            .finish()
    }
}

impl StateMachine {
    /// Creates the machine: the move from "(new)" to [`INITIAL_STATE`], reported to observers.
    pub fn new(
        vm: VmName, clock: Arc<dyn Clock>, observers: Observers, cause: Cause,
        operation: Option<OperationId>,
    ) -> Self {
        let mut machine = Self {
            vm,
            state: INITIAL_STATE,
            history: Vec::new(),
            observers,
            clock,
            faults: Vec::new(),
        };
        machine.commit(None, INITIAL_STATE, cause, operation);
        machine
    }

    /// Rebuilds a machine in a known state (for example from a store), without emitting events.
    pub fn restore(
        vm: VmName, state: VmState, history: Vec<TransitionEvent>, clock: Arc<dyn Clock>,
        observers: Observers,
    ) -> Self {
        Self { vm, state, history, observers, clock, faults: Vec::new() }
    }

    /// The VM this machine belongs to.
    pub fn vm(&self) -> &VmName {
        &self.vm
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Every transition so far, oldest first.
    pub fn history(&self) -> &[TransitionEvent] {
        &self.history
    }

    /// Observer panics caught so far.
    pub fn observer_faults(&self) -> &[ObserverFault] {
        &self.faults
    }

    /// Makes a legal move, or returns [`InvalidTransition`] and changes nothing.
    pub fn transition(
        &mut self, to: VmState, cause: Cause, operation: Option<OperationId>,
    ) -> Result<TransitionEvent, InvalidTransition> {
        if !self.state.can_transition_to(to) {
            return Err(InvalidTransition { vm: self.vm.clone(), from: self.state, to });
        }
        Ok(self.commit(Some(self.state), to, cause, operation))
    }

    /// Sets the state regardless of the table. **For the reconciler only**, when observed reality
    /// contradicts the record (a process died while nobody watched). Leaving `deleted` is still
    /// refused: a deleted VM never comes back.
    pub fn force(
        &mut self, to: VmState, operation: Option<OperationId>,
    ) -> Result<TransitionEvent, InvalidTransition> {
        if self.state == Deleted && to != Deleted {
            return Err(InvalidTransition { vm: self.vm.clone(), from: self.state, to });
        }
        Ok(self.commit(Some(self.state), to, Cause::Reconciler, operation))
    }

    fn commit(
        &mut self, from: Option<VmState>, to: VmState, cause: Cause, operation: Option<OperationId>,
    ) -> TransitionEvent {
        self.state = to;
        let event = TransitionEvent {
            vm: self.vm.clone(),
            from,
            to,
            at: self.clock.now(),
            cause,
            operation,
        };
        self.history.push(event.clone());
        let faults = self.observers.notify(&event);
        self.faults.extend(faults);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Mutex;

    fn machine(observers: Observers) -> StateMachine {
        StateMachine::new(
            VmName::new("vm").unwrap(),
            Arc::new(ManualClock::default()),
            observers,
            Cause::User,
            None,
        )
    }

    /// Every state and every cause reads back from its name, and that name is its serde name
    /// (what the store and the API write); anything else is refused.
    #[test]
    fn states_and_causes_round_trip_through_their_names() {
        for state in VmState::ALL {
            assert_eq!(state.as_str().parse::<VmState>(), Ok(state));
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.as_str()));
        }
        for cause in Cause::ALL {
            assert_eq!(cause.as_str().parse::<Cause>(), Ok(cause));
            assert_eq!(cause.to_string(), cause.as_str());
            assert_eq!(serde_json::to_string(&cause).unwrap(), format!("\"{}\"", cause.as_str()));
        }
        assert_eq!("exploded".parse::<VmState>(), Err("unknown state \"exploded\"".to_string()));
        assert!("Running".parse::<VmState>().is_err());
        assert!("".parse::<Cause>().is_err());
        assert!("users".parse::<Cause>().is_err());
    }

    /// The table from the foundation issue (with issue 16's `spare`), written out
    /// independently, compared cell by cell over all 14 × 14 pairs.
    #[test]
    fn table_is_exactly_the_documented_one() {
        let expected: &[(&str, &[&str])] = &[
            ("defined", &["starting", "deleted"]),
            ("starting", &["running", "spare", "stopping", "failed"]),
            ("running", &["pausing", "stopping", "failed"]),
            ("pausing", &["paused", "failed"]),
            ("paused", &["resuming", "saving", "stopping"]),
            ("resuming", &["running", "failed"]),
            ("saving", &["sleeping", "paused", "failed"]),
            ("sleeping", &["waking", "stopped", "deleted"]),
            ("waking", &["running", "failed"]),
            ("spare", &["waking", "stopping", "failed"]),
            ("stopping", &["stopped", "failed"]),
            ("stopped", &["starting", "deleted"]),
            ("failed", &["stopping", "stopped", "deleted"]),
            ("deleted", &[]),
        ];
        assert_eq!(TRANSITIONS.len(), VmState::ALL.len());
        for from in VmState::ALL {
            let row = expected.iter().find(|(f, _)| *f == from.as_str()).unwrap();
            for to in VmState::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    row.1.contains(&to.as_str()),
                    "{from} -> {to}"
                );
            }
        }
        assert!(Deleted.is_terminal());
        assert_eq!(VmState::ALL.iter().filter(|s| s.is_terminal()).count(), 1);
    }

    #[test]
    fn every_pair_transitions_or_refuses_without_change() {
        for from in VmState::ALL {
            for to in VmState::ALL {
                let mut m = StateMachine::restore(
                    VmName::new("vm").unwrap(),
                    from,
                    vec![],
                    Arc::new(ManualClock::default()),
                    Observers::default(),
                );
                match m.transition(to, Cause::User, None) {
                    Ok(ev) => {
                        assert!(from.can_transition_to(to));
                        assert_eq!((ev.from, ev.to), (Some(from), to));
                        assert_eq!(m.state(), to);
                        assert_eq!(m.history().len(), 1);
                    }
                    Err(e) => {
                        assert!(!from.can_transition_to(to));
                        assert_eq!((e.from, e.to), (from, to));
                        assert_eq!(m.state(), from, "state changed on refusal");
                        assert!(m.history().is_empty());
                    }
                }
            }
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, VmState)>>, usize);
    impl LifecycleObserver for Recorder {
        fn on_transition(&self, e: &TransitionEvent) {
            self.0.lock().unwrap().push((self.1, e.to));
        }
    }

    struct Panicker;
    impl LifecycleObserver for Panicker {
        fn on_transition(&self, _: &TransitionEvent) {
            panic!("observer exploded");
        }
    }

    #[test]
    fn observers_run_in_order_and_panics_are_contained() {
        let observers = Observers::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        struct Tagged(Arc<Mutex<Vec<(usize, VmState)>>>, usize);
        impl LifecycleObserver for Tagged {
            fn on_transition(&self, e: &TransitionEvent) {
                self.0.lock().unwrap().push((self.1, e.to));
            }
        }
        observers.register(Arc::new(Tagged(log.clone(), 0)));
        observers.register(Arc::new(Panicker));
        observers.register(Arc::new(Tagged(log.clone(), 2)));
        let mut m = machine(observers);
        m.transition(Starting, Cause::User, None).unwrap();
        assert_eq!(m.state(), Starting);
        assert_eq!(
            *log.lock().unwrap(),
            vec![(0, Defined), (2, Defined), (0, Starting), (2, Starting)]
        );
        assert_eq!(m.observer_faults().len(), 2);
        assert_eq!(m.observer_faults()[0].observer, 1);
        assert_eq!(m.observer_faults()[0].message, "observer exploded");
        let _ = Recorder::default();
    }

    #[test]
    fn force_ignores_the_table_but_not_deletion() {
        let mut m = machine(Observers::default());
        let ev = m.force(Failed, None).unwrap();
        assert_eq!(ev.cause, Cause::Reconciler);
        assert_eq!(m.state(), Failed);
        m.transition(Deleted, Cause::User, None).unwrap();
        assert!(m.force(Running, None).is_err());
        assert_eq!(m.state(), Deleted);
    }

    #[test]
    fn creation_is_the_move_from_new() {
        let m = machine(Observers::default());
        assert_eq!(m.history()[0].from, None);
        assert_eq!(m.history()[0].to, INITIAL_STATE);
    }

    #[test]
    fn hint_lists_the_allowed_moves() {
        let e = InvalidTransition { vm: VmName::new("a").unwrap(), from: Stopped, to: Paused };
        assert_eq!(e.hint(), "from stopped the VM can only go to: starting, deleted");
    }
}

thread_local! {
    static CURRENT_OPERATION: std::cell::RefCell<Option<OperationId>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `operation` as the thread's current operation, so every transition an engine
/// makes inside it names the operation (engines read it with [`current_operation`]). Engine calls
/// are synchronous and stay on the caller's thread, which is what makes a thread-scoped value
/// the right carrier: no contract method needs an extra parameter.
pub fn with_operation<T>(operation: &OperationId, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<OperationId>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT_OPERATION.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let previous = CURRENT_OPERATION.with(|c| c.borrow_mut().replace(operation.clone()));
    let _restore = Restore(previous);
    f()
}

/// The operation the current thread is carrying out, if any (see [`with_operation`]).
pub fn current_operation() -> Option<OperationId> {
    CURRENT_OPERATION.with(|c| c.borrow().clone())
}

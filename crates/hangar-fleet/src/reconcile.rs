//! The reconcile planner: desired state + observed state → actions. Pure: no engine, no clock
//! (the time is an argument), so a pass is deterministic and cheap to test and to benchmark.

use hangar_core::clock::Timestamp;
use hangar_core::ids::{InstanceId, PoolId};
use hangar_core::lifecycle::VmState;
use serde::{Deserialize, Serialize};

use crate::{by_pool, Instance, Pool};

/// One step toward the desired state. Every step is idempotent against the engine (re-running
/// it after a crash either finds the work done or does it), which is what makes a pass safe to
/// interrupt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a new instance and bring it to `target` (`running`, `paused`, `sleeping` or `spare`).
    Create {
        /// The pool.
        pool: PoolId,
        /// Where it should end.
        target: VmState,
    },
    /// Warm → running (`cont`).
    Resume {
        /// The instance.
        instance: InstanceId,
    },
    /// Sleeping → running (restore), then paused when `then_pause`.
    Wake {
        /// The instance.
        instance: InstanceId,
        /// Pause after waking (it is needed warm).
        then_pause: bool,
    },
    /// Running → warm.
    Pause {
        /// The instance.
        instance: InstanceId,
    },
    /// Running or warm → sleeping (memory to disk, process released).
    Sleep {
        /// The instance.
        instance: InstanceId,
    },
    /// Stop and delete (scale-down, or a failed instance being replaced).
    Remove {
        /// The instance.
        instance: InstanceId,
        /// Why, for the report.
        why: RemoveReason,
    },
}

/// Why an instance is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoveReason {
    /// More than desired.
    ScaleDown,
    /// It failed or stopped on its own (its QEMU died): it is replaced.
    Dead,
    /// The gateway held it, unused for the pool's `idle_stop_after_s`.
    Idle,
}

/// Something left alone this pass (an instance id, or a pool backing off), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deferred {
    /// What: an instance id or `pool <id>`.
    pub subject: String,
    /// Why.
    pub why: String,
}

/// What a pass should do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// In order.
    pub actions: Vec<Action>,
    /// Left alone this pass.
    pub deferred: Vec<Deferred>,
}

impl Plan {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Plans one pass over every pool.
///
/// Per pool, with claimed instances set aside (they belong to whoever claimed them):
/// 1. failed, stopped or half-created instances are removed (and so replaced below);
/// 2. a running deficit is filled by resuming warm instances, then waking sleeping ones, then
///    creating (scale-up prefers what is already booted);
/// 3. a warm deficit by pausing surplus running, waking surplus sleeping, then creating;
/// 4. a sleeping deficit by sleeping surplus warm, then surplus running, then creating;
/// 5. a spare deficit by creating (none for a `cold_boot` pool: deferred, it has no base);
/// 6. what is left over is removed newest first, except running instances younger than the
///    pool's `min_running_s`, which are deferred.
///
/// Instances caught in a transient state (after a crash) count toward where they were going
/// and are deferred. Claimed instances released (paused) for longer than the pool's
/// `idle_sleep_s` are put to sleep.
pub fn plan(pools: &[Pool], instances: &[Instance], now: Timestamp) -> Plan {
    let grouped = by_pool(instances);
    let mut out = Plan::default();
    for pool in pools {
        let members = grouped.get(&pool.id).map(Vec::as_slice).unwrap_or(&[]);
        plan_pool(pool, members, now, &mut out);
    }
    out
}

fn plan_pool(pool: &Pool, members: &[&Instance], now: Timestamp, out: &mut Plan) {
    let d = pool.desired;
    let (mut running, mut warm, mut sleeping) = (Vec::new(), Vec::new(), Vec::new());
    let mut spares = Vec::new();
    // In-flight instances count toward their destination but cannot be acted on.
    let (mut pending_running, mut pending_warm, mut pending_sleeping) = (0u32, 0u32, 0u32);
    for &i in members {
        if i.claimed && i.holder.is_some() {
            plan_held(pool, i, now, out);
            continue;
        }
        if i.claimed {
            match i.state {
                VmState::Failed | VmState::Stopped => out
                    .actions
                    .push(Action::Remove { instance: i.id.clone(), why: RemoveReason::Dead }),
                VmState::Paused => {
                    if let Some(idle) = pool.policy.idle_sleep_s {
                        if now.since(i.since).as_secs() >= idle {
                            out.actions.push(Action::Sleep { instance: i.id.clone() });
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match i.state {
            VmState::Running => running.push(i),
            VmState::Paused => warm.push(i),
            VmState::Sleeping => sleeping.push(i),
            VmState::Spare => spares.push(i),
            VmState::Failed | VmState::Stopped | VmState::Defined => {
                out.actions.push(Action::Remove { instance: i.id.clone(), why: RemoveReason::Dead })
            }
            VmState::Deleted => {}
            s => {
                match s {
                    VmState::Starting | VmState::Resuming | VmState::Waking => pending_running += 1,
                    VmState::Pausing => pending_warm += 1,
                    VmState::Saving => pending_sleeping += 1,
                    _ => {}
                }
                out.deferred.push(Deferred {
                    subject: i.id.to_string(),
                    why: format!("{s}: waiting for it to settle"),
                });
            }
        }
    }
    let want_running = d.running.saturating_sub(pending_running) as usize;
    let want_warm = d.warm.saturating_sub(pending_warm) as usize;
    let want_sleeping = d.sleeping.saturating_sub(pending_sleeping) as usize;
    let mut creates = Vec::new();
    // Lists are oldest first; promotions take the oldest, scale-down removes the newest.
    while running.len() + count(&creates, VmState::Running) < want_running {
        if !warm.is_empty() {
            let i = warm.remove(0);
            out.actions.push(Action::Resume { instance: i.id.clone() });
            running.push(i);
        } else if !sleeping.is_empty() {
            let i = sleeping.remove(0);
            out.actions.push(Action::Wake { instance: i.id.clone(), then_pause: false });
            running.push(i);
        } else {
            creates.push(VmState::Running);
        }
    }
    while warm.len() + count(&creates, VmState::Paused) < want_warm {
        if running.len() > want_running {
            let i = running.pop().expect("non-empty");
            out.actions.push(Action::Pause { instance: i.id.clone() });
            warm.push(i);
        } else if sleeping.len() > want_sleeping {
            let i = sleeping.remove(0);
            out.actions.push(Action::Wake { instance: i.id.clone(), then_pause: true });
            warm.push(i);
        } else {
            creates.push(VmState::Paused);
        }
    }
    while sleeping.len() + count(&creates, VmState::Sleeping) < want_sleeping {
        if warm.len() > want_warm {
            let i = warm.pop().expect("non-empty");
            out.actions.push(Action::Sleep { instance: i.id.clone() });
            sleeping.push(i);
        } else if running.len() > want_running {
            let i = running.pop().expect("non-empty");
            out.actions.push(Action::Sleep { instance: i.id.clone() });
            sleeping.push(i);
        } else {
            creates.push(VmState::Sleeping);
        }
    }
    // A spare has no guest to turn into anything else, nor can anything become one.
    let want_spares = if d.spare > 0 && pool.policy.cold_boot {
        out.deferred.push(Deferred {
            subject: format!("pool {}", pool.id),
            why: "spares wait for the pool's base snapshot, and a cold_boot pool has none".into(),
        });
        0
    } else {
        d.spare as usize
    };
    while spares.len() + count(&creates, VmState::Spare) < want_spares {
        creates.push(VmState::Spare);
    }
    for target in creates {
        out.actions.push(Action::Create { pool: pool.id.clone(), target });
    }
    // Scale down, newest first.
    while running.len() > want_running {
        let i = running.pop().expect("non-empty");
        let age = now.since(i.created_at).as_secs();
        if age < pool.policy.min_running_s {
            out.deferred.push(Deferred {
                subject: i.id.to_string(),
                why: format!(
                    "running {age} s, under the pool's min_running_s of {}",
                    pool.policy.min_running_s
                ),
            });
        } else {
            out.actions
                .push(Action::Remove { instance: i.id.clone(), why: RemoveReason::ScaleDown });
        }
    }
    for (list, keep) in
        [(&mut warm, want_warm), (&mut sleeping, want_sleeping), (&mut spares, want_spares)]
    {
        while list.len() > keep {
            let i = list.pop().expect("non-empty");
            out.actions
                .push(Action::Remove { instance: i.id.clone(), why: RemoveReason::ScaleDown });
        }
    }
}

/// An instance the gateway holds rests by the pool's idle policy once no connection is open:
/// idle is measured from its last activity or its last change of state, whichever is later.
/// The longest threshold reached wins (stop, then sleep, then pause).
fn plan_held(pool: &Pool, i: &Instance, now: Timestamp, out: &mut Plan) {
    let policy = &pool.policy;
    if matches!(i.state, VmState::Failed | VmState::Stopped | VmState::Defined) {
        out.actions.push(Action::Remove { instance: i.id.clone(), why: RemoveReason::Dead });
        return;
    }
    let activity = i.activity.unwrap_or_default();
    if activity.open > 0 {
        return;
    }
    let idle_since = Timestamp(activity.last.0.max(i.since.0));
    let idle = now.since(idle_since).as_secs();
    let reached = |limit: Option<u64>| limit.is_some_and(|l| idle >= l);
    let action = match i.state {
        _ if reached(policy.idle_stop_after_s)
            && matches!(i.state, VmState::Running | VmState::Paused | VmState::Sleeping) =>
        {
            Action::Remove { instance: i.id.clone(), why: RemoveReason::Idle }
        }
        VmState::Running | VmState::Paused if reached(policy.idle_sleep_after_s) => {
            Action::Sleep { instance: i.id.clone() }
        }
        VmState::Running if reached(policy.idle_pause_after_s) => {
            Action::Pause { instance: i.id.clone() }
        }
        _ => return,
    };
    out.actions.push(action);
}

fn count(creates: &[VmState], target: VmState) -> usize {
    creates.iter().filter(|t| **t == target).count()
}

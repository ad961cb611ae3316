//! Deterministic QEMU plans.
//!
//! [`plan`] turns a canonical spec and [`HostFacts`] into a [`Plan`]: the exact
//! `qemu-system-x86_64` argv, the accelerator decision and why, and every file, socket, overlay
//! and TAP device a run would create. The same inputs give a byte-identical plan.
//!
//! **Architecture invariant:** [`plan`] is pure — no filesystem, no processes, no clock, no
//! environment. A test runs the whole corpus under a seccomp filter that forbids spawning and
//! writing. Only [`probe::SystemProbe`] reads the host, and only to fill [`HostFacts`].
//!
//! The crate is laid out by concern: `types` (the [`Plan`] document and its parts), `argv`
//! (the builder: [`plan`] and the argv it writes), `accel` ([`resolve_accel`]), `confine`
//! (each VM's user and cgroup), `error` ([`PlanError`]), and `facts`/[`probe`] (the host).

mod accel;
mod argv;
mod confine;
mod error;
mod facts;
pub mod probe;
pub mod shell;
mod types;

pub use accel::resolve_accel;
pub use argv::{
    anonymous_ram_object, bridge_name, kernel_argument, mac_for, plan, ram_object, tap_name,
    AGENT_FD, AGENT_PORT, CONSOLE_FD, INCOMING_FD, MAX_SOCKET_PATH, MINIMAL_IMAGE_CMDLINE, QMP_FD,
    RAM_BACKEND, RAM_FD, TAP_FD_BASE, USER_GUEST_ADDRESS,
};
pub use confine::{home_tag, qemu_uid, CPU_PERIOD_US, QEMU_PIDS_MAX, QEMU_UID_BASE, QEMU_UID_SPAN};
pub use error::PlanError;
pub use facts::{
    Capacity, CgroupVersion, ConfinementFacts, FixedProbe, HostFacts, HostProbe, KvmFacts,
    NicNetwork, QemuFacts, DEFAULT_MEMORY_OVERHEAD_MIB,
};
pub use types::{Accel, CgroupPlan, Confinement, Creation, Plan, SerialPlan, PLAN_SCHEMA_VERSION};

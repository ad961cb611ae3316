//! The QEMU engine adapter.
//!
//! [`QemuEngine`] implements every `hangar-core` contract with real QEMU processes: it runs the
//! plan's argv (never a shell), detached in its own session so VMs outlive the `hangar` process
//! that started them; controls them over QMP; creates overlays and blank disks with `qemu-img`;
//! and records everything in the state store so any later `hangar` invocation reconnects.
//!
//! **Observed reality wins:** every read refreshes a VM against its process (PID *and* start
//! time) and QMP before answering; a QEMU that died while nobody watched is reported `failed`
//! with the reason and the last console lines (or `stopped` after a clean guest power-off).
//!
//! Guest protocol: the built-in image's init (`hangar-init`) prints `HANGAR_READY` on the
//! console when the guest is up, and powers off on the ACPI power button (QMP
//! `system_powerdown`). See [`console`].

pub mod confine;
pub mod console;
pub mod img;
pub mod process;

mod boot;
mod disks;
mod engine;
mod error;
mod guest;
mod lifecycle;
mod nics;
mod qmp;
mod reality;
mod runtime;
mod snapshots;
mod stop;

pub use engine::{EngineOptions, Phase, QemuEngine, StartOptions};
pub use error::QemuError;
pub use snapshots::allocated_bytes;

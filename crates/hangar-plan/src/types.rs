//! The plan document: [`Plan`] and its parts (the accelerator, what a run creates, the serial
//! console, the confinement).

use hangar_core::spec::*;
use serde::{Deserialize, Serialize};

use crate::facts::CgroupVersion;
use crate::shell;

/// Version of the plan document format.
pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// The accelerator a plan uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What a run would create, declared by the plan (the plan itself creates nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Creation {
    /// A directory.
    Dir {
        /// Its path.
        path: String,
    },
    /// A regular file the run writes.
    File {
        /// Its path.
        path: String,
        /// What it holds.
        purpose: String,
    },
    /// A unix socket QEMU listens on.
    Socket {
        /// Its path.
        path: String,
        /// What it serves.
        purpose: String,
    },
    /// The guest's RAM, a sparse file of the VM's own mapped shared by QEMU (made afresh at
    /// every cold boot; a restore from a `mapped` snapshot maps the snapshot's file instead).
    RamFile {
        /// Its path.
        path: String,
        /// Its size in MiB (the guest's memory).
        size_mib: u32,
    },
    /// A copy-on-write overlay over a base image (`qemu-img create -b`).
    Overlay {
        /// The overlay's path.
        path: String,
        /// The base image, never written.
        backing: String,
        /// The base image's format.
        backing_format: DiskFormat,
        /// The disk it belongs to.
        disk: String,
    },
    /// A new blank disk image.
    Disk {
        /// Its path.
        path: String,
        /// Its format.
        format: DiskFormat,
        /// Its size in MiB.
        size_mib: u64,
        /// The disk it belongs to.
        disk: String,
    },
    /// An address lease on a network, recorded in the store.
    Lease {
        /// The network.
        network: String,
        /// The NIC.
        nic: String,
        /// The address.
        address: String,
        /// Whether the lease exists already (`false`: a run would take it).
        leased: bool,
    },
    /// A TAP device made by Hangar, a port of a network's bridge, handed to QEMU as a
    /// descriptor (it disappears with QEMU).
    BridgePort {
        /// Interface name (at most 15 bytes).
        ifname: String,
        /// The NIC it belongs to.
        nic: String,
        /// The bridge (created if missing, with the gateway address).
        bridge: String,
        /// The network.
        network: String,
        /// The descriptor number QEMU finds it on.
        fd: i32,
    },
    /// A packet rule in one of Hangar's nf_tables tables (`ip hangar`, `bridge hangar`),
    /// programmed when the VM boots and removed with it.
    Rule {
        /// The table.
        table: String,
        /// The NIC it is for.
        nic: String,
        /// What it does.
        rule: String,
    },
    /// A TAP network device.
    Tap {
        /// Interface name (at most 15 bytes).
        ifname: String,
        /// The NIC it belongs to.
        nic: String,
    },
}

/// The serial console as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPlan {
    /// The spec's mode.
    pub mode: SerialMode,
    /// Where console output is logged, if anywhere.
    pub log: Option<String>,
    /// The attachable socket, if any.
    pub socket: Option<String>,
}

/// A deterministic run plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Plan format version.
    pub schema_version: u32,
    /// The VM.
    pub name: String,
    /// Hash of the canonical spec the plan was made from.
    pub spec_hash: String,
    /// The exact engine argv (its first element is the binary). Never passed through a shell.
    pub argv: Vec<String>,
    /// `sha256:` of the argv joined with NUL bytes.
    pub argv_hash: String,
    /// Accelerator the spec asked for.
    pub accel_requested: AccelRequest,
    /// Accelerator the plan uses.
    pub accel_resolved: Accel,
    /// Why.
    pub accel_reason: String,
    /// The QEMU version planned against, if QEMU was found.
    pub qemu_version: Option<String>,
    /// The VM's runtime directory.
    pub runtime_dir: String,
    /// QMP control socket.
    pub qmp_socket: String,
    /// Serial console.
    pub serial: SerialPlan,
    /// The guest agent's socket (`hangar exec`), for images that run the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket: Option<String>,
    /// The network the guest's init configures at boot (`hangar.net=` on its command line):
    /// addresses, gateway, DNS, hostname. Absent when nothing is addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_network: Option<hangar_core::contracts::GuestNetwork>,
    /// Everything a run would create, in creation order.
    pub creates: Vec<Creation>,
    /// Things worth knowing that do not stop the plan.
    pub warnings: Vec<String>,
    /// How QEMU is confined: its user, seccomp, its cgroup's limits (absent where the host
    /// offers nothing, or confinement is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confinement: Option<Confinement>,
}

/// How one QEMU is confined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    /// The user QEMU runs as (one per VM), when Hangar can start it as another user.
    pub uid: Option<u32>,
    /// Its primary group (the same number).
    pub gid: Option<u32>,
    /// Its supplementary groups: `hangar-qemu` (to enter the state directory) and, for KVM,
    /// the group of `/dev/kvm`.
    pub groups: Vec<u32>,
    /// `no_new_privs` is set before QEMU starts (always).
    pub no_new_privs: bool,
    /// QEMU sandboxes itself with seccomp (`-sandbox on,…`).
    pub seccomp: bool,
    /// Its cgroup, if the host has one to give.
    pub cgroup: Option<CgroupPlan>,
}

/// A VM's cgroup and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlan {
    /// The hierarchy.
    pub version: CgroupVersion,
    /// Below each controller's root (v1) or the unified root (v2): `hangar/<vm>`.
    pub path: String,
    /// Memory limit: guest RAM plus the QEMU overhead.
    pub memory_max_bytes: u64,
    /// CPU time per period (µs): one CPU per vCPU, plus one for QEMU's own threads.
    pub cpu_quota_us: u64,
    /// The CPU accounting period (µs).
    pub cpu_period_us: u64,
    /// Relative CPU weight (1-10000, 100 = default).
    pub cpu_weight: u32,
    /// Processes and threads.
    pub pids_max: u64,
}

impl Plan {
    /// Pretty JSON with a trailing newline: the plan's stable serialised form.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plans serialise");
        s.push('\n');
        s
    }

    /// The argv as a copy-pasteable shell command.
    pub fn shell_command(&self) -> String {
        shell::command_lines(&self.argv)
    }
}

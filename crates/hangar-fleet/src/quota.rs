//! Tenant quotas.

use hangar_core::error::Error;
use hangar_core::ids::TenantId;
use hangar_core::lifecycle::VmState;
use serde::{Deserialize, Serialize};

use crate::Instance;

/// The memory a spare is counted for (MiB): a QEMU waiting for its snapshot with no guest
/// holds its own code and device state, not the guest's RAM (~33 MiB PSS measured here, see
/// BENCHMARKS.md; issue 16's budget is 40).
pub const SPARE_MEMORY_MIB: u32 = 40;

/// A tenant's limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Quotas {
    /// vCPUs of instances holding a process (running or warm).
    pub max_vcpus: Option<u64>,
    /// Memory (MiB) of instances holding a process (a spare counts [`SPARE_MEMORY_MIB`]).
    pub max_memory_mib: Option<u64>,
    /// Running instances (claimed or not).
    pub max_running: Option<u64>,
    /// Warm (paused) instances.
    pub max_warm: Option<u64>,
    /// Instances in any state.
    pub max_instances: Option<u64>,
    /// Disk (MiB): blank disks, plus the saved memory of sleeping instances.
    #[serde(default)]
    pub max_disk_mib: Option<u64>,
}

/// Which quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// `max_vcpus`.
    Vcpus,
    /// `max_memory_mib`.
    MemoryMib,
    /// `max_running`.
    Running,
    /// `max_warm`.
    Warm,
    /// `max_instances`.
    Instances,
    /// `max_disk_mib`.
    DiskMib,
}

impl Quota {
    /// The field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Vcpus => "max_vcpus",
            Quota::MemoryMib => "max_memory_mib",
            Quota::Running => "max_running",
            Quota::Warm => "max_warm",
            Quota::Instances => "max_instances",
            Quota::DiskMib => "max_disk_mib",
        }
    }
}

/// What a tenant uses (or what an action would add).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// vCPUs held by processes.
    pub vcpus: u64,
    /// Memory held by processes (MiB).
    pub memory_mib: u64,
    /// Running instances.
    pub running: u64,
    /// Warm instances.
    pub warm: u64,
    /// Instances of every state (each counts whether it runs or not).
    pub instances: u64,
    /// Disk (MiB).
    #[serde(default)]
    pub disk_mib: u64,
}

impl Usage {
    /// What `instances` use.
    pub fn of<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Usage {
        let mut u = Usage::default();
        for i in instances {
            u.add(&Usage::of_vm(i.state, i.vcpus, i.memory_mib, i.disk_mib));
        }
        u
    }

    /// What one VM of that size uses in `state`: a process holds its vCPUs and memory; a
    /// sleeping VM's memory is on disk; a spare holds what it really costs, a QEMU with no
    /// guest yet ([`SPARE_MEMORY_MIB`], no vCPU running).
    pub fn of_vm(state: VmState, vcpus: u32, memory_mib: u32, disk_mib: u64) -> Usage {
        let mut u = Usage { instances: 1, disk_mib, ..Usage::default() };
        if state == VmState::Sleeping {
            u.disk_mib += u64::from(memory_mib);
        }
        if state == VmState::Spare {
            u.memory_mib = u64::from(SPARE_MEMORY_MIB.min(memory_mib));
            return u;
        }
        let holds_process = !matches!(
            state,
            VmState::Sleeping
                | VmState::Stopped
                | VmState::Defined
                | VmState::Failed
                | VmState::Deleted
        );
        if holds_process {
            u.vcpus = u64::from(vcpus);
            u.memory_mib = u64::from(memory_mib);
        }
        match state {
            VmState::Running | VmState::Starting | VmState::Resuming | VmState::Waking => {
                u.running = 1
            }
            VmState::Paused | VmState::Pausing => u.warm = 1,
            _ => {}
        }
        u
    }

    /// What moving one VM of that size from `from` to `to` adds to its tenant's use (a use it
    /// frees counts as nothing: the check is for room).
    pub fn growth(from: VmState, to: VmState, vcpus: u32, memory_mib: u32, disk_mib: u64) -> Usage {
        let before = Usage::of_vm(from, vcpus, memory_mib, disk_mib);
        let after = Usage::of_vm(to, vcpus, memory_mib, disk_mib);
        Usage {
            vcpus: after.vcpus.saturating_sub(before.vcpus),
            memory_mib: after.memory_mib.saturating_sub(before.memory_mib),
            running: after.running.saturating_sub(before.running),
            warm: after.warm.saturating_sub(before.warm),
            instances: after.instances.saturating_sub(before.instances),
            disk_mib: after.disk_mib.saturating_sub(before.disk_mib),
        }
    }

    /// What a VM of `spec` uses in `state` (its blank disks count as disk; overlays over a
    /// base image start empty and do not).
    pub fn of_spec(state: VmState, spec: &hangar_core::spec::VmSpec) -> Usage {
        let disk = spec
            .disks
            .iter()
            .map(|d| match d.source {
                hangar_core::spec::DiskSource::Blank { size_mib } => size_mib,
                hangar_core::spec::DiskSource::Base { .. } => 0,
            })
            .sum();
        Usage::of_vm(state, spec.machine.vcpus, spec.machine.memory_mib, disk)
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Usage) {
        self.vcpus += other.vcpus;
        self.memory_mib += other.memory_mib;
        self.running += other.running;
        self.warm += other.warm;
        self.instances += other.instances;
        self.disk_mib += other.disk_mib;
    }
}

/// A refused change: which quota, its limit, the current use and what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} would exceed {}: limit {limit}, in use {current}, asked for {requested} more", quota.as_str())]
pub struct QuotaExceeded {
    /// The tenant.
    pub tenant: TenantId,
    /// Which quota.
    pub quota: Quota,
    /// Its limit.
    pub limit: u64,
    /// Current use.
    pub current: u64,
    /// What the change adds.
    pub requested: u64,
}

impl From<QuotaExceeded> for Error {
    fn from(e: QuotaExceeded) -> Error {
        crate::FleetError::Quota(e).into()
    }
}

impl Quotas {
    /// Whether adding `add` to `used` stays within every limit; the first quota broken if not.
    pub fn check(&self, tenant: &TenantId, used: &Usage, add: &Usage) -> Result<(), QuotaExceeded> {
        let limits = [
            (Quota::Instances, self.max_instances, used.instances, add.instances),
            (Quota::Running, self.max_running, used.running, add.running),
            (Quota::Warm, self.max_warm, used.warm, add.warm),
            (Quota::Vcpus, self.max_vcpus, used.vcpus, add.vcpus),
            (Quota::MemoryMib, self.max_memory_mib, used.memory_mib, add.memory_mib),
            (Quota::DiskMib, self.max_disk_mib, used.disk_mib, add.disk_mib),
        ];
        for (quota, limit, current, requested) in limits {
            if let Some(limit) = limit {
                if requested > 0 && current + requested > limit {
                    return Err(QuotaExceeded {
                        tenant: tenant.clone(),
                        quota,
                        limit,
                        current,
                        requested,
                    });
                }
            }
        }
        Ok(())
    }
}

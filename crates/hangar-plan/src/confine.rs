//! How a VM's QEMU is confined: its own user (derived from the VM's name), `no_new_privs`,
//! QEMU's seccomp sandbox, and a cgroup with memory, CPU and process limits.

use crate::{Accel, CgroupPlan, CgroupVersion, Confinement, ConfinementFacts};

/// The first uid (and gid) VMs' QEMUs run as: numbers no account uses (2046820352).
pub const QEMU_UID_BASE: u32 = 0x7A00_0000;
/// How many of them there are: a VM's uid is `QEMU_UID_BASE + hash(name) % QEMU_UID_SPAN`.
pub const QEMU_UID_SPAN: u32 = 0x0100_0000;
/// Threads and processes a QEMU may have.
pub const QEMU_PIDS_MAX: u64 = 512;
/// The CPU period cgroup quotas are expressed in (µs).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The user a VM's QEMU runs as: derived from its name (unique on the host), so every start
/// and every adoption agrees without a record.
pub fn qemu_uid(vm: &str) -> u32 {
    // FNV-1a, stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in vm.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    QEMU_UID_BASE + h % QEMU_UID_SPAN
}

/// Eight hex digits naming a home (from its VMs' runtime root): what keeps two homes' cgroups
/// apart.
pub fn home_tag(runtime_root: &str) -> String {
    let hash = hangar_spec::sha256_tagged(runtime_root.trim_end_matches('/').as_bytes());
    hash.trim_start_matches("sha256:")[..8].to_string()
}

/// How `vm` is confined on a host with `facts` (`None` when confinement is off).
///
/// The cgroup is named after the VM and its home (`hangar/<home tag>-<name>`): cgroups are
/// host-wide, and two homes (two daemons, a test beside a daemon) may both have a VM called
/// `web`; one shared cgroup would put both QEMUs under one limit.
pub(crate) fn confinement(
    vm: &hangar_core::spec::VmSpec, accel: Accel, facts: &ConfinementFacts, runtime_root: &str,
) -> Option<Confinement> {
    if !facts.enabled {
        return None;
    }
    let name = vm.name.as_str();
    let (uid, gid, mut groups) = match (facts.root, facts.qemu_group) {
        (true, Some(group)) => {
            let uid = qemu_uid(name);
            (Some(uid), Some(uid), vec![group])
        }
        _ => (None, None, vec![]),
    };
    if let (Some(_), Accel::Kvm, Some(kvm)) = (uid, accel, facts.kvm_group) {
        groups.push(kvm);
    }
    let cgroup = (facts.cgroup != CgroupVersion::None).then(|| CgroupPlan {
        version: facts.cgroup,
        path: format!("hangar/{}-{name}", home_tag(runtime_root)),
        memory_max_bytes: (u64::from(vm.machine.memory_mib) + facts.memory_overhead_mib) << 20,
        cpu_quota_us: (u64::from(vm.machine.vcpus) + 1) * CPU_PERIOD_US,
        cpu_period_us: CPU_PERIOD_US,
        cpu_weight: vm.machine.cpu_weight.unwrap_or(100),
        pids_max: QEMU_PIDS_MAX,
    });
    Some(Confinement { uid, gid, groups, no_new_privs: true, seccomp: facts.seccomp, cgroup })
}

//! Host facts: everything about the host a plan depends on, as plain data.
//!
//! A plan is a pure function of (canonical spec, host facts). The facts come from a
//! [`HostProbe`]: [`crate::probe::SystemProbe`] reads the real host; tests and
//! `hangar plan --host-facts FILE` use fixed facts, which makes plans reproducible anywhere.

use serde::{Deserialize, Serialize};

/// What Hangar needs to know about the host to plan a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// The QEMU system emulator.
    pub qemu: QemuFacts,
    /// Whether KVM can really run guests here.
    pub kvm: KvmFacts,
    /// Host TSC frequency in kHz (passed to TCG guests as `tsc_early_khz`), if known.
    pub tsc_khz: Option<u64>,
    /// Host CPUs available.
    pub cpu_count: u32,
    /// Directory under which each VM gets its runtime directory (`<runtime_dir>/<name>`).
    pub runtime_dir: String,
    /// Directory of built-in images (`<image_dir>/<image>/vmlinuz`, `initrd.img`): the user's
    /// own, `$HANGAR_HOME/images`, looked in first.
    pub image_dir: String,
    /// Images found in the system-wide, read-only image directory (which `scripts/setup`
    /// fills, [`crate::probe::SYSTEM_IMAGE_DIR`]) and not in `image_dir`: each image's
    /// directory, by name. This is how an ordinary user boots the image root built.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub shared_images: std::collections::BTreeMap<String, String>,
    /// How QEMU can be confined here (absent in older facts files: not at all).
    #[serde(default)]
    pub confinement: ConfinementFacts,
    /// Free memory and disk, for admission (absent: not checked).
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// What each bridge NIC of the VM being planned gets from its network, by NIC name: the
    /// engine looks these up in its store (a lease, or for a dry run the address a lease would
    /// get); nothing is probed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub nic_networks: std::collections::BTreeMap<String, NicNetwork>,
    /// The host's own IPv4 nameservers (`/etc/resolv.conf`, loopback ones left out: a guest
    /// cannot reach the host's 127.0.0.53), given to guests on NAT networks, whose queries
    /// are masqueraded like the rest of their traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<std::net::Ipv4Addr>,
}

impl HostFacts {
    /// The directory holding the built-in image `image`: the system-wide copy when only that
    /// one exists, else the user's own (where a missing image is then reported).
    pub fn image_path(&self, image: &str) -> String {
        match self.shared_images.get(image) {
            Some(dir) => dir.clone(),
            None => format!("{}/{image}", self.image_dir.trim_end_matches('/')),
        }
    }
}

/// A bridge NIC's place on its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicNetwork {
    /// The network's full name (`tenant--name` for a tenant's).
    pub network: String,
    /// Its host bridge.
    pub bridge: String,
    /// Its subnet, `10.88.0.0/24`.
    pub subnet: String,
    /// The NIC's address.
    pub address: std::net::Ipv4Addr,
    /// The gateway (the bridge's address).
    pub gateway: std::net::Ipv4Addr,
    /// Whether the NIC holds that lease already (`false`: the address a lease would get now).
    pub leased: bool,
    /// Whether the network masquerades out of the host (then its guests get the host's
    /// nameservers).
    #[serde(default)]
    pub nat: bool,
}

/// What this host offers to confine each QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfinementFacts {
    /// Confinement is wanted (`HANGAR_CONFINE=off` turns it off, for measurements).
    pub enabled: bool,
    /// Hangar runs as root, so it can start each QEMU as a user of its own.
    pub root: bool,
    /// The gid of the `hangar-qemu` group (made by scripts/setup): QEMU's supplementary group,
    /// which may enter the state directory (and nothing in it but its own runtime directory).
    pub qemu_group: Option<u32>,
    /// The gid that owns `/dev/kvm` (a KVM guest's QEMU needs it).
    pub kvm_group: Option<u32>,
    /// QEMU can sandbox itself with seccomp (`-sandbox`).
    pub seccomp: bool,
    /// The cgroup hierarchy.
    pub cgroup: CgroupVersion,
    /// Memory a QEMU uses besides its guest's RAM (TCG's code cache, device models), added to
    /// the guest's RAM for the cgroup limit.
    pub memory_overhead_mib: u64,
}

impl Default for ConfinementFacts {
    fn default() -> ConfinementFacts {
        ConfinementFacts {
            enabled: false,
            root: false,
            qemu_group: None,
            kvm_group: None,
            seccomp: false,
            cgroup: CgroupVersion::None,
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
        }
    }
}

/// What QEMU uses besides guest RAM: TCG's translated-code cache grows to a few hundred MiB
/// under load (a 256 MiB guest that touched all its RAM measured ~300 MiB RSS here).
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u64 = 256;

/// Which cgroup hierarchy the host mounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    /// None usable.
    #[default]
    None,
    /// cgroup v1: one hierarchy per controller (`/sys/fs/cgroup/memory`, `cpu`, `pids`).
    V1,
    /// cgroup v2: the unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

impl CgroupVersion {
    /// `v1`, `v2` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::None => "none",
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// Free resources on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// `MemAvailable` in MiB.
    pub memory_available_mib: u64,
    /// Free disk under the state directory, in MiB.
    pub disk_free_mib: u64,
}

/// The QEMU binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuFacts {
    /// Path (or name) of `qemu-system-x86_64`.
    pub binary: String,
    /// Its version (`10.0.2`), or `None` when it was not found.
    pub version: Option<String>,
}

/// The three conditions under which KVM works (see `../shared/notes/engine-facts.md`: a
/// `/dev/kvm` that opens is not enough on nested hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmFacts {
    /// `/dev/kvm` opens read-write.
    pub dev_kvm_rw: bool,
    /// The CPU flags include `vmx` or `svm`.
    pub cpu_virt_flags: bool,
    /// `/sys/module/kvm_pvm` exists: KVM is a software nested hypervisor that cannot run stock
    /// guest kernels (they crawl, then die with an emulation failure).
    pub kvm_pvm: bool,
}

impl KvmFacts {
    /// Whether KVM really works, and why (not).
    pub fn verdict(&self) -> (bool, &'static str) {
        if !self.dev_kvm_rw {
            (false, "/dev/kvm cannot be opened read-write")
        } else if !self.cpu_virt_flags {
            (
                false,
                "the CPU flags have neither vmx nor svm (hardware virtualisation is not exposed)",
            )
        } else if self.kvm_pvm {
            (
                false,
                "/dev/kvm is the kvm_pvm software hypervisor, which cannot run stock guest kernels",
            )
        } else {
            (true, "/dev/kvm is usable and the CPU has vmx/svm")
        }
    }
}

/// Reads host facts.
pub trait HostProbe {
    /// The facts, as of now.
    fn probe(&self) -> HostFacts;
}

/// A probe that returns fixed facts (tests, `--host-facts`).
#[derive(Debug, Clone)]
pub struct FixedProbe(pub HostFacts);

impl HostProbe for FixedProbe {
    fn probe(&self) -> HostFacts {
        self.0.clone()
    }
}

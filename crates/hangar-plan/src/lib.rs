//! Deterministic QEMU plans.
//!
//! [`plan`] turns a canonical spec and [`HostFacts`] into a [`Plan`]: the exact
//! `qemu-system-x86_64` argv, the accelerator decision and why, and every file, socket, overlay
//! and TAP device a run would create. The same inputs give a byte-identical plan.
//!
//! **Architecture invariant:** [`plan`] is pure — no filesystem, no processes, no clock, no
//! environment. A test runs the whole corpus under a seccomp filter that forbids spawning and
//! writing. Only [`probe::SystemProbe`] reads the host, and only to fill [`HostFacts`].

use std::fmt;

use hangar_core::error::{Coded, ErrorCode};
use hangar_core::spec::*;
use hangar_spec::{sha256_tagged, CanonicalSpec};
use serde::{Deserialize, Serialize};

mod facts;
pub mod probe;
pub mod shell;

pub use facts::{
    Capacity, CgroupVersion, ConfinementFacts, FixedProbe, HostFacts, HostProbe, KvmFacts,
    QemuFacts, DEFAULT_MEMORY_OVERHEAD_MIB,
};

/// Version of the plan document format.
pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// Longest unix socket path (sun_path is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Kernel arguments of the built-in `minimal` image on microvm: a serial console, quiet boot,
/// and the settings measured to shorten TCG boots (see `../shared/notes/engine-facts.md`).
pub const MINIMAL_IMAGE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests audit=0 nokaslr 8250.nr_uarts=1";

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
    /// The exact engine argv (argv[0] is the binary). Never passed through a shell.
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

/// The descriptor QEMU finds its listening QMP socket on.
pub const QMP_FD: i32 = 3;
/// The descriptor QEMU finds its listening serial-console socket on.
pub const CONSOLE_FD: i32 = 4;
/// The descriptor a restoring QEMU reads its memory snapshot from (`-add-fd`, not in the plan:
/// which snapshot is chosen at restore).
pub const INCOMING_FD: i32 = 5;

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

/// How `vm` is confined on a host with `facts` (`None` when confinement is off).
fn confinement(
    vm: &hangar_core::spec::VmSpec,
    accel: Accel,
    facts: &ConfinementFacts,
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
        path: format!("hangar/{name}"),
        memory_max_bytes: (u64::from(vm.machine.memory_mib) + facts.memory_overhead_mib) << 20,
        cpu_quota_us: (u64::from(vm.machine.vcpus) + 1) * CPU_PERIOD_US,
        cpu_period_us: CPU_PERIOD_US,
        cpu_weight: vm.machine.cpu_weight.unwrap_or(100),
        pids_max: QEMU_PIDS_MAX,
    });
    Some(Confinement {
        uid,
        gid,
        groups,
        no_new_privs: true,
        seccomp: facts.seccomp,
        cgroup,
    })
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

/// Why a spec cannot be planned on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The spec requires KVM and KVM cannot work here.
    AccelUnavailable {
        /// Why KVM cannot work.
        reason: String,
    },
    /// A runtime path is too long.
    PathTooLong {
        /// The path.
        path: String,
        /// Its limit.
        limit: usize,
    },
    /// The host facts are unusable.
    HostFacts {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::AccelUnavailable { reason } => {
                write!(f, "the spec requires kvm, but {reason}")
            }
            PlanError::PathTooLong { path, limit } => {
                write!(f, "{path} is {} bytes, longer than {limit}", path.len())
            }
            PlanError::HostFacts { field, reason } => write!(f, "host facts {field}: {reason}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl Coded for PlanError {
    fn code(&self) -> ErrorCode {
        match self {
            PlanError::AccelUnavailable { .. } => ErrorCode::AccelUnavailable,
            PlanError::PathTooLong { .. } => ErrorCode::PathTooLong,
            PlanError::HostFacts { .. } => ErrorCode::HostFactsInvalid,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            PlanError::AccelUnavailable { .. } => Some("machine.accel".into()),
            PlanError::HostFacts { field, .. } => Some(field.clone()),
            PlanError::PathTooLong { .. } => None,
        }
    }
}

/// Decides the accelerator: kvm only when it really works (see [`KvmFacts::verdict`]).
pub fn resolve_accel(
    requested: AccelRequest,
    kvm: &KvmFacts,
) -> Result<(Accel, String), PlanError> {
    let (usable, why) = kvm.verdict();
    match requested {
        AccelRequest::Tcg => Ok((Accel::Tcg, "tcg: requested by the spec".into())),
        AccelRequest::Kvm if usable => {
            Ok((Accel::Kvm, format!("kvm: requested by the spec; {why}")))
        }
        AccelRequest::Kvm => Err(PlanError::AccelUnavailable { reason: why.into() }),
        AccelRequest::Auto if usable => Ok((Accel::Kvm, format!("kvm: {why}"))),
        AccelRequest::Auto => Ok((Accel::Tcg, format!("tcg: {why}"))),
    }
}

/// QEMU parses `,` as an option separator; a literal comma in a value is written `,,`.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// A stable, locally administered MAC for a NIC: the same VM and NIC always get the same one.
fn mac_for(vm: &str, nic: &str) -> String {
    let hash = sha256_tagged(format!("{vm}/{nic}").as_bytes());
    let hex = &hash["sha256:".len()..];
    format!("52:54:00:{}:{}:{}", &hex[0..2], &hex[2..4], &hex[4..6])
}

/// A stable TAP name of at most 15 bytes (the kernel's IFNAMSIZ - 1).
fn tap_name(vm: &str, nic: &str) -> String {
    let hash = sha256_tagged(format!("tap/{vm}/{nic}").as_bytes());
    format!("hg-{}", &hash["sha256:".len().."sha256:".len() + 12])
}

fn check_facts(facts: &HostFacts) -> Result<(), PlanError> {
    for (field, value) in [
        ("runtime_dir", &facts.runtime_dir),
        ("image_dir", &facts.image_dir),
    ] {
        let problem = if !value.starts_with('/') {
            Some("must be an absolute path")
        } else if value.contains(',') {
            Some("must not contain ',' (QEMU option syntax)")
        } else if value.contains('\0') {
            Some("must not contain NUL")
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(PlanError::HostFacts {
                field: field.into(),
                reason: reason.into(),
            });
        }
    }
    if facts.qemu.binary.is_empty() {
        return Err(PlanError::HostFacts {
            field: "qemu.binary".into(),
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

/// Plans a VM. Pure: same inputs, byte-identical output.
pub fn plan(spec: &CanonicalSpec, facts: &HostFacts) -> Result<Plan, PlanError> {
    check_facts(facts)?;
    let vm = &spec.spec;
    let name = vm.name.as_str();
    let (accel, accel_reason) = resolve_accel(vm.machine.accel, &facts.kvm)?;
    let runtime_dir = format!("{}/{name}", facts.runtime_dir.trim_end_matches('/'));
    let qmp_socket = format!("{runtime_dir}/qmp.sock");
    let mut warnings = Vec::new();
    let mut creates = vec![
        Creation::Dir {
            path: runtime_dir.clone(),
        },
        Creation::File {
            path: format!("{runtime_dir}/plan.json"),
            purpose: "this plan, as run".into(),
        },
        Creation::File {
            path: format!("{runtime_dir}/pid"),
            purpose: "QEMU's process id and start time".into(),
        },
        Creation::File {
            path: format!("{runtime_dir}/qemu.log"),
            purpose: "QEMU's stdout and stderr".into(),
        },
    ];
    if facts.qemu.version.is_none() {
        warnings.push(format!(
            "{} was not found; install it (scripts/setup does) before `hangar up`",
            facts.qemu.binary
        ));
    }
    if vm.machine.vcpus > facts.cpu_count {
        warnings.push(format!(
            "{} vCPUs on a host with {} CPUs: the guest will be slowed by oversubscription",
            vm.machine.vcpus, facts.cpu_count
        ));
    }

    let (machine, blk, net) = match vm.machine.kind {
        MachineKind::Microvm => ("microvm", "virtio-blk-device", "virtio-net-device"),
        MachineKind::Q35 => ("q35", "virtio-blk-pci", "virtio-net-pci"),
    };
    let mut argv: Vec<String> = vec![facts.qemu.binary.clone()];
    let mut push = |words: &[&str]| argv.extend(words.iter().map(|w| w.to_string()));

    // Machine + accelerator, and the flags that keep QEMU from adding anything unplanned.
    push(&["-machine", machine, "-accel", accel.as_str()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    // CPU, SMP, memory.
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let smp = vm.machine.vcpus.to_string();
    let mem = vm.machine.memory_mib.to_string();
    push(&["-cpu", cpu, "-smp", &smp, "-m", &mem]);

    // Kernel, initrd, command line.
    let (kernel, initrd, mut cmdline) = match &vm.boot {
        BootSource::Image { image, cmdline } => {
            let dir = format!("{}/{image}", facts.image_dir.trim_end_matches('/'));
            let mut line = MINIMAL_IMAGE_CMDLINE.to_string();
            if vm.machine.kind == MachineKind::Microvm {
                line.push_str(" pci=off");
            }
            if !cmdline.is_empty() {
                line.push(' ');
                line.push_str(cmdline);
            }
            (
                format!("{dir}/vmlinuz"),
                Some(format!("{dir}/initrd.img")),
                line,
            )
        }
        BootSource::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            if vm.serial.mode != SerialMode::None && !cmdline.contains("console=") {
                warnings.push(
                    "the kernel command line has no console=; add console=ttyS0 to see boot output"
                        .into(),
                );
            }
            (kernel.clone(), initrd.clone(), cmdline.clone())
        }
    };
    if accel == Accel::Tcg {
        match facts.tsc_khz {
            // Without it, TCG guests can hang calibrating the TSC against the PIT.
            Some(khz) => {
                if !cmdline.is_empty() {
                    cmdline.push(' ');
                }
                cmdline.push_str(&format!("tsc_early_khz={khz}"));
            }
            None => warnings.push(
                "host TSC frequency unknown: the TCG guest may hang calibrating its clock".into(),
            ),
        }
    }
    push(&["-kernel", &kernel]);
    if let Some(initrd) = &initrd {
        push(&["-initrd", initrd]);
    }
    if !cmdline.is_empty() {
        push(&["-append", &cmdline]);
    }

    // Disks, in spec order.
    if !vm.disks.is_empty() {
        creates.push(Creation::Dir {
            path: format!("{runtime_dir}/disks"),
        });
    }
    for disk in &vm.disks {
        let id = format!("disk-{}", disk.name);
        let (file, format, readonly) = match &disk.source {
            DiskSource::Base { source } if disk.readonly => (source.clone(), disk.format, true),
            DiskSource::Base { source } => {
                let overlay = format!("{runtime_dir}/disks/{}.qcow2", disk.name);
                creates.push(Creation::Overlay {
                    path: overlay.clone(),
                    backing: source.clone(),
                    backing_format: disk.format,
                    disk: disk.name.to_string(),
                });
                (overlay, DiskFormat::Qcow2, false)
            }
            DiskSource::Blank { size_mib } => {
                let path = format!("{runtime_dir}/disks/{}.{}", disk.name, disk.format.as_str());
                creates.push(Creation::Disk {
                    path: path.clone(),
                    format: disk.format,
                    size_mib: *size_mib,
                    disk: disk.name.to_string(),
                });
                (path, disk.format, false)
            }
        };
        let mut drive = format!(
            "id={id},file={},format={},if=none",
            qemu_escape(&file),
            format.as_str()
        );
        if readonly {
            drive.push_str(",readonly=on");
        }
        push(&["-drive", &drive, "-device", &format!("{blk},drive={id}")]);
    }

    // NICs, in spec order.
    for nic in &vm.nics {
        let id = format!("nic-{}", nic.name);
        let netdev = match nic.mode {
            NicMode::None => {
                warnings.push(format!(
                    "nic {} has mode none and is not attached",
                    nic.name
                ));
                continue;
            }
            NicMode::User => {
                let mut s = format!("user,id={id}");
                for f in &nic.forward {
                    s.push_str(&format!(
                        ",hostfwd={}:127.0.0.1:{}-:{}",
                        f.proto.as_str(),
                        f.host,
                        f.guest
                    ));
                }
                s
            }
            NicMode::Tap => {
                let ifname = tap_name(name, nic.name.as_str());
                creates.push(Creation::Tap {
                    ifname: ifname.clone(),
                    nic: nic.name.to_string(),
                });
                format!("tap,id={id},ifname={ifname},script=no,downscript=no")
            }
        };
        let device = format!("{net},netdev={id},mac={}", mac_for(name, nic.name.as_str()));
        push(&["-netdev", &netdev, "-device", &device]);
    }

    // QMP before serial, so the control channel exists before the guest can say anything.
    // The console log is appended to, never truncated: it keeps every boot of the VM, and
    // readers can follow it across restarts.
    // Hangar binds both sockets and hands QEMU the listening descriptors (fd 3 and 4): QEMU
    // never needs to write the runtime directory, so it cannot swap a socket for a symlink to
    // another VM's.
    let mut sockets = vec![qmp_socket.clone()];
    creates.push(Creation::Socket {
        path: qmp_socket.clone(),
        purpose: format!("QMP control (bound by Hangar, passed as fd {QMP_FD})"),
    });
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
        "-mon",
        "chardev=qmp,mode=control",
    ]);

    let log = format!("{runtime_dir}/console.log");
    let serial = match vm.serial.mode {
        SerialMode::Socket => {
            let socket = format!("{runtime_dir}/console.sock");
            sockets.push(socket.clone());
            creates.push(Creation::Socket {
                path: socket.clone(),
                purpose: format!(
                    "serial console (hangar console; bound by Hangar, passed as fd {CONSOLE_FD})"
                ),
            });
            creates.push(Creation::File {
                path: log.clone(),
                purpose: "serial console log".into(),
            });
            push(&[
                "-chardev",
                &format!(
                    "socket,id=serial0,fd={CONSOLE_FD},server=on,wait=off,logfile={log},logappend=on"
                ),
                "-serial",
                "chardev:serial0",
            ]);
            SerialPlan {
                mode: SerialMode::Socket,
                log: Some(log),
                socket: Some(socket),
            }
        }
        SerialMode::Log => {
            creates.push(Creation::File {
                path: log.clone(),
                purpose: "serial console log".into(),
            });
            push(&[
                "-chardev",
                &format!("file,id=serial0,path={log},append=on"),
                "-serial",
                "chardev:serial0",
            ]);
            SerialPlan {
                mode: SerialMode::Log,
                log: Some(log),
                socket: None,
            }
        }
        SerialMode::None => {
            push(&["-serial", "none"]);
            SerialPlan {
                mode: SerialMode::None,
                log: None,
                socket: None,
            }
        }
    };
    for socket in sockets {
        if socket.len() > MAX_SOCKET_PATH {
            return Err(PlanError::PathTooLong {
                path: socket,
                limit: MAX_SOCKET_PATH,
            });
        }
    }

    push(&["-name", name]);
    let confinement = confinement(vm, accel, &facts.confinement);
    if confinement.as_ref().is_some_and(|c| c.seccomp) {
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid, no fork/exec, no
        // scheduler or resource changes.
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    if let Some(cap) = facts.capacity {
        let overhead = facts.confinement.memory_overhead_mib;
        let needed = u64::from(vm.machine.memory_mib) + overhead;
        if needed > cap.memory_available_mib {
            warnings.push(format!(
                "it needs {needed} MiB of memory ({} MiB RAM + {overhead} MiB for QEMU), more than this host has available ({} MiB): it would be refused at start (E_HOST_CAPACITY)",
                vm.machine.memory_mib, cap.memory_available_mib
            ));
        }
        let disks: u64 = vm
            .disks
            .iter()
            .map(|d| match d.source {
                DiskSource::Blank { size_mib } => size_mib,
                DiskSource::Base { .. } => 0,
            })
            .sum();
        if disks > cap.disk_free_mib {
            warnings.push(format!(
                "its blank disks ({disks} MiB) are more than the free disk here ({} MiB): it would be refused at start (E_HOST_CAPACITY)",
                cap.disk_free_mib
            ));
        }
    }

    let argv_hash = sha256_tagged(argv.join("\0").as_bytes());
    Ok(Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        name: name.to_string(),
        spec_hash: spec.hash.0.clone(),
        argv,
        argv_hash,
        accel_requested: vm.machine.accel,
        accel_resolved: accel,
        accel_reason,
        qemu_version: facts.qemu.version.clone(),
        runtime_dir,
        qmp_socket,
        serial,
        creates,
        warnings,
        confinement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm(rw: bool, flags: bool, pvm: bool) -> KvmFacts {
        KvmFacts {
            dev_kvm_rw: rw,
            cpu_virt_flags: flags,
            kvm_pvm: pvm,
        }
    }

    #[test]
    fn accel_resolution_table() {
        use AccelRequest::*;
        let good = kvm(true, true, false);
        assert_eq!(resolve_accel(Auto, &good).unwrap().0, Accel::Kvm);
        assert_eq!(resolve_accel(Kvm, &good).unwrap().0, Accel::Kvm);
        assert_eq!(resolve_accel(Tcg, &good).unwrap().0, Accel::Tcg);
        for bad in [
            kvm(false, true, false),
            kvm(true, false, false),
            kvm(true, true, true),
        ] {
            let (accel, reason) = resolve_accel(Auto, &bad).unwrap();
            assert_eq!(accel, Accel::Tcg);
            assert!(reason.starts_with("tcg: "), "{reason}");
            let err = resolve_accel(Kvm, &bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::AccelUnavailable);
        }
        // This host's situation: /dev/kvm opens, but it is kvm_pvm without vmx/svm.
        let (_, reason) = resolve_accel(Auto, &kvm(true, false, true)).unwrap();
        assert!(reason.contains("vmx"), "{reason}");
    }

    #[test]
    fn macs_and_taps_are_stable_and_well_formed() {
        assert_eq!(mac_for("a", "n"), mac_for("a", "n"));
        assert_ne!(mac_for("a", "n"), mac_for("b", "n"));
        assert_eq!(mac_for("a", "n").len(), 17);
        assert!(tap_name(&"x".repeat(63), "net0").len() <= 15);
    }

    #[test]
    fn qemu_escaping() {
        assert_eq!(qemu_escape("/a,b/c"), "/a,,b/c");
    }
}

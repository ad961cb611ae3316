//! The builder: [`plan`] checks the host facts, decides the accelerator, and writes the QEMU
//! argv (machine, CPU and memory, kernel, disks, NICs, QMP, serial, confinement) together with
//! everything a run would create.

use std::net::Ipv4Addr;

use hangar_core::contracts::{GuestNetwork, GuestNic};
use hangar_core::spec::*;
use hangar_spec::{sha256_tagged, CanonicalSpec};

use crate::confine::confinement;
use crate::{
    resolve_accel, Accel, Creation, HostFacts, Plan, PlanError, SerialPlan, PLAN_SCHEMA_VERSION,
};

/// Longest unix socket path (sun_path is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Kernel arguments of the built-in `minimal` image on microvm: a serial console, quiet boot,
/// and the settings measured to shorten TCG boots (see `../shared/notes/engine-facts.md`).
pub const MINIMAL_IMAGE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 mitigations=off cryptomgr.notests audit=0 nokaslr 8250.nr_uarts=1";

/// The descriptor QEMU finds its listening QMP socket on.
pub const QMP_FD: i32 = 3;
/// The descriptor QEMU finds its listening serial-console socket on.
pub const CONSOLE_FD: i32 = 4;
/// The descriptor QEMU finds the guest agent's listening socket on.
pub const AGENT_FD: i32 = 6;
/// The name of the guest agent's virtio-serial port (what the agent looks for in
/// `/sys/class/virtio-ports/*/name`).
pub const AGENT_PORT: &str = "org.hangar.agent.0";
/// The descriptor a restoring QEMU reads its memory snapshot from (`-add-fd`, not in the plan:
/// which snapshot is chosen at restore).
pub const INCOMING_FD: i32 = 5;
/// The descriptor a QEMU restoring a `mapped` snapshot maps the snapshot's RAM file from
/// (private, copy-on-write; not in the plan either).
pub const RAM_FD: i32 = 7;
/// The id of the guest RAM's memory backend (`-object memory-backend-file,id=ram0,…`).
pub const RAM_BACKEND: &str = "ram0";

/// The `-object` value of guest RAM in plain (anonymous, private) memory under the same id: a
/// restore from a `stream` snapshot loads every page into it, which a file would make slow.
pub fn anonymous_ram_object(memory_mib: u32) -> String {
    format!("memory-backend-ram,id={RAM_BACKEND},size={memory_mib}M")
}

/// The `-object` value of guest RAM held in the file at `mem_path`: `shared` maps it shared
/// (the VM's own RAM file: what the guest writes lands in it, so a snapshot needs only the
/// device state), otherwise private and read-only underneath (a snapshot's RAM file mapped
/// copy-on-write: the guest's writes stay in its own process).
pub fn ram_object(mem_path: &str, memory_mib: u32, shared: bool) -> String {
    let mapping = if shared { "share=on" } else { "share=off,readonly=on,rom=off" };
    let mem_path = qemu_escape(mem_path);
    format!("memory-backend-file,id={RAM_BACKEND},size={memory_mib}M,mem-path={mem_path},{mapping}")
}

/// The address a `user` NIC's guest gets: QEMU's user-mode network (slirp) is always
/// 10.0.2.0/24, the guest at .15, the host's gateway at .2 and its DNS forwarder at .3.
pub const USER_GUEST_ADDRESS: &str = "10.0.2.15/24";
const USER_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const USER_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// `NAME=<base64url, no padding, of bytes>`: how Hangar passes structured values to
/// `hangar-init` on the kernel command line (no spaces, quotes or `=` to escape).
pub fn kernel_argument(name: &str, bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(name.len() + 1 + bytes.len() * 4 / 3 + 4);
    out.push_str(name);
    out.push('=');
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// What the built-in image's `hangar-init` configures at boot (`hangar.net=`): the first
/// `user` NIC gets slirp's fixed address and DNS, each bridge NIC its lease (and, on a NAT
/// network, the host's nameservers); the first NIC addressed carries the default route; the
/// hostname is the VM's name. Further `user` NICs would sit on the same 10.0.2.0/24: they stay
/// unaddressed, with a warning.
fn guest_network(
    vm: &VmSpec, facts: &HostFacts, warnings: &mut Vec<String>,
) -> Option<GuestNetwork> {
    let mut network = GuestNetwork { hostname: Some(vm.name.to_string()), ..Default::default() };
    let mut user_addressed = false;
    for nic in &vm.nics {
        let mac = Some(mac_for(vm.name.as_str(), nic.name.as_str()));
        let gateway_free = network.nics.iter().all(|n| n.gateway.is_none());
        match nic.mode {
            NicMode::User if !user_addressed => {
                user_addressed = true;
                network.nics.push(GuestNic {
                    mac,
                    addresses: vec![USER_GUEST_ADDRESS.into()],
                    gateway: gateway_free.then_some(USER_GATEWAY),
                    ..Default::default()
                });
                network.dns.push(USER_DNS);
            }
            NicMode::User => warnings.push(format!(
                "nic {} (user) is left unaddressed: only the first user NIC gets 10.0.2.15/24",
                nic.name
            )),
            NicMode::Bridge => {
                let Some(place) = facts.nic_networks.get(nic.name.as_str()) else {
                    continue;
                };
                let prefix = place.subnet.rsplit('/').next().unwrap_or("24");
                network.nics.push(GuestNic {
                    mac,
                    addresses: vec![format!("{}/{prefix}", place.address)],
                    gateway: gateway_free.then_some(place.gateway),
                    ..Default::default()
                });
                if place.nat {
                    if facts.nameservers.is_empty() {
                        warnings.push(format!(
                            "nic {} gets no DNS server: the host's /etc/resolv.conf names no \
                             IPv4 nameserver a guest can reach (loopback ones cannot be)",
                            nic.name
                        ));
                    }
                    for server in &facts.nameservers {
                        if !network.dns.contains(server) {
                            network.dns.push(*server);
                        }
                    }
                }
            }
            NicMode::Tap | NicMode::None => {}
        }
    }
    (!network.nics.is_empty()).then_some(network)
}

/// QEMU parses `,` as an option separator; a literal comma in a value is written `,,`.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// A stable, locally administered MAC for a NIC: the same VM and NIC always get the same one.
pub fn mac_for(vm: &str, nic: &str) -> String {
    let hash = sha256_tagged(format!("{vm}/{nic}").as_bytes());
    let hex = &hash["sha256:".len()..];
    format!("52:54:00:{}:{}:{}", &hex[0..2], &hex[2..4], &hex[4..6])
}

/// The descriptor QEMU finds its first bridge NIC's TAP on (the next ones follow).
pub const TAP_FD_BASE: i32 = 10;

/// A network's stable bridge name, at most 15 bytes.
pub fn bridge_name(network: &str) -> String {
    let hash = sha256_tagged(format!("bridge/{network}").as_bytes());
    format!("hgb-{}", &hash["sha256:".len().."sha256:".len() + 11])
}

/// A stable TAP name of at most 15 bytes (the kernel's IFNAMSIZ - 1).
pub fn tap_name(vm: &str, nic: &str) -> String {
    let hash = sha256_tagged(format!("tap/{vm}/{nic}").as_bytes());
    format!("hg-{}", &hash["sha256:".len().."sha256:".len() + 12])
}

fn check_facts(facts: &HostFacts) -> Result<(), PlanError> {
    let shared = facts.shared_images.values().map(|dir| ("shared_images", dir));
    for (field, value) in [("runtime_dir", &facts.runtime_dir), ("image_dir", &facts.image_dir)]
        .into_iter()
        .chain(shared)
    {
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
            return Err(PlanError::HostFacts { field: field.into(), reason: reason.into() });
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
        Creation::Dir { path: runtime_dir.clone() },
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
    // Guest RAM is a file of the VM's own (see `ram_object`): saving a sleeping VM then writes
    // only its device state, and clones map a snapshot's RAM copy-on-write.
    let machine = format!("{machine},memory-backend={RAM_BACKEND}");
    push(&["-machine", &machine, "-accel", accel.as_str()]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    // CPU, SMP, memory.
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let smp = vm.machine.vcpus.to_string();
    let mem = vm.machine.memory_mib.to_string();
    push(&["-cpu", cpu, "-smp", &smp, "-m", &mem]);
    let ram_file = format!("{runtime_dir}/ram");
    push(&["-object", &ram_object(&ram_file, vm.machine.memory_mib, true)]);
    creates.push(Creation::RamFile { path: ram_file, size_mib: vm.machine.memory_mib });

    // Kernel, initrd, command line. Only the built-in image's init reads `hangar.net=`.
    let guest_network = match vm.boot {
        BootSource::Image { .. } => guest_network(vm, facts, &mut warnings),
        BootSource::Kernel { .. } => None,
    };
    let (kernel, initrd, mut cmdline) = match &vm.boot {
        BootSource::Image { image, cmdline } => {
            let dir = facts.image_path(image);
            let mut line = MINIMAL_IMAGE_CMDLINE.to_string();
            if vm.machine.kind == MachineKind::Microvm {
                line.push_str(" pci=off");
            }
            if let Some(network) = &guest_network {
                let json = serde_json::to_vec(network).expect("a network serialises");
                line.push(' ');
                line.push_str(&kernel_argument("hangar.net", &json));
            }
            if !cmdline.is_empty() {
                line.push(' ');
                line.push_str(cmdline);
            }
            (format!("{dir}/vmlinuz"), Some(format!("{dir}/initrd.img")), line)
        }
        BootSource::Kernel { kernel, initrd, cmdline } => {
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
        creates.push(Creation::Dir { path: format!("{runtime_dir}/disks") });
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
        let mut drive =
            format!("id={id},file={},format={},if=none", qemu_escape(&file), format.as_str());
        if readonly {
            drive.push_str(",readonly=on");
        }
        push(&["-drive", &drive, "-device", &format!("{blk},drive={id}")]);
    }

    // NICs, in spec order.
    let mut bridge_ports = 0;
    for (index, nic) in vm.nics.iter().enumerate() {
        let id = format!("nic-{}", nic.name);
        let netdev = match nic.mode {
            NicMode::None => {
                warnings.push(format!("nic {} has mode none and is not attached", nic.name));
                continue;
            }
            NicMode::User => {
                let mut s = format!("user,id={id}");
                for f in &nic.forward {
                    s.push_str(&format!(
                        ",hostfwd={}:{}:{}-:{}",
                        f.proto.as_str(),
                        f.bind_address(),
                        f.host,
                        f.guest
                    ));
                }
                s
            }
            NicMode::Bridge => {
                let network = nic.network.as_ref().map(|n| n.to_string()).unwrap_or_default();
                let place = facts
                    .nic_networks
                    .get(nic.name.as_str())
                    .ok_or(PlanError::UnknownNetwork { index, network })?;
                let fd = TAP_FD_BASE + bridge_ports;
                bridge_ports += 1;
                creates.push(Creation::Lease {
                    network: place.network.clone(),
                    nic: nic.name.to_string(),
                    address: place.address.to_string(),
                    leased: place.leased,
                });
                let ifname = tap_name(name, nic.name.as_str());
                creates.push(Creation::BridgePort {
                    ifname: ifname.clone(),
                    nic: nic.name.to_string(),
                    bridge: place.bridge.clone(),
                    network: place.network.clone(),
                    fd,
                });
                let mac = mac_for(name, nic.name.as_str());
                let rule = |table: &str, rule: String| Creation::Rule {
                    table: table.into(),
                    nic: nic.name.to_string(),
                    rule,
                };
                creates.push(rule(
                    "bridge hangar",
                    format!(
                        "frames from {ifname} only from {mac}, IPv4 and ARP only, only from {}",
                        place.address
                    ),
                ));
                for f in &nic.forward {
                    creates.push(rule(
                        "ip hangar",
                        format!(
                            "{} {}:{} -> {}:{} (destination NAT)",
                            f.proto.as_str(),
                            f.bind_address(),
                            f.host,
                            place.address,
                            f.guest
                        ),
                    ));
                }
                format!("tap,id={id},fd={fd}")
            }
            NicMode::Tap => {
                let ifname = tap_name(name, nic.name.as_str());
                creates.push(Creation::Tap { ifname: ifname.clone(), nic: nic.name.to_string() });
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
            creates
                .push(Creation::File { path: log.clone(), purpose: "serial console log".into() });
            push(&[
                "-chardev",
                &format!(
                    "socket,id=serial0,fd={CONSOLE_FD},server=on,wait=off,logfile={log},logappend=on"
                ),
                "-serial",
                "chardev:serial0",
            ]);
            SerialPlan { mode: SerialMode::Socket, log: Some(log), socket: Some(socket) }
        }
        SerialMode::Log => {
            creates
                .push(Creation::File { path: log.clone(), purpose: "serial console log".into() });
            push(&[
                "-chardev",
                &format!("file,id=serial0,path={log},append=on"),
                "-serial",
                "chardev:serial0",
            ]);
            SerialPlan { mode: SerialMode::Log, log: Some(log), socket: None }
        }
        SerialMode::None => {
            push(&["-serial", "none"]);
            SerialPlan { mode: SerialMode::None, log: None, socket: None }
        }
    };
    // The guest agent's channel (docs/agent-protocol.md), for images whose init runs the
    // agent: the built-in images do. Last among the devices, so the disks' and NICs' order
    // (and so their names in the guest) is what it was without it.
    let agent_socket = matches!(vm.boot, BootSource::Image { .. }).then(|| {
        let socket = format!("{runtime_dir}/agent.sock");
        sockets.push(socket.clone());
        creates.push(Creation::Socket {
            path: socket.clone(),
            purpose: format!(
                "guest agent (hangar exec; bound by Hangar, passed as fd {AGENT_FD}, mode 0600)"
            ),
        });
        push(&[
            "-device",
            "virtio-serial-device,id=vser0",
            "-chardev",
            &format!("socket,id=agent0,fd={AGENT_FD},server=on,wait=off"),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=agent0,id=agent0,name={AGENT_PORT}"),
        ]);
        socket
    });
    for socket in sockets {
        if socket.len() > MAX_SOCKET_PATH {
            return Err(PlanError::PathTooLong { path: socket, limit: MAX_SOCKET_PATH });
        }
    }

    push(&["-name", name]);
    let confinement = confinement(vm, accel, &facts.confinement, &facts.runtime_dir);
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
        agent_socket,
        guest_network,
        creates,
        warnings,
        confinement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

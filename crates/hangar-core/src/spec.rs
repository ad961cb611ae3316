//! The engine-neutral, normalised VM specification.
//!
//! A [`VmSpec`] is what remains of a spec file after validation and normalisation: every default
//! filled in, every path absolute, every enum spelled one way. Two spec files that mean the same
//! thing produce equal `VmSpec`s, and `hangar-spec` serialises it as the canonical IR. Parsing and
//! validating files is `hangar-spec`'s job; this module only defines the shape.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceName, PoolId, TenantId, VmName};

/// The schema version this crate's `VmSpec` corresponds to.
pub const SPEC_SCHEMA_VERSION: u32 = 1;

/// A normalised VM specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The VM's name, unique on a node.
    pub name: VmName,
    /// CPU, memory, accelerator and machine type.
    pub machine: MachineSpec,
    /// What to boot.
    pub boot: BootSource,
    /// Disks, in the order the guest sees them (`vda`, `vdb`, …).
    pub disks: Vec<DiskSpec>,
    /// Network interfaces, in guest order.
    pub nics: Vec<NicSpec>,
    /// The serial console.
    pub serial: SerialSpec,
    /// Free-form labels (sorted by key).
    pub labels: BTreeMap<String, String>,
    /// The owning tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The pool this VM is an instance of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
}

impl VmSpec {
    /// The spec a file with only `schema_version` and `name` gives: 1 vCPU, 256 MiB, the
    /// built-in `minimal` image with no extra kernel arguments, no disks, no NICs, the serial
    /// console on a socket (hangar-spec's tests check the two stay equal).
    pub fn new(name: VmName) -> VmSpec {
        VmSpec {
            name,
            machine: MachineSpec {
                vcpus: 1,
                memory_mib: 256,
                accel: AccelRequest::Auto,
                kind: MachineKind::Microvm,
                cpu_weight: None,
            },
            boot: BootSource::Image { image: "minimal".into(), cmdline: String::new() },
            disks: Vec::new(),
            nics: Vec::new(),
            serial: SerialSpec { mode: SerialMode::Socket },
            labels: BTreeMap::new(),
            tenant: None,
            pool: None,
        }
    }

    /// The spec with what tells one clone from another (name, tenant, pool) set to fixed
    /// values. Two VMs whose clone templates are equal have the same virtual hardware and boot
    /// the same guest, so a memory snapshot of one can be restored into the other.
    pub fn clone_template(&self) -> VmSpec {
        VmSpec {
            name: VmName::new("clone").expect("a valid name"),
            tenant: None,
            pool: None,
            ..self.clone()
        }
    }
}

/// Virtual hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Accelerator requested (resolved against the host at plan time).
    pub accel: AccelRequest,
    /// Machine model.
    #[serde(rename = "type")]
    pub kind: MachineKind,
    /// CPU weight against other VMs when the host is busy (1-10000; `None`: the default, 100).
    /// Absent from the canonical form unless set, so older specs keep their hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
}

/// Which accelerator the spec asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelRequest {
    /// Hardware virtualisation when it really works, software emulation otherwise.
    Auto,
    /// Hardware virtualisation or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// The machine model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineKind {
    /// A minimal virtio-mmio machine: fastest boot, no PCI.
    Microvm,
    /// A PC with PCIe, for guests that need it.
    Q35,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BootSource {
    /// A built-in guest image by name (e.g. `minimal`), with extra kernel arguments.
    Image {
        /// The built-in image's name.
        image: String,
        /// Extra kernel command-line arguments appended to the image's own.
        cmdline: String,
    },
    /// A kernel file, an optional initrd, and the full command line.
    Kernel {
        /// Absolute path of the kernel.
        kernel: String,
        /// Absolute path of the initrd, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        /// The kernel command line.
        cmdline: String,
    },
}

/// A disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Unique among the VM's disks.
    pub name: DeviceName,
    /// Where the disk's content comes from.
    #[serde(flatten)]
    pub source: DiskSource,
    /// Image format.
    pub format: DiskFormat,
    /// Whether the guest may write. A writable disk over a base image gets a private overlay;
    /// the base is never written.
    pub readonly: bool,
}

/// The origin of a disk's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DiskSource {
    /// An existing image file (absolute path).
    Base {
        /// Absolute path of the base image.
        source: String,
    },
    /// A new, empty disk.
    Blank {
        /// Size in MiB.
        size_mib: u64,
    },
}

/// Disk image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// QEMU copy-on-write.
    Qcow2,
    /// Plain bytes.
    Raw,
}

impl DiskFormat {
    /// Every format.
    pub const ALL: [DiskFormat; 2] = [DiskFormat::Qcow2, DiskFormat::Raw];

    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// Parses the name [`DiskFormat::as_str`] gives (the same as its serde name).
impl std::str::FromStr for DiskFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<DiskFormat, String> {
        DiskFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == s)
            .ok_or_else(|| format!("unknown format {s:?}"))
    }
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// Unique among the VM's NICs.
    pub name: DeviceName,
    /// How it connects to the host.
    pub mode: NicMode,
    /// Host ports forwarded to the guest (user mode only).
    pub forward: Vec<PortForward>,
    /// The network a `bridge` NIC joins (a tenant's VM names its tenant's networks without
    /// the `tenant--` prefix; validation makes an absent one `default`, so a tenant's VMs and
    /// pool instances join their tenant's default network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::ids::NetworkName>,
}

/// How a NIC reaches the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicMode {
    /// User-mode networking (NAT in the engine); supports port forwards.
    User,
    /// A host TAP device.
    Tap,
    /// A port of a Hangar network's bridge, with an address leased from its subnet.
    Bridge,
    /// Declared but not connected.
    None,
}

/// Transport protocols for port forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port. The host side always binds to loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortForward {
    /// TCP or UDP.
    pub proto: Protocol,
    /// Port on the host (127.0.0.1).
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
    /// Published on every host address (`0.0.0.0:HOST:GUEST`), not only 127.0.0.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_addresses: bool,
}

impl PortForward {
    /// The host address it binds: `127.0.0.1`, or `0.0.0.0` when asked.
    pub fn bind_address(&self) -> &'static str {
        if self.all_addresses {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        }
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all = if self.all_addresses { "0.0.0.0:" } else { "" };
        write!(f, "{}:{all}{}:{}", self.proto.as_str(), self.host, self.guest)
    }
}

/// The serial console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSpec {
    /// Where console output goes.
    pub mode: SerialMode,
}

/// Serial console modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SerialMode {
    /// Output written to a log file only.
    Log,
    /// A unix socket one client can attach to (`hangar console`); output also logged.
    Socket,
    /// No serial console.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_formats_round_trip_through_their_names() {
        for format in DiskFormat::ALL {
            assert_eq!(format.as_str().parse::<DiskFormat>(), Ok(format));
            assert_eq!(serde_json::to_string(&format).unwrap(), format!("\"{}\"", format.as_str()));
        }
        assert_eq!("vmdk".parse::<DiskFormat>(), Err("unknown format \"vmdk\"".to_string()));
    }
}

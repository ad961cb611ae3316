//! The spec file format as Rust types, for the JSON Schema (`schema/vm-spec-v1.json`).
//!
//! These types describe what a user writes (optional fields, file paths as written). The
//! validating walker in `validate/` is what actually reads specs, because it reports every
//! problem with a code and a hint instead of stopping at the first. Tests keep the two in step:
//! the field names must match, and every valid corpus spec must deserialize into [`SpecFile`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Hangar VM spec (`vm.toml` or `vm.json`), schema version 1.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Hangar VM spec v1")]
pub struct SpecFile {
    /// Always 1 for this schema.
    #[schemars(range(min = 1, max = 1))]
    pub schema_version: u32,
    /// VM name: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,
    /// Virtual hardware; every field has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineFile>,
    /// What to boot; defaults to the built-in `minimal` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootFile>,
    /// Disks, in guest order (`vda`, `vdb`, …). At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub disk: Vec<DiskFile>,
    /// Network interfaces, in guest order. At most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub nic: Vec<NicFile>,
    /// The serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialFile>,
    /// Free-form labels: keys of a-z, 0-9, '.', '_', '/', '-'; values up to 256 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Owning tenant (a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Pool this VM belongs to (a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// `[machine]`
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    /// Virtual CPUs (default 1).
    #[schemars(range(min = 1, max = 64))]
    pub vcpus: Option<u32>,
    /// Memory in MiB (default 256).
    #[schemars(range(min = 64, max = 262144))]
    pub memory_mib: Option<u32>,
    /// Accelerator (default `auto`: kvm where hardware virtualisation really works, else tcg).
    pub accel: Option<AccelFile>,
    /// Machine model (default `microvm`).
    #[serde(rename = "type")]
    pub kind: Option<MachineKindFile>,
    /// CPU weight against other VMs when the host is busy (1-10000; absent: the default,
    /// 100).
    #[schemars(range(min = 1, max = 10000))]
    pub cpu_weight: Option<u32>,
}

/// Accelerators.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccelFile {
    /// kvm when it really works, tcg otherwise.
    Auto,
    /// Hardware virtualisation; planning fails where it cannot work.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// Machine models.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineKindFile {
    /// Minimal virtio-mmio machine, fastest boot.
    Microvm,
    /// PC with PCIe.
    Q35,
}

/// `[boot]`: either `image`, or `kernel` (+ `initrd`).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootFile {
    /// A built-in image: `minimal`.
    pub image: Option<String>,
    /// Kernel file, absolute or relative to the spec file.
    pub kernel: Option<String>,
    /// Initrd file (kernel boot only).
    pub initrd: Option<String>,
    /// Kernel command line (appended to the image's own for `image` boot). At most 2048 bytes.
    pub cmdline: Option<String>,
}

/// `[[disk]]`: exactly one of `source` and `size_mib`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    /// Unique disk name.
    pub name: String,
    /// Base image, absolute or relative to the spec file. Writable disks get a private overlay.
    pub source: Option<String>,
    /// Size of a new blank disk in MiB.
    #[schemars(range(min = 1, max = 2097152))]
    pub size_mib: Option<u64>,
    /// Image format (default: raw for `.raw`/`.img` sources, else qcow2).
    pub format: Option<DiskFormatFile>,
    /// Read-only (default false).
    pub readonly: Option<bool>,
}

/// Disk formats.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormatFile {
    /// QEMU copy-on-write.
    Qcow2,
    /// Plain bytes.
    Raw,
}

/// `[[nic]]`
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NicFile {
    /// Unique NIC name.
    pub name: String,
    /// How the NIC connects (default `user`).
    pub mode: Option<NicModeFile>,
    /// Published ports `[tcp:|udp:][0.0.0.0:]HOST_PORT:GUEST_PORT` (user and bridge NICs; the host side binds 127.0.0.1 unless `0.0.0.0:` says every address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<String>,
    /// The network a `bridge` NIC joins (`hangar network ls`); default `default` (a tenant's VM, pool instances included: its tenant's default network).
    pub network: Option<String>,
}

/// NIC modes.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NicModeFile {
    /// User-mode NAT with port forwards.
    User,
    /// A host TAP device.
    Tap,
    /// A port of a Hangar network (`network = "NAME"`), with a leased address.
    Bridge,
    /// Not connected.
    None,
}

/// `[serial]`
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SerialFile {
    /// `socket` (default: attachable with `hangar console`, also logged), `log`, or `none`.
    pub mode: Option<SerialModeFile>,
}

/// Serial modes.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SerialModeFile {
    /// Log file only.
    Log,
    /// Attachable socket, also logged.
    Socket,
    /// No console.
    None,
}

/// The JSON Schema of the spec format, pretty-printed with a trailing newline.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(SpecFile);
    let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialise");
    text.push('\n');
    text
}

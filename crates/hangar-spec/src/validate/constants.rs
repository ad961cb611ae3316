//! The spec format's constants: the fields of each section, the built-in images, resource
//! limits and defaults, and the misspellings the unknown-field hint knows.

/// Top-level fields.
pub const TOP_FIELDS: &[&str] = &[
    "schema_version",
    "name",
    "machine",
    "boot",
    "disk",
    "nic",
    "serial",
    "labels",
    "tenant",
    "pool",
];
/// `[machine]` fields.
pub const MACHINE_FIELDS: &[&str] = &["vcpus", "memory_mib", "accel", "type", "cpu_weight"];
/// `[boot]` fields.
pub const BOOT_FIELDS: &[&str] = &["image", "kernel", "initrd", "cmdline"];
/// `[[disk]]` fields.
pub const DISK_FIELDS: &[&str] = &["name", "source", "size_mib", "format", "readonly"];
/// `[[nic]]` fields.
pub const NIC_FIELDS: &[&str] = &["name", "mode", "forward", "network"];
/// `[serial]` fields.
pub const SERIAL_FIELDS: &[&str] = &["mode"];

/// Built-in guest images.
pub const BUILTIN_IMAGES: &[&str] = &["minimal"];

/// Resource limits.
pub mod limits {
    /// vCPUs.
    pub const VCPUS: (i64, i64) = (1, 64);
    /// Memory in MiB.
    pub const MEMORY_MIB: (i64, i64) = (64, 262_144);
    /// CPU weight.
    pub const CPU_WEIGHT: (i64, i64) = (1, 10_000);
    /// Blank disk size in MiB (2 TiB).
    pub const DISK_MIB: (i64, i64) = (1, 2_097_152);
    /// Disks per VM.
    pub const DISKS: usize = 16;
    /// NICs per VM.
    pub const NICS: usize = 8;
    /// Kernel command line bytes.
    pub const CMDLINE: usize = 2048;
    /// Labels per VM.
    pub const LABELS: usize = 64;
}

/// Defaults applied when a field is absent.
pub mod defaults {
    /// vCPUs.
    pub const VCPUS: u32 = 1;
    /// Memory in MiB.
    pub const MEMORY_MIB: u32 = 256;
    /// Boot image.
    pub const IMAGE: &str = "minimal";
}

/// Common misspellings that edit distance would not catch.
pub(super) const ALIASES: &[(&str, &str)] = &[
    ("memory", "memory_mib"),
    ("mem", "memory_mib"),
    ("ram", "memory_mib"),
    ("cpus", "vcpus"),
    ("cpu", "vcpus"),
    ("smp", "vcpus"),
    ("disks", "disk"),
    ("drive", "disk"),
    ("drives", "disk"),
    ("nics", "nic"),
    ("net", "nic"),
    ("network", "nic"),
    ("size", "size_mib"),
    ("path", "source"),
    ("file", "source"),
    ("ro", "readonly"),
    ("read_only", "readonly"),
    ("ports", "forward"),
    ("forwards", "forward"),
    ("accelerator", "accel"),
    ("machine_type", "type"),
    ("append", "cmdline"),
    ("kernel_cmdline", "cmdline"),
    ("version", "schema_version"),
    ("label", "labels"),
];

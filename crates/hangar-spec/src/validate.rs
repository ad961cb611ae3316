//! The validating walker: document tree → normalised [`VmSpec`], collecting every problem.
//!
//! The walker never stops at the first error: each field is checked on its own and a broken
//! field only suppresses checks that depend on it. The field lists here are the spec format;
//! `schema.rs` describes the same format for JSON Schema, and a test keeps the two equal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hangar_core::error::ErrorCode;
use hangar_core::ids::{DeviceName, InvalidName, PoolId, TenantId, VmName};
use hangar_core::spec::*;

use crate::diag::{closest, Diagnostic};
use crate::node::Node;
use crate::paths::{normalize, PathProblem};
use crate::secrets;

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
pub const NIC_FIELDS: &[&str] = &["name", "mode", "forward"];
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
const ALIASES: &[(&str, &str)] = &[
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

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

struct Obj<'n> {
    map: &'n BTreeMap<String, Node>,
    path: String,
}

impl<'n> Obj<'n> {
    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub(crate) struct Walker<'a> {
    errors: Vec<Diagnostic>,
    base_dir: &'a Path,
}

impl<'a> Walker<'a> {
    pub(crate) fn new(base_dir: &'a Path) -> Self {
        Self {
            errors: Vec::new(),
            base_dir,
        }
    }

    fn push(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn type_error(&mut self, path: String, want: &str, got: &Node) {
        self.push(
            Diagnostic::new(
                ErrorCode::SpecType,
                path,
                format!("expected {want}, found {}", got.type_name()),
            )
            .hint(format!("write this value as {want}")),
        );
    }

    /// A table whose keys must all be in `known`.
    fn obj<'n>(&mut self, node: &'n Node, path: String, known: &[&str]) -> Option<Obj<'n>> {
        let Node::Obj(map) = node else {
            self.type_error(path, "a table", node);
            return None;
        };
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let suggestion = ALIASES
                .iter()
                .find(|(alias, target)| alias == key && known.contains(target))
                .map(|(_, target)| *target)
                .or_else(|| closest(key, known));
            let hint = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("remove it; fields allowed here: {}", known.join(", ")),
            };
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecUnknownField,
                    join(&path, key),
                    format!("unknown field `{key}`"),
                )
                .hint(hint),
            );
        }
        Some(Obj { map, path })
    }

    fn string<'n>(&mut self, o: &Obj<'n>, key: &str) -> Option<&'n str> {
        match o.map.get(key)? {
            Node::Str(s) => Some(s),
            other => {
                self.type_error(o.at(key), "a string", other);
                None
            }
        }
    }

    fn int(&mut self, o: &Obj<'_>, key: &str, (min, max): (i64, i64), unit: &str) -> Option<i64> {
        match o.map.get(key)? {
            Node::Int(i) if (min..=max).contains(i) => Some(*i),
            Node::Int(i) => {
                self.push(
                    Diagnostic::new(
                        ErrorCode::SpecOutOfRange,
                        o.at(key),
                        format!("{i}{unit} is outside the allowed range {min}..={max}{unit}"),
                    )
                    .hint(format!("use a value from {min} to {max}")),
                );
                None
            }
            other => {
                self.type_error(o.at(key), "an integer", other);
                None
            }
        }
    }

    fn boolean(&mut self, o: &Obj<'_>, key: &str) -> Option<bool> {
        match o.map.get(key)? {
            Node::Bool(b) => Some(*b),
            other => {
                self.type_error(o.at(key), "true or false", other);
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, o: &Obj<'_>, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let value = self.string(o, key)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let hint = match closest(value, &names) {
            Some(s) => format!("did you mean \"{s}\"? allowed: {}", names.join(", ")),
            None => format!("allowed values: {}", names.join(", ")),
        };
        self.push(
            Diagnostic::new(
                ErrorCode::SpecInvalidValue,
                o.at(key),
                format!("{value:?} is not a valid {key}"),
            )
            .hint(hint),
        );
        None
    }

    fn missing(&mut self, o: &Obj<'_>, key: &str, example: &str) {
        self.push(
            Diagnostic::new(
                ErrorCode::SpecMissingField,
                o.at(key),
                format!("required field `{key}` is missing"),
            )
            .hint(format!("add {example}")),
        );
    }

    fn name_error(&mut self, path: String, e: InvalidName) {
        self.push(Diagnostic::new(e.code(), path, e.to_string()).hint(e.hint()));
    }

    fn file_path(&mut self, o: &Obj<'_>, key: &str) -> Option<String> {
        let raw = self.string(o, key)?;
        match normalize(raw, self.base_dir) {
            Ok(p) => Some(p),
            Err(PathProblem::Forbidden(p)) => {
                self.push(
                    Diagnostic::new(
                        ErrorCode::SpecForbiddenPath,
                        o.at(key),
                        format!("{p} is inside /proc, /sys or /dev"),
                    )
                    .hint("point it at a regular image or kernel file"),
                );
                None
            }
            Err(PathProblem::Invalid(why)) => {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidPath,
                    o.at(key),
                    format!("{raw:?} is not a usable path: {why}"),
                ));
                None
            }
        }
    }

    fn secret_check(&mut self, path: String, what: &str, value: &str) {
        if let Some(kind) = secrets::looks_secret(value) {
            self.push(Diagnostic::new(
                ErrorCode::SpecSecret,
                path,
                format!("{what} looks like it contains a {kind}; specs are stored and printed"),
            ));
        }
    }

    /// Validates a whole document.
    pub(crate) fn spec(mut self, root: &Node) -> Result<VmSpec, Vec<Diagnostic>> {
        let Some(top) = self.obj(root, String::new(), TOP_FIELDS) else {
            return Err(self.errors);
        };
        match top.map.get("schema_version") {
            None => self.missing(&top, "schema_version", "`schema_version = 1` at the top"),
            Some(Node::Int(1)) => {}
            Some(Node::Int(v)) => self.push(
                Diagnostic::new(
                    ErrorCode::SpecSchemaVersion,
                    "schema_version",
                    format!("schema_version {v} is not supported (this Hangar reads 1)"),
                )
                .hint("set schema_version = 1"),
            ),
            Some(other) => self.type_error("schema_version".into(), "an integer", other),
        }
        let name = match self.string(&top, "name") {
            None if !top.map.contains_key("name") => {
                self.missing(&top, "name", "`name = \"my-vm\"`");
                None
            }
            None => None,
            Some(n) => VmName::new(n)
                .map_err(|e| self.name_error("name".into(), e))
                .ok(),
        };
        let machine = self.machine(&top);
        let boot = self.boot(&top);
        let disks = self.disks(&top);
        let nics = self.nics(&top);
        let serial = self.serial(&top);
        let labels = self.labels(&top);
        let tenant = self.string(&top, "tenant").and_then(|t| {
            TenantId::new(t)
                .map_err(|e| self.name_error("tenant".into(), e))
                .ok()
        });
        let pool = self.string(&top, "pool").and_then(|p| {
            PoolId::new(p)
                .map_err(|e| self.name_error("pool".into(), e))
                .ok()
        });

        let name = name.and_then(|n| self.tenant_name(n, tenant.as_ref()));

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let (
            Some(name),
            Some(machine),
            Some(boot),
            Some(disks),
            Some(nics),
            Some(serial),
            Some(labels),
        ) = (name, machine, boot, disks, nics, serial, labels)
        else {
            unreachable!("a section failed without reporting why");
        };
        Ok(VmSpec {
            name,
            machine,
            boot,
            disks,
            nics,
            serial,
            labels,
            tenant,
            pool,
        })
    }

    /// A tenant's VM lives in its namespace: `web` of tenant `acme` is `acme--web` (see
    /// [`hangar_core::ids::TENANT_SEPARATOR`]). A name that already carries a tenant prefix
    /// must carry its own tenant's.
    fn tenant_name(&mut self, name: VmName, tenant: Option<&TenantId>) -> Option<VmName> {
        let sep = hangar_core::ids::TENANT_SEPARATOR;
        if let Some(prefix) = hangar_core::ids::tenant_prefix(name.as_str()) {
            if tenant.is_none_or(|t| t.as_str() != prefix) {
                self.push(
                    Diagnostic::new(
                        ErrorCode::InvalidName,
                        "name",
                        format!(
                            "{name:?} has the form TENANT{sep}NAME, which only a VM of tenant {prefix:?} may have"
                        ),
                    )
                    .hint(format!(
                        "use single hyphens in the name, or set tenant = \"{prefix}\""
                    )),
                );
                return None;
            }
            return Some(name);
        }
        let Some(tenant) = tenant else {
            return Some(name);
        };
        VmName::new(hangar_core::ids::qualify(tenant, name.as_str()))
            .map_err(|e| {
                self.push(
                    Diagnostic::new(
                        ErrorCode::InvalidName,
                        "name",
                        format!(
                            "{name:?} in tenant {tenant:?} becomes {:?}, which is {} characters long, at most {}",
                            e.value,
                            e.value.len(),
                            hangar_core::ids::MAX_NAME_LEN
                        ),
                    )
                    .hint("use a shorter name (a tenant's VMs are named TENANT--NAME on the host)"),
                )
            })
            .ok()
    }

    fn section<'n>(
        &mut self,
        top: &Obj<'n>,
        key: &str,
        known: &[&str],
    ) -> Result<Option<Obj<'n>>, ()> {
        match top.map.get(key) {
            None => Ok(None),
            Some(node) => self.obj(node, top.at(key), known).map(Some).ok_or(()),
        }
    }

    fn machine(&mut self, top: &Obj<'_>) -> Option<MachineSpec> {
        let mut spec = MachineSpec {
            vcpus: defaults::VCPUS,
            memory_mib: defaults::MEMORY_MIB,
            accel: AccelRequest::Auto,
            kind: MachineKind::Microvm,
            cpu_weight: None,
        };
        let Some(o) = self.section(top, "machine", MACHINE_FIELDS).ok()? else {
            return Some(spec);
        };
        let before = self.errors.len();
        if let Some(v) = self.int(&o, "vcpus", limits::VCPUS, "") {
            spec.vcpus = v as u32;
        }
        if let Some(v) = self.int(&o, "memory_mib", limits::MEMORY_MIB, " MiB") {
            spec.memory_mib = v as u32;
        }
        if let Some(v) = self.int(&o, "cpu_weight", limits::CPU_WEIGHT, "") {
            spec.cpu_weight = Some(v as u32);
        }
        let accels = [
            ("auto", AccelRequest::Auto),
            ("kvm", AccelRequest::Kvm),
            ("tcg", AccelRequest::Tcg),
        ];
        if let Some(v) = self.choice(&o, "accel", &accels) {
            spec.accel = v;
        }
        let kinds = [("microvm", MachineKind::Microvm), ("q35", MachineKind::Q35)];
        if let Some(v) = self.choice(&o, "type", &kinds) {
            spec.kind = v;
        }
        (self.errors.len() == before).then_some(spec)
    }

    fn cmdline(&mut self, o: &Obj<'_>) -> Option<String> {
        let Some(raw) = self.string(o, "cmdline") else {
            return Some(String::new()).filter(|_| !o.map.contains_key("cmdline"));
        };
        // Kernel arguments are whitespace-separated: any run of spaces, tabs or newlines means
        // the same thing, so the canonical form uses single spaces.
        let normalized = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if normalized.len() > limits::CMDLINE {
            self.push(Diagnostic::new(
                ErrorCode::SpecOutOfRange,
                o.at("cmdline"),
                format!(
                    "the command line is {} bytes, at most {}",
                    normalized.len(),
                    limits::CMDLINE
                ),
            ));
            return None;
        }
        if normalized.chars().any(|c| c.is_control()) {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecInvalidValue,
                    o.at("cmdline"),
                    "the command line contains control characters",
                )
                .hint("remove control characters from cmdline"),
            );
            return None;
        }
        self.secret_check(o.at("cmdline"), "the kernel command line", &normalized);
        Some(normalized)
    }

    fn boot(&mut self, top: &Obj<'_>) -> Option<BootSource> {
        let Some(o) = self.section(top, "boot", BOOT_FIELDS).ok()? else {
            return Some(BootSource::Image {
                image: defaults::IMAGE.to_string(),
                cmdline: String::new(),
            });
        };
        let before = self.errors.len();
        let has = |k: &str| o.map.contains_key(k);
        if has("image") && has("kernel") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.path.clone(),
                    "both `image` and `kernel` are set; a VM boots from one source",
                )
                .hint("keep `image` (a built-in image) or `kernel` (+ `initrd`), not both"),
            );
        } else if has("image") && has("initrd") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.at("initrd"),
                    "`initrd` belongs to kernel boot, but this spec boots a built-in image",
                )
                .hint("remove `initrd`, or replace `image` with `kernel`"),
            );
        } else if has("initrd") && !has("kernel") {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecBootConflict,
                    o.at("initrd"),
                    "`initrd` without `kernel`",
                )
                .hint("add `kernel = \"path/to/vmlinuz\"`"),
            );
        }
        let cmdline = self.cmdline(&o);
        let source = if has("kernel") {
            let kernel = self.file_path(&o, "kernel");
            let initrd = if has("initrd") {
                self.file_path(&o, "initrd").map(Some)
            } else {
                Some(None)
            };
            match (kernel, initrd, cmdline) {
                (Some(kernel), Some(initrd), Some(cmdline)) => Some(BootSource::Kernel {
                    kernel,
                    initrd,
                    cmdline,
                }),
                _ => None,
            }
        } else {
            let image = match self.string(&o, "image") {
                Some(image) if BUILTIN_IMAGES.contains(&image) => Some(image.to_string()),
                Some(image) => {
                    let hint = match closest(image, BUILTIN_IMAGES) {
                        Some(s) => format!(
                            "did you mean \"{s}\"? built-in images: {}",
                            BUILTIN_IMAGES.join(", ")
                        ),
                        None => format!(
                            "built-in images: {}; or boot a file with `kernel = ...`",
                            BUILTIN_IMAGES.join(", ")
                        ),
                    };
                    self.push(
                        Diagnostic::new(
                            ErrorCode::SpecUnknownImage,
                            o.at("image"),
                            format!("there is no built-in image {image:?}"),
                        )
                        .hint(hint),
                    );
                    None
                }
                None if has("image") => None,
                None => Some(defaults::IMAGE.to_string()),
            };
            match (image, cmdline) {
                (Some(image), Some(cmdline)) => Some(BootSource::Image { image, cmdline }),
                _ => None,
            }
        };
        source.filter(|_| self.errors.len() == before)
    }

    fn array_of_tables<'n>(
        &mut self,
        top: &Obj<'n>,
        key: &str,
        known: &[&str],
        max: usize,
    ) -> Option<Vec<Obj<'n>>> {
        let node = match top.map.get(key) {
            None => return Some(Vec::new()),
            Some(node) => node,
        };
        let Node::Arr(items) = node else {
            self.type_error(
                top.at(key),
                &format!("an array of tables ([[{key}]])"),
                node,
            );
            return None;
        };
        if items.len() > max {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecOutOfRange,
                    top.at(key),
                    format!("{} {key} entries, at most {max}", items.len()),
                )
                .hint(format!("use at most {max} {key} entries")),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.obj(item, format!("{}[{i}]", top.at(key)), known) {
                Some(o) => out.push(o),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn device_name(
        &mut self,
        o: &Obj<'_>,
        seen: &mut BTreeSet<String>,
        what: &str,
    ) -> Option<DeviceName> {
        let Some(raw) = self.string(o, "name") else {
            if !o.map.contains_key("name") {
                self.missing(o, "name", &format!("`name = \"{what}0\"`"));
            }
            return None;
        };
        let name = DeviceName::new(raw)
            .map_err(|e| self.name_error(o.at("name"), e))
            .ok()?;
        if !seen.insert(raw.to_string()) {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecDuplicateName,
                    o.at("name"),
                    format!("another {what} is already named {raw:?}"),
                )
                .hint(format!("give each {what} a unique name")),
            );
            return None;
        }
        Some(name)
    }

    fn disks(&mut self, top: &Obj<'_>) -> Option<Vec<DiskSpec>> {
        let items = self.array_of_tables(top, "disk", DISK_FIELDS, limits::DISKS)?;
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for o in &items {
            let name = self.device_name(o, &mut seen, "disk");
            let readonly = self.boolean(o, "readonly");
            let formats = [("qcow2", DiskFormat::Qcow2), ("raw", DiskFormat::Raw)];
            let format = self.choice(o, "format", &formats);
            let source = match (o.map.contains_key("source"), o.map.contains_key("size_mib")) {
                (true, true) | (false, false) => {
                    self.push(
                        Diagnostic::new(
                            ErrorCode::SpecDiskSource,
                            o.path.clone(),
                            "a disk needs exactly one of `source` (a base image) or `size_mib` (a blank disk)",
                        )
                        .hint("keep `source = \"base.qcow2\"` or `size_mib = 1024`, not both"),
                    );
                    None
                }
                (true, false) => self
                    .file_path(o, "source")
                    .map(|source| DiskSource::Base { source }),
                (false, true) => {
                    if readonly == Some(true) {
                        self.push(
                            Diagnostic::new(
                                ErrorCode::SpecDiskSource,
                                o.at("readonly"),
                                "a blank disk cannot be read-only: it would stay empty forever",
                            )
                            .hint("remove `readonly`, or give the disk a `source`"),
                        );
                    }
                    self.int(o, "size_mib", limits::DISK_MIB, " MiB")
                        .map(|size_mib| DiskSource::Blank {
                            size_mib: size_mib as u64,
                        })
                }
            };
            if let (Some(name), Some(source)) = (name, source) {
                // The format follows the file name when not given: `.raw` and `.img` are raw,
                // everything else (and every blank disk) is qcow2.
                let inferred = match &source {
                    DiskSource::Base { source }
                        if source.ends_with(".raw") || source.ends_with(".img") =>
                    {
                        DiskFormat::Raw
                    }
                    _ => DiskFormat::Qcow2,
                };
                out.push(DiskSpec {
                    name,
                    source,
                    format: format.unwrap_or(inferred),
                    readonly: readonly.unwrap_or(false),
                });
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn nics(&mut self, top: &Obj<'_>) -> Option<Vec<NicSpec>> {
        let items = self.array_of_tables(top, "nic", NIC_FIELDS, limits::NICS)?;
        let before = self.errors.len();
        let mut seen = BTreeSet::new();
        let mut ports: BTreeMap<(Protocol, u16), String> = BTreeMap::new();
        let mut out = Vec::new();
        for o in &items {
            let name = self.device_name(o, &mut seen, "nic");
            let modes = [
                ("user", NicMode::User),
                ("tap", NicMode::Tap),
                ("none", NicMode::None),
            ];
            let mode = if o.map.contains_key("mode") {
                self.choice(o, "mode", &modes)
            } else {
                Some(NicMode::User)
            };
            let forward = self.forwards(o, mode, &mut ports);
            if let (Some(name), Some(mode), Some(forward)) = (name, mode, forward) {
                out.push(NicSpec {
                    name,
                    mode,
                    forward,
                });
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn forwards(
        &mut self,
        o: &Obj<'_>,
        mode: Option<NicMode>,
        ports: &mut BTreeMap<(Protocol, u16), String>,
    ) -> Option<Vec<PortForward>> {
        let Some(node) = o.map.get("forward") else {
            return Some(Vec::new());
        };
        let Node::Arr(items) = node else {
            self.type_error(o.at("forward"), "an array of strings", node);
            return None;
        };
        if !items.is_empty() && mode.is_some_and(|m| m != NicMode::User) {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecForward,
                    o.at("forward"),
                    "port forwards need user-mode networking",
                )
                .hint("set mode = \"user\" on this NIC, or remove `forward`"),
            );
            return None;
        }
        let before = self.errors.len();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", o.at("forward"));
            let Node::Str(rule) = item else {
                self.type_error(path, "a string like \"8080:80\"", item);
                continue;
            };
            match parse_forward(rule) {
                Ok(fwd) => {
                    if let Some(first) = ports.insert((fwd.proto, fwd.host), path.clone()) {
                        self.push(
                            Diagnostic::new(
                                ErrorCode::SpecDuplicatePort,
                                path,
                                format!("host port {}/{} is already forwarded by {first}", fwd.host, fwd.proto.as_str()),
                            )
                            .hint("use a different host port"),
                        );
                    } else {
                        out.push(fwd);
                    }
                }
                Err(ForwardProblem::Syntax) => self.push(
                    Diagnostic::new(ErrorCode::SpecForward, path, format!("{rule:?} is not a forward rule"))
                        .hint("write \"HOST_PORT:GUEST_PORT\", optionally prefixed with tcp: or udp:, e.g. \"tcp:8080:80\""),
                ),
                Err(ForwardProblem::Port(p)) => self.push(
                    Diagnostic::new(ErrorCode::SpecOutOfRange, path, format!("port {p} is outside 1..=65535"))
                        .hint("ports are 1 to 65535"),
                ),
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn serial(&mut self, top: &Obj<'_>) -> Option<SerialSpec> {
        let default = SerialSpec {
            mode: SerialMode::Socket,
        };
        let Some(o) = self.section(top, "serial", SERIAL_FIELDS).ok()? else {
            return Some(default);
        };
        if !o.map.contains_key("mode") {
            return Some(default);
        }
        let modes = [
            ("log", SerialMode::Log),
            ("socket", SerialMode::Socket),
            ("none", SerialMode::None),
        ];
        self.choice(&o, "mode", &modes)
            .map(|mode| SerialSpec { mode })
    }

    fn labels(&mut self, top: &Obj<'_>) -> Option<BTreeMap<String, String>> {
        let Some(node) = top.map.get("labels") else {
            return Some(BTreeMap::new());
        };
        let Node::Obj(map) = node else {
            self.type_error("labels".into(), "a table of strings", node);
            return None;
        };
        let before = self.errors.len();
        if map.len() > limits::LABELS {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecOutOfRange,
                    "labels",
                    format!("{} labels, at most {}", map.len(), limits::LABELS),
                )
                .hint(format!("use at most {} labels", limits::LABELS)),
            );
        }
        let mut out = BTreeMap::new();
        for (key, value) in map {
            let path = format!("labels.{key}");
            let Node::Str(value) = value else {
                self.type_error(path, "a string", value);
                continue;
            };
            if !valid_label_key(key) {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidLabel,
                    path.clone(),
                    format!("label key {key:?} is malformed"),
                ));
                continue;
            }
            if value.chars().count() > 256 || value.chars().any(|c| c.is_control()) {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidLabel,
                    path.clone(),
                    "label values are at most 256 printable characters",
                ));
                continue;
            }
            if secrets::secret_key(key) && !value.is_empty() {
                self.push(Diagnostic::new(
                    ErrorCode::SpecSecret,
                    path.clone(),
                    format!(
                        "label {key:?} looks like it holds a secret; specs are stored and printed"
                    ),
                ));
                continue;
            }
            self.secret_check(path, &format!("label {key:?}"), value);
            out.insert(key.clone(), value.clone());
        }
        (self.errors.len() == before).then_some(out)
    }
}

fn valid_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && key.len() <= 63
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
        })
}

enum ForwardProblem {
    Syntax,
    Port(u64),
}

/// Parses `[tcp:|udp:]HOST:GUEST`. The protocol defaults to tcp, so `"8080:80"` and
/// `"tcp:8080:80"` are the same rule.
fn parse_forward(rule: &str) -> Result<PortForward, ForwardProblem> {
    let parts: Vec<&str> = rule.trim().split(':').collect();
    let (proto, host, guest) = match parts.as_slice() {
        [host, guest] => (Protocol::Tcp, *host, *guest),
        [proto, host, guest] => {
            let proto = match proto.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return Err(ForwardProblem::Syntax),
            };
            (proto, *host, *guest)
        }
        _ => return Err(ForwardProblem::Syntax),
    };
    let port = |s: &str| -> Result<u16, ForwardProblem> {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) || s.len() > 6 {
            return Err(ForwardProblem::Syntax);
        }
        let n: u64 = s.parse().map_err(|_| ForwardProblem::Syntax)?;
        u16::try_from(n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(ForwardProblem::Port(n))
    };
    Ok(PortForward {
        proto,
        host: port(host)?,
        guest: port(guest)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_rules() {
        let f = |s| parse_forward(s).ok();
        assert_eq!(f("8080:80"), f("tcp:8080:80"));
        assert_eq!(f("UDP:53:53").unwrap().proto, Protocol::Udp);
        assert!(f("sctp:1:2").is_none());
        assert!(f("80").is_none());
        assert!(f("a:b").is_none());
        assert!(matches!(
            parse_forward("0:80"),
            Err(ForwardProblem::Port(0))
        ));
        assert!(matches!(
            parse_forward("70000:80"),
            Err(ForwardProblem::Port(70000))
        ));
    }

    #[test]
    fn label_keys() {
        assert!(valid_label_key("app"));
        assert!(valid_label_key("hangar.dev/role"));
        assert!(!valid_label_key("App"));
        assert!(!valid_label_key("-x"));
        assert!(!valid_label_key(""));
    }
}

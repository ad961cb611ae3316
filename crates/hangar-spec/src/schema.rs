//! The spec file format as Rust types, for the JSON Schema (`schema/vm-spec-v1.json`).
//!
//! These types describe what a user writes (optional fields, file paths as written). The
//! validating walker in `validate/` is what actually reads specs, because it reports every
//! problem with a code and a hint instead of stopping at the first. Tests keep the two in step:
//! the field names must match, and every valid corpus spec must pass the schema.
//!
//! The schema says as much of what the validator checks as JSON Schema can, so that an editor
//! flags a mistake where it is typed: name grammars, ranges and choices, one boot source, one
//! disk source, port-forward rules, control characters, paths inside /proc, /sys or /dev as
//! written, secrets (by the validator's own heuristics) and the length a name takes in its
//! tenant's namespace. It never refuses a spec the validator accepts: `tests/schema_corpus.rs`
//! runs the corpus and probes through a real JSON Schema validator. What it cannot say, only
//! the validator reports: unique names within `disk` and within `nic`, a host port forwarded
//! twice, a name prefixed with another tenant's, paths that reach /proc, /sys or /dev through
//! deeper `..` or from a relative path, the 2048-byte limit of the command line once its
//! whitespace is collapsed, an integer written as `256.0`, and everything about the host.
//!
//! The patterns are ECMA-262 regular expressions that mean the same in Python's `re` (the test's
//! validator): whitespace is spelled out, not `\s` (the two disagree with each other and with
//! Rust on what it is), and a pattern that refuses has no `$` (Python's also matches before a
//! final newline).

use std::borrow::Cow;
use std::collections::BTreeMap;

use hangar_core::ids::{MAX_NAME_LEN, MAX_TENANT_ID_LEN, TENANT_SEPARATOR};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::paths::FORBIDDEN_ROOTS;
use crate::secrets::{SECRET_WORDS, TOKEN_PREFIXES};
use crate::validate::{limits, BUILTIN_IMAGES};

/// The schema's `$id`: where it is published, and what editors and `$schema` fields name.
pub const SCHEMA_ID: &str = "https://hangar.dev/schema/vm-spec-v1.json";

/// A Hangar VM spec (`vm.toml` or `vm.json`), schema version 1.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Hangar VM spec v1")]
pub struct SpecFile {
    /// Always 1 for this schema.
    #[schemars(range(min = 1, max = 1), extend("examples" = [1]))]
    pub schema_version: u32,
    /// VM name: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'. With a
    /// `tenant`, the VM is named TENANT--NAME on the host, which must fit in 63 characters
    /// too; a name that is already TENANT--NAME needs that `tenant`.
    #[schemars(with = "Name", extend("examples" = ["web", "acme-web-1"]))]
    pub name: String,
    /// Virtual hardware; every field has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("examples" = [{"vcpus": 2, "memory_mib": 1024}]))]
    pub machine: Option<MachineFile>,
    /// What to boot; defaults to the built-in `minimal` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("examples" = [
        {"image": "minimal", "cmdline": "loglevel=4"},
        {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0 root=/dev/vda"}
    ]))]
    pub boot: Option<BootFile>,
    /// Disks, in guest order (`vda`, `vdb`, …). At most 16, with unique names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = limits::DISKS),
        extend("examples" = [[
            {"name": "root", "source": "root.qcow2"},
            {"name": "data", "size_mib": 1024}
        ]])
    )]
    pub disk: Vec<DiskFile>,
    /// Network interfaces, in guest order. At most 8, with unique names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = limits::NICS),
        extend("examples" = [[
            {"name": "net0", "forward": ["8080:80"]},
            {"name": "net1", "mode": "bridge", "network": "lab"}
        ]])
    )]
    pub nic: Vec<NicFile>,
    /// The serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("examples" = [{"mode": "log"}]))]
    pub serial: Option<SerialFile>,
    /// Free-form labels, at most 64: keys of a-z, 0-9, '.', '_', '/', '-' (starting with a
    /// letter or digit, at most 63 characters); values of at most 256 printable characters.
    /// Neither may hold a secret: specs are stored and printed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        with = "Labels",
        extend("examples" = [{"team": "payments", "hangar.dev/role": "frontend"}])
    )]
    pub labels: BTreeMap<String, String>,
    /// Owning tenant: 1-24 characters of a-z, 0-9 and single '-' between them. The VM becomes
    /// TENANT--NAME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<TenantId>", extend("examples" = ["acme"]))]
    pub tenant: Option<String>,
    /// Pool this VM belongs to (a name); set by pools for their instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Name>", extend("examples" = ["web"]))]
    pub pool: Option<String>,
}

/// `[machine]`
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineFile {
    /// Virtual CPUs, 1-64 (default 1).
    #[schemars(range(min = limits::VCPUS.0, max = limits::VCPUS.1), extend("examples" = [1, 4]))]
    pub vcpus: Option<u32>,
    /// Memory in MiB, 64-262144 (default 256).
    #[schemars(
        range(min = limits::MEMORY_MIB.0, max = limits::MEMORY_MIB.1),
        extend("examples" = [256, 2048])
    )]
    pub memory_mib: Option<u32>,
    /// Accelerator (default `auto`: kvm where hardware virtualisation really works, else tcg).
    #[schemars(extend("examples" = ["auto", "tcg"]))]
    pub accel: Option<AccelFile>,
    /// Machine model (default `microvm`).
    #[serde(rename = "type")]
    #[schemars(extend("examples" = ["microvm", "q35"]))]
    pub kind: Option<MachineKindFile>,
    /// CPU weight against other VMs when the host is busy (1-10000; absent: the default,
    /// 100).
    #[schemars(
        range(min = limits::CPU_WEIGHT.0, max = limits::CPU_WEIGHT.1),
        extend("examples" = [100, 250])
    )]
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
// One boot source: `image` excludes `kernel` and `initrd`; `initrd` needs `kernel`.
#[schemars(extend(
    "dependentSchemas" = {"image": {"properties": {"kernel": false, "initrd": false}}},
    "dependentRequired" = {"initrd": ["kernel"]}
))]
pub struct BootFile {
    /// A built-in image: `minimal`. Not with `kernel` or `initrd`.
    #[schemars(extend("enum" = BUILTIN_IMAGES, "examples" = ["minimal"]))]
    pub image: Option<String>,
    /// Kernel file, absolute or relative to the spec file. Not with `image`.
    #[schemars(with = "Option<FilePath>", extend("examples" = ["vmlinuz", "/opt/kernels/vmlinux"]))]
    pub kernel: Option<String>,
    /// Initrd file (kernel boot only: needs `kernel`).
    #[schemars(with = "Option<FilePath>", extend("examples" = ["initrd.img"]))]
    pub initrd: Option<String>,
    /// Kernel command line (appended to the image's own for `image` boot). At most 2048 bytes
    /// once runs of whitespace are collapsed to one space; no other control characters.
    #[schemars(
        with = "Option<Cmdline>",
        extend("examples" = ["console=ttyS0 quiet", "loglevel=4"])
    )]
    pub cmdline: Option<String>,
}

/// `[[disk]]`: exactly one of `source` and `size_mib`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// Exactly one source; a blank disk (`size_mib`) cannot be read-only.
#[schemars(extend(
    "oneOf" = [{"required": ["source"]}, {"required": ["size_mib"]}],
    "dependentSchemas" = {"size_mib": {"properties": {"readonly": {"const": false}}}}
))]
pub struct DiskFile {
    /// Disk name, unique among the VM's disks.
    #[schemars(with = "Name", extend("examples" = ["root", "data"]))]
    pub name: String,
    /// Base image, absolute or relative to the spec file. Writable disks get a private overlay.
    /// Not with `size_mib`.
    #[schemars(
        with = "Option<FilePath>",
        extend("examples" = ["root.qcow2", "/srv/images/debian.qcow2"])
    )]
    pub source: Option<String>,
    /// Size of a new blank disk in MiB, 1-2097152 (2 TiB). Not with `source`.
    #[schemars(
        range(min = limits::DISK_MIB.0, max = limits::DISK_MIB.1),
        extend("examples" = [1024])
    )]
    pub size_mib: Option<u64>,
    /// Image format (default: raw for `.raw`/`.img` sources, else qcow2).
    #[schemars(extend("examples" = ["qcow2", "raw"]))]
    pub format: Option<DiskFormatFile>,
    /// Read-only (default false); only a disk with a `source` can be.
    #[schemars(extend("examples" = [true]))]
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
// `network` only on a bridge NIC; no forwards on a tap or unconnected NIC.
#[schemars(extend(
    "dependentSchemas" = {
        "network": {"required": ["mode"], "properties": {"mode": {"const": "bridge"}}}
    },
    "if" = {"required": ["mode"], "properties": {"mode": {"enum": ["tap", "none"]}}},
    "then" = {"properties": {"forward": {"maxItems": 0}}}
))]
pub struct NicFile {
    /// NIC name, unique among the VM's NICs.
    #[schemars(with = "Name", extend("examples" = ["net0"]))]
    pub name: String,
    /// How the NIC connects (default `user`).
    #[schemars(extend("examples" = ["user", "bridge"]))]
    pub mode: Option<NicModeFile>,
    /// Published ports `[tcp:|udp:][0.0.0.0:]HOST_PORT:GUEST_PORT` (user and bridge NICs; the host side binds 127.0.0.1 unless `0.0.0.0:` says every address). Each host port once per protocol, across all NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        with = "Vec<PortForward>",
        extend("uniqueItems" = true, "examples" = [["8080:80", "udp:5353:53", "0.0.0.0:8443:443"]])
    )]
    pub forward: Vec<String>,
    /// The network a `bridge` NIC joins (`hangar network ls`); default `default` (a tenant's VM, pool instances included: its tenant's default network). Only with `mode = "bridge"`.
    #[schemars(with = "Option<Name>", extend("examples" = ["lab", "default"]))]
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
    #[schemars(extend("examples" = ["socket", "log"]))]
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
    let mut schema = schemars::schema_for!(SpecFile).to_value();
    forbid_null(&mut schema);
    add_tenant_namespace(&mut schema);
    schema["$id"] = SCHEMA_ID.into();
    // Back to a `Schema`, which serialises keywords in a readable order ($id, $schema, title, …).
    let schema = schemars::Schema::try_from(schema).expect("a schema is an object");
    let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialise");
    text.push('\n');
    text
}

// --- post-processing of the generated schema ------------------------------------------------

/// Optional fields are `Option`s, which schemars lets be `null` (`"type": ["string", "null"]`,
/// `"anyOf": [{"$ref": …}, {"type": "null"}]`). A spec has no null (TOML has none, and the
/// validator refuses JSON's), so the schema drops it: a field is absent or has a value.
fn forbid_null(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    map["type"] = only.clone();
                }
            }
            if let Some(Value::Array(branches)) = map.get_mut("anyOf") {
                branches.retain(|b| *b != json!({"type": "null"}));
                if let [Value::Object(only)] = branches.as_slice() {
                    // `{"anyOf": [S]}` is S: its keywords replace `anyOf`.
                    let only = only.clone();
                    map.remove("anyOf");
                    map.extend(only);
                }
            }
            map.values_mut().for_each(forbid_null);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_null),
        _ => {}
    }
}

/// The rules between `name` and `tenant` (`validate::Walker::tenant_name`), as
/// `$defs/TenantNamespace`, which the spec as a whole must match.
///
/// A tenant's VM is named TENANT--NAME on the host. So a name holding "--" needs a tenant
/// (the validator also wants it to be *that* tenant's prefix, which JSON Schema cannot compare),
/// and any other name must fit in 63 characters after TENANT--. JSON Schema cannot add two
/// lengths, so there is one rule per tenant length L: with a tenant of L characters, the name
/// has at most 61 - L.
fn add_tenant_namespace(schema: &mut Value) {
    let sep = TENANT_SEPARATOR;
    let by_tenant_length: Vec<Value> = (1..=MAX_TENANT_ID_LEN)
        .map(|len| {
            json!({
                "if": {"properties": {"tenant": {"minLength": len, "maxLength": len}}},
                "then": {"properties": {"name": {"maxLength": MAX_NAME_LEN - sep.len() - len}}}
            })
        })
        .collect();
    schema["allOf"] = json!([{"$ref": "#/$defs/TenantNamespace"}]);
    schema["$defs"]["TenantNamespace"] = json!({
        "description": format!(
            "A tenant's VM is named TENANT{sep}NAME on the host: a name holding '{sep}' needs `tenant`, and any other must fit in {MAX_NAME_LEN} characters after TENANT{sep}."
        ),
        "if": {"required": ["name"], "properties": {"name": {"type": "string", "pattern": sep}}},
        "then": {"required": ["tenant"]},
        "else": {"dependentSchemas": {"tenant": {"allOf": by_tenant_length}}}
    });
}

// --- the value types the fields refer to ($defs) --------------------------------------------

/// Whitespace as Rust's `char::is_whitespace` and `str::trim` see it (Unicode White_Space),
/// spelled out as the inside of a character class.
const WHITESPACE: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// The name grammar (`hangar_core::ids::check_name`).
const NAME_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";

/// Names of VMs, pools, networks, disks and NICs.
enum Name {}

impl JsonSchema for Name {
    fn schema_name() -> Cow<'static, str> {
        "Name".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A name: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-' (a DNS label).",
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME_LEN,
            "pattern": NAME_PATTERN,
            "examples": ["web", "net0"]
        })
    }
}

/// Tenant ids (`hangar_core::ids::TenantId`).
enum TenantId {}

impl JsonSchema for TenantId {
    fn schema_name() -> Cow<'static, str> {
        "TenantId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": format!(
                "A tenant id: a name of at most {MAX_TENANT_ID_LEN} characters without '{TENANT_SEPARATOR}' (which separates a tenant from a name)."
            ),
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TENANT_ID_LEN,
            // Runs of a-z and 0-9 joined by single hyphens.
            "pattern": r"^[a-z0-9]+(-[a-z0-9]+)*$",
            "examples": ["acme"]
        })
    }
}

/// How deep the `..` excursions recognised before a forbidden root may nest (`/a/b/../../sys`).
const EXCURSION_DEPTH: usize = 2;

/// Kernel, initrd and disk source paths (`paths::normalize`).
enum FilePath {}

impl JsonSchema for FilePath {
    fn schema_name() -> Cow<'static, str> {
        "FilePath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A file, absolute or relative to the spec file: not blank, no NUL, and not inside /proc, /sys or /dev.",
            "type": "string",
            // Something besides whitespace, and no NUL anywhere.
            "pattern": format!(r"^[^\u0000]*[^\u0000{WHITESPACE}][^\u0000]*$"),
            "not": {"pattern": forbidden_path_pattern()},
            "examples": ["vmlinuz", "../images/root.qcow2", "/srv/images/debian.qcow2"]
        })
    }
}

/// An absolute path that the validator's lexical normalisation puts in a forbidden root.
///
/// Normalising `..` takes counting, which a regular expression cannot do in general: this one
/// recognises the root written as such (`/dev/sda`, `//sys/./x`, `/../proc/1`) and after
/// excursions that come back out up to [`EXCURSION_DEPTH`] deep (`/tmp/../sys/x`), with no `..`
/// after it. A relative path depends on the spec's directory, so it is never refused here.
fn forbidden_path_pattern() -> String {
    // A component ends where a '/' or the end of the path follows.
    let end = "(?![^/])";
    let dot = format!(r"/+\.{end}");
    let up = format!(r"/+\.\.{end}");
    let name = format!(r"/+(?!\.\.?{end})[^/]+");
    let mut excursion = format!("{name}(?:{dot})*{up}");
    for _ in 1..EXCURSION_DEPTH {
        excursion = format!("{name}(?:{dot}|{excursion})*{up}");
    }
    let roots: Vec<&str> = FORBIDDEN_ROOTS.iter().map(|r| r.trim_start_matches('/')).collect();
    let roots = roots.join("|");
    // At the root `..` stays at the root, so it is a no-op like `.`.
    format!(r"^(?:{dot}|{up}|{excursion})*/+(?:{roots}){end}(?![\s\S]*/\.\.{end})")
}

/// Port-forward rules (`nics::parse_forward`).
enum PortForward {}

impl JsonSchema for PortForward {
    fn schema_name() -> Cow<'static, str> {
        "PortForward".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`[tcp:|udp:][0.0.0.0:|127.0.0.1:]HOST_PORT:GUEST_PORT`, ports 1-65535 (the protocol defaults to tcp, the host address to 127.0.0.1).",
            "type": "string",
            "pattern": forward_pattern(),
            "examples": ["8080:80", "udp:5353:53", "0.0.0.0:8443:443"]
        })
    }
}

/// `nics::parse_forward` as a regular expression: trimmed, an optional protocol in any case,
/// an optional loopback or every-address host, and two ports of at most 6 digits (leading zeros
/// allowed) from 1 to 65535.
fn forward_pattern() -> String {
    let port = "(?:0{0,5}[1-9]|0{0,4}[1-9][0-9]|0{0,3}[1-9][0-9]{2}|0{0,2}[1-9][0-9]{3}\
                |0?(?:[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))";
    let proto = format!("(?:{}:|{}:)?", any_case("tcp"), any_case("udp"));
    let host = r"(?:127\.0\.0\.1:|0\.0\.0\.0:)?";
    format!("^[{WHITESPACE}]*{proto}{host}{port}:{port}[{WHITESPACE}]*$")
}

/// The kernel command line (`machine::cmdline`): whitespace of any kind is fine (it is
/// collapsed), other control characters are not, and it must not look like it holds a secret.
enum Cmdline {}

impl JsonSchema for Cmdline {
    fn schema_name() -> Cow<'static, str> {
        "Cmdline".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Kernel arguments: no control characters besides whitespace, and no secrets.",
            "type": "string",
            // Control characters (Unicode Cc) that are not whitespace.
            "pattern": r"^[^\u0000-\u0008\u000e-\u001f\u007f-\u0084\u0086-\u009f]*$",
            "allOf": [generator.subschema_for::<NoSecret>()],
            "examples": ["console=ttyS0 quiet"]
        })
    }
}

/// The `labels` table (`labels::labels`).
enum Labels {}

impl JsonSchema for Labels {
    fn schema_name() -> Cow<'static, str> {
        "Labels".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut secret_keys = serde_json::Map::new();
        // A key that names a secret may only hold an empty value.
        let words: Vec<String> = SECRET_WORDS.iter().map(|w| any_case(w)).collect();
        secret_keys.insert(words.join("|"), json!({"const": ""}));
        json_schema!({
            "type": "object",
            "maxProperties": limits::LABELS,
            "propertyNames": {"maxLength": 63, "pattern": r"^[a-z0-9][a-z0-9._/-]*$"},
            "patternProperties": secret_keys,
            "additionalProperties": {
                "type": "string",
                "maxLength": 256,
                // No control characters (Unicode Cc).
                "pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$",
                "allOf": [generator.subschema_for::<NoSecret>()]
            }
        })
    }
}

/// Texts that must not look like they hold a secret (`secrets::looks_secret`).
enum NoSecret {}

impl JsonSchema for NoSecret {
    fn schema_name() -> Cow<'static, str> {
        "NoSecret".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "No secret: no private key, no `password=…`-like word, no cloud or API token. Specs are stored and printed.",
            "not": {"pattern": secret_pattern()}
        })
    }
}

/// `secrets::looks_secret` as a regular expression. The text is split into words at
/// whitespace, ',' and ';'; a word is a secret when it is `KEY=VALUE` or `KEY:VALUE` with a
/// secret word in KEY and a VALUE, or a token: `AKIA` + 16 or more of A-Z and 0-9, a
/// [`TOKEN_PREFIXES`] prefix + 20 or more of A-Z, a-z, 0-9, '_' and '-', or `xox[bpas]-` + 11
/// or more characters (the validator counts bytes there: fewer characters may be enough for it,
/// never more).
fn secret_pattern() -> String {
    let split = format!("{WHITESPACE},;");
    let start = format!("(?:^|[{split}])");
    let end = format!("(?![^{split}])");
    let words: Vec<String> = SECRET_WORDS.iter().map(|w| any_case(w)).collect();
    let words = words.join("|");
    let prefixes = TOKEN_PREFIXES.join("|");
    [
        "PRIVATE KEY-----".to_string(),
        format!("{start}[^{split}=:]*(?:{words})[^{split}=:]*[=:][^{split}]"),
        format!("{start}AKIA[A-Z0-9]{{16,}}{end}"),
        format!("{start}(?:{prefixes})[A-Za-z0-9_-]{{20,}}{end}"),
        format!("{start}xox[bpas]-[^{split}]{{11,}}"),
    ]
    .join("|")
}

/// `word` matching without regard to ASCII case: `tcp` → `[tT][cC][pP]`.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_null_is_left_and_the_id_is_set() {
        let text = schema_json();
        assert!(!text.contains("\"null\""), "{text}");
        let schema: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(schema["$id"], SCHEMA_ID);
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }

    #[test]
    fn any_case_spells_out_letters_only() {
        assert_eq!(any_case("api-key"), "[aA][pP][iI]-[kK][eE][yY]");
    }
}

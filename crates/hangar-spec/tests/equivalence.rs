//! Canonicalisation: specs that mean the same thing give identical canonical bytes and hash;
//! specs that differ in meaning do not.

use std::path::Path;

use hangar_spec::{parse, CanonicalSpec, Format};

fn canon(text: &str, format: Format) -> CanonicalSpec {
    parse(text, format, Path::new("/specs/web")).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn toml(text: &str) -> CanonicalSpec {
    canon(text, Format::Toml)
}

const BASE: &str = r#"
schema_version = 1
name = "web"

[machine]
vcpus = 2
memory_mib = 512

[boot]
kernel = "vmlinuz"
cmdline = "console=ttyS0 quiet"

[[disk]]
name = "root"
source = "root.qcow2"

[[nic]]
name = "net0"
forward = ["8080:80"]

[labels]
app = "web"
tier = "1"
"#;

#[test]
fn equivalent_spellings_canonicalise_identically() {
    let base = toml(BASE);
    let variants = [
        // Keys reordered, comments and blank lines added.
        r#"
# a comment
name = "web"   # trailing comment
schema_version = 1
[labels]
tier = "1"
app = "web"
[[nic]]
forward = ["8080:80"]
name = "net0"
[[disk]]
source = "root.qcow2"
name = "root"
[boot]
cmdline = "console=ttyS0 quiet"
kernel = "vmlinuz"
[machine]
memory_mib = 512
vcpus = 2
"#,
        // Defaults written out; equivalent paths, forward and cmdline spellings.
        r#"
schema_version = 1
name = "web"
[machine]
vcpus = 2
memory_mib = 512
accel = "auto"
type = "microvm"
[boot]
kernel = "./sub/../vmlinuz"
cmdline = """
   console=ttyS0
   quiet
"""
[[disk]]
name = "root"
source = "/specs/web/root.qcow2"
format = "qcow2"
readonly = false
[[nic]]
name = "net0"
mode = "user"
forward = ["tcp:8080:80"]
[serial]
mode = "socket"
[labels]
app = "web"
tier = "1"
"#,
        // Inline tables and dotted keys.
        r#"
schema_version = 1
name = "web"
machine = { vcpus = 2, memory_mib = 512 }
boot.kernel = "vmlinuz"
boot.cmdline = "console=ttyS0   quiet"
disk = [ { name = "root", source = "root.qcow2" } ]
nic = [ { name = "net0", forward = [ "8080:80" ] } ]
labels = { tier = "1", app = "web" }
"#,
    ];
    for v in variants {
        let c = toml(v);
        assert_eq!(c.json, base.json, "variant:\n{v}");
        assert_eq!(c.hash, base.hash);
    }
    let json = r#"{"labels":{"tier":"1","app":"web"},"nic":[{"name":"net0","forward":["8080:80"]}],
        "disk":[{"source":"root.qcow2","name":"root"}],"boot":{"cmdline":"console=ttyS0 quiet","kernel":"vmlinuz"},
        "machine":{"memory_mib":512,"vcpus":2},"name":"web","schema_version":1}"#;
    assert_eq!(canon(json, Format::Json).json, base.json);
}

#[test]
fn different_meanings_hash_differently() {
    let base = toml(BASE);
    let changes = [
        ("vcpus = 2", "vcpus = 3"),
        ("memory_mib = 512", "memory_mib = 513"),
        ("\"8080:80\"", "\"udp:8080:80\""),
        ("source = \"root.qcow2\"", "source = \"root2.qcow2\""),
        ("cmdline = \"console=ttyS0 quiet\"", "cmdline = \"quiet console=ttyS0\""),
        ("tier = \"1\"", "tier = \"2\""),
        ("name = \"web\"", "name = \"web2\""),
    ];
    for (from, to) in changes {
        assert!(BASE.contains(from), "{from}");
        let changed = toml(&BASE.replacen(from, to, 1));
        assert_ne!(changed.hash, base.hash, "{from} -> {to}");
    }
    // Disk and NIC order is guest-visible (vda vs vdb): order matters.
    let two = "schema_version = 1\nname = \"a\"\n[[disk]]\nname = \"x\"\nsize_mib = 1\n[[disk]]\nname = \"y\"\nsize_mib = 1\n";
    let swapped = "schema_version = 1\nname = \"a\"\n[[disk]]\nname = \"y\"\nsize_mib = 1\n[[disk]]\nname = \"x\"\nsize_mib = 1\n";
    assert_ne!(toml(two).hash, toml(swapped).hash);
}

#[test]
fn canonical_json_is_rfc8785() {
    // Sorted keys (by UTF-16 code units), no whitespace, minimal escapes, non-ASCII kept as is.
    let c = toml(
        "schema_version = 1\nname = \"a\"\n[labels]\nb = \"\u{20ac} \\\"q\\\" \\\\\"\nab = \"x\"\n",
    );
    assert!(c.json.contains(r#""labels":{"ab":"x","b":"€ \"q\" \\"}"#), "{}", c.json);
    assert!(!c.json.contains(' ') || c.json.contains("€ "), "no insignificant whitespace");
    let reparsed: serde_json::Value = serde_json::from_str(&c.json).unwrap();
    let recanonicalised = serde_json_canonicalizer::to_string(&reparsed).unwrap();
    assert_eq!(recanonicalised, c.json, "canonical form is a fixed point");
    assert_eq!(c.hash.0, hangar_spec::sha256_tagged(c.json.as_bytes()));
    assert_eq!(c.hash.0.len(), "sha256:".len() + 64);
}

#[test]
fn the_core_default_spec_is_what_a_file_with_only_a_name_gives() {
    let parsed = toml("schema_version = 1\nname = \"bare\"");
    let built = hangar_core::spec::VmSpec::new(hangar_core::ids::VmName::new("bare").unwrap());
    assert_eq!(parsed.spec, built);
}

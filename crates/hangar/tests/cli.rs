//! The `hangar` binary end to end: output shapes, exit codes, determinism. Each test works in
//! its own temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn hangar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_HOME", "/nonexistent/hangar-test-home")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn hello() -> String {
    root().join("examples/hello.toml").display().to_string()
}

fn facts() -> String {
    root().join("tests/corpus/host-facts.json").display().to_string()
}

#[test]
fn plan_is_deterministic_and_key_order_does_not_matter() {
    let a = json(&hangar(&["plan", &hello(), "--output", "json"]));
    let b = json(&hangar(&["plan", &hello(), "--output", "json"]));
    assert_eq!(a, b);

    // A copy with every table and key in another order, in another directory.
    let dir = tempfile::tempdir().unwrap();
    let reordered = dir.path().join("hello.toml");
    std::fs::write(
        &reordered,
        "[[nic]]\nname = \"net0\"\n\n[labels]\nexample = \"hello\"\n\n[boot]\nimage = \"minimal\"\n\n[machine]\nmemory_mib = 256\nvcpus = 1\n",
    )
    .unwrap();
    let body = std::fs::read_to_string(&reordered).unwrap();
    std::fs::write(&reordered, format!("name = \"hello\"\nschema_version = 1\n{body}")).unwrap();
    let c = json(&hangar(&["plan", reordered.to_str().unwrap(), "--output", "json"]));
    for key in ["spec_hash", "argv_hash"] {
        assert_eq!(a[key], c[key], "{key}");
        assert!(a[key].as_str().unwrap().starts_with("sha256:"));
    }
}

#[test]
fn plan_with_fixed_facts_matches_the_corpus_golden() {
    let out = hangar(&["plan", &hello(), "--output", "json", "--host-facts", &facts()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let golden =
        std::fs::read_to_string(root().join("tests/corpus/hello/expected.plan.json")).unwrap();
    // The example and the corpus case are the same spec (the example has comments and labels
    // removed in the corpus), so compare what does not depend on labels.
    let got = json(&out);
    let want: serde_json::Value = serde_json::from_str(&golden).unwrap();
    assert_eq!(got["argv"], want["argv"]);
    assert_eq!(got["accel_resolved"], "tcg");
}

#[test]
fn plan_text_shows_a_quoted_command_and_metadata() {
    let out = hangar(&["plan", &hello(), "--host-facts", &facts()]);
    let s = text(&out.stdout);
    assert!(out.status.success());
    assert!(s.contains("/usr/bin/qemu-system-x86_64 \\\n    -machine microvm"), "{s}");
    assert!(s.contains("-append 'console=ttyS0 quiet"), "{s}");
    assert!(s.contains("tcg (requested auto)"), "{s}");
    assert!(s.contains("socket   /var/lib/hangar/vms/hello/qmp.sock"), "{s}");
}

#[test]
fn validate_json_reports_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "schema_version = 1\nname = \"Bad\"\n[machine]\nvcpu = 2\n").unwrap();
    let out = hangar(&["validate", bad.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    let codes: Vec<_> = errors.iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["E_INVALID_NAME", "E_SPEC_UNKNOWN_FIELD"]);
    for e in errors {
        for field in ["code", "path", "message", "hint"] {
            assert!(e[field].is_string(), "{field} in {e}");
        }
    }
    assert_eq!(errors[1]["hint"], "did you mean `vcpus`?");
    assert_eq!(errors[1]["path"], "machine.vcpu");

    let ok = hangar(&["validate", &hello(), "--output", "json"]);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(json(&ok)["ok"], true);
    assert_eq!(json(&ok)["errors"], serde_json::json!([]));
}

#[test]
fn errors_go_to_stderr_with_code_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "schema_version = 1\nname = \"x\"\n[machine]\naccel = \"kvm\"\n").unwrap();
    let out = hangar(&["plan", bad.to_str().unwrap(), "--host-facts", &facts()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(err.contains("E_ACCEL_UNAVAILABLE at machine.accel"), "{err}");
    assert!(err.contains("hint: "), "{err}");
}

#[test]
fn exit_codes() {
    // 2: usage.
    assert_eq!(hangar(&["plan"]).status.code(), Some(2));
    assert_eq!(hangar(&["frobnicate"]).status.code(), Some(2));
    // 2: environment (missing file).
    let out = hangar(&["validate", "/nonexistent/vm.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("E_IO"));
    // 2: bad host facts.
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.json");
    std::fs::write(&facts, "{\"qemu\": 1}").unwrap();
    let out = hangar(&["plan", &hello(), "--host-facts", facts.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("E_HOST_FACTS_INVALID"));
    // 1: invalid input.
    let yaml = dir.path().join("vm.yaml");
    std::fs::write(&yaml, "name: x").unwrap();
    let out = hangar(&["validate", yaml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("E_SPEC_FORMAT"));
    // A plan for a spec whose files are missing says so (and is still a plan).
    let spec = dir.path().join("k.toml");
    std::fs::write(&spec, "schema_version = 1\nname = \"k\"\n[boot]\nkernel = \"nope/vmlinuz\"\n")
        .unwrap();
    let out = hangar(&["plan", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("warning: boot.kernel:")
            && text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );
    // A special file that never ends is read only up to the size cap.
    let out = hangar(&["validate", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("E_SPEC_TOO_LARGE"), "{}", text(&out.stderr));
    // 0.
    assert_eq!(hangar(&["validate", &hello()]).status.code(), Some(0));
}

#[test]
fn garbage_input_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let inputs: [&[u8]; 6] = [
        b"\xff\xfe\x00garbage",
        b"{\"schema_version\": 1, \"name\": [[[[]]]]}",
        b"[[[[",
        b"schema_version = 99999999999999999999",
        b"",
        b"name = \"\\u0000\"",
    ];
    for (i, bytes) in inputs.iter().enumerate() {
        let path = dir.path().join(format!("g{i}.toml"));
        std::fs::write(&path, bytes).unwrap();
        for cmd in ["validate", "plan", "canonicalize"] {
            let out = hangar(&[cmd, path.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "{cmd} {i}: {}", text(&out.stderr));
            assert!(!text(&out.stderr).contains("panicked"), "{cmd} {i}");
            assert!(text(&out.stderr).contains("error: E_"), "{cmd} {i}: {}", text(&out.stderr));
        }
    }
}

#[test]
fn canonicalize_prints_the_canonical_bytes() {
    let out = hangar(&["canonicalize", &hello()]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.starts_with("{\"boot\":{\"cmdline\":\"\",\"image\":\"minimal\"}"), "{s}");
    let validate = json(&hangar(&["validate", &hello(), "--output", "json"]));
    let hash = hangar_spec::sha256_tagged(s.trim_end_matches('\n').as_bytes());
    assert_eq!(validate["spec_hash"], hash);
}

#[test]
fn schema_and_registry_commands_print_the_committed_documents() {
    let schema = hangar(&["schema"]);
    assert_eq!(
        text(&schema.stdout),
        std::fs::read_to_string(root().join("schema/vm-spec-v1.json")).unwrap()
    );
    let md = hangar(&["errors", "--output", "markdown"]);
    assert_eq!(
        text(&md.stdout),
        std::fs::read_to_string(root().join("docs/error-codes.md")).unwrap()
    );
    let list = json(&hangar(&["errors", "--output", "json"]));
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["code"] == "E_VM_NOT_FOUND" && e["exit_code"] == 1));
}

//! The JSON Schema, checked by a real and independent validator: Python's `jsonschema`
//! (Draft 2020-12, formats not asserted), installed by scripts/setup in /opt/hangar-tools.
//!
//! - The schema itself must be a valid 2020-12 schema.
//! - Every valid corpus spec must pass it.
//! - Every invalid corpus spec must be refused, except those in [`NOT_CAUGHT`], each with the
//!   reason the schema cannot see the problem; the list must stay true (a listed case that the
//!   schema refuses fails the test), and the schema must catch at least 80% of the cases.
//! - Probes around each pattern: the schema never refuses what the validator accepts, and
//!   refuses what it is meant to.
//!
//! Without the tool, the tests print `SKIPPED …` with the reason and check nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hangar_spec::schema::schema_json;
use hangar_spec::{parse, Format};
use serde_json::{json, Value};

/// The venv's Python, with `jsonschema` (scripts/setup).
const PYTHON: &str = "/opt/hangar-tools/bin/python";

/// The reason for a case that does not even parse into a document.
const NOT_A_DOCUMENT: &str = "not a document the schema sees";

/// Invalid corpus cases the schema cannot refuse, and why.
const NOT_CAUGHT: &[(&str, &str)] = &[
    ("syntax-toml", NOT_A_DOCUMENT),
    ("syntax-json", NOT_A_DOCUMENT),
    ("json-duplicate-key", NOT_A_DOCUMENT),
    (
        "disk-duplicate-name",
        "unique names: JSON Schema cannot ask one property to differ across the objects of an \
         array (uniqueItems compares whole items)",
    ),
    (
        "nic-duplicate-name",
        "unique names: JSON Schema cannot ask one property to differ across the objects of an \
         array (uniqueItems compares whole items)",
    ),
    (
        "nic-duplicate-port",
        "a host port forwarded twice: the rules are in two NICs' arrays and spelled \
         differently (\"8080:80\", \"tcp:8080:81\")",
    ),
    (
        "name-other-tenants-prefix",
        "the TENANT in a TENANT--NAME name must equal `tenant`: JSON Schema cannot compare two \
         values",
    ),
    (
        "memory-float",
        "256.0 is an integer to JSON Schema (a number with a zero fraction); the validator \
         wants an integer literal",
    ),
    ("kvm-required-unavailable", "depends on the host: whether KVM works"),
    ("nic-bridge-default-network-missing", "depends on the host: which networks exist"),
    (
        "socket-path-too-long",
        "depends on the host: the length of the console socket's path under its state directory",
    ),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// The case directories under `dir` (those holding a spec), sorted.
fn cases(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("spec.toml").exists() || p.join("spec.json").exists())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    out.sort();
    out
}

/// A case's spec as the JSON document an editor validates: TOML through the `toml` crate,
/// JSON refused when an object holds a key twice (as Hangar does). `Err` when it is none.
///
/// One caveat: the `toml` crate (like Hangar's loader) keeps a TOML datetime a datetime, which
/// reaches the schema as an object, so `datetime-value` (`name = 1979-05-27`) counts as caught.
/// An editor that hands the schema a datetime as its text would see a valid name there.
fn document(case: &Path) -> Result<Value, String> {
    if let Ok(text) = std::fs::read_to_string(case.join("spec.toml")) {
        return toml::from_str::<Value>(&text).map_err(|e| e.to_string());
    }
    let text = std::fs::read_to_string(case.join("spec.json")).unwrap();
    hangar_spec::check_json(&text).map_err(|d| d.message)?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The validator, or `None` (after saying why) when it is not installed.
fn python(test: &str) -> Option<&'static Path> {
    let python = Path::new(PYTHON);
    if !python.exists() {
        eprintln!("SKIPPED {test}: {PYTHON} not found (scripts/setup installs it)");
        return None;
    }
    let probe = Command::new(python).args(["-c", "import jsonschema"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED {test}: the jsonschema module is missing from {PYTHON} (scripts/setup installs it)"
        );
        return None;
    }
    Some(python)
}

/// Reads `{"schema": …, "documents": […]}` on stdin; checks the schema against the 2020-12
/// meta-schema, then prints, for each document, the list of its errors.
const CHECK: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
request = json.loads(sys.stdin.buffer.read())
Draft202012Validator.check_schema(request["schema"])
validator = Draft202012Validator(request["schema"])
def message(e):
    where = "/".join(str(p) for p in e.absolute_path)
    return f"{where}: {e.message[:160]}"
print(json.dumps([[message(e) for e in validator.iter_errors(d)] for d in request["documents"]]))
"#;

/// The errors of each document, by the real validator.
fn errors(python: &Path, documents: &[Value]) -> Vec<Vec<String>> {
    let schema: Value = serde_json::from_str(&schema_json()).unwrap();
    let request = json!({"schema": schema, "documents": documents});
    let mut child = Command::new(python)
        .args(["-c", CHECK])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the schema or the check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(errors.len(), documents.len());
    errors
}

#[test]
fn the_schema_passes_every_valid_spec_and_refuses_the_invalid_ones_it_can() {
    let Some(python) =
        python("the_schema_passes_every_valid_spec_and_refuses_the_invalid_ones_it_can")
    else {
        return;
    };

    // Valid specs: every one is a document, and passes.
    let valid = cases(&corpus());
    assert!(valid.len() >= 20, "only {} valid cases found", valid.len());
    let documents: Vec<Value> = valid
        .iter()
        .map(|(name, dir)| document(dir).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect();
    let mut problems = Vec::new();
    for ((name, _), errs) in valid.iter().zip(errors(python, &documents)) {
        if !errs.is_empty() {
            problems.push(format!("valid case {name} fails the schema: {errs:?}"));
        }
    }

    // Invalid specs: refused, unless listed.
    let invalid = cases(&corpus().join("invalid"));
    assert!(invalid.len() >= 50, "only {} invalid cases found", invalid.len());
    let names: BTreeSet<&str> = invalid.iter().map(|(n, _)| n.as_str()).collect();
    let mut listed = BTreeSet::new();
    for (case, reason) in NOT_CAUGHT {
        assert!(names.contains(case), "NOT_CAUGHT lists {case}, which is not a corpus case");
        assert!(listed.insert(*case), "NOT_CAUGHT lists {case} twice");
        assert!(!reason.is_empty(), "NOT_CAUGHT gives no reason for {case}");
    }
    let parsed: Vec<Result<Value, String>> = invalid.iter().map(|(_, dir)| document(dir)).collect();
    let documents: Vec<Value> = parsed.iter().filter_map(|d| d.as_ref().ok().cloned()).collect();
    let mut verdicts = errors(python, &documents).into_iter();
    let mut caught = 0;
    for ((name, _), doc) in invalid.iter().zip(&parsed) {
        let reason = NOT_CAUGHT.iter().find(|(c, _)| c == name).map(|(_, r)| *r);
        let refused = match doc {
            Err(e) => {
                if reason != Some(NOT_A_DOCUMENT) {
                    problems.push(format!(
                        "{name} is not a document ({e}): list it in NOT_CAUGHT as {NOT_A_DOCUMENT:?}"
                    ));
                }
                continue;
            }
            Ok(_) => !verdicts.next().unwrap().is_empty(),
        };
        match (refused, reason) {
            (true, None) => caught += 1,
            (true, Some(_)) => problems.push(format!(
                "{name} is in NOT_CAUGHT but the schema refuses it: take it off the list"
            )),
            (false, None) => problems.push(format!(
                "the schema accepts the invalid case {name}: catch it, or list it in NOT_CAUGHT with the reason"
            )),
            (false, Some(_)) => {}
        }
    }

    let total = invalid.len();
    println!(
        "the schema refuses {caught}/{total} invalid corpus cases ({:.1}%); not caught:",
        100.0 * caught as f64 / total as f64
    );
    for (case, reason) in NOT_CAUGHT {
        println!("  {case}: {reason}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(caught * 5 >= total * 4, "the schema catches {caught}/{total}, under 80%");
}

/// `{"schema_version": 1, "name": "web"}` with `fields` added.
fn spec(fields: Value) -> Value {
    let mut doc = json!({"schema_version": 1, "name": "web"});
    doc.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    doc
}

fn kernel(path: &str) -> Value {
    spec(json!({"boot": {"kernel": path}}))
}

fn cmdline(text: &str) -> Value {
    spec(json!({"boot": {"cmdline": text}}))
}

fn forward(rules: &[&str]) -> Value {
    spec(json!({"nic": [{"name": "n", "forward": rules}]}))
}

fn label(key: &str, value: &str) -> Value {
    spec(json!({"labels": {key: value}}))
}

fn named(name: &str, tenant: Option<&str>) -> Value {
    match tenant {
        Some(t) => json!({"schema_version": 1, "name": name, "tenant": t}),
        None => json!({"schema_version": 1, "name": name}),
    }
}

/// Documents near the edges of what the schema says, each with whether the schema is meant to
/// refuse it. A refusal is only right where the validator refuses too; some invalid probes are
/// let through on purpose, where JSON Schema cannot see the problem.
fn probes() -> Vec<(Value, bool)> {
    let x = |n: usize| "x".repeat(n);
    let mut p = vec![
        // Names, and names in a tenant's namespace (acme--NAME fits in 63 characters).
        (named("a", None), false),
        (named(&x(63), None), false),
        (named(&x(64), None), true),
        (named("a--b", None), true),
        (named("a-", None), true),
        (named(&x(57), Some("acme")), false),
        (named(&x(58), Some("acme")), true),
        (named(&x(37), Some(&x(24))), false),
        (named(&x(38), Some(&x(24))), true),
        (named("acme--web", Some("acme")), false),
        (named("beta--web", Some("acme")), false), // another tenant's prefix: not caught
        (named("web", Some(&x(25))), true),
        (named("web", Some("a-b-c")), false),
        (named("web", Some("a--b")), true),
        (spec(json!({"pool": "web-1"})), false),
        (spec(json!({"pool": "Web"})), true),
        // Nulls: the validator refuses them, and so does the schema.
        (spec(json!({"machine": null})), true),
        (spec(json!({"boot": {"image": null}})), true),
        // Paths.
        (kernel("vmlinuz"), false),
        (kernel("/devices/k"), false),
        (kernel("/dev/../etc/k"), false),
        (kernel("/sys/../etc/k"), false),
        (kernel("/sys/x/../../etc/k"), false),
        (kernel("/dev/.."), false),
        (kernel("dev/k"), false),
        (kernel("../dev/k"), false),
        (kernel("/sys\n"), false),
        (kernel("\u{feff}"), false),
        (kernel("/dev"), true),
        (kernel("/sys/"), true),
        (kernel("//proc/1/mem"), true),
        (kernel("/./dev/x"), true),
        (kernel("/../sys/x"), true),
        (kernel("/tmp/../sys/x"), true),
        (kernel("/a/./b/../../dev/x"), true),
        (kernel("/a/b/c/../../../dev/x"), false), // deeper than the schema looks: not caught
        (kernel("../../dev/x"), false),           // relative: not caught
        (kernel(""), true),
        (kernel(" \t"), true),
        (kernel("\u{a0}"), true),
        (kernel("a\0b"), true),
        (spec(json!({"boot": {"kernel": "k", "initrd": "i"}})), false),
        (spec(json!({"boot": {"image": "minimal", "initrd": "i"}})), true),
        (spec(json!({"boot": {"image": "minimal", "cmdline": "quiet"}})), false),
        // Port forwards.
        (forward(&["8080:80", "tcp:8443:443", "udp:8080:80"]), false),
        (forward(&[" TCP:1:1 ", "Udp:65535:65535"]), false),
        (forward(&["0.0.0.0:1:2", "127.0.0.1:3:4", "udp:0.0.0.0:5:6"]), false),
        (forward(&["000080:80", "8080:80\n", "\u{3000}9:9"]), false),
        (forward(&["0000080:80"]), true),
        (forward(&["0:80"]), true),
        (forward(&["80:65536"]), true),
        (forward(&["10.0.0.1:1:2"]), true),
        (forward(&["tcp:udp:1:2"]), true),
        (forward(&["80"]), true),
        (forward(&["+80:80"]), true),
        (forward(&["\u{ff18}0:80"]), true),
        (forward(&["1:1", "1:1"]), true),
        (forward(&["1:1", "tcp:1:1"]), false), // the same port spelled twice: not caught
        (spec(json!({"nic": [{"name": "n", "mode": "none", "forward": []}]})), false),
        (spec(json!({"nic": [{"name": "n", "mode": "bridge", "forward": ["1:1"]}]})), false),
        (spec(json!({"nic": [{"name": "n", "mode": "user", "network": "lab"}]})), true),
        // Disks.
        (spec(json!({"disk": [{"name": "d", "source": "a.img", "readonly": true}]})), false),
        (spec(json!({"disk": [{"name": "d", "size_mib": 1, "readonly": false}]})), false),
        // The command line.
        (cmdline("a\tb\nc\u{85}d"), false),
        (cmdline("root=/dev/vda rw"), false),
        (cmdline("root=LABEL=rootfs api_key= token x=password"), false),
        (cmdline(&format!("AKIA{}a", "A".repeat(16))), false),
        (cmdline(&format!("xAKIA{}", "A".repeat(16))), false),
        (cmdline(&format!("ghp_{}", x(19))), false),
        (cmdline(&format!("xoxb-{}", x(10))), false),
        (cmdline("a\u{1}b"), true),
        (cmdline("a\u{86}b"), true),
        (cmdline("quiet,Api_Key=1"), true),
        (cmdline("MyToken:x"), true),
        (cmdline(&format!("quiet AKIA{}", "A".repeat(16))), true),
        (cmdline(&format!("ghp_{}", x(20))), true),
        (cmdline(&format!("a;github_pat_{}", x(22))), true),
        (cmdline(&format!("xoxb-{}", x(11))), true),
        (cmdline("-----BEGIN PRIVATE KEY-----"), true),
        // Labels.
        (label("db_password", ""), false),
        (label("a/b.c_d-e", &"é".repeat(256)), false),
        (label(&x(63), "x"), false),
        (label("db_password", "x"), true),
        (label("a", &x(257)), true),
        (label("a", "a\tb"), true),
        (label("DB", "x"), true),
        (label("-a", "x"), true),
        (label(&x(64), "x"), true),
        (label("ci", &format!("sk-{}", x(20))), true),
    ];
    let many = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    p.push((spec(json!({"labels": many(64)})), false));
    p.push((spec(json!({"labels": many(65)})), true));
    p
}

#[test]
fn the_schema_refuses_only_what_the_validator_refuses() {
    let Some(python) = python("the_schema_refuses_only_what_the_validator_refuses") else {
        return;
    };
    let probes = probes();
    let documents: Vec<Value> = probes.iter().map(|(d, _)| d.clone()).collect();
    let mut problems = Vec::new();
    for ((doc, meant), errs) in probes.iter().zip(errors(python, &documents)) {
        let accepted = parse(&doc.to_string(), Format::Json, Path::new("/specs/web")).is_ok();
        let refused = !errs.is_empty();
        if accepted && refused {
            problems.push(format!("the schema refuses a valid spec: {doc}\n  {errs:?}"));
        } else if accepted && *meant {
            problems.push(format!("this probe is valid, it cannot be meant to be refused: {doc}"));
        } else if refused != *meant {
            problems
                .push(format!("the schema {} {doc}", if refused { "refuses" } else { "accepts" }));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

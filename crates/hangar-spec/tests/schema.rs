//! The committed JSON Schema matches the types, and the types match the validator's fields.
//! `HANGAR_BLESS=1` rewrites schema/vm-spec-v1.json.

use hangar_spec::fields::*;
use hangar_spec::schema::schema_json;

// The shared check, by path: a dev-dependency on hangar-testkit would be a cycle.
#[path = "../../hangar-testkit/src/golden.rs"]
mod golden;

#[test]
fn committed_schema_matches_the_types() {
    let generated = schema_json();
    golden::assert_committed(
        "schema/vm-spec-v1.json",
        &generated,
        "cargo test -p hangar-spec --test schema",
    );
}

fn properties(schema: &serde_json::Value, def: Option<&str>) -> Vec<String> {
    let node = match def {
        None => schema,
        Some(d) => &schema["$defs"][d],
    };
    let mut keys: Vec<String> = node["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties for {def:?}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(fields: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn schema_and_validator_know_the_same_fields() {
    let schema: serde_json::Value = serde_json::from_str(&schema_json()).unwrap();
    assert_eq!(properties(&schema, None), sorted(TOP_FIELDS));
    assert_eq!(properties(&schema, Some("MachineFile")), sorted(MACHINE_FIELDS));
    assert_eq!(properties(&schema, Some("BootFile")), sorted(BOOT_FIELDS));
    assert_eq!(properties(&schema, Some("DiskFile")), sorted(DISK_FIELDS));
    assert_eq!(properties(&schema, Some("NicFile")), sorted(NIC_FIELDS));
    assert_eq!(properties(&schema, Some("SerialFile")), sorted(SERIAL_FIELDS));
}

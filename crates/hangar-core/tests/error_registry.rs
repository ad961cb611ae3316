//! docs/error-codes.md is generated from the registry; this fails when they drift.
//! `HANGAR_BLESS=1` rewrites it.

// The shared check, by path: a dev-dependency on hangar-testkit would be a cycle.
#[path = "../../hangar-testkit/src/golden.rs"]
mod golden;

#[test]
fn committed_registry_matches_the_code() {
    let generated = hangar_core::error::registry_markdown();
    golden::assert_committed(
        "docs/error-codes.md",
        &generated,
        "cargo test -p hangar-core --test error_registry",
    );
}

/// Codes are append-only: this list is every code ever released, in order. Adding a code means
/// appending here; removing or renaming one fails.
#[test]
fn released_codes_are_never_removed() {
    let released = [
        "E_SPEC_SYNTAX",
        "E_SPEC_UNKNOWN_FIELD",
        "E_SPEC_MISSING_FIELD",
        "E_SPEC_TYPE",
        "E_SPEC_INVALID_VALUE",
        "E_SPEC_SCHEMA_VERSION",
        "E_SPEC_OUT_OF_RANGE",
        "E_SPEC_BOOT_CONFLICT",
        "E_SPEC_UNKNOWN_IMAGE",
        "E_SPEC_DISK_SOURCE",
        "E_SPEC_DUPLICATE_NAME",
        "E_SPEC_DUPLICATE_PORT",
        "E_SPEC_FORWARD",
        "E_SPEC_SECRET",
        "E_SPEC_SHELL_METACHAR",
        "E_SPEC_FORBIDDEN_PATH",
        "E_SPEC_INVALID_PATH",
        "E_SPEC_INVALID_LABEL",
        "E_SPEC_TOO_LARGE",
        "E_SPEC_FORMAT",
        "E_INVALID_NAME",
        "E_INVALID_TRANSITION",
        "E_INVALID_ARGUMENT",
        "E_VM_NOT_FOUND",
        "E_VM_EXISTS",
        "E_SNAPSHOT_NOT_FOUND",
        "E_SNAPSHOT_EXISTS",
        "E_SNAPSHOT_IN_USE",
        "E_SNAPSHOT_MISMATCH",
        "E_DISK_NOT_FOUND",
        "E_DISK_EXISTS",
        "E_DISK_HAS_SNAPSHOTS",
        "E_DISK_IN_USE",
        "E_NIC_NOT_FOUND",
        "E_NIC_EXISTS",
        "E_ENGINE_UNAVAILABLE",
        "E_ENGINE_FAILED",
        "E_UNSUPPORTED",
        "E_ACCEL_UNAVAILABLE",
        "E_HOST_FACTS_INVALID",
        "E_PATH_TOO_LONG",
        "E_CANCELLED",
        "E_TIMEOUT",
        "E_QUOTA_EXCEEDED",
        "E_IO",
        "E_STORE_UNAVAILABLE",
        "E_STORE_CORRUPT",
        "E_BUSY",
        "E_OPERATION_NOT_FOUND",
        "E_INTERRUPTED",
        "E_UNAUTHORIZED",
        "E_TENANT_NOT_FOUND",
        "E_POOL_NOT_FOUND",
        "E_POOL_EXISTS",
        "E_INSTANCE_NOT_FOUND",
        "E_TENANT_IN_USE",
        "E_FORBIDDEN",
        "E_PATH_NOT_ALLOWED",
        "E_AUDIT_UNAVAILABLE",
        "E_SPEC_DUPLICATE_KEY",
        "E_HOST_CAPACITY",
        "E_AGENT_UNAVAILABLE",
        "E_AGENT_UNSUPPORTED",
        "E_AGENT_FAILED",
        "E_NETWORK_NOT_FOUND",
        "E_NETWORK_EXISTS",
        "E_NETWORK_IN_USE",
        "E_NETWORK_EXHAUSTED",
        "E_NETWORK_OVERLAP",
        "E_NETWORK_UNAVAILABLE",
        "E_ROUTE_NOT_FOUND",
        "E_ROUTE_CONFLICT",
        "E_GATEWAY_UNAVAILABLE",
        "E_CLUSTER_UNAVAILABLE",
        "E_SIGNATURE_INVALID",
    ];
    for code in released {
        assert!(hangar_core::ErrorCode::parse(code).is_some(), "{code} was removed or renamed");
    }
    assert_eq!(
        hangar_core::ErrorCode::ALL.len(),
        released.len(),
        "a new code must be appended to this list"
    );
}

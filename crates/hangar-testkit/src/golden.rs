//! Committed generated files (the error registry, the JSON Schema, the OpenAPI document) must
//! match what the code generates; `HANGAR_BLESS=1` rewrites them.
//!
//! Standalone on purpose: the crates below hangar-testkit's own dependencies (core, spec)
//! include this file by path instead of depending on the testkit, which would be a cycle.

/// Checks that `relative` (from the workspace root) holds `generated`, first rewriting it when
/// `HANGAR_BLESS` is set; `bless` is the command that does that, for the failure message.
/// Returns the committed text.
pub fn assert_committed(relative: &str, generated: &str, bless: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join(relative);
    if std::env::var_os("HANGAR_BLESS").is_some() {
        std::fs::write(&path, generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    assert!(
        committed == generated,
        "{relative} is stale: run `HANGAR_BLESS=1 {bless}` and commit it"
    );
    committed
}

//! Fixtures shared by the fleet tests and the reconcile bench.

use hangar_core::spec::VmSpec;

/// A small instance template: 1 vCPU, 256 MiB.
pub fn template() -> VmSpec {
    hangar_testkit::toml_spec(
        "schema_version = 1\nname = \"template\"\n[machine]\nvcpus = 1\nmemory_mib = 256\n",
    )
}

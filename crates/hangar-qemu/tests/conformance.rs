//! The conformance suite against real QEMU. Each scenario gets its own engine with a fresh
//! home (store, runtime dirs) that shares the built-in image; the engine stops its VMs and
//! deletes its home when dropped. Without QEMU or the built image every scenario is skipped with
//! the reason (scripts/setup installs both).

use std::path::Path;
use std::time::Duration;

use hangar_conformance::{conformance_suite, Harness, Knobs};
use hangar_core::contracts::Engine;
use hangar_core::spec::VmSpec;
use hangar_qemu::{EngineOptions, QemuEngine};

/// Builds one isolated real-QEMU engine per scenario.
pub struct QemuHarness;

impl Harness for QemuHarness {
    fn engine(&self, knobs: Knobs) -> Result<Box<dyn Engine>, String> {
        if let Some(reason) = hangar_testkit::real_engine_missing() {
            return Err(reason);
        }
        // Kept (not deleted on drop): the engine is ephemeral and removes its home itself.
        let home = hangar_testkit::private_home("hgc-").keep();
        let options = EngineOptions {
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: knobs
                .ignore_graceful_stop
                .then(|| "hangar.ignore_poweroff=1".to_string()),
            ephemeral: true,
        };
        let engine = QemuEngine::open(Path::new(&home), options).map_err(|e| e.to_string())?;
        Ok(Box::new(engine))
    }

    fn spec(&self, name: &str) -> VmSpec {
        let text = format!("schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = 128\n[boot]\nimage = \"minimal\"\n");
        hangar_spec::parse(&text, hangar_spec::Format::Toml, Path::new("/"))
            .expect("valid spec")
            .spec
    }

    fn graceful_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}

conformance_suite!(qemu, super::QemuHarness);

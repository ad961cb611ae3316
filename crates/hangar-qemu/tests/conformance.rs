//! The conformance suite against real QEMU. Each scenario gets its own engine with a fresh
//! home (store, runtime dirs) that shares the built-in image; the engine stops its VMs and
//! deletes its home when dropped. Without QEMU or the built image every scenario is skipped with
//! the reason (scripts/setup installs both).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_conformance::{conformance_suite, Harness, Knobs};
use hangar_core::contracts::Engine;
use hangar_core::spec::VmSpec;
use hangar_qemu::{EngineOptions, QemuEngine};

/// Where the built-in images are: `$HANGAR_HOME/images`, else `/var/lib/hangar/images`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("HANGAR_HOME")
        .map(|h| PathBuf::from(h).join("images"))
        .unwrap_or_else(|| PathBuf::from("/var/lib/hangar/images"))
}

/// Builds one isolated real-QEMU engine per scenario.
pub struct QemuHarness;

impl Harness for QemuHarness {
    fn engine(&self, knobs: Knobs) -> Result<Box<dyn Engine>, String> {
        if hangar_plan::probe::find_in_path("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 not found (run scripts/setup)".into());
        }
        let images = image_dir();
        if !images.join("minimal/vmlinuz").exists() {
            return Err(format!(
                "the built-in image is not built at {} (run scripts/setup)",
                images.display()
            ));
        }
        // Short paths: unix socket paths are limited to 107 bytes.
        let home = tempfile::Builder::new()
            .prefix("hgc-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?
            .keep();
        std::os::unix::fs::symlink(&images, home.join("images")).map_err(|e| e.to_string())?;
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

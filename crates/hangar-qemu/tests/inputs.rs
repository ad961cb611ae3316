//! Inputs that cannot work are refused before anything moves, and a QEMU that exits at once is
//! noticed at once. Needs no guest: the refusals come before a boot, and the early exit is a
//! stand-in binary that exits straight away.

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::Lifecycle;
use hangar_core::error::{Coded, ErrorCode};
use hangar_core::lifecycle::VmState;
use hangar_plan::HostProbe;
use hangar_qemu::{EngineOptions, QemuEngine};
use std::os::unix::fs::PermissionsExt;

fn spec(name: &str, boot: &str) -> hangar_core::spec::VmSpec {
    let text = format!(
        "schema_version = 1\nname = \"{name}\"\n[machine]\nmemory_mib = 128\n[boot]\n{boot}\n"
    );
    hangar_testkit::toml_spec(&text)
}

#[test]
fn a_missing_kernel_or_disk_is_refused_at_start_naming_the_field_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let engine = QemuEngine::open(home.path(), EngineOptions::default()).unwrap();
    let c = CancelToken::new();
    let s = spec("nokernel", "kernel = \"/nonexistent/vmlinuz\"");
    engine.define(&s).unwrap();
    let e = engine.start(&s.name, &c).unwrap_err();
    assert_eq!(
        (e.code(), e.path().as_deref()),
        (ErrorCode::InvalidArgument, Some("boot.kernel")),
        "{e}"
    );
    assert_eq!(engine.status(&s.name).unwrap().state, VmState::Defined);
    let mut s = spec("nodisk", "image = \"minimal\"");
    s.disks.push(hangar_core::spec::DiskSpec {
        name: hangar_core::ids::DeviceName::new("root").unwrap(),
        source: hangar_core::spec::DiskSource::Base { source: "/nonexistent/root.qcow2".into() },
        format: hangar_core::spec::DiskFormat::Qcow2,
        readonly: false,
    });
    engine.define(&s).unwrap();
    let e = engine.start(&s.name, &c).unwrap_err();
    assert_eq!(e.path().as_deref(), Some("disk[0].source"), "{e}");
    assert!(!home.path().join("vms/nodisk/disks").exists(), "nothing was made");
}

#[test]
fn a_qemu_that_exits_at_once_is_reported_without_waiting_for_its_socket() {
    let (home, mut facts) = home_and_facts();
    // A stand-in that prints like a QEMU refusing its arguments and exits.
    let fake = home.path().join("qemu");
    std::fs::write(&fake, "#!/bin/sh\necho 'qemu: cannot start: bad argument' >&2\nexit 1\n")
        .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    facts.qemu.binary = fake.display().to_string();
    facts.qemu.version = Some("10.0.2".into());
    let kernel = home.path().join("vmlinuz");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let engine = QemuEngine::with_facts(home.path(), facts, EngineOptions::default()).unwrap();
    let s = spec("early", &format!("kernel = \"{}\"", kernel.display()));
    engine.define(&s).unwrap();
    let e = engine.start(&s.name, &CancelToken::new()).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("QEMU exited during start-up") && message.contains("bad argument"),
        "{message}"
    );
    assert_eq!(engine.status(&s.name).unwrap().state, VmState::Failed);
}

#[test]
fn a_symlink_planted_in_the_state_directory_is_refused_not_followed() {
    let (home, mut facts) = home_and_facts();
    // Never reached: the refusal comes first.
    facts.qemu.binary = "/bin/false".into();
    facts.qemu.version = Some("10.0.2".into());
    let kernel = home.path().join("vmlinuz");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let engine = QemuEngine::with_facts(home.path(), facts, EngineOptions::default()).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    for (vm, plant) in [("evil", "vms/evil"), ("worse", "vms/worse/console.log")] {
        let s = spec(vm, &format!("kernel = \"{}\"", kernel.display()));
        engine.define(&s).unwrap();
        let link = home.path().join(plant);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join("x"), &link).unwrap();
        let e = engine.start(&s.name, &CancelToken::new()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::StoreCorrupt, "{e}");
        assert!(e.to_string().contains(plant), "{e}");
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).unwrap().count(),
            0,
            "nothing was written through {plant}"
        );
    }
}

/// A new home in /tmp and this host's facts for it.
fn home_and_facts() -> (tempfile::TempDir, hangar_plan::HostFacts) {
    let home = tempfile::Builder::new().prefix("hgq-").tempdir_in("/tmp").unwrap();
    let facts = hangar_plan::probe::SystemProbe { home: home.path().to_path_buf() }.probe();
    (home, facts)
}

//! Snapshot clones on real QEMU, disks included: a snapshot taken from one VM restores into
//! another VM with the same spec but its name, and the clone gets its own copy of each writable
//! disk as it was at the save. Writes made by the source after the save, and by the clone after
//! the restore, stay on their own side; so do writes to guest memory (a second clone does not see
//! the first's). The guests are driven through their serial consoles.
//! Skipped, with the reason, without QEMU or the built image.

use std::path::Path;
use std::time::Duration;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Lifecycle, SaveMode, SnapshotLayout, Snapshots};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::lifecycle::VmState;
use hangar_qemu::{EngineOptions, QemuEngine};

/// Types on `vm`'s console; see [`hangar_testkit::console`].
fn console(home: &Path, vm: &str, command: &str, expect: &str) -> String {
    hangar_testkit::console(&home.join("vms").join(vm).join("console.sock"), command, expect)
}

fn holds(file: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(file).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Writes `text` to `/mem-FILE` in the guest: its root is an initramfs, so this is guest
/// memory and nothing else.
fn write_memory(home: &Path, vm: &str, file: &str, text: &str, tag: u32) {
    console(
        home,
        vm,
        &format!("echo {text} > /mem-{file}; echo stored-$(({tag}+1))"),
        &format!("stored-{}", tag + 1),
    );
}

/// What `/mem-FILE` holds in the guest (`none` when it does not exist).
fn read_memory(home: &Path, vm: &str, file: &str, tag: u32) -> String {
    let out = console(
        home,
        vm,
        &format!("echo \"<$(cat /mem-{file} 2>/dev/null || echo none)>\"; echo seen-$(({tag}+1))"),
        &format!("seen-{}", tag + 1),
    );
    let value = out.rsplit_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(v, _)| v);
    value.unwrap_or_else(|| panic!("{vm}: no value in {out:?}")).to_string()
}

/// Writes `text` at byte `offset` of the guest's /dev/vda and flushes it to QEMU.
fn write_disk(home: &Path, vm: &str, text: &str, offset: u32, tag: u32) {
    console(
        home,
        vm,
        &format!(
            "printf '{text}' | dd of=/dev/vda bs=1 seek={offset} conv=notrunc,fsync 2>/dev/null; echo written-$(({tag}+1))"
        ),
        &format!("written-{}", tag + 1),
    );
}

#[test]
fn a_snapshot_seeds_a_clone_with_its_own_copy_of_the_disks() {
    if hangar_testkit::skip("a_snapshot_seeds_a_clone_with_its_own_copy_of_the_disks") {
        return;
    }
    let home = hangar_testkit::private_home("hgq-");
    let home = home.path();
    let base = home.join("base.qcow2");
    hangar_testkit::base_qcow2(&base);
    // Ephemeral: the engine stops its guests when dropped, also when an assertion fails.
    let engine = QemuEngine::open(
        home,
        EngineOptions {
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: None,
            ephemeral: true,
        },
    )
    .unwrap();
    let spec = |vm: &str| hangar_testkit::spec_over(vm, 128, &base);
    let c = CancelToken::new();
    let (src, cl) = (VmName::new("src").unwrap(), VmName::new("cl").unwrap());
    let overlay = |vm: &str| home.join("vms").join(vm).join("disks/root.qcow2");

    engine.define(&spec("src")).unwrap();
    engine.start(&src, &c).unwrap();
    write_disk(home, "src", "MARK-BEFORE-SAVE", 0, 1);
    write_memory(home, "src", "a", "MEM-BEFORE-SAVE", 10);
    let snap = SnapshotId::new("seed").unwrap();
    engine.save(&src, &snap, SaveMode::KeepPaused, &c).unwrap();
    // A VM paused by a save can be saved again.
    let again = SnapshotId::new("again").unwrap();
    engine.save(&src, &again, SaveMode::KeepPaused, &c).unwrap();
    engine.delete_snapshot(&again).unwrap();
    // The source goes on and writes more after the save.
    engine.resume(&src).unwrap();
    write_disk(home, "src", "MARK-AFTER-SAVE", 4096, 2);
    write_memory(home, "src", "a", "MEM-AFTER-SAVE", 11);

    engine.define(&spec("cl")).unwrap();
    assert_eq!(engine.restore(&cl, &snap, &c).unwrap().state, VmState::Running);
    // Its own copy, as at the save: the source's later write is not in it.
    assert!(holds(&overlay("cl"), "MARK-BEFORE-SAVE"));
    assert!(!holds(&overlay("cl"), "MARK-AFTER-SAVE"));
    // A live guest that reads its disk and writes to its own copy only.
    let out = console(
        home,
        "cl",
        "dd if=/dev/vda bs=16 count=1 2>/dev/null; echo; echo read-$((3+1))",
        "read-4",
    );
    assert!(out.contains("MARK-BEFORE-SAVE"), "{out}");
    write_disk(home, "cl", "MARK-FROM-CLONE", 8192, 5);
    assert!(holds(&overlay("cl"), "MARK-FROM-CLONE"));
    assert!(!holds(&overlay("src"), "MARK-FROM-CLONE"));
    assert!(holds(&overlay("src"), "MARK-AFTER-SAVE"));

    // Memory too: the clone has the source's memory as at the save, and what one clone writes
    // in its memory is not in another's (nor in the source's).
    assert_eq!(read_memory(home, "cl", "a", 20), "MEM-BEFORE-SAVE");
    write_memory(home, "cl", "b", "MEM-FROM-CLONE", 21);
    let cl2 = VmName::new("cl2").unwrap();
    engine.define(&spec("cl2")).unwrap();
    assert_eq!(engine.restore(&cl2, &snap, &c).unwrap().state, VmState::Running);
    assert_eq!(read_memory(home, "cl2", "a", 22), "MEM-BEFORE-SAVE");
    assert_eq!(read_memory(home, "cl2", "b", 23), "none");
    assert_eq!(read_memory(home, "src", "b", 24), "none");
    assert_eq!(read_memory(home, "src", "a", 25), "MEM-AFTER-SAVE");
    assert_eq!(read_memory(home, "cl", "b", 26), "MEM-FROM-CLONE");

    // A spare: QEMU started ahead for the snapshot, its RAM mapped and its stream handed over,
    // no guest running; its restore gives the snapshot's guest, alive, with memory of its own.
    let sp = VmName::new("sp").unwrap();
    engine.define(&spec("sp")).unwrap();
    assert_eq!(engine.prepare_restore(&sp, &snap, &c).unwrap().state, VmState::Spare);
    let waiting = engine.memory(&sp).unwrap().expect("a spare has a QEMU");
    assert_eq!(waiting["ram_mapping"], "private", "{waiting}");
    eprintln!("a spare's memory before its restore: {waiting}");
    assert_eq!(engine.restore(&sp, &snap, &c).unwrap().state, VmState::Running);
    assert_eq!(read_memory(home, "sp", "a", 40), "MEM-BEFORE-SAVE");
    assert_eq!(read_memory(home, "sp", "b", 41), "none");
    write_memory(home, "sp", "b", "MEM-FROM-SPARE", 42);
    assert_eq!(read_memory(home, "cl2", "b", 43), "none");
    engine.stop(&sp, hangar_core::contracts::StopMode::Force, &c).unwrap();

    // The source's RAM is its own file, so the snapshot kept it (mapped layout, sparse: less
    // on disk than the guest's memory); both clones map it privately and share its pages.
    let seed = engine.list_snapshots(None).unwrap().into_iter().find(|s| s.id == snap).unwrap();
    assert_eq!(seed.layout, SnapshotLayout::Mapped);
    let ram = home.join("snapshots/seed@src.ram");
    assert_eq!(std::fs::metadata(&ram).unwrap().len(), 128 << 20);
    let memory = |vm: &str| engine.memory(&VmName::new(vm).unwrap()).unwrap().unwrap();
    let src_memory = memory("src");
    assert_eq!(src_memory["ram_mapping"], "shared", "{src_memory}");
    assert_eq!(src_memory["ram_file"], home.join("vms/src/ram").display().to_string());
    for clone in ["cl", "cl2"] {
        let m = memory(clone);
        assert_eq!(m["ram_mapping"], "private", "{clone}: {m}");
        assert_eq!(m["ram_file"], ram.display().to_string(), "{clone}: {m}");
        // Pages of the snapshot both clones read are resident once, in the page cache.
        assert!(m["shared_bytes"].as_u64().unwrap() > 8 << 20, "{clone}: {m}");
    }

    // A clone's RAM is private memory: its own save writes it into a stream (the older
    // layout), and that restores as before.
    let of_clone = SnapshotId::new("of-clone").unwrap();
    engine.save(&cl, &of_clone, SaveMode::Sleep, &c).unwrap();
    let saved = engine.list_snapshots(Some(&cl)).unwrap();
    assert_eq!(saved[0].layout, SnapshotLayout::Stream, "{saved:?}");
    assert_eq!(engine.restore(&cl, &of_clone, &c).unwrap().state, VmState::Running);
    assert_eq!(read_memory(home, "cl", "b", 27), "MEM-FROM-CLONE");

    // A clone restored unshared has a copy of the snapshot's RAM as its own file: its save
    // is mapped again, and its memory is the snapshot's.
    let own = VmName::new("own").unwrap();
    let seed_written = std::fs::metadata(&ram).unwrap().modified().unwrap();
    engine.define(&spec("own")).unwrap();
    assert_eq!(engine.restore_unshared(&own, &snap, &c).unwrap().state, VmState::Running);
    let m = memory("own");
    assert_eq!(m["ram_mapping"], "shared", "{m}");
    assert_eq!(m["ram_file"], home.join("vms/own/ram").display().to_string(), "{m}");
    write_memory(home, "own", "c", "MEM-FROM-OWN", 28);
    let of_own = SnapshotId::new("of-own").unwrap();
    assert_eq!(
        engine.save(&own, &of_own, SaveMode::Sleep, &c).unwrap().layout,
        SnapshotLayout::Mapped
    );
    assert_eq!(engine.restore(&own, &of_own, &c).unwrap().state, VmState::Running);
    assert_eq!(read_memory(home, "own", "a", 29), "MEM-BEFORE-SAVE");
    assert_eq!(read_memory(home, "own", "c", 30), "MEM-FROM-OWN");
    // ... and the seed's RAM file was never written by it.
    assert_eq!(read_memory(home, "cl2", "c", 31), "none");
    engine.stop(&own, hangar_core::contracts::StopMode::Force, &c).unwrap();
    assert_eq!(std::fs::metadata(&ram).unwrap().modified().unwrap(), seed_written);
    // A stopped VM keeps no RAM file (it would hold what its guest touched, for nothing).
    assert!(!home.join("vms/own/ram").exists());

    // A mapped snapshot whose RAM file is not what was saved is refused before anything is
    // made, and a missing one too.
    let cl3 = VmName::new("cl3").unwrap();
    engine.define(&spec("cl3")).unwrap();
    let short = std::fs::OpenOptions::new().write(true).open(&ram).unwrap();
    short.set_len(64 << 20).unwrap();
    for broken in ["holds", "missing"] {
        let refused = engine.restore(&cl3, &snap, &c).unwrap_err();
        assert_eq!(
            hangar_core::error::Coded::code(&refused),
            hangar_core::error::ErrorCode::SnapshotMismatch,
            "{refused}"
        );
        assert!(refused.to_string().contains(broken), "{refused}");
        assert_eq!(engine.status(&cl3).unwrap().state, VmState::Defined);
        assert!(!home.join("vms/cl3/ram").exists());
        std::fs::remove_file(&ram).unwrap_or_default();
    }

    // A VM with other hardware is refused and left as it was.
    let mut bigger = spec("big");
    bigger.machine.memory_mib = 192;
    engine.define(&bigger).unwrap();
    let big = VmName::new("big").unwrap();
    let refused = engine.restore(&big, &snap, &c).unwrap_err();
    assert_eq!(
        hangar_core::error::Coded::code(&refused),
        hangar_core::error::ErrorCode::SnapshotMismatch
    );
    assert_eq!(engine.status(&big).unwrap().state, VmState::Defined);

    // Deleting the snapshot removes its frozen disks too.
    let frozen = home.join("snapshots/seed@src.disks");
    assert!(frozen.is_dir());
    engine.delete_snapshot(&snap).unwrap();
    assert!(!frozen.exists());
}

/// Clones of one bridged base wake with its MAC and address; each takes its own (through its
/// agent) before the restore returns, and they reach each other. In a network namespace the
/// test creates; skipped, with the reason, without one.
#[test]
fn clones_of_a_bridged_base_take_their_own_mac_and_address_and_reach_each_other() {
    let test = "clones_of_a_bridged_base_take_their_own_mac_and_address_and_reach_each_other";
    let Some(ns) = hangar_testkit::real_netns(test) else { return };
    ns.run(|| {
        let home = hangar_testkit::private_home("hgq-");
        let engine = QemuEngine::open(
            home.path(),
            EngineOptions {
                boot_timeout: Duration::from_secs(120),
                extra_cmdline: None,
                ephemeral: true,
            },
        )
        .unwrap();
        let lab = hangar_core::network::Network {
            name: hangar_core::ids::NetworkName::new("lab").unwrap(),
            tenant: None,
            subnet: "10.66.0.0/24".parse().unwrap(),
            nat: false,
        };
        engine
            .with_store(|s| {
                hangar_net::create(s, &lab, hangar_core::clock::Timestamp(1), |n| {
                    hangar_net::host::ensure_bridge(n)?;
                    hangar_net::rules::sync(s, None)
                })
            })
            .unwrap();
        let spec = |vm: &str| {
            hangar_testkit::toml_spec(&format!(
                "schema_version = 1\nname = \"{vm}\"\n[machine]\nmemory_mib = 128\n\
                 [[nic]]\nname = \"net0\"\nmode = \"bridge\"\nnetwork = \"lab\"\n"
            ))
        };
        let c = CancelToken::new();
        let base = VmName::new("base").unwrap();
        engine.define(&spec("base")).unwrap();
        engine.start(&base, &c).unwrap();
        let snap = SnapshotId::new("seed").unwrap();
        engine.save(&base, &snap, SaveMode::KeepPaused, &c).unwrap();
        for clone in ["c1", "c2"] {
            engine.define(&spec(clone)).unwrap();
            let status = engine.restore(&VmName::new(clone).unwrap(), &snap, &c).unwrap();
            assert_eq!(status.state, VmState::Running);
        }
        let sh = |vm: &str, script: &str| {
            let (status, out, err) =
                hangar_testkit::exec_in(&engine, vm, &["sh", "-c", script], None).unwrap();
            assert_eq!(
                status,
                hangar_core::contracts::ExitStatus::Code(0),
                "{vm}: {script}: {out} {err}"
            );
            out
        };
        for (clone, address) in [("c1", "10.66.0.3/24"), ("c2", "10.66.0.4/24")] {
            let mac = sh(clone, "cat /sys/class/net/eth0/address");
            assert_eq!(mac.trim(), hangar_plan::mac_for(clone, "net0"), "{clone}'s own MAC");
            let addresses = sh(clone, "ip -4 -o addr show dev eth0");
            assert!(
                addresses.contains(address) && !addresses.contains("10.66.0.2/"),
                "{clone}: {addresses}"
            );
            assert_eq!(sh(clone, "hostname").trim(), clone);
        }
        sh("c1", "ping -c 1 -W 10 10.66.0.4");
        sh("c2", "ping -c 1 -W 10 10.66.0.3");
    });
}

/// A sleeping VM is all on disk: once its snapshot's files are written back and dropped from
/// the page cache (what a host reboot does to them; a reboot itself is out of a test's
/// reach), a new engine on the same home wakes it with its memory as it was.
#[test]
fn a_sleeping_vm_wakes_from_disk_after_its_files_leave_the_page_cache() {
    if hangar_testkit::skip("a_sleeping_vm_wakes_from_disk_after_its_files_leave_the_page_cache") {
        return;
    }
    let home = hangar_testkit::private_home("hgq-");
    let home = home.path();
    let base = home.join("base.qcow2");
    hangar_testkit::base_qcow2(&base);
    // The first engine keeps the home (an ephemeral one removes it when dropped); the guard
    // ends its QEMU if the test fails before the VM sleeps.
    let _reaper = hangar_testkit::Reaper(home.to_path_buf());
    let open = |ephemeral: bool| {
        let options = EngineOptions {
            boot_timeout: Duration::from_secs(120),
            extra_cmdline: None,
            ephemeral,
        };
        QemuEngine::open(home, options).unwrap()
    };
    let c = CancelToken::new();
    let nap = VmName::new("nap").unwrap();
    let snap = SnapshotId::new("nap-sleep").unwrap();
    {
        let engine = open(false);
        engine.define(&hangar_testkit::spec_over("nap", 128, &base)).unwrap();
        engine.start(&nap, &c).unwrap();
        write_memory(home, "nap", "a", "MEM-BEFORE-SLEEP", 1);
        let saved = engine.save(&nap, &snap, SaveMode::Sleep, &c).unwrap();
        assert_eq!(saved.layout, SnapshotLayout::Mapped);
    }
    // Written back, then evicted: the next read of these files comes from the disk.
    let mut files = 0;
    for entry in std::fs::read_dir(home.join("snapshots")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let file = std::fs::File::open(&path).unwrap();
            file.sync_all().unwrap();
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
            files += 1;
        }
    }
    assert!(files >= 2, "a state file and a RAM file");
    let engine = open(true);
    assert_eq!(engine.status(&nap).unwrap().state, VmState::Sleeping);
    assert_eq!(engine.restore(&nap, &snap, &c).unwrap().state, VmState::Running);
    assert_eq!(read_memory(home, "nap", "a", 2), "MEM-BEFORE-SLEEP");
}

#[test]
fn a_wake_takes_its_snapshots_memory_unless_a_clone_maps_it() {
    if hangar_testkit::skip("a_wake_takes_its_snapshots_memory_unless_a_clone_maps_it") {
        return;
    }
    let home = hangar_testkit::private_home("hgq-");
    let home = home.path();
    let base = home.join("base.qcow2");
    hangar_testkit::base_qcow2(&base);
    let _reaper = hangar_testkit::Reaper(home.to_path_buf());
    let options = EngineOptions {
        boot_timeout: Duration::from_secs(120),
        extra_cmdline: None,
        ephemeral: false,
    };
    let engine = QemuEngine::open(home, options).unwrap();
    let c = CancelToken::new();
    let owl = VmName::new("owl").unwrap();
    engine.define(&hangar_testkit::spec_over("owl", 128, &base)).unwrap();
    engine.start(&owl, &c).unwrap();
    write_memory(home, "owl", "a", "MEM-ONE", 1);
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let own_ram = home.join("vms/owl/ram");

    // Nothing else maps its snapshot: the wake takes the RAM file itself (the same inode is
    // the VM's own again), the snapshot is gone, and the next sleep is a rename again.
    let one = SnapshotId::new("owl-one").unwrap();
    assert_eq!(
        engine.save(&owl, &one, SaveMode::Sleep, &c).unwrap().layout,
        SnapshotLayout::Mapped
    );
    let snapshot_ram = home.join("snapshots/owl-one@owl.ram");
    let taken = inode(&snapshot_ram);
    assert_eq!(engine.wake(&owl, &one, &c).unwrap().state, VmState::Running);
    assert_eq!(inode(&own_ram), taken, "the wake did not take the snapshot's RAM file");
    assert!(!snapshot_ram.exists());
    assert!(engine.list_snapshots(None).unwrap().is_empty());
    assert_eq!(read_memory(home, "owl", "a", 2), "MEM-ONE");
    write_memory(home, "owl", "b", "MEM-TWO", 3);
    let two = SnapshotId::new("owl-two").unwrap();
    assert_eq!(
        engine.save(&owl, &two, SaveMode::Sleep, &c).unwrap().layout,
        SnapshotLayout::Mapped
    );

    // A clone restored from that snapshot maps its RAM: the wake leaves the file alone (the
    // clone's memory stays what was saved, whatever the woken VM writes).
    let kit = VmName::new("kit").unwrap();
    engine.define(&hangar_testkit::spec_over("kit", 128, &base)).unwrap();
    engine.restore(&kit, &two, &c).unwrap();
    assert_eq!(engine.wake(&owl, &two, &c).unwrap().state, VmState::Running);
    // Mapped copy-on-write like any restore: the VM has no RAM file of its own.
    assert!(!own_ram.exists(), "the wake took a file a clone maps");
    write_memory(home, "owl", "b", "OWL-AFTER-WAKE", 5);
    assert_eq!(read_memory(home, "kit", "b", 7), "MEM-TWO");
    assert_eq!(read_memory(home, "owl", "b", 9), "OWL-AFTER-WAKE");
    assert!(engine.list_snapshots(None).unwrap().is_empty(), "the wake deletes its snapshot");
}

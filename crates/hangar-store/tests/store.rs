//! Store round trips, validation of what is read back, and locking.

use hangar_core::clock::Timestamp;
use hangar_core::contracts::SnapshotLayout;
use hangar_core::ids::{SnapshotId, VmName, VolumeId};
use hangar_core::lifecycle::{Cause, TransitionEvent, VmState};
use hangar_core::spec::*;
use hangar_core::Coded;
use hangar_core::ErrorCode;
use hangar_store::*;

fn spec(name: &str) -> VmSpec {
    VmSpec::new(VmName::new(name).unwrap())
}

fn record(name: &str) -> VmRecord {
    VmRecord {
        spec: spec(name),
        spec_hash: "sha256:00".into(),
        plan_json: "{}".into(),
        state: VmState::Defined,
        reason: None,
        runtime_dir: format!("/run/{name}"),
        process: None,
        boot_ms: None,
        sleeping_on: None,
        boot_log_offset: Some(7),
        created_at: Timestamp(1),
        updated_at: Timestamp(1),
    }
}

#[test]
fn vm_round_trip_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let mut a = record("a");
    store.insert_vm(&a).unwrap();
    store.insert_vm(&record("b")).unwrap();
    let err = store.insert_vm(&record("a")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::VmExists);
    a.state = VmState::Running;
    a.process = Some(ProcessIdentity { pid: 42, start_time: 99 });
    a.boot_ms = Some(3300);
    store.update_vm(&a).unwrap();
    // A second connection (another hangar process) sees the committed state.
    let other = Store::open_in(dir.path()).unwrap();
    assert_eq!(other.get_vm(&VmName::new("a").unwrap()).unwrap(), Some(a.clone()));
    let names: Vec<_> = other.list_vms().unwrap().iter().map(|r| r.name().to_string()).collect();
    assert_eq!(names, ["a", "b"]);
    other.delete_vm(&VmName::new("a").unwrap()).unwrap();
    assert_eq!(store.get_vm(&VmName::new("a").unwrap()).unwrap(), None);
}

#[test]
fn transitions_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let vm = VmName::new("a").unwrap();
    let moves = [
        (None, VmState::Defined),
        (Some(VmState::Defined), VmState::Starting),
        (Some(VmState::Starting), VmState::Running),
    ];
    for (i, (from, to)) in moves.iter().enumerate() {
        store
            .record_transition(&TransitionEvent {
                vm: vm.clone(),
                from: *from,
                to: *to,
                at: Timestamp(i as u64),
                cause: Cause::User,
                operation: None,
            })
            .unwrap();
    }
    let got: Vec<_> = store.transitions(&vm).unwrap().iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(got, moves);
}

#[test]
fn corrupt_rows_are_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    store.insert_vm(&record("a")).unwrap();
    store.execute_raw("UPDATE vms SET state = 'exploded' WHERE name = 'a'").unwrap();
    let err = store.get_vm(&VmName::new("a").unwrap()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreCorrupt);
    assert!(err.to_string().contains("vms/a"), "{err}");
    store
        .execute_raw(
            "UPDATE vms SET state = 'defined', spec_json = '{\"name\":\"b\"}' WHERE name = 'a'",
        )
        .unwrap();
    assert_eq!(store.list_vms().unwrap_err().code(), ErrorCode::StoreCorrupt);
    store.execute_raw("UPDATE vms SET spec_json = 'not json' WHERE name = 'a'").unwrap();
    assert_eq!(
        store.get_vm(&VmName::new("a").unwrap()).unwrap_err().code(),
        ErrorCode::StoreCorrupt
    );
}

/// Snapshot `s1` of VM `a`: no disks, no clone hash, no tenant.
fn snapshot() -> SnapshotRecord {
    SnapshotRecord {
        id: SnapshotId::new("s1").unwrap(),
        vm: VmName::new("a").unwrap(),
        path: "/x/s1.state".into(),
        spec_hash: "sha256:1".into(),
        clone_hash: None,
        disks: vec![],
        engine_version: "qemu-10.0.2".into(),
        size_bytes: 64 << 20,
        layout: SnapshotLayout::Stream,
        ram_path: None,
        created_at: Timestamp(5),
        tenant: None,
        pool: None,
    }
}

#[test]
fn a_snapshot_keeps_its_layout_and_a_row_without_one_is_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let mapped = SnapshotRecord {
        layout: SnapshotLayout::Mapped,
        ram_path: Some("/x/s1.ram".into()),
        ..snapshot()
    };
    store.insert_snapshot(&mapped).unwrap();
    assert_eq!(store.get_snapshot(&mapped.id).unwrap(), Some(mapped.clone()));
    // A row written before layouts existed (schema 6) has none: it is a stream.
    store.execute_raw("UPDATE snapshots SET layout = NULL, ram_path = NULL").unwrap();
    assert_eq!(store.get_snapshot(&mapped.id).unwrap(), Some(snapshot()));
    // A layout this version does not know is a corrupt row, named, not a guess.
    store.execute_raw("UPDATE snapshots SET layout = 'holographic'").unwrap();
    let err = store.get_snapshot(&mapped.id).unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{err}");
    assert!(err.to_string().contains("holographic"), "{err}");
}

#[test]
fn a_negative_snapshot_time_or_size_is_corrupt_not_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let snap = snapshot();
    store.insert_snapshot(&snap).unwrap();
    assert_eq!(store.get_snapshot(&snap.id).unwrap(), Some(snap.clone()));
    for (column, bad) in [("created_at", -5), ("size_bytes", -1)] {
        store.execute_raw(&format!("UPDATE snapshots SET {column} = {bad}")).unwrap();
        for err in
            [store.get_snapshot(&snap.id).unwrap_err(), store.list_snapshots(None).unwrap_err()]
        {
            assert_eq!(err.code(), ErrorCode::StoreCorrupt, "{err}");
            assert!(
                matches!(&err, StoreError::Corrupt { table: "snapshots", key, .. } if key == "s1"),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{column}: {bad} is negative")), "{err}");
        }
        store.delete_snapshot(&snap.id).unwrap();
        store.insert_snapshot(&snap).unwrap();
    }
}

#[test]
fn snapshots_and_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let snap = SnapshotRecord {
        clone_hash: Some("sha256:2".into()),
        disks: vec![FrozenDisk { disk: "root".into(), path: "/x/s1.disks/root.qcow2".into() }],
        tenant: Some(hangar_core::ids::TenantId::new("acme").unwrap()),
        ..snapshot()
    };
    store.insert_snapshot(&snap).unwrap();
    assert_eq!(store.insert_snapshot(&snap).unwrap_err().code(), ErrorCode::SnapshotExists);
    assert_eq!(store.list_snapshots(Some(&VmName::new("a").unwrap())).unwrap(), vec![snap.clone()]);
    assert!(store.list_snapshots(Some(&VmName::new("b").unwrap())).unwrap().is_empty());
    store.delete_snapshot(&snap.id).unwrap();
    assert_eq!(store.get_snapshot(&snap.id).unwrap(), None);

    let mut vol = VolumeRecord {
        id: VolumeId::new("v").unwrap(),
        path: "/x/v.qcow2".into(),
        size_mib: 64,
        format: DiskFormat::Qcow2,
        base: None,
        snapshots: vec![],
    };
    store.insert_volume(&vol).unwrap();
    vol.snapshots.push(SnapshotId::new("d1").unwrap());
    store.update_volume(&vol).unwrap();
    assert_eq!(store.get_volume(&vol.id).unwrap(), Some(vol.clone()));
    store.execute_raw("UPDATE volumes SET format = 'vmdk'").unwrap();
    assert_eq!(store.list_volumes().unwrap_err().code(), ErrorCode::StoreCorrupt);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Store::open_in(dir.path()).unwrap().execute_raw("PRAGMA user_version = 99").unwrap();
    let err = Store::open_in(dir.path()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::StoreUnavailable);
}

#[test]
fn vm_locks_are_exclusive_and_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let vm = VmName::new("a").unwrap();
    let held = VmLock::acquire(dir.path(), &vm).unwrap();
    assert!(VmLock::try_acquire(dir.path(), &vm).unwrap().is_none());
    assert!(VmLock::try_acquire(dir.path(), &VmName::new("b").unwrap()).unwrap().is_some());
    drop(held);
    assert!(VmLock::try_acquire(dir.path(), &vm).unwrap().is_some());
}

#[test]
fn concurrent_first_opens_migrate_exactly_once() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    Store::open_in(&path).map(drop).map_err(|e| e.to_string())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
}

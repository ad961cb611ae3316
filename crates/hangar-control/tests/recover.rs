//! Operations journaled by a process that died are settled by the next `Local::recover`:
//! succeeded when the VM shows the operation's goal, rolled back (E_INTERRUPTED) otherwise,
//! untouched while their owner lives. No QEMU is booted; the real-engine kill -9 test lives in
//! `hangard/tests/readopt.rs`.

use std::sync::Arc;

use hangar_api::OperationRequest;
use hangar_control::{Control, Local};
use hangar_core::clock::Timestamp;
use hangar_core::ids::OperationId;
use hangar_qemu::{EngineOptions, QemuEngine};
use hangar_store::{OperationRecord, OperationStatus, ProcessIdentity, Store};

fn local(home: &std::path::Path) -> Local {
    let engine: Arc<dyn hangar_control::Backend> =
        Arc::new(QemuEngine::open(home, EngineOptions::default()).unwrap());
    let fleet = hangar_control::fleet::open(engine.clone(), home, false).unwrap();
    let roots = hangar_control::allowed_roots(home, &[]).unwrap();
    Local::new(engine, home, roots, fleet).unwrap()
}

fn spec(name: &str) -> serde_json::Value {
    serde_json::json!({ "schema_version": 1, "name": name, "machine": { "memory_mib": 128 } })
}

/// A process identity nobody has: a real PID whose start time does not match.
fn dead_owner() -> ProcessIdentity {
    ProcessIdentity { pid: std::process::id(), start_time: 1 }
}

fn orphan(store: &Store, id: &str, request: &OperationRequest, owner: ProcessIdentity) {
    let target = match request {
        OperationRequest::Create { spec, .. } => spec["name"].as_str().unwrap().to_string(),
        OperationRequest::Stop { vm, .. } | OperationRequest::Delete { vm, .. } => vm.clone(),
        _ => unreachable!(),
    };
    store
        .insert_operation(&OperationRecord {
            id: OperationId::new(id).unwrap(),
            kind: request.kind(),
            target,
            request_json: serde_json::to_string(request).unwrap(),
            status: OperationStatus::Running,
            progress: Some("engine".into()),
            result_json: None,
            error_json: None,
            owner: Some(owner),
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
        })
        .unwrap();
}

#[test]
fn orphans_are_finished_or_rolled_back_and_live_owners_are_left_alone() {
    let home = tempfile::tempdir().unwrap();
    let local = local(home.path());
    local.run(OperationRequest::Create { spec: spec("kept"), base_dir: None }, &|_| {}).unwrap();
    let store = Store::open_in(home.path()).unwrap();
    let me = hangar_qemu::process::identify(std::process::id()).unwrap();
    // The define happened before the owner died: finished.
    orphan(
        &store,
        "op-a",
        &OperationRequest::Create { spec: spec("kept"), base_dir: None },
        dead_owner(),
    );
    // The owner died before the define: rolled back, nothing to undo.
    orphan(
        &store,
        "op-b",
        &OperationRequest::Create { spec: spec("never"), base_dir: None },
        dead_owner(),
    );
    // A stop whose VM never left `defined` did not reach its goal.
    orphan(
        &store,
        "op-c",
        &OperationRequest::Stop { vm: "kept".into(), force: true, timeout_s: None },
        dead_owner(),
    );
    // A delete whose VM is gone reached it.
    orphan(
        &store,
        "op-d",
        &OperationRequest::Delete { vm: "gone".into(), force: false },
        dead_owner(),
    );
    // Owned by a live process: not ours to settle.
    orphan(&store, "op-e", &OperationRequest::Delete { vm: "kept".into(), force: false }, me);

    let settled = local.recover();
    let mut summary: Vec<_> = settled
        .iter()
        .map(|o| (o.id.as_str(), o.status.as_str(), o.error.as_ref().map(|e| e.code.as_str())))
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("op-a", "succeeded", None),
            ("op-b", "rolled_back", Some("E_INTERRUPTED")),
            ("op-c", "rolled_back", Some("E_INTERRUPTED")),
            ("op-d", "succeeded", None),
        ]
    );
    let c = local.operation("op-c").unwrap();
    let e = c.error.unwrap();
    assert!(e.message.contains("kept is defined"), "{}", e.message);
    assert_eq!(e.operation.as_deref(), Some("op-c"));
    assert_eq!(local.operation("op-e").unwrap().status, "running");
    assert_eq!(local.operation("op-a").unwrap().result.unwrap().vm.unwrap().state, "defined");
    // Settling is idempotent: nothing left to do.
    assert!(local.recover().is_empty());
    // Nothing was defined by the rolled-back create.
    assert!(local.get("never").is_err());
}

#[test]
fn operations_name_their_transitions_and_failures() {
    let home = tempfile::tempdir().unwrap();
    let local = local(home.path());
    let op = local
        .run(OperationRequest::Create { spec: spec("tagged"), base_dir: None }, &|_| {})
        .unwrap();
    assert_eq!(op.status, "succeeded");
    let events = local.events_since(0, 10).unwrap();
    let json = serde_json::to_value(&events).unwrap();
    assert_eq!(json[0]["operation"], serde_json::json!(op.id), "{json}");
    let failed = local
        .run(OperationRequest::Pause { vm: "tagged".into() }, &|_| {})
        .unwrap_err()
        .into_body();
    assert_eq!(failed.code, "E_INVALID_TRANSITION");
    let id = failed.operation.clone().expect("the failure names its operation");
    assert_eq!(local.operation(&id).unwrap().status, "failed");
    // Refused before journaling: no operation.
    let refused = local
        .run(OperationRequest::Pause { vm: "absent".into() }, &|_| {})
        .unwrap_err()
        .into_body();
    assert_eq!((refused.code.as_str(), refused.operation), ("E_VM_NOT_FOUND", None));
    let relative = local
        .run(
            OperationRequest::Create { spec: spec("rel"), base_dir: Some("relative/dir".into()) },
            &|_| {},
        )
        .unwrap_err()
        .into_body();
    assert_eq!(
        (relative.code.as_str(), relative.path.as_deref()),
        ("E_INVALID_ARGUMENT", Some("base_dir"))
    );
    assert_eq!(local.operations(10).unwrap().len(), 2);
}

//! Snapshots never cross tenants, on real guests through the daemon's API: a tenant cannot
//! list, restore or delete another tenant's snapshot (it cannot even name it), and not even an
//! admin can restore it into another tenant's VM. Needs QEMU and the built image; otherwise
//! skipped with the reason.

use hangar_testkit::{private_home, skip, Reaper};

mod common;
use common::{coded, TestDaemon};

fn spec(tenant: &str, name: &str) -> String {
    format!(
        r#"{{"schema_version": 1, "name": "{name}", "tenant": "{tenant}", "machine": {{"memory_mib": 128}}}}"#
    )
}

#[test]
fn snapshots_never_cross_tenants() {
    if skip("snapshots_never_cross_tenants") {
        return;
    }
    let home = private_home("hgd-snap-");
    let _reaper = Reaper(home.path().to_path_buf());
    let d = TestDaemon::start_in_tls(home, |_| hangard::Options::default());
    for t in ["acme", "beta"] {
        assert_eq!(d.call("PUT", &format!("/v1/tenants/{t}"), Some("{}")).0, 200);
    }
    let acme = d.token("tenant:acme:owner");
    let beta = d.token("tenant:beta:owner");
    // acme boots a VM and saves its memory as `s1` (acme--s1: acme's namespace).
    let (s, v) = d.as_token(&acme, "POST", "/v1/vms?wait=true", Some(&spec("acme", "db")));
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.as_token(&acme, "POST", "/v1/vms/db/start?wait=true", None);
    assert_eq!(s, 200, "{v}");
    // acme runs a program in its VM over TLS with its token (exec is a WebSocket); beta cannot
    // even name the VM, and acme's viewer may not exec.
    {
        use hangar_core::contracts::ExitStatus;
        use hangar_core::error::{Coded, ErrorCode};
        let run = |token: &str| {
            let remote = hangar_control::Remote::at(hangar_api::client::Endpoint::Tcp {
                addr: d.tcp.to_string(),
                fingerprint: d.fingerprint.clone(),
                token: token.into(),
            });
            let argv = ["sh", "-c", "read x; echo tls-$x"];
            hangar_testkit::exec_in(&remote, "db", &argv, Some(b"42\n")).map(|(s, out, _)| (s, out))
        };
        assert!(d.fingerprint.is_some(), "the daemon serves TLS");
        assert_eq!(run(&acme).unwrap(), (ExitStatus::Code(0), "tls-42\n".to_string()));
        assert_eq!(run(&beta).unwrap_err().code(), ErrorCode::VmNotFound);
        let viewer = d.token("tenant:acme:viewer");
        assert_eq!(run(&viewer).unwrap_err().code(), ErrorCode::Forbidden);
    }
    let (s, v) =
        d.as_token(&acme, "POST", "/v1/vms/db/snapshots?wait=true", Some(r#"{"id": "s1"}"#));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["snapshot"]["id"], "acme--s1", "{v}");
    assert_eq!(v["result"]["snapshot"]["tenant"], "acme", "{v}");
    // beta, with a VM of exactly the same hardware, cannot see, restore or delete it.
    let (s, v) = d.as_token(&beta, "POST", "/v1/vms?wait=true", Some(&spec("beta", "db")));
    assert_eq!(s, 200, "{v}");
    assert_eq!(d.as_token(&beta, "GET", "/v1/snapshots", None).1, serde_json::json!([]));
    for id in ["s1", "acme--s1"] {
        let (s, v) = d.as_token(
            &beta,
            "POST",
            &format!("/v1/vms/db/snapshots/{id}/restore?wait=true"),
            None,
        );
        assert_eq!(s, 404, "{id}: {v}");
        coded(&v, "E_SNAPSHOT_NOT_FOUND");
        let (s, v) = d.as_token(&beta, "DELETE", &format!("/v1/snapshots/{id}"), None);
        assert_eq!(s, 404, "{id}: {v}");
    }
    // Not even an admin can restore it into beta's VM: a restore looks its snapshot up in the
    // VM's tenant (and the engine itself refuses a clone across tenants: CONF-S-07).
    let (s, v) = d.call("POST", "/v1/vms/beta--db/snapshots/acme--s1/restore?wait=true", None);
    assert_eq!(s, 404, "{v}");
    coded(&v, "E_SNAPSHOT_NOT_FOUND");
    let (_, vm) = d.call("GET", "/v1/vms/beta--db", None);
    assert_eq!(vm["state"], "defined", "a refused restore changes nothing: {vm}");
    // acme itself restores it into a clone of its own.
    let (s, v) = d.as_token(&acme, "POST", "/v1/vms?wait=true", Some(&spec("acme", "db2")));
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.as_token(&acme, "POST", "/v1/vms/db2/snapshots/s1/restore?wait=true", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["vm"]["state"], "running", "{v}");
    for vm in ["db", "db2"] {
        d.as_token(&acme, "DELETE", &format!("/v1/vms/{vm}?force=true&wait=true"), None);
    }
}

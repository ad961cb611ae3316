//! Networks and leases in the store: uniqueness, allocation order, exhaustion, release, and
//! leases that outlive the process that made them.

use std::collections::BTreeSet;

use hangar_core::clock::Timestamp;
use hangar_core::ids::{DeviceName, NetworkName, VmName};
use hangar_core::network::Network;
use hangar_store::{Leased, NetworkCreated, Store, StoreError};

fn network(name: &str, subnet: &str) -> Network {
    Network {
        name: NetworkName::new(name).unwrap(),
        tenant: None,
        subnet: subnet.parse().unwrap(),
        nat: true,
    }
}

fn lease(store: &Store, net: &str, vm: &str, nic: &str) -> Leased {
    store
        .lease(
            &NetworkName::new(net).unwrap(),
            &VmName::new(vm).unwrap(),
            &DeviceName::new(nic).unwrap(),
            "52:54:00:00:00:01",
            Timestamp(1),
        )
        .unwrap()
}

fn address(leased: Leased) -> String {
    match leased {
        Leased::Yes(l) => l.address.to_string(),
        other => panic!("no lease: {other:?}"),
    }
}

#[test]
fn networks_are_unique_and_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let a = network("a", "10.88.0.0/24");
    assert_eq!(store.create_network(&a, Timestamp(1)).unwrap(), NetworkCreated::Created);
    let err = store.create_network(&network("a", "10.89.0.0/24"), Timestamp(1)).unwrap_err();
    assert!(matches!(err, StoreError::Exists { table: "networks", .. }), "{err}");
    assert_eq!(
        store.create_network(&network("b", "10.88.0.0/16"), Timestamp(1)).unwrap(),
        NetworkCreated::Overlaps(a.clone())
    );
    assert_eq!(store.networks().unwrap(), [a]);
}

#[test]
fn leases_take_the_lowest_free_address_once_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    store.create_network(&network("small", "10.88.0.0/29"), Timestamp(1)).unwrap();
    assert_eq!(address(lease(&store, "small", "v1", "eth0")), "10.88.0.2");
    assert_eq!(address(lease(&store, "small", "v1", "eth0")), "10.88.0.2", "idempotent");
    assert_eq!(address(lease(&store, "small", "v1", "eth1")), "10.88.0.3");
    for vm in ["v2", "v3", "v4"] {
        lease(&store, "small", vm, "eth0");
    }
    assert!(matches!(lease(&store, "small", "v5", "eth0"), Leased::Exhausted(_)));
    assert_eq!(lease(&store, "nowhere", "v5", "eth0"), Leased::NoNetwork);

    let name = NetworkName::new("small").unwrap();
    let held = store.delete_network(&name).unwrap().unwrap_err();
    assert_eq!(held.len(), 5, "a network with leases is not deleted");
    assert_eq!(store.release_leases(&VmName::new("v1").unwrap()).unwrap(), 2);
    drop(store);

    // Another process (a restarted daemon) sees the same leases, and reuses the freed ones.
    let store = Store::open_in(dir.path()).unwrap();
    let v2 = store.leases_of(&VmName::new("v2").unwrap()).unwrap();
    assert_eq!(v2.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(), ["10.88.0.4"]);
    assert_eq!(address(lease(&store, "small", "v6", "eth0")), "10.88.0.2");
    for vm in ["v2", "v3", "v4", "v6"] {
        store.release_leases(&VmName::new(vm).unwrap()).unwrap();
    }
    assert_eq!(store.delete_network(&name).unwrap(), Ok(true));
    assert_eq!(store.delete_network(&name).unwrap(), Ok(false));
}

#[test]
fn concurrent_processes_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    Store::open_in(dir.path())
        .unwrap()
        .create_network(&network("busy", "10.90.0.0/24"), Timestamp(1))
        .unwrap();
    let addresses: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let path = dir.path();
                s.spawn(move || {
                    let store = Store::open_in(path).unwrap();
                    (0..25)
                        .map(|i| address(lease(&store, "busy", &format!("w{w}-{i}"), "eth0")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let unique: BTreeSet<&String> = addresses.iter().collect();
    assert_eq!((addresses.len(), unique.len()), (100, 100));
}

#[test]
fn a_corrupt_lease_row_is_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    store.create_network(&network("n", "10.91.0.0/24"), Timestamp(1)).unwrap();
    store
        .execute_raw("INSERT INTO leases VALUES ('n', 'not-an-address', 'v', 'eth0', 'm', 1)")
        .unwrap();
    let err = store.leases(None).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { table: "leases", .. }), "{err}");
}

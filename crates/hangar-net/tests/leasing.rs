//! Leasing for bridge NICs, on a real store (no kernel networking: leases are records).

use hangar_core::clock::Timestamp;
use hangar_core::spec::VmSpec;
use hangar_net::Leasing;
use hangar_store::Store;

fn spec(text: &str) -> VmSpec {
    hangar_spec::parse(text, hangar_spec::Format::Toml, std::path::Path::new("/")).unwrap().spec
}

const BRIDGED_NO_NETWORK: &str =
    "schema_version = 1\nname = \"web-1\"\ntenant = \"acme\"\n[[nic]]\nname = \"net0\"\nmode = \"bridge\"\n";

#[test]
fn a_bridge_nic_naming_no_network_joins_its_tenants_default_made_on_first_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let vm = spec(BRIDGED_NO_NETWORK);
    assert_eq!(vm.nics[0].network.as_ref().map(|n| n.as_str()), Some("default"));

    // A dry run changes nothing: no network recorded, so nothing to report for the NIC (the
    // planner then says E_NETWORK_NOT_FOUND at nic[0].network).
    let looked = hangar_net::nic_networks(&store, &vm, Leasing::Look, Timestamp(1)).unwrap();
    assert!(looked.is_empty(), "{looked:?}");
    assert!(store.networks().unwrap().is_empty());

    // Leasing records the tenant's default network (a tenant older than networks) and leases.
    let taken = hangar_net::nic_networks(&store, &vm, Leasing::Take, Timestamp(2)).unwrap();
    let nic = &taken["net0"];
    assert_eq!(
        (nic.network.as_str(), nic.subnet.as_str(), nic.address.to_string().as_str()),
        ("acme--default", "10.200.0.0/24", "10.200.0.2")
    );
    let networks = store.networks().unwrap();
    assert_eq!(networks.len(), 1);
    assert_eq!(networks[0].tenant.as_ref().map(|t| t.as_str()), Some("acme"));

    // A VM of no tenant naming no network means a network called `default`: none is made.
    let hostless = spec(&BRIDGED_NO_NETWORK.replace("tenant = \"acme\"\n", ""));
    let taken = hangar_net::nic_networks(&store, &hostless, Leasing::Take, Timestamp(3)).unwrap();
    assert!(taken.is_empty(), "{taken:?}");
    assert_eq!(store.networks().unwrap().len(), 1);
}

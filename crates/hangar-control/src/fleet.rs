//! The fleet over this host's engine, as the daemon runs it and as the CLI consults it for
//! quotas: restored from the store's registry, counting tenants' own VMs next to their pools.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use hangar_api::ErrorBody;
use hangar_core::clock::{Clock, SystemClock};
use hangar_core::error::ErrorCode;
use hangar_fleet::{Fleet, Registry, TenantVm, Usage};

/// Restores the fleet from the store in the engine's home. A registry the store holds but
/// cannot read is `E_STORE_CORRUPT` (acting on a guess could destroy instances). With
/// `persist`, every change is written back (the daemon); without, the fleet is a read-only
/// view for quota checks (the CLI without a daemon).
pub fn open(
    engine: Arc<dyn Backend>, home: &Path, persist: bool,
) -> Result<Arc<Fleet<dyn Backend>>, ErrorBody> {
    let store_failure = |e: hangar_store::StoreError| {
        use hangar_core::error::Coded;
        ErrorBody::new(e.code(), format!("state store: {e}"))
    };
    let store = hangar_store::Store::open_in(home).map_err(store_failure)?;
    let registry = match store.load_fleet().map_err(store_failure)? {
        None => Registry::default(),
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            let mut body = ErrorBody::new(
                ErrorCode::StoreCorrupt,
                format!("the fleet registry in the state store is unreadable ({e})"),
            );
            body.hint = format!(
                "move {} aside to start with an empty fleet",
                home.join("state.db").display()
            );
            body
        })?,
    };
    let fleet = Arc::new(Fleet::restore(engine.clone(), Arc::new(SystemClock), registry));
    let records = engine.clone();
    fleet.count_tenant_vms(Box::new(move || {
        Ok(records
            .specs()?
            .into_iter()
            .filter(|(_, spec)| spec.pool.is_none())
            .filter_map(|(state, spec)| {
                Some(TenantVm {
                    tenant: spec.tenant.clone()?,
                    name: spec.name.clone(),
                    usage: Usage::of_spec(state, &spec),
                })
            })
            .collect())
    }));
    if persist {
        let store = Mutex::new(store);
        fleet.persist_with(move |registry| {
            let json = serde_json::to_string(registry).expect("registries serialise");
            let saved = store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_fleet(&json, SystemClock.now());
            if let Err(e) = saved {
                eprintln!("hangard: cannot save the fleet registry: {e}");
            }
        });
    }
    Ok(fleet)
}

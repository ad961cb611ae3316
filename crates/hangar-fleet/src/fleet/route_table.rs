//! The gateway's routes, kept with the fleet (persisted with it, restored at start).

use crate::error::FleetError;

use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::error::Result;
use hangar_core::ids::RouteId;

use crate::routes::Route;

use super::*;

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Adds a route: valid on its own, to a pool of its tenant, taking no connection another
    /// route takes (`E_ROUTE_CONFLICT`, also for a taken id).
    pub fn add_route(&self, route: Route) -> Result<()> {
        route
            .check()
            .map_err(|problem| FleetError::RouteInvalid { route: route.id.clone(), problem })?;
        let mut s = self.lock();
        if !s.tenants.contains_key(&route.tenant) {
            return Err(FleetError::TenantNotFound(route.tenant.clone()).into());
        }
        // Another tenant's pool looks like no pool at all.
        if s.pools.get(&route.target.pool).is_none_or(|p| p.tenant != route.tenant) {
            return Err(not_found_pool(&route.target.pool));
        }
        if s.routes.contains_key(&route.id) {
            let id = route.id.clone();
            return Err(FleetError::RouteConflict {
                route: id.clone(),
                other: id,
                why: "the id is taken",
            }
            .into());
        }
        if let Some(other) = s.routes.values().find(|r| r.conflicts_with(&route)) {
            return Err(FleetError::RouteConflict {
                route: route.id.clone(),
                other: other.id.clone(),
                why: "both would take the same connections on that port",
            }
            .into());
        }
        s.routes.insert(route.id.clone(), route);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Every route, by id.
    pub fn routes(&self) -> Vec<Route> {
        self.lock().routes.values().cloned().collect()
    }

    /// One route.
    pub fn route(&self, id: &RouteId) -> Result<Route> {
        self.lock()
            .routes
            .get(id)
            .cloned()
            .ok_or_else(|| FleetError::RouteNotFound(id.clone()).into())
    }

    /// Removes a route.
    pub fn remove_route(&self, id: &RouteId) -> Result<()> {
        if self.lock().routes.remove(id).is_none() {
            return Err(FleetError::RouteNotFound(id.clone()).into());
        }
        self.changed();
        Ok(())
    }
}

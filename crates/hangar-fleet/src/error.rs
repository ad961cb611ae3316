//! What the fleet refuses, as one enum: each variant names what it is about and maps to one
//! stable code (an instance that is not there is always `E_INSTANCE_NOT_FOUND`).

use hangar_core::error::{AdapterError, Coded, Error, ErrorCode};
use hangar_core::ids::{InstanceId, PoolId, RouteId, TenantId, VmName};

use crate::quota::QuotaExceeded;
use crate::routes::RouteProblem;

/// An error of the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No tenant with that id.
    #[error("no tenant {0}")]
    TenantNotFound(TenantId),
    /// The tenant still owns a pool.
    #[error("tenant {tenant} still owns pool {pool}; remove its pools first")]
    TenantInUse {
        /// The tenant.
        tenant: TenantId,
        /// One of its pools.
        pool: PoolId,
    },
    /// No pool with that id (also what another tenant's pool looks like to a tenant).
    #[error("no pool {0}; `hangar pool ls` lists them")]
    PoolNotFound(PoolId),
    /// A pool with that id exists.
    #[error("pool {0} exists; change it with `hangar pool scale`")]
    PoolExists(PoolId),
    /// No instance with that id (also what another tenant's instance looks like to a tenant).
    #[error("no instance {0}")]
    InstanceNotFound(InstanceId),
    /// The instance went with its pool while a step worked on it.
    #[error("instance {0} was removed (its pool is gone) while it was being worked on")]
    InstanceRemoved(InstanceId),
    /// The pool went while one of its instances was being created.
    #[error("pool {pool} was removed while instance {instance} was being created")]
    PoolRemoved {
        /// The pool.
        pool: PoolId,
        /// The instance being made.
        instance: InstanceId,
    },
    /// Another step holds the instance.
    #[error("instance {0} is in the middle of another step; retry shortly")]
    InstanceBusy(InstanceId),
    /// Another step holds the VM.
    #[error("{0} is in the middle of another step; retry shortly")]
    VmBusy(VmName),
    /// No route with that id (also what another tenant's route looks like to a tenant).
    #[error("no route {0}; `hangar route ls` lists them")]
    RouteNotFound(RouteId),
    /// The route's id is taken, or another route takes the same connections.
    #[error("route {route} conflicts with route {other}: {why}")]
    RouteConflict {
        /// The route refused.
        route: RouteId,
        /// The route already there.
        other: RouteId,
        /// How they conflict.
        why: &'static str,
    },
    /// The route cannot match anything as written.
    #[error("invalid route {route}: {}: {}", .problem.field, .problem.message)]
    RouteInvalid {
        /// The route refused.
        route: RouteId,
        /// What is wrong, and where.
        problem: RouteProblem,
    },
    /// A tenant's quota refuses the change.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
}

impl Coded for FleetError {
    fn code(&self) -> ErrorCode {
        match self {
            FleetError::TenantNotFound(_) => ErrorCode::TenantNotFound,
            FleetError::TenantInUse { .. } => ErrorCode::TenantInUse,
            FleetError::PoolNotFound(_) | FleetError::PoolRemoved { .. } => ErrorCode::PoolNotFound,
            FleetError::PoolExists(_) => ErrorCode::PoolExists,
            FleetError::InstanceNotFound(_) | FleetError::InstanceRemoved(_) => {
                ErrorCode::InstanceNotFound
            }
            FleetError::InstanceBusy(_) | FleetError::VmBusy(_) => ErrorCode::Busy,
            FleetError::Quota(_) => ErrorCode::QuotaExceeded,
            FleetError::RouteNotFound(_) => ErrorCode::RouteNotFound,
            FleetError::RouteConflict { .. } => ErrorCode::RouteConflict,
            FleetError::RouteInvalid { .. } => ErrorCode::InvalidArgument,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            FleetError::RouteInvalid { problem, .. } => Some(problem.field.to_string()),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            FleetError::TenantNotFound(t) => {
                Some(format!("an admin creates it with `hangar tenant create {t}`"))
            }
            _ => None,
        }
    }
}

impl From<FleetError> for Error {
    fn from(e: FleetError) -> Error {
        Error::Adapter(AdapterError::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_instance_is_instance_not_found_however_it_went() {
        let id = InstanceId::from_bits(0x2a);
        for e in [FleetError::InstanceNotFound(id.clone()), FleetError::InstanceRemoved(id.clone())]
        {
            assert_eq!(Error::from(e).code(), ErrorCode::InstanceNotFound);
        }
        let t = TenantId::new("acme").unwrap();
        let e = Error::from(FleetError::TenantNotFound(t));
        assert_eq!(e.code(), ErrorCode::TenantNotFound);
        assert!(e.hint().unwrap().contains("hangar tenant create acme"));
    }
}

//! Who is calling, and what each route lets them do.
//!
//! Every request gets a [`Caller`]: a token's scope on TCP, or the unix-socket peer's uid
//! (`SO_PEERCRED`): root and the daemon's own user are admins, other uids only as mapped with
//! `--map-uid`. [`ROUTES`] gives every route its [`Action`]; the `gate` middleware
//! refuses what the caller's role never allows (`403 E_FORBIDDEN`) before a handler runs, and
//! handlers decide about the objects they find with the same [`decide`] (another tenant's
//! object answers exactly like a missing one).

use std::collections::BTreeMap;

use axum::http::Method;
use hangar_api::ErrorBody;
use hangar_core::access::{decide, Action, Decision, Resource, Scope};
use hangar_core::error::ErrorCode;
use hangar_core::ids::TenantId;

use crate::ApiError;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing: anyone, even unauthenticated on TCP (`/v1/health`).
    Open,
    /// This action.
    Action(Action),
    /// Decided by the handler from the body (`POST /v1/operations`: the request's kind); the
    /// caller needs at least a viewer's role to be heard.
    PerRequest,
}

/// Every route and what it needs. A route missing here is refused (a test checks the table
/// covers every route the API documents).
pub const ROUTES: &[(&str, &str, Gate)] = &[
    ("GET", "/v1/health", Gate::Open),
    ("GET", "/v1/openapi.json", Gate::Action(Action::ApiRead)),
    ("POST", "/v1/validate", Gate::Action(Action::ApiRead)),
    ("POST", "/v1/plan", Gate::Action(Action::ApiRead)),
    ("GET", "/v1/images", Gate::Action(Action::ImageRead)),
    ("GET", "/v1/vms", Gate::Action(Action::VmRead)),
    ("POST", "/v1/vms", Gate::Action(Action::VmCreate)),
    ("GET", "/v1/vms/{name}", Gate::Action(Action::VmRead)),
    ("DELETE", "/v1/vms/{name}", Gate::Action(Action::VmDelete)),
    ("POST", "/v1/vms/{name}/{action}", Gate::Action(Action::VmOperate)),
    ("GET", "/v1/vms/{name}/guest", Gate::Action(Action::VmRead)),
    ("GET", "/v1/vms/{name}/files", Gate::Action(Action::GuestExec)),
    ("PUT", "/v1/vms/{name}/files", Gate::Action(Action::GuestExec)),
    ("POST", "/v1/vms/{name}/exec", Gate::Action(Action::GuestExec)),
    ("GET", "/v1/vms/{name}/snapshots", Gate::Action(Action::SnapshotRead)),
    ("POST", "/v1/vms/{name}/snapshots", Gate::Action(Action::SnapshotSave)),
    ("POST", "/v1/vms/{name}/snapshots/{id}/restore", Gate::Action(Action::SnapshotRestore)),
    ("GET", "/v1/snapshots", Gate::Action(Action::SnapshotRead)),
    ("DELETE", "/v1/snapshots/{id}", Gate::Action(Action::SnapshotDelete)),
    ("GET", "/v1/operations", Gate::Action(Action::OperationRead)),
    ("POST", "/v1/operations", Gate::PerRequest),
    ("GET", "/v1/operations/{id}", Gate::Action(Action::OperationRead)),
    ("GET", "/v1/events", Gate::Action(Action::EventRead)),
    ("GET", "/v1/events/page", Gate::Action(Action::EventRead)),
    ("GET", "/v1/cluster/events", Gate::Action(Action::EventRead)),
    ("GET", "/metrics", Gate::Action(Action::MetricsRead)),
    ("GET", "/v1/tenants", Gate::Action(Action::TenantRead)),
    ("PUT", "/v1/tenants/{id}", Gate::Action(Action::TenantManage)),
    ("DELETE", "/v1/tenants/{id}", Gate::Action(Action::TenantManage)),
    ("GET", "/v1/pools", Gate::Action(Action::PoolRead)),
    ("POST", "/v1/pools", Gate::Action(Action::PoolManage)),
    ("GET", "/v1/pools/{pool}", Gate::Action(Action::PoolRead)),
    ("PATCH", "/v1/pools/{pool}", Gate::Action(Action::PoolManage)),
    ("DELETE", "/v1/pools/{pool}", Gate::Action(Action::PoolManage)),
    ("POST", "/v1/pools/{pool}/claim", Gate::Action(Action::PoolClaim)),
    // A route is a pool's plumbing: reading one is reading the pool, changing one managing it.
    ("GET", "/v1/routes", Gate::Action(Action::PoolRead)),
    ("POST", "/v1/routes", Gate::Action(Action::PoolManage)),
    ("GET", "/v1/routes/{id}", Gate::Action(Action::PoolRead)),
    ("DELETE", "/v1/routes/{id}", Gate::Action(Action::PoolManage)),
    ("GET", "/v1/instances", Gate::Action(Action::InstanceRead)),
    ("DELETE", "/v1/instances/{id}", Gate::Action(Action::InstanceRelease)),
    ("GET", "/v1/fleet", Gate::Action(Action::FleetRead)),
    ("POST", "/v1/fleet/reconcile", Gate::Action(Action::FleetReconcile)),
    ("GET", "/v1/tokens", Gate::Action(Action::TokenManage)),
    ("POST", "/v1/tokens", Gate::Action(Action::TokenManage)),
    ("DELETE", "/v1/tokens/{id}", Gate::Action(Action::TokenManage)),
    ("GET", "/v1/host", Gate::Action(Action::HostRead)),
    ("GET", "/v1/networks", Gate::Action(Action::NetworkRead)),
    ("POST", "/v1/networks", Gate::Action(Action::NetworkManage)),
    ("GET", "/v1/networks/{name}", Gate::Action(Action::NetworkRead)),
    ("DELETE", "/v1/networks/{name}", Gate::Action(Action::NetworkManage)),
    // Nodes are the cluster's machinery, an administrator's only.
    ("GET", "/v1/nodes", Gate::Action(Action::NodeRead)),
    ("GET", "/v1/nodes/{name}", Gate::Action(Action::NodeRead)),
    ("POST", "/v1/nodes/{name}/cordon", Gate::Action(Action::NodeManage)),
    ("POST", "/v1/nodes/{name}/uncordon", Gate::Action(Action::NodeManage)),
    ("POST", "/v1/nodes/{name}/drain", Gate::Action(Action::NodeManage)),
];

/// What `route` (a matched path pattern) needs under `method`; `None` if the table lacks it.
pub fn gate_of(method: &Method, route: &str) -> Option<Gate> {
    ROUTES.iter().find(|(m, r, _)| *m == method.as_str() && *r == route).map(|(_, _, g)| *g)
}

/// The principal behind a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What it may reach.
    pub scope: Scope,
    /// Who, for the audit log: `token:tok-…`, `local:uid=N`, or `node:<name> for …`.
    pub who: String,
    /// The request another cluster node passed on, when the caller came with a node
    /// credential (see `forwarding`): it is served here or not at all.
    pub forwarded: Option<hangar_cluster::NodeCredential>,
}

impl Caller {
    /// A name as this caller means it (see [`Scope::resolve`]).
    pub fn resolve(&self, name: &str) -> String {
        self.scope.resolve(name)
    }

    /// The caller's tenant, if confined to one.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.scope.tenant()
    }

    /// Whether the caller may see an object owned by `owner`.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self.scope.tenant() {
            None => true,
            Some(t) => owner == Some(t.as_str()),
        }
    }

    /// The policy's answer for `action` on `resource`: `Ok` to go ahead; `E_FORBIDDEN`; or
    /// for a hidden object, `hidden` (the very error a missing object gives).
    pub fn allow(
        &self, action: Action, resource: Resource<'_>, hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        match decide(&self.scope, action, resource) {
            Decision::Allow => Ok(()),
            Decision::Hidden => Err(hidden()),
            Decision::Forbidden => Err(forbidden(&self.scope, action)),
        }
    }

    /// A spec's `base_dir` (where its relative paths resolve) names a directory on the host:
    /// only an admin may give one; a tenant's specs name files by absolute path.
    pub fn may_use_base_dir(&self, base_dir: Option<&str>) -> Result<(), ApiError> {
        if self.tenant().is_none() || base_dir.is_none() {
            return Ok(());
        }
        let mut body = ErrorBody::new(
            ErrorCode::Forbidden,
            "base_dir is for an admin on the host; a tenant's spec names files by absolute path",
        );
        body.path = Some("base_dir".into());
        Err(ApiError::from(body))
    }

    /// [`Caller::allow`] for an object whose owner is a tenant id as a string.
    pub fn allow_owned(
        &self, action: Action, owner: Option<&str>, hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        let owner = owner.and_then(|o| TenantId::new(o).ok());
        self.allow(action, Resource::Owned(owner.as_ref()), hidden)
    }
}

/// `403 E_FORBIDDEN` for `scope` attempting `action`.
pub fn forbidden(scope: &Scope, action: Action) -> ApiError {
    let mut body = ErrorBody::new(
        ErrorCode::Forbidden,
        format!("{action} is not allowed for a {scope} principal"),
    );
    body.hint = match action.min_role() {
        None => "only an admin may do this (root on the daemon's socket, or a token made with `hangar token create --admin`)".into(),
        Some(role) => format!("this needs the {role} role in the tenant (`hangar token create --tenant T --role {role}`)"),
    };
    ApiError::from(body)
}

/// `401 E_UNAUTHORIZED`: no principal could be established.
pub fn unauthorized(message: &str) -> ApiError {
    ApiError::from(ErrorBody::new(ErrorCode::Unauthorized, message))
}

/// Unix-socket peers other than root and the daemon's own user, and what they may do
/// (`hangard --map-uid UID=SCOPE`).
#[derive(Debug, Clone, Default)]
pub struct UidMap(pub BTreeMap<u32, Scope>);

impl UidMap {
    /// The scope of a unix-socket peer: admin for root and `own`, the mapped scope for a
    /// mapped uid, else none.
    pub fn scope_of(&self, uid: u32, own: u32) -> Option<Scope> {
        if uid == 0 || uid == own {
            return Some(Scope::Admin);
        }
        self.0.get(&uid).cloned()
    }

    /// Parses `UID=SCOPE` (`1001=tenant:acme:operator`).
    pub fn parse_entry(s: &str) -> Result<(u32, Scope), String> {
        let (uid, scope) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not UID=SCOPE (for example 1001=tenant:acme:operator)")
        })?;
        let uid = uid.parse().map_err(|_| format!("{uid:?} is not a numeric uid"))?;
        Ok((uid, scope.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_has_a_gate() {
        let doc: serde_json::Value =
            serde_json::from_str(&crate::openapi_json()).expect("the document is JSON");
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                assert!(
                    gate_of(&m, path).is_some(),
                    "{method} {path} has no entry in auth::ROUTES"
                );
                seen += 1;
            }
        }
        // The table has nothing the API does not document, except what the document does not
        // describe itself (/metrics, /v1/openapi.json).
        assert_eq!(seen + 2, ROUTES.len());
    }

    #[test]
    fn uid_maps() {
        let (uid, scope) = UidMap::parse_entry("1001=tenant:acme:operator").unwrap();
        let map = UidMap([(uid, scope.clone())].into());
        assert_eq!(map.scope_of(0, 500), Some(Scope::Admin));
        assert_eq!(map.scope_of(500, 500), Some(Scope::Admin));
        assert_eq!(map.scope_of(1001, 500), Some(scope));
        assert_eq!(map.scope_of(1002, 500), None);
        assert!(UidMap::parse_entry("x=admin").is_err());
        assert!(UidMap::parse_entry("1001").is_err());
    }
}

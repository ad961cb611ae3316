//! Who may do what: principals, scopes, roles and the one policy function.
//!
//! Every request reaching Hangar has a [`Scope`]: `admin` (the host's administrator: root on
//! the daemon's unix socket, or an admin token), or a tenant with a [`Role`]. [`decide`] maps
//! `(scope, action, resource)` to a [`Decision`]; it is pure, so the whole table is tested
//! without a daemon, and the daemon calls it on every route.
//!
//! Tenants are mutually hostile. A tenant principal's names are resolved inside its own
//! namespace ([`Scope::resolve`]: `web` means `acme--web`), so it cannot even *name* another
//! tenant's VM, pool or snapshot; objects found by id (operations, instances) whose owner is
//! another tenant are [`Decision::Hidden`]: answered exactly like a missing object, so
//! existence does not leak.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{qualify, TenantId};

/// What a tenant principal may do inside its tenant; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything of the tenant: VMs, pools, instances, snapshots, operations, events,
    /// quota usage.
    Viewer,
    /// Viewer, plus run what exists: start, stop, pause, resume, reboot, save and restore
    /// snapshots, claim and release pool instances.
    Operator,
    /// Operator, plus create and delete: VMs, snapshots, pools (and change pools).
    Owner,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Owner];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Owner => "owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; use viewer, operator or owner"))
    }
}

/// What a principal may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything on the host, including tenants, quotas, tokens, images and nodes.
    Admin,
    /// One tenant's objects, with a role.
    Tenant {
        /// The tenant.
        tenant: TenantId,
        /// What the principal may do there.
        role: Role,
    },
}

impl Scope {
    /// The tenant a tenant principal is confined to (`None` for admin).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Scope::Admin => None,
            Scope::Tenant { tenant, .. } => Some(tenant),
        }
    }

    /// A name as this principal means it: an admin's names are host names as they are; a
    /// tenant's are inside its namespace (`web` → `acme--web`; `acme--web` stays), so a tenant
    /// never reaches a name outside it.
    pub fn resolve(&self, name: &str) -> String {
        match self {
            Scope::Admin => name.to_string(),
            Scope::Tenant { tenant, .. } => qualify(tenant, name),
        }
    }

    /// Whether this principal may see an object owned by `owner` (`None`: the host's own,
    /// outside every tenant).
    pub fn sees(&self, owner: Option<&TenantId>) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Tenant { tenant, .. } => owner == Some(tenant),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Tenant { tenant, role } => write!(f, "tenant:{tenant}:{role}"),
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    /// `admin`, or `tenant:<id>:<role>`.
    fn from_str(s: &str) -> Result<Scope, String> {
        if s == "admin" {
            return Ok(Scope::Admin);
        }
        let rest = s
            .strip_prefix("tenant:")
            .ok_or_else(|| format!("scope {s:?} is neither admin nor tenant:<id>:<role>"))?;
        let (tenant, role) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("scope {s:?} has no role; write tenant:<id>:<role>"))?;
        Ok(Scope::Tenant {
            tenant: TenantId::new(tenant).map_err(|e| e.to_string())?,
            role: role.parse()?,
        })
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Everything a request can ask for. Each API route maps to exactly one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read the API document, validate or plan a spec (touches nothing).
    ApiRead,
    /// List the guest images.
    ImageRead,
    /// List or inspect VMs.
    VmRead,
    /// Define a VM.
    VmCreate,
    /// Remove a VM.
    VmDelete,
    /// Start, stop, pause, resume or reboot a VM.
    VmOperate,
    /// List snapshots.
    SnapshotRead,
    /// Save a VM's memory.
    SnapshotSave,
    /// Restore a snapshot into a VM.
    SnapshotRestore,
    /// Delete a snapshot.
    SnapshotDelete,
    /// Read operations.
    OperationRead,
    /// Read the event stream.
    EventRead,
    /// Read a tenant (its quotas and usage).
    TenantRead,
    /// Create, change or remove tenants and their quotas.
    TenantManage,
    /// Read pools.
    PoolRead,
    /// Create, change or remove pools.
    PoolManage,
    /// Claim an instance from a pool.
    PoolClaim,
    /// Read pool instances.
    InstanceRead,
    /// Release a claimed instance.
    InstanceRelease,
    /// Read the reconcile loop's status.
    FleetRead,
    /// Run a reconcile pass now.
    FleetReconcile,
    /// Create, list or revoke API tokens.
    TokenManage,
    /// Read the host's metrics.
    MetricsRead,
    /// Read the audit log's head and the host's settings.
    HostRead,
    /// Run programs in a VM's guest and read or write its files (through its agent).
    GuestExec,
    /// List or inspect networks and their leases.
    NetworkRead,
    /// Create or remove networks (subnets are the host's to hand out).
    NetworkManage,
    /// Read the cluster's nodes.
    NodeRead,
    /// Cordon, drain or uncordon a node.
    NodeManage,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 29] = [
        Action::ApiRead,
        Action::ImageRead,
        Action::VmRead,
        Action::VmCreate,
        Action::VmDelete,
        Action::VmOperate,
        Action::SnapshotRead,
        Action::SnapshotSave,
        Action::SnapshotRestore,
        Action::SnapshotDelete,
        Action::OperationRead,
        Action::EventRead,
        Action::TenantRead,
        Action::TenantManage,
        Action::PoolRead,
        Action::PoolManage,
        Action::PoolClaim,
        Action::InstanceRead,
        Action::InstanceRelease,
        Action::FleetRead,
        Action::FleetReconcile,
        Action::TokenManage,
        Action::MetricsRead,
        Action::HostRead,
        Action::GuestExec,
        Action::NetworkRead,
        Action::NetworkManage,
        Action::NodeRead,
        Action::NodeManage,
    ];

    /// The least role a tenant principal needs, or `None` when only an admin may.
    pub fn min_role(self) -> Option<Role> {
        use Action::*;
        match self {
            ApiRead | ImageRead | VmRead | SnapshotRead | OperationRead | EventRead
            | TenantRead | PoolRead | InstanceRead | NetworkRead => Some(Role::Viewer),
            VmOperate | SnapshotSave | SnapshotRestore | PoolClaim | InstanceRelease
            | GuestExec => Some(Role::Operator),
            VmCreate | VmDelete | SnapshotDelete | PoolManage => Some(Role::Owner),
            TenantManage | FleetRead | FleetReconcile | TokenManage | MetricsRead | HostRead
            | NetworkManage | NodeRead | NodeManage => None,
        }
    }

    /// A dotted name for audit entries and messages (`vm.create`).
    pub fn as_str(self) -> &'static str {
        use Action::*;
        match self {
            ApiRead => "api.read",
            ImageRead => "image.read",
            VmRead => "vm.read",
            VmCreate => "vm.create",
            VmDelete => "vm.delete",
            VmOperate => "vm.operate",
            SnapshotRead => "snapshot.read",
            SnapshotSave => "snapshot.save",
            SnapshotRestore => "snapshot.restore",
            SnapshotDelete => "snapshot.delete",
            OperationRead => "operation.read",
            EventRead => "event.read",
            TenantRead => "tenant.read",
            TenantManage => "tenant.manage",
            PoolRead => "pool.read",
            PoolManage => "pool.manage",
            PoolClaim => "pool.claim",
            InstanceRead => "instance.read",
            InstanceRelease => "instance.release",
            FleetRead => "fleet.read",
            FleetReconcile => "fleet.reconcile",
            TokenManage => "token.manage",
            MetricsRead => "metrics.read",
            HostRead => "host.read",
            GuestExec => "guest.exec",
            NetworkRead => "network.read",
            NetworkManage => "network.manage",
            NodeRead => "node.read",
            NodeManage => "node.manage",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action is applied to, as far as ownership goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// The host as a whole, or a collection the principal only sees its share of (lists are
    /// filtered with [`Scope::sees`]).
    Host,
    /// A tenant (its record, quotas, or something created inside it).
    Tenant(&'a TenantId),
    /// An existing object and its owner (`None`: the host's, outside every tenant).
    Owned(Option<&'a TenantId>),
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Not with this principal's role or scope: `403 E_FORBIDDEN`.
    Forbidden,
    /// The object belongs to someone this principal must not learn about: answer exactly as
    /// if it did not exist (`404`).
    Hidden,
}

/// The policy: may `scope` do `action` to `resource`?
///
/// An admin may do everything. A tenant principal never sees another tenant's objects or
/// tenant record (hidden, whatever the action), may do nothing only an admin may (forbidden),
/// and otherwise needs at least the action's [`Action::min_role`].
pub fn decide(scope: &Scope, action: Action, resource: Resource<'_>) -> Decision {
    let (tenant, role) = match scope {
        Scope::Admin => return Decision::Allow,
        Scope::Tenant { tenant, role } => (tenant, *role),
    };
    let foreign = match resource {
        Resource::Host => false,
        Resource::Tenant(t) => t != tenant,
        Resource::Owned(owner) => owner != Some(tenant),
    };
    if foreign {
        return Decision::Hidden;
    }
    match action.min_role() {
        Some(needed) if role >= needed => Decision::Allow,
        _ => Decision::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str, role: Role) -> Scope {
        Scope::Tenant { tenant: TenantId::new(t).unwrap(), role }
    }

    #[test]
    fn admin_may_do_everything() {
        let other = TenantId::new("beta").unwrap();
        for action in Action::ALL {
            for r in [
                Resource::Host,
                Resource::Tenant(&other),
                Resource::Owned(Some(&other)),
                Resource::Owned(None),
            ] {
                assert_eq!(decide(&Scope::Admin, action, r), Decision::Allow);
            }
        }
    }

    #[test]
    fn roles_include_the_ones_below_and_admin_actions_stay_admin() {
        let acme = TenantId::new("acme").unwrap();
        for action in Action::ALL {
            for role in Role::ALL {
                let d = decide(&tenant("acme", role), action, Resource::Owned(Some(&acme)));
                let expected = match action.min_role() {
                    Some(needed) if role >= needed => Decision::Allow,
                    _ => Decision::Forbidden,
                };
                assert_eq!(d, expected, "{role} {action}");
            }
        }
        assert_eq!(Action::TokenManage.min_role(), None);
        assert_eq!(Action::TenantManage.min_role(), None);
        assert_eq!(Action::VmOperate.min_role(), Some(Role::Operator));
        assert_eq!(Action::VmCreate.min_role(), Some(Role::Owner));
    }

    #[test]
    fn another_tenants_objects_are_hidden_whatever_the_role() {
        let beta = TenantId::new("beta").unwrap();
        for action in Action::ALL {
            for role in Role::ALL {
                let s = tenant("acme", role);
                assert_eq!(decide(&s, action, Resource::Owned(Some(&beta))), Decision::Hidden);
                assert_eq!(decide(&s, action, Resource::Owned(None)), Decision::Hidden);
                assert_eq!(decide(&s, action, Resource::Tenant(&beta)), Decision::Hidden);
            }
        }
    }

    #[test]
    fn scopes_round_trip_and_resolve_names_inside_the_tenant() {
        for s in ["admin", "tenant:acme:viewer", "tenant:a-b:owner"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        for bad in ["root", "tenant:acme", "tenant:acme:god", "tenant:A:owner", "tenant::owner"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
        let s = tenant("acme", Role::Owner);
        assert_eq!(s.resolve("web"), "acme--web");
        assert_eq!(s.resolve("acme--web"), "acme--web");
        assert_eq!(s.resolve("beta--web"), "acme--beta--web");
        assert_eq!(Scope::Admin.resolve("beta--web"), "beta--web");
        assert!(s.sees(Some(&TenantId::new("acme").unwrap())));
        assert!(!s.sees(None));
    }
}

//! Tenants and pools in a cluster's etcd: the cluster's source of truth for both, signed with
//! the cluster key like everything nodes act on.
//!
//! Every change to a tenant's pools is checked against the tenant's quotas with all its pools
//! in the cluster ([`hangar_cluster::tenancy`]) and written in one etcd transaction that holds
//! only if neither the tenant nor the pool changed since they were read; the transaction also
//! rewrites the tenant's document, so any two changes to one tenant's pools (made through any
//! nodes) are ordered, and the second is checked again against what the first left. A tenant is
//! removed the same way, only while it has no pool.
//!
//! Keys under `/hangar/v1`: `tenants/<id>` (a signed [`Tenant`]) and `pools/<id>` (a signed
//! [`Pool`] with its cluster-wide counts).

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use hangar_cluster::tenancy::check_pool_change;
use hangar_cluster::{POOL, TENANT};
use hangar_core::error::ErrorCode;
use hangar_core::ids::TenantId;
use hangar_fleet::{FleetError, Pool, Tenant};

use crate::cluster::{unavailable, Membership, ROOT};
use crate::error::ApiError;
use crate::scheduler::Keys;

/// How many times a change is tried again when another changed the same tenant meanwhile.
const ATTEMPTS: usize = 20;

fn tenant_key(id: &str) -> String {
    format!("{ROOT}/tenants/{id}")
}

/// Where pool `id` is kept.
pub(crate) fn pool_key(id: &str) -> String {
    format!("{ROOT}/pools/{id}")
}

/// A document as read, with the revision it last changed at.
struct Read<T> {
    value: T,
    stored: Vec<u8>,
    revision: i64,
}

fn refused(e: hangar_cluster::SignatureError) -> ApiError {
    ApiError::new(ErrorCode::SignatureInvalid, e.to_string(), None, None)
}

fn error(e: impl Into<hangar_core::error::Error>) -> ApiError {
    ApiError::from(e.into())
}

async fn read_tenant(
    client: &mut Client, keys: &Keys, id: &str,
) -> Result<Option<Read<Tenant>>, ApiError> {
    let answer = client.get(tenant_key(id), None).await.map_err(unavailable)?;
    let Some(kv) = answer.kvs().first() else { return Ok(None) };
    let value = keys.trusted.open::<Tenant>(TENANT, kv.value()).map_err(refused)?;
    Ok(Some(Read { value, stored: kv.value().to_vec(), revision: kv.mod_revision() }))
}

/// Every pool in the cluster that opens (one that does not is logged and left out).
async fn read_pools(client: &mut Client, keys: &Keys) -> Result<Vec<Read<Pool>>, ApiError> {
    let answer = client
        .get(format!("{ROOT}/pools/"), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let mut pools = Vec::new();
    for kv in answer.kvs() {
        match keys.trusted.open::<Pool>(POOL, kv.value()) {
            Ok(value) => {
                pools.push(Read { value, stored: kv.value().to_vec(), revision: kv.mod_revision() })
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a pool: {e}")
            }
        }
    }
    Ok(pools)
}

/// The cluster's pools, signed ones only.
pub(crate) async fn cluster_pools(m: &Membership, keys: &Keys) -> Result<Vec<Pool>, ApiError> {
    let mut client = m.client().await.map_err(unavailable)?;
    Ok(read_pools(&mut client, keys).await?.into_iter().map(|r| r.value).collect())
}

/// The cluster's tenants, each with its pools.
pub(crate) async fn cluster_tenants(
    m: &Membership, keys: &Keys,
) -> Result<Vec<(Tenant, Vec<Pool>)>, ApiError> {
    let mut client = m.client().await.map_err(unavailable)?;
    let answer = client
        .get(format!("{ROOT}/tenants/"), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(unavailable)?;
    let pools = read_pools(&mut client, keys).await?;
    let mut tenants = Vec::new();
    for kv in answer.kvs() {
        match keys.trusted.open::<Tenant>(TENANT, kv.value()) {
            Ok(tenant) => {
                let own = pools
                    .iter()
                    .filter(|p| p.value.tenant == tenant.id)
                    .map(|p| p.value.clone())
                    .collect();
                tenants.push((tenant, own));
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a tenant: {e}")
            }
        }
    }
    Ok(tenants)
}

/// Writes `tenant` (new, or with new quotas). Lowered quotas refuse growth from then on; what
/// pools already ask for stays.
pub(crate) async fn put_cluster_tenant(
    m: &Membership, keys: &Keys, tenant: &Tenant,
) -> Result<(), ApiError> {
    let mut client = m.client().await.map_err(unavailable)?;
    let doc = serde_json::to_vec(&keys.signing.sign(TENANT, tenant)).expect("documents serialise");
    client.put(tenant_key(tenant.id.as_str()), doc, None).await.map_err(unavailable)?;
    Ok(())
}

/// Removes tenant `id` while it has no pool in the cluster; whether it was there.
pub(crate) async fn delete_cluster_tenant(
    m: &Membership, keys: &Keys, id: &TenantId,
) -> Result<bool, ApiError> {
    let mut client = m.client().await.map_err(unavailable)?;
    for _ in 0..ATTEMPTS {
        let Some(tenant) = read_tenant(&mut client, keys, id.as_str()).await? else {
            return Ok(false);
        };
        let pools = read_pools(&mut client, keys).await?;
        if let Some(pool) = pools.iter().find(|p| &p.value.tenant == id) {
            return Err(error(FleetError::TenantInUse {
                tenant: id.clone(),
                pool: pool.value.id.clone(),
            }));
        }
        let key = tenant_key(id.as_str());
        let remove = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, tenant.revision)])
            .and_then([TxnOp::delete(key, None)]);
        if client.txn(remove).await.map_err(unavailable)?.succeeded() {
            return Ok(true);
        }
    }
    Err(contended(id))
}

/// A change to one of a tenant's pools.
pub(crate) enum PoolChange {
    /// A new pool (`E_POOL_EXISTS` if the cluster has one with its id).
    Create(Pool),
    /// New counts, policy or template for an existing pool.
    Update(Pool),
    /// The pool goes (the scheduler then takes its instances off every node).
    Remove(Pool),
}

/// Makes `change` in the cluster if the tenant's quotas allow it, as the top of this module
/// says.
pub(crate) async fn change_pool(
    m: &Membership, keys: &Keys, change: PoolChange,
) -> Result<(), ApiError> {
    let pool = match &change {
        PoolChange::Create(p) | PoolChange::Update(p) | PoolChange::Remove(p) => p,
    };
    let key = pool_key(pool.id.as_str());
    let mut client = m.client().await.map_err(unavailable)?;
    for _ in 0..ATTEMPTS {
        let tenant = read_tenant(&mut client, keys, pool.tenant.as_str())
            .await?
            .ok_or_else(|| error(FleetError::TenantNotFound(pool.tenant.clone())))?;
        let pools = read_pools(&mut client, keys).await?;
        let current = pools.iter().find(|p| p.value.id == pool.id);
        let others: Vec<Pool> = pools
            .iter()
            .filter(|p| p.value.tenant == pool.tenant && p.value.id != pool.id)
            .map(|p| p.value.clone())
            .collect();
        // The pool as read must be as the caller found it: the same id in another tenant's
        // hands is not this change's to make.
        let unchanged = match (&change, current) {
            (PoolChange::Create(_), None) => {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            }
            (PoolChange::Create(_), Some(_)) => {
                return Err(error(FleetError::PoolExists(pool.id.clone())));
            }
            (_, Some(c)) if c.value.tenant == pool.tenant => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, c.revision)
            }
            (_, _) => return Err(error(FleetError::PoolNotFound(pool.id.clone()))),
        };
        let write = match &change {
            PoolChange::Create(new) | PoolChange::Update(new) => {
                check_pool_change(&tenant.value, &others, current.map(|c| &c.value), new)
                    .map_err(error)?;
                let doc =
                    serde_json::to_vec(&keys.signing.sign(POOL, new)).expect("documents serialise");
                TxnOp::put(key.clone(), doc, None)
            }
            PoolChange::Remove(_) => TxnOp::delete(key.clone(), None),
        };
        let tenant_at = tenant_key(pool.tenant.as_str());
        let txn = Txn::new()
            .when([
                Compare::mod_revision(tenant_at.clone(), CompareOp::Equal, tenant.revision),
                unchanged,
            ])
            // Rewriting the tenant as it was orders every change to its pools.
            .and_then([TxnOp::put(tenant_at, tenant.stored.clone(), None), write]);
        if client.txn(txn).await.map_err(unavailable)?.succeeded() {
            return Ok(());
        }
    }
    Err(contended(&pool.tenant))
}

/// `E_BUSY` (retryable): the tenant changed under every attempt.
fn contended(tenant: &TenantId) -> ApiError {
    ApiError::new(
        ErrorCode::Busy,
        format!("tenant {tenant}'s pools kept changing while this change was checked"),
        None,
        Some("retry".into()),
    )
}

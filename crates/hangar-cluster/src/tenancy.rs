//! Tenants and their quotas across a cluster. In a cluster a tenant's quotas bound what its
//! pools ask of the whole cluster (every instance their desired counts call for, on whatever
//! node), checked when a pool is made or changed, never per node: a node runs its share of a
//! pool without a quota of its own. The daemon makes each check and the write it allows one etcd
//! transaction (see `hangard`'s `tenancy`), so two changes through two nodes cannot both take
//! the last of a quota.

use hangar_core::lifecycle::VmState;
use hangar_fleet::{Pool, QuotaExceeded, Tenant, Usage};

/// The kind of a signed [`Tenant`] document.
pub const TENANT: &str = "tenant";

/// `usage` taken `n` times.
fn times(usage: Usage, n: u32) -> Usage {
    let n = u64::from(n);
    Usage {
        vcpus: usage.vcpus.saturating_mul(n),
        memory_mib: usage.memory_mib.saturating_mul(n),
        running: usage.running.saturating_mul(n),
        warm: usage.warm.saturating_mul(n),
        instances: usage.instances.saturating_mul(n),
        disk_mib: usage.disk_mib.saturating_mul(n),
    }
}

/// What `pool` asks of its tenant once every instance its desired counts call for exists.
pub fn pool_usage(pool: &Pool) -> Usage {
    let d = pool.desired;
    let mut total = Usage::default();
    for (state, n) in [
        (VmState::Running, d.running),
        (VmState::Paused, d.warm),
        (VmState::Sleeping, d.sleeping),
        (VmState::Spare, d.spare),
    ] {
        total.add(&times(Usage::of_spec(state, &pool.template), n));
    }
    total
}

/// What `pools` ask of their tenant together.
pub fn pools_usage<'a>(pools: impl IntoIterator<Item = &'a Pool>) -> Usage {
    let mut total = Usage::default();
    for pool in pools {
        total.add(&pool_usage(pool));
    }
    total
}

/// Whether `tenant`'s quotas allow its pool `old` (absent for a new pool) to become `new`,
/// beside its `others`. A change that asks for no more than the pool had is always allowed,
/// so lowering a quota never blocks scaling a pool down.
pub fn check_pool_change(
    tenant: &Tenant, others: &[Pool], old: Option<&Pool>, new: &Pool,
) -> Result<(), QuotaExceeded> {
    let (before, after) = (old.map(pool_usage).unwrap_or_default(), pool_usage(new));
    let grows = after.vcpus > before.vcpus
        || after.memory_mib > before.memory_mib
        || after.running > before.running
        || after.warm > before.warm
        || after.instances > before.instances
        || after.disk_mib > before.disk_mib;
    if !grows {
        return Ok(());
    }
    tenant.quotas.check(&tenant.id, &pools_usage(others), &after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_fleet::{Desired, Quota, Quotas};

    fn pool(id: &str, warm: u32, running: u32) -> Pool {
        let mut template =
            hangar_core::spec::VmSpec::new(hangar_core::ids::VmName::new("t").unwrap());
        (template.machine.vcpus, template.machine.memory_mib) = (2, 256);
        Pool {
            id: hangar_core::ids::PoolId::new(id).unwrap(),
            tenant: hangar_core::ids::TenantId::new("acme").unwrap(),
            template,
            desired: Desired { warm, running, ..Desired::default() },
            policy: Default::default(),
        }
    }

    fn tenant(quotas: Quotas) -> Tenant {
        Tenant { id: hangar_core::ids::TenantId::new("acme").unwrap(), quotas }
    }

    #[test]
    fn a_pool_asks_for_every_instance_its_counts_call_for() {
        let u = pool_usage(&pool("acme--web", 3, 2));
        assert_eq!((u.instances, u.warm, u.running), (5, 3, 2));
        assert_eq!((u.vcpus, u.memory_mib), (10, 5 * 256));
    }

    #[test]
    fn quotas_count_every_pool_of_the_tenant_and_never_block_a_shrink() {
        let t = tenant(Quotas { max_warm: Some(8), ..Quotas::default() });
        let web = pool("acme--web", 6, 0);
        assert!(check_pool_change(&t, &[], None, &web).is_ok());
        let api = pool("acme--api", 3, 0);
        let refused = check_pool_change(&t, std::slice::from_ref(&web), None, &api).unwrap_err();
        assert_eq!((refused.quota, refused.current, refused.requested), (Quota::Warm, 6, 3));
        assert!(check_pool_change(&t, std::slice::from_ref(&web), None, &pool("acme--api", 2, 0))
            .is_ok());
        // Over quota after the quota was lowered: shrinking is allowed, growing is not.
        let t = tenant(Quotas { max_warm: Some(4), ..Quotas::default() });
        assert!(check_pool_change(&t, &[], Some(&web), &pool("acme--web", 5, 0)).is_ok());
        assert!(check_pool_change(&t, &[], Some(&web), &pool("acme--web", 7, 0)).is_err());
    }
}

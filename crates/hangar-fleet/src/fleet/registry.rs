//! Changing the registry: tenants, pools, their templates and counts, and admission of
//! tenant VMs against quotas.

use crate::error::FleetError;
use std::sync::Arc;

use hangar_core::contracts::{Lifecycle, Snapshots};
use hangar_core::error::Result;
use hangar_core::ids::{PoolId, TenantId};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::VmSpec;

use crate::quota::Usage;
use crate::{Desired, Instance, Policy, Pool, Tenant};

use super::*;

impl<E: Lifecycle + Snapshots + ?Sized> Fleet<E> {
    /// Adds or updates a tenant.
    pub fn put_tenant(&self, tenant: Tenant) {
        self.lock().tenants.insert(tenant.id.clone(), tenant);
        self.changed();
    }

    /// Every tenant, by id.
    pub fn tenants(&self) -> Vec<Tenant> {
        self.lock().tenants.values().cloned().collect()
    }

    /// One tenant.
    pub fn tenant(&self, id: &TenantId) -> Option<Tenant> {
        self.lock().tenants.get(id).cloned()
    }

    /// Removes a tenant that owns no pool.
    pub fn remove_tenant(&self, id: &TenantId) -> Result<()> {
        let mut s = self.lock();
        if !s.tenants.contains_key(id) {
            return Err(FleetError::TenantNotFound(id.clone()).into());
        }
        if let Some(pool) = s.pools.values().find(|p| &p.tenant == id) {
            return Err(
                FleetError::TenantInUse { tenant: id.clone(), pool: pool.id.clone() }.into()
            );
        }
        s.tenants.remove(id);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Adds a pool (its tenant must exist). Nothing is created until the next pass.
    pub fn add_pool(&self, pool: Pool) -> Result<()> {
        check_pool_id(&pool.id)?;
        let mut s = self.lock();
        if !s.tenants.contains_key(&pool.tenant) {
            return Err(FleetError::TenantNotFound(pool.tenant.clone()).into());
        }
        if s.pools.contains_key(&pool.id) {
            return Err(FleetError::PoolExists(pool.id.clone()).into());
        }
        s.pools.insert(pool.id.clone(), pool);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Changes a pool's desired counts and policy.
    pub fn scale(&self, pool: &PoolId, desired: Desired, policy: Option<Policy>) -> Result<()> {
        let mut s = self.lock();
        let p = s.pools.get_mut(pool).ok_or_else(|| not_found_pool(pool))?;
        p.desired = desired;
        if let Some(policy) = policy {
            p.policy = policy;
        }
        s.backoff.remove(pool);
        drop(s);
        self.changed();
        Ok(())
    }

    /// Replaces a pool's template. Existing instances keep running what they were made from;
    /// new ones use the new template, and the pool's base snapshot (taken from the old one) is
    /// retaken on the next creation.
    pub fn set_template(&self, pool: &PoolId, template: VmSpec) -> Result<()> {
        let mut s = self.lock();
        let p = s.pools.get_mut(pool).ok_or_else(|| not_found_pool(pool))?;
        p.template = template;
        drop(s);
        self.changed();
        Ok(())
    }

    /// Removes a pool, every one of its instances (claimed or not) and its base snapshot.
    /// Instances a step is working on are dropped from the registry and discarded by that step
    /// when it finishes.
    pub fn remove_pool(&self, pool: &PoolId) -> Result<()> {
        let (doomed, base) = {
            let mut s = self.lock();
            if !s.pools.contains_key(pool) {
                return Err(not_found_pool(pool));
            }
            s.pools.remove(pool);
            s.backoff.remove(pool);
            // Its routes go with it: they could only ever fail.
            s.routes.retain(|_, r| &r.target.pool != pool);
            let base = s.bases.remove(pool);
            let (doomed, kept): (Vec<Instance>, Vec<Instance>) =
                std::mem::take(&mut s.instances).into_iter().partition(|i| &i.pool == pool);
            s.instances = kept;
            // Every one of them is retired (and so persisted) before any is touched: if this
            // process dies half way, the next pass finishes the job, busy ones included.
            s.retired.extend(doomed.iter().map(|i| i.name.clone()));
            let idle: Vec<Instance> =
                doomed.into_iter().filter(|i| !s.busy.contains_key(&i.id)).collect();
            (idle, base)
        };
        self.changed();
        let mut first_error = None;
        for i in doomed {
            match self.discard(&i.name) {
                Ok(()) => {
                    self.lock().retired.remove(&i.name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.changed();
        if let Some(base) = base {
            let _ = self.engine.delete_snapshot(&base.snapshot);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every pool, by id.
    pub fn pools(&self) -> Vec<Pool> {
        self.lock().pools.values().cloned().collect()
    }

    /// One pool; `E_POOL_NOT_FOUND` if there is none.
    pub fn pool(&self, id: &PoolId) -> Result<Pool> {
        self.lock().pool(id).cloned()
    }

    /// A pool's base snapshot, if it has one.
    pub fn base(&self, pool: &PoolId) -> Option<Base> {
        self.lock().bases.get(pool).cloned()
    }

    /// Instances (of one pool, or all), oldest first.
    pub fn instances(&self, pool: Option<&PoolId>) -> Vec<Instance> {
        self.lock()
            .instances
            .iter()
            .filter(|i| pool.is_none_or(|p| &i.pool == p))
            .cloned()
            .collect()
    }

    /// What a tenant uses now: its pools' instances and its own VMs.
    pub fn usage(&self, tenant: &TenantId) -> Result<Usage> {
        self.lock().usage(tenant, None)
    }

    /// Reserves room in its tenant's quotas for VM `spec` going `to` a new state, checked
    /// against everything the tenant uses (pool instances, its other VMs, steps in flight)
    /// under the lock the fleet's own steps take, so two requests can never both take the last
    /// room. The room stays reserved until the returned [`Admission`] is dropped, after the
    /// engine step (whose result the store then shows). A VM without a tenant is admitted
    /// without a check; one whose tenant does not exist is `E_TENANT_NOT_FOUND`.
    pub fn admit(self: &Arc<Self>, spec: &VmSpec, to: Admit) -> Result<Admission<E>> {
        let Some(tenant) = &spec.tenant else {
            return Ok(Admission { fleet: self.clone(), vm: None });
        };
        let (vcpus, memory, disk) = (spec.machine.vcpus, spec.machine.memory_mib, disk_mib(spec));
        let (check, holds) = match to {
            Admit::Define => (
                Usage {
                    instances: 1,
                    vcpus: u64::from(vcpus),
                    memory_mib: u64::from(memory),
                    disk_mib: disk,
                    ..Usage::default()
                },
                Usage::of_vm(VmState::Defined, vcpus, memory, disk),
            ),
            Admit::Run => {
                let u = Usage::of_vm(VmState::Running, vcpus, memory, disk);
                (u, u)
            }
            Admit::Sleep => {
                let u = Usage::of_vm(VmState::Sleeping, vcpus, memory, disk);
                (u, u)
            }
        };
        let mut s = self.lock();
        if s.pending.contains_key(&spec.name) {
            return Err(FleetError::VmBusy(spec.name.clone()).into());
        }
        s.check_tenant(tenant, Some(&spec.name), check)?;
        s.pending.insert(spec.name.clone(), (tenant.clone(), holds));
        Ok(Admission { fleet: self.clone(), vm: Some(spec.name.clone()) })
    }

    /// Makes quotas count tenants' own VMs (those made outside any pool), read through
    /// `read` whenever a quota is checked. Without it only pool instances count.
    pub fn count_tenant_vms(&self, read: TenantVms) {
        self.lock().tenant_vms = Some(read);
    }
}

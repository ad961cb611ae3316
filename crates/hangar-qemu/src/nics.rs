//! The `Nics` contract: NICs change only while the VM is down (no hotplug).

use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::{DeviceName, VmName};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::NicSpec;

use crate::engine::*;

impl QemuEngine {
    fn change_nics(
        &self, vm: &VmName, change: impl FnOnce(&mut Vec<NicSpec>) -> Result<()>,
    ) -> Result<()> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if !matches!(rec.state, VmState::Defined | VmState::Stopped) {
            return Err(Error::Unsupported(format!(
                "changing NICs while the VM is {} (no hotplug)",
                rec.state
            )));
        }
        let mut spec = rec.spec.clone();
        change(&mut spec.nics)?;
        let (canonical, mut plan) = self.replan(spec)?;
        // The VM keeps the user it was given at define.
        if let (Some(new), Some(old)) =
            (plan.confinement.as_mut(), Self::plan_of(&rec)?.confinement)
        {
            (new.uid, new.gid) = (old.uid, old.gid);
        }
        rec.spec = canonical.spec;
        rec.spec_hash = canonical.hash.0;
        rec.plan_json = plan.to_json();
        self.save(&mut rec)
    }
}

impl Nics for QemuEngine {
    fn attach_nic(&self, vm: &VmName, nic: &NicSpec) -> Result<()> {
        self.change_nics(vm, |nics| {
            if nics.iter().any(|n| n.name == nic.name) {
                return Err(Error::NicExists { vm: vm.clone(), nic: nic.name.to_string() });
            }
            nics.push(nic.clone());
            Ok(())
        })
    }

    fn detach_nic(&self, vm: &VmName, nic: &DeviceName) -> Result<()> {
        self.change_nics(vm, |nics| {
            let before = nics.len();
            nics.retain(|n| n.name != *nic);
            if nics.len() == before {
                return Err(Error::NicNotFound { vm: vm.clone(), nic: nic.to_string() });
            }
            Ok(())
        })
    }

    fn list_nics(&self, vm: &VmName) -> Result<Vec<NicSpec>> {
        Ok(self.record(vm)?.spec.nics)
    }
}

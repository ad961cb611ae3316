//! [`Nics`] for the fake: a VM's NIC list, changed live only with the hot-plug capability.

use crate::contracts::*;
use crate::error::{Error, Result};
use crate::ids::{DeviceName, VmName};
use crate::lifecycle::VmState;
use crate::spec::NicSpec;

use super::{lock, FakeEngine, Inner};

impl FakeEngine {
    fn check_nic_change(&self, inner: &Inner, vm: &VmName) -> Result<()> {
        let state = inner.vm(vm)?.machine.state();
        let live = !matches!(
            state,
            VmState::Defined | VmState::Stopped | VmState::Failed | VmState::Sleeping
        );
        if live && !lock(&self.capabilities).has(Capability::NicHotplug) {
            return Err(Error::Unsupported(format!("changing NICs while the VM is {state}")));
        }
        Ok(())
    }
}

impl Nics for FakeEngine {
    fn attach_nic(&self, vm: &VmName, nic: &NicSpec) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        self.check_nic_change(&inner, vm)?;
        let fake = inner.vm_mut(vm)?;
        if fake.nics.iter().any(|n| n.name == nic.name) {
            return Err(Error::NicExists { vm: vm.clone(), nic: nic.name.to_string() });
        }
        fake.nics.push(nic.clone());
        Ok(())
    }

    fn detach_nic(&self, vm: &VmName, nic: &DeviceName) -> Result<()> {
        self.enter()?;
        let mut inner = lock(&self.inner);
        self.check_nic_change(&inner, vm)?;
        let fake = inner.vm_mut(vm)?;
        let before = fake.nics.len();
        fake.nics.retain(|n| n.name != *nic);
        if fake.nics.len() == before {
            return Err(Error::NicNotFound { vm: vm.clone(), nic: nic.to_string() });
        }
        Ok(())
    }

    fn list_nics(&self, vm: &VmName) -> Result<Vec<NicSpec>> {
        self.enter()?;
        let inner = lock(&self.inner);
        Ok(inner.vm(vm)?.nics.clone())
    }
}

//! [`Backend`]: what the control library (and so `hangard`) needs of an engine beyond the core
//! contracts. The QEMU engine and the in-memory fake both implement it, so the daemon runs on
//! either (`hangard --engine fake` serves the API and the fleet with no QEMU at all).

use std::time::Duration;

use hangar_api::VmView;
use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{Engine, Lifecycle, VmStatus};
use hangar_core::error::Error;
use hangar_core::fake::FakeEngine;
use hangar_core::ids::VmName;
use hangar_core::lifecycle::VmState;
use hangar_core::spec::VmSpec;
use hangar_qemu::{QemuEngine, StartOptions};

/// Per-call boot settings.
pub struct Start<'a> {
    /// Return once the vCPUs run instead of waiting for the guest to report ready.
    pub no_wait: bool,
    /// Overrides the engine's boot timeout.
    pub timeout: Option<Duration>,
    /// Told the name of each boot phase as it begins.
    pub progress: &'a dyn Fn(&str),
}

/// An engine the control library can drive: the core contracts plus views and specs.
pub trait Backend: Engine {
    /// A VM as `hangar ps` and `GET /v1/vms` show it, refreshed against reality.
    fn view(&self, vm: &VmName) -> Result<VmView, Error>;
    /// A VM's spec as defined (normalised: tenant-qualified name, defaults filled in).
    fn spec(&self, vm: &VmName) -> Result<VmSpec, Error>;
    /// Every VM's state and spec as stored, without refreshing any (cheap: what quotas count).
    fn specs(&self) -> Result<Vec<(VmState, VmSpec)>, Error>;
    /// Boots a defined or stopped VM with per-call settings.
    fn start_with(
        &self, vm: &VmName, start: &Start<'_>, cancel: &CancelToken,
    ) -> Result<VmStatus, Error>;
    /// How a VM's engine process is confined, for `hangar inspect` (`None`: not confined).
    fn confinement(&self, _vm: &VmName) -> Result<Option<serde_json::Value>, Error> {
        Ok(None)
    }
    /// Makes (`present`) or removes a network's host side (its bridge). A fake engine has no
    /// host side: nothing to do.
    fn host_network(
        &self, _network: &hangar_core::network::Network, _present: bool,
    ) -> Result<(), Error> {
        Ok(())
    }
    /// Releases leases whose VM was never recorded (a define killed midway).
    fn sweep_leases(&self) -> Result<(), Error> {
        Ok(())
    }
    /// What live VMs need now and then (console logs rotated); `hangard` calls it every second.
    fn upkeep(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Backend for QemuEngine {
    fn host_network(
        &self, network: &hangar_core::network::Network, present: bool,
    ) -> Result<(), Error> {
        if present {
            hangar_net::host::ensure_bridge(network)?;
            self.with_store(|s| hangar_net::rules::sync(s, None))
        } else {
            hangar_net::host::remove_bridge(network)?;
            self.with_store(|s| hangar_net::rules::sync(s, Some(&network.name)))
        }
    }

    fn sweep_leases(&self) -> Result<(), Error> {
        QemuEngine::sweep_leases(self).map(drop)
    }

    fn view(&self, vm: &VmName) -> Result<VmView, Error> {
        self.record(vm).map(|r| crate::view_of(&r))
    }

    fn spec(&self, vm: &VmName) -> Result<VmSpec, Error> {
        self.record(vm).map(|r| r.spec)
    }

    fn specs(&self) -> Result<Vec<(VmState, VmSpec)>, Error> {
        Ok(self.records()?.into_iter().map(|r| (r.state, r.spec)).collect())
    }

    fn start_with(
        &self, vm: &VmName, start: &Start<'_>, cancel: &CancelToken,
    ) -> Result<VmStatus, Error> {
        let phase = |p: hangar_qemu::Phase| (start.progress)(p.as_str());
        let opts =
            StartOptions { no_wait: start.no_wait, timeout: start.timeout, progress: Some(&phase) };
        QemuEngine::start_with(self, vm, &opts, cancel)
    }

    fn confinement(&self, vm: &VmName) -> Result<Option<serde_json::Value>, Error> {
        QemuEngine::confinement(self, vm)
    }

    fn upkeep(&self) -> Result<(), Error> {
        self.rotate_logs()
    }
}

/// The fake boots at once: its view has no process, no uptime and accelerator `fake`.
impl Backend for FakeEngine {
    fn view(&self, vm: &VmName) -> Result<VmView, Error> {
        let status = self.status(vm)?;
        let spec = Backend::spec(self, vm)?;
        Ok(VmView {
            name: vm.to_string(),
            state: status.state.as_str().to_string(),
            accel: "fake".into(),
            vcpus: spec.machine.vcpus,
            memory_mib: spec.machine.memory_mib,
            uptime_s: None,
            pid: None,
            boot_ms: None,
            reason: status.reason,
            spec_hash: hangar_spec::CanonicalSpec::new(spec.clone()).hash.0,
            tenant: spec.tenant.as_ref().map(|t| t.to_string()),
            addresses: Vec::new(),
        })
    }

    fn spec(&self, vm: &VmName) -> Result<VmSpec, Error> {
        FakeEngine::spec(self, vm).ok_or_else(|| Error::VmNotFound(vm.clone()))
    }

    fn specs(&self) -> Result<Vec<(VmState, VmSpec)>, Error> {
        Ok(FakeEngine::specs(self))
    }

    fn start_with(
        &self, vm: &VmName, start: &Start<'_>, cancel: &CancelToken,
    ) -> Result<VmStatus, Error> {
        (start.progress)("engine");
        let status = self.start(vm, cancel)?;
        (start.progress)("ready");
        Ok(status)
    }
}

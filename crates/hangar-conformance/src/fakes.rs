//! The harness that runs the suite against `hangar-core`'s in-memory fakes.

use std::sync::Arc;
use std::time::Duration;

use hangar_core::clock::ManualClock;
use hangar_core::contracts::{CapabilitySet, Engine};
use hangar_core::fake::{FakeConfig, FakeEngine};
use hangar_core::ids::VmName;
use hangar_core::spec::*;

use crate::{Harness, Knobs};

/// Builds [`FakeEngine`]s with a virtual clock, so timeouts cost no real time.
#[derive(Debug, Clone)]
pub struct FakeHarness {
    /// Capabilities the fakes claim.
    pub capabilities: CapabilitySet,
}

impl Default for FakeHarness {
    fn default() -> Self {
        Self { capabilities: CapabilitySet::all() }
    }
}

impl FakeHarness {
    /// A harness whose fakes lack the given capabilities.
    pub fn without(capabilities: &[hangar_core::contracts::Capability]) -> Self {
        let mut set = CapabilitySet::all();
        for c in capabilities {
            set = set.without(*c);
        }
        Self { capabilities: set }
    }
}

impl Harness for FakeHarness {
    fn engine(&self, knobs: Knobs) -> Result<Box<dyn Engine>, String> {
        let engine = FakeEngine::new(FakeConfig {
            clock: Arc::new(ManualClock::default()),
            capabilities: self.capabilities.clone(),
            ..FakeConfig::default()
        });
        engine.set_ignore_graceful_stop(knobs.ignore_graceful_stop);
        Ok(Box::new(engine))
    }

    fn spec(&self, name: &str) -> VmSpec {
        VmSpec {
            serial: SerialSpec { mode: SerialMode::Log },
            ..VmSpec::new(VmName::new(name).expect("scenario names are valid"))
        }
    }

    fn graceful_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

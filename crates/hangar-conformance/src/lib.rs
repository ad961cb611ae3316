//! The contract, enforced.
//!
//! A library of named scenarios (`CONF-L-01`, …) that pin down how every engine adapter behaves
//! behind the `hangar-core` contracts. An adapter crate runs all of them with one macro call:
//!
//! ```ignore
//! hangar_conformance::conformance_suite!(my_engine, MyHarness::new());
//! ```
//!
//! which expands to one `#[test]` per scenario. A scenario that needs a capability the engine
//! lacks, or an engine the host cannot run, is **skipped with a reason**: the test prints a
//! `SKIPPED CONF-…: reason` line on the real stderr (bypassing output capture) and never claims
//! it checked anything. A failing scenario on the fakes means the contract is wrong; on an engine,
//! the adapter is.

use std::io::Write;
use std::time::Duration;

use hangar_core::contracts::{Capability, Engine};
use hangar_core::spec::VmSpec;

mod fakes;
mod scenarios;

pub use fakes::FakeHarness;
pub use scenarios::SCENARIOS;

/// Per-scenario settings a harness must honour when building the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Knobs {
    /// The guest must ignore graceful stop requests.
    pub ignore_graceful_stop: bool,
}

/// Builds engines for scenarios. One engine per scenario, isolated from the others; the harness
/// cleans up whatever it made when the engine is dropped.
pub trait Harness {
    /// A fresh engine configured with `knobs`, or `Err(reason)` when this host cannot run one
    /// (the scenario is then skipped with that reason).
    fn engine(&self, knobs: Knobs) -> Result<Box<dyn Engine>, String>;
    /// A spec this engine can boot, named `name`.
    fn spec(&self, name: &str) -> VmSpec;
    /// The graceful-stop timeout scenarios use (short for fakes, realistic for real guests).
    fn graceful_timeout(&self) -> Duration;
}

/// What a scenario needs and does.
pub struct Scenario {
    /// Stable id, e.g. `CONF-L-01`.
    pub id: &'static str,
    /// What it checks, one line.
    pub title: &'static str,
    /// Capabilities without which it is skipped.
    pub requires: &'static [Capability],
    /// Engine settings it needs.
    pub knobs: Knobs,
    /// The check.
    pub run: fn(&Ctx<'_>) -> Result<(), String>,
}

/// What a scenario gets to work with.
pub struct Ctx<'a> {
    /// The engine under test.
    pub engine: &'a dyn Engine,
    /// The harness that built it.
    pub harness: &'a dyn Harness,
}

impl Ctx<'_> {
    /// A bootable spec named `name`.
    pub fn spec(&self, name: &str) -> VmSpec {
        self.harness.spec(name)
    }
}

/// How a scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Not run, and why.
    Skipped(String),
    /// A check failed.
    Failed(String),
}

/// Looks a scenario up by id.
pub fn scenario(id: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.id == id)
}

/// Runs one scenario against a fresh engine from `harness`.
pub fn run(harness: &dyn Harness, id: &str) -> Outcome {
    let Some(scenario) = scenario(id) else {
        return Outcome::Failed(format!("no scenario {id}"));
    };
    let engine = match harness.engine(scenario.knobs) {
        Ok(engine) => engine,
        Err(reason) => return Outcome::Skipped(reason),
    };
    let capabilities = engine.capabilities();
    let missing: Vec<_> = scenario.requires.iter().filter(|c| !capabilities.has(**c)).collect();
    if !missing.is_empty() {
        return Outcome::Skipped(format!("engine lacks capability {missing:?}"));
    }
    let ctx = Ctx { engine: engine.as_ref(), harness };
    match (scenario.run)(&ctx) {
        Ok(()) => Outcome::Passed,
        Err(message) if message.starts_with(SKIP_PREFIX) => {
            Outcome::Skipped(message[SKIP_PREFIX.len()..].to_string())
        }
        Err(message) => Outcome::Failed(message),
    }
}

const SKIP_PREFIX: &str = "\u{0}skip:";

/// Lets a scenario decide at run time that it has nothing to check.
pub fn skip(reason: impl std::fmt::Display) -> String {
    format!("{SKIP_PREFIX}{reason}")
}

/// Runs a scenario as a test: panics on failure, reports a skip loudly on the real stderr.
pub fn run_as_test(harness: &dyn Harness, id: &str) {
    match run(harness, id) {
        Outcome::Passed => {}
        Outcome::Skipped(reason) => {
            // Written to the process's stderr directly: the test harness captures only the
            // print macros, and a skip must never be invisible.
            let _ = writeln!(std::io::stderr(), "SKIPPED {id}: {reason}");
        }
        Outcome::Failed(message) => panic!("{id} failed: {message}"),
    }
}

/// Expands to one `#[test]` per conformance scenario inside a module named `$module`, each
/// building its harness with `$harness`. A further test checks the expansion covers
/// [`SCENARIOS`] exactly.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!($harness;
                conf_l_01 = "CONF-L-01", conf_l_02 = "CONF-L-02", conf_l_03 = "CONF-L-03",
                conf_l_04 = "CONF-L-04", conf_l_05 = "CONF-L-05", conf_l_06 = "CONF-L-06",
                conf_l_07 = "CONF-L-07", conf_l_08 = "CONF-L-08", conf_l_09 = "CONF-L-09",
                conf_l_10 = "CONF-L-10", conf_l_11 = "CONF-L-11", conf_l_12 = "CONF-L-12",
                conf_l_13 = "CONF-L-13", conf_l_14 = "CONF-L-14", conf_l_15 = "CONF-L-15",
                conf_l_16 = "CONF-L-16", conf_l_17 = "CONF-L-17",
                conf_o_01 = "CONF-O-01", conf_o_02 = "CONF-O-02",
                conf_s_01 = "CONF-S-01", conf_s_02 = "CONF-S-02", conf_s_03 = "CONF-S-03",
                conf_s_04 = "CONF-S-04", conf_s_05 = "CONF-S-05", conf_s_06 = "CONF-S-06",
                conf_s_07 = "CONF-S-07", conf_s_08 = "CONF-S-08", conf_s_09 = "CONF-S-09", conf_s_10 = "CONF-S-10",
                conf_d_01 = "CONF-D-01", conf_d_02 = "CONF-D-02", conf_d_03 = "CONF-D-03",
                conf_d_04 = "CONF-D-04",
                conf_n_01 = "CONF-N-01",
                conf_e_01 = "CONF-E-01", conf_e_02 = "CONF-E-02",
                conf_c_01 = "CONF-C-01",
                conf_g_01 = "CONF-G-01", conf_g_02 = "CONF-G-02", conf_g_03 = "CONF-G-03",
                conf_g_04 = "CONF-G-04", conf_g_05 = "CONF-G-05", conf_g_06 = "CONF-G-06",
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($harness:expr; $($test:ident = $id:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                $crate::run_as_test(&$harness, $id);
            }
        )*

        #[test]
        fn suite_covers_every_scenario() {
            let expanded: Vec<&str> = vec![$($id),*];
            let defined: Vec<&str> = $crate::SCENARIOS.iter().map(|s| s.id).collect();
            assert_eq!(expanded, defined, "conformance_suite! and SCENARIOS disagree");
        }
    };
}

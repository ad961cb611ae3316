//! Injected time.
//!
//! Nothing in Hangar's domain reads the wall clock directly: it asks a [`Clock`]. Production uses
//! [`SystemClock`]; tests and fakes use [`ManualClock`], whose `sleep` advances virtual time at
//! once, so timeouts are tested exactly and without real waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Time elapsed from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self` plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }
}

/// A source of time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Waits for `d` (real clocks block; virtual clocks advance).
    fn sleep(&self, d: Duration);
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(since_epoch.as_millis() as u64)
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A virtual clock for tests: starts at a fixed time and moves only when told (or slept on).
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        Self { now_ms: AtomicU64::new(start.0) }
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now_ms.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    /// 2026-01-01T00:00:00Z, a fixed, recognisable start.
    fn default() -> Self {
        Self::new(Timestamp(1_767_225_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now_ms.load(Ordering::SeqCst))
    }

    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp(1000));
        assert_eq!(c.now(), Timestamp(1000));
        c.sleep(Duration::from_millis(250));
        assert_eq!(c.now(), Timestamp(1250));
        assert_eq!(c.now().since(Timestamp(1000)), Duration::from_millis(250));
        assert_eq!(Timestamp(5).since(Timestamp(9)), Duration::ZERO);
    }
}

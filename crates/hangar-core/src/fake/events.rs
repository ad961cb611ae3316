//! [`Events`] for the fake: pages of the bounded event stream, with the gap a reader missed.

use crate::contracts::*;
use crate::error::Result;

use super::{lock, FakeEngine};

impl Events for FakeEngine {
    fn events_since(&self, after: u64, limit: usize) -> Result<EventPage> {
        self.enter()?;
        let inner = lock(&self.inner);
        let oldest = inner.events.front().map(|e| e.seq);
        let gap = match oldest {
            Some(oldest) if after + 1 < oldest => Some(Gap { from: after + 1, to: oldest - 1 }),
            _ => None,
        };
        let events = inner.events.iter().filter(|e| e.seq > after).take(limit).cloned().collect();
        Ok(EventPage { events, gap })
    }
}

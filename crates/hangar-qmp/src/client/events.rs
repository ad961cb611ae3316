//! The subscriber side of the events: [`Qmp::events`] and the [`EventStream`] it returns.

use tokio::sync::broadcast;

use super::Qmp;
use crate::types::QmpEvent;

impl Qmp {
    /// Subscribes to the events that arrive from now on. Events that arrived before the call
    /// are not replayed, so subscribe before sending the command whose events you wait for.
    /// On a closed connection the stream is already ended.
    pub fn events(&self) -> EventStream {
        let st = self.conn.shared.lock();
        let rx = match &st.events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        };
        EventStream { rx, capacity: st.event_capacity }
    }
}

/// One item of an [`EventStream`].
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    /// An event.
    Event(QmpEvent),
    /// This subscriber fell behind and `missed` of the oldest events were dropped for it; the
    /// stream continues with the oldest event still buffered.
    Lagged {
        /// How many events were lost.
        missed: u64,
    },
}

/// What [`EventStream::try_recv`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum TryRecv {
    /// An event or a lag notice.
    Item(EventItem),
    /// Nothing buffered right now.
    Empty,
    /// The connection is closed and the buffer drained.
    Ended,
}

/// The events of one connection, for one subscriber ([`Qmp::events`]).
///
/// **Slow consumers:** each subscriber has a ring buffer of [`QmpOptions::event_capacity`](super::QmpOptions::event_capacity)
/// events. The reader never waits for a subscriber (replies keep flowing), so when a buffer is
/// full the oldest events are overwritten and the subscriber's next [`EventStream::recv`]
/// returns [`EventItem::Lagged`] with the number lost, never a silent gap. Other subscribers
/// are unaffected.
///
/// **End:** when the connection closes (EOF, I/O error, protocol error, or the last [`Qmp`]
/// handle dropped), `recv` returns the events still buffered and then `None`.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<QmpEvent>,
    capacity: usize,
}

impl EventStream {
    /// The next event, a lag notice, or `None` once the connection is closed and the buffer is
    /// drained. Cancel-safe.
    pub async fn recv(&mut self) -> Option<EventItem> {
        match self.rx.recv().await {
            Ok(e) => Some(EventItem::Event(e)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(EventItem::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Like [`EventStream::recv`] but never waits.
    pub fn try_recv(&mut self) -> TryRecv {
        use broadcast::error::TryRecvError;
        match self.rx.try_recv() {
            Ok(e) => TryRecv::Item(EventItem::Event(e)),
            Err(TryRecvError::Lagged(missed)) => TryRecv::Item(EventItem::Lagged { missed }),
            Err(TryRecvError::Empty) => TryRecv::Empty,
            Err(TryRecvError::Closed) => TryRecv::Ended,
        }
    }

    /// How many events this subscriber buffers before lagging.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

//! An async client for QMP, the QEMU Machine Protocol, over a unix socket (tokio).
//!
//! [`Qmp::connect`] retries until QEMU's socket appears (20–30 ms after QEMU starts), validates
//! the greeting and negotiates capabilities. Every command carries an `id`; a background reader
//! task hands each reply to the caller waiting for that id and every event to the
//! [`EventStream`]s returned by [`Qmp::events`]. Every call has a time limit
//! ([`QmpOptions::call_timeout`], overridable per call with [`Qmp::with_timeout`]).
//!
//! Read-only queries ([`QmpQuery`]) and state-changing commands ([`QmpControl`]) are separate
//! traits; [`Qmp::execute`] is the untyped escape hatch.
//!
//! Everything read from the socket is validated: malformed JSON, an over-long line (16 MiB by
//! default), a missing or mistyped field, or a reply to an id that was never sent is a
//! [`QmpError::Protocol`] — never a panic — and closes the connection. A closed connection
//! fails every pending call with [`QmpError::Disconnected`] and ends the event streams.
//!
//! A KVM internal error does not end QEMU: it pauses the VM and emits only `STOP`. Callers
//! detect it with [`QmpQuery::query_status`], whose run state is then
//! [`RunState::InternalError`].
//!
//! ```no_run
//! use std::time::Duration;
//! use hangar_qmp::{Event, EventItem, Qmp, QmpControl, QmpQuery, RunState};
//!
//! # async fn demo() -> Result<(), hangar_qmp::QmpError> {
//! // QEMU started with `-S -qmp unix:/run/vm.qmp,server=on,wait=off`.
//! let qmp = Qmp::connect("/run/vm.qmp", Duration::from_secs(5)).await?;
//! assert!(qmp.version().major >= 7);
//! let mut events = qmp.events();
//! assert_eq!(qmp.query_status().await?.status, RunState::Prelaunch);
//! qmp.cont().await?;
//! qmp.quit().await?;
//! while let Some(item) = events.recv().await {
//!     match item {
//!         EventItem::Event(e) if matches!(e.kind, Event::Shutdown { .. }) => break,
//!         EventItem::Lagged { missed } => eprintln!("missed {missed} events"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod error;
mod types;

pub use client::{
    EventItem, EventStream, Qmp, QmpControl, QmpOptions, QmpQuery, TryRecv, DEFAULT_CALL_TIMEOUT,
    DEFAULT_EVENT_CAPACITY, DEFAULT_MAX_LINE_BYTES,
};
pub use error::QmpError;
pub use types::{
    Event, Greeting, MigrationInfo, MigrationStatus, QmpEvent, RamStats, RunState, StatusInfo,
    Timestamp, VersionInfo,
};

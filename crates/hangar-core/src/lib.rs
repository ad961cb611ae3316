//! Hangar's pure domain.
//!
//! Identifiers ([`ids`]), the normalised VM specification ([`spec`]), the lifecycle state
//! machine and its observers ([`lifecycle`]), the error taxonomy ([`error`]), the backend
//! contracts every engine implements ([`contracts`]), and in-memory fakes of those contracts
//! ([`fake`]).
//!
//! **Architecture invariant:** this crate does no I/O, starts no threads or processes, uses no
//! async runtime and names no engine. Time comes from an injected [`clock::Clock`]. It depends on
//! no other Hangar crate; every other crate depends on it.
//!
//! ```
//! use std::sync::Arc;
//! use hangar_core::clock::ManualClock;
//! use hangar_core::ids::VmName;
//! use hangar_core::lifecycle::{Cause, Observers, StateMachine, VmState};
//!
//! let mut vm = StateMachine::new(
//!     VmName::new("web").unwrap(),
//!     Arc::new(ManualClock::default()),
//!     Observers::default(),
//!     Cause::User,
//!     None,
//! );
//! vm.transition(VmState::Starting, Cause::User, None).unwrap();
//! assert!(vm.transition(VmState::Paused, Cause::User, None).is_err());
//! assert_eq!(vm.state(), VmState::Starting);
//! ```

pub mod access;
pub mod cancel;
pub mod clock;
pub mod code;
pub mod contracts;
pub mod error;
pub mod fake;
pub mod ids;
pub mod lifecycle;
pub mod network;
pub mod operation;
pub mod spec;

pub use error::{Coded, Error, ErrorCode, Result};

//! [`PlanError`]: why a spec cannot be planned on this host.

use std::fmt;

use hangar_core::error::{Coded, ErrorCode};

/// Why a spec cannot be planned on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The spec requires KVM and KVM cannot work here.
    AccelUnavailable {
        /// Why KVM cannot work.
        reason: String,
    },
    /// A runtime path is too long.
    PathTooLong {
        /// The path.
        path: String,
        /// Its limit.
        limit: usize,
    },
    /// The host facts are unusable.
    HostFacts {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::AccelUnavailable { reason } => {
                write!(f, "the spec requires kvm, but {reason}")
            }
            PlanError::PathTooLong { path, limit } => {
                write!(f, "{path} is {} bytes, longer than {limit}", path.len())
            }
            PlanError::HostFacts { field, reason } => write!(f, "host facts {field}: {reason}"),
        }
    }
}

impl std::error::Error for PlanError {}

impl Coded for PlanError {
    fn code(&self) -> ErrorCode {
        match self {
            PlanError::AccelUnavailable { .. } => ErrorCode::AccelUnavailable,
            PlanError::PathTooLong { .. } => ErrorCode::PathTooLong,
            PlanError::HostFacts { .. } => ErrorCode::HostFactsInvalid,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            PlanError::AccelUnavailable { .. } => Some("machine.accel".into()),
            PlanError::HostFacts { field, .. } => Some(field.clone()),
            PlanError::PathTooLong { .. } => None,
        }
    }
}

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
    /// A bridge NIC's network is not known to the host (no such network, or no lease).
    UnknownNetwork {
        /// The NIC's index in the spec.
        index: usize,
        /// The network it names.
        network: String,
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
            PlanError::UnknownNetwork { network, .. } => write!(f, "there is no network {network}"),
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
            PlanError::UnknownNetwork { .. } => ErrorCode::NetworkNotFound,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            PlanError::AccelUnavailable { .. } => Some("machine.accel".into()),
            PlanError::HostFacts { field, .. } => Some(field.clone()),
            PlanError::PathTooLong { .. } => None,
            PlanError::UnknownNetwork { index, .. } => Some(format!("nic[{index}].network")),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            PlanError::UnknownNetwork { .. } => Some(
                "create it (`hangar network create NAME --subnet CIDR`) or pick one from `hangar network ls`"
                    .into(),
            ),
            _ => None,
        }
    }
}

//! What can go wrong in the QEMU adapter, as one enum with context and sources.
//!
//! Each variant keeps its cause (a store, QMP, qemu-img or I/O error) as its source and maps to
//! one stable code; a QMP timeout stays `E_TIMEOUT` with QMP's hint. The contracts return
//! `hangar_core::Error`, which carries a [`QemuError`] whole in `Error::Adapter`.

use std::path::{Path, PathBuf};

use hangar_core::error::{AdapterError, Coded, Error, ErrorCode};
use hangar_plan::PlanError;
use hangar_qmp::QmpError;
use hangar_store::StoreError;

use crate::img::ImgError;

/// An error of the QEMU adapter.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The state store failed or holds a bad record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A QMP call failed (its code and hint are QMP's: a timeout stays a timeout).
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),
    /// `qemu-img` failed.
    #[error(transparent)]
    Img(#[from] ImgError),
    /// The spec cannot be planned on this host.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A file or directory could not be made, read, written, moved or removed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`cannot create`, `cannot move to`, …).
        what: String,
        /// The file concerned.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A stored plan does not deserialise.
    #[error("stored plan of {vm} is unreadable: {source}")]
    PlanUnreadable {
        /// The VM whose record holds it.
        vm: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Where a socket of Hangar's belongs there is something else, which Hangar will not remove.
    #[error("{} is not a socket; Hangar does not remove it (move it aside)", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The engine's own async runtime could not be built.
    #[error("cannot start the QMP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The QEMU binary is not installed.
    #[error("{binary} was not found; run scripts/setup")]
    QemuMissing {
        /// The binary the plan runs.
        binary: String,
    },
    /// A built-in image's files are missing.
    #[error(
        "the built-in image {image:?} is not installed ({} missing, and {} has no copy); as root, run scripts/setup: it builds the image there for every user",
        kernel.display(), hangar_plan::probe::SYSTEM_IMAGE_DIR
    )]
    ImageMissing {
        /// The image name.
        image: String,
        /// The kernel that is not there.
        kernel: PathBuf,
    },
    /// A host file the spec names does not exist.
    #[error("invalid argument {field}: {file} does not exist")]
    InputMissing {
        /// The spec field naming it (`boot.kernel`, `disk[0].source`).
        field: String,
        /// The file.
        file: String,
    },
    /// A host file the spec names cannot be read by the VM's unprivileged QEMU.
    #[error("invalid argument {field}: {file} cannot be read by the VM's QEMU (uid {uid}, group {group}): make it and its directories readable by that group (chgrp {group} FILE; chmod g+r FILE) or by everyone")]
    InputUnreadable {
        /// The spec field naming it.
        field: String,
        /// The file.
        file: String,
        /// The VM's QEMU user.
        uid: u32,
        /// The group every QEMU is in.
        group: &'static str,
    },
    /// The host's available memory cannot hold the VM now.
    #[error("{vm} needs {needed_mib} MiB of memory ({ram_mib} MiB RAM + {overhead_mib} MiB for QEMU) but the host has {available_mib} MiB available")]
    HostMemory {
        /// The VM.
        vm: String,
        /// RAM plus overhead.
        needed_mib: u64,
        /// The guest's RAM.
        ram_mib: u32,
        /// QEMU's allowance beside it.
        overhead_mib: u64,
        /// What the host has available now.
        available_mib: u64,
    },
    /// The host's free disk cannot hold the VM's new disks.
    #[error("{vm} needs {needed_mib} MiB of new disk but the host has {free_mib} MiB free under {}", home.display())]
    HostDisk {
        /// The VM.
        vm: String,
        /// New blank disks plus copies.
        needed_mib: u64,
        /// Free space under the home.
        free_mib: u64,
        /// Hangar's home.
        home: PathBuf,
    },
    /// QEMU could not be spawned.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU runs but its control socket does not answer.
    #[error("QEMU did not answer on its control socket: {source}; {last_output}")]
    NoAnswer {
        /// The QMP error.
        #[source]
        source: QmpError,
        /// The last console (or QEMU log) lines.
        last_output: String,
    },
    /// QEMU exited before its control socket answered (it refused its arguments, or a file).
    #[error("QEMU exited during start-up: {last_output}")]
    ExitedAtStartUp {
        /// The last console (or QEMU log) lines.
        last_output: String,
    },
    /// QEMU exited while the guest booted.
    #[error("QEMU exited during boot{oom_note}; last output: {last_output}")]
    ExitedDuringBoot {
        /// Why, when its cgroup's out-of-memory killer did it (else empty).
        oom_note: String,
        /// The last console lines.
        last_output: String,
    },
    /// QEMU reached a state it cannot run on from (internal error, guest panic, …).
    #[error("QEMU reports {status}{context}")]
    Fatal {
        /// QEMU's name for the state.
        status: String,
        /// When, and the last output (may be empty).
        context: String,
    },
    /// Loading a memory snapshot left QEMU in a fatal state.
    #[error("loading the snapshot left QEMU {status}")]
    LoadFailed {
        /// QEMU's name for the state.
        status: String,
    },
    /// Writing a memory snapshot failed.
    #[error("saving memory failed: {detail}")]
    SaveFailed {
        /// QEMU's description.
        detail: String,
    },
    /// A QMP wait outlived its deadline.
    #[error("{what} did not finish in time")]
    Deadline {
        /// What was awaited.
        what: &'static str,
    },
    /// A running VM has no recorded QEMU.
    #[error("no QEMU process")]
    NoProcess,
}

impl QemuError {
    /// An I/O error on `path`.
    pub fn io(what: impl Into<String>, path: &Path, source: std::io::Error) -> QemuError {
        QemuError::Io { what: what.into(), path: path.to_path_buf(), source }
    }
}

impl Coded for QemuError {
    fn code(&self) -> ErrorCode {
        match self {
            QemuError::Store(e) => e.code(),
            QemuError::Qmp(e) => e.code(),
            QemuError::Plan(e) => e.code(),
            QemuError::Img(_)
            | QemuError::Spawn { .. }
            | QemuError::NoAnswer { .. }
            | QemuError::ExitedAtStartUp { .. }
            | QemuError::ExitedDuringBoot { .. }
            | QemuError::Fatal { .. }
            | QemuError::LoadFailed { .. }
            | QemuError::SaveFailed { .. }
            | QemuError::NoProcess => ErrorCode::EngineFailed,
            QemuError::Io { .. } => ErrorCode::Io,
            QemuError::PlanUnreadable { .. } | QemuError::NotASocket { .. } => {
                ErrorCode::StoreCorrupt
            }
            QemuError::Runtime(_)
            | QemuError::QemuMissing { .. }
            | QemuError::ImageMissing { .. } => ErrorCode::EngineUnavailable,
            QemuError::InputMissing { .. } | QemuError::InputUnreadable { .. } => {
                ErrorCode::InvalidArgument
            }
            QemuError::HostMemory { .. } | QemuError::HostDisk { .. } => ErrorCode::HostCapacity,
            QemuError::Deadline { .. } => ErrorCode::Timeout,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            QemuError::Store(e) => e.hint(),
            QemuError::Qmp(e) | QemuError::NoAnswer { source: e, .. } => e.hint(),
            QemuError::Plan(e) => e.hint(),
            QemuError::ExitedAtStartUp { .. } | QemuError::ExitedDuringBoot { .. } => Some(
                "read the VM's QEMU log (qemu.log in its runtime directory) and `hangar logs NAME`"
                    .into(),
            ),
            _ => None,
        }
    }

    fn path(&self) -> Option<String> {
        match self {
            QemuError::InputMissing { field, .. } | QemuError::InputUnreadable { field, .. } => {
                Some(field.clone())
            }
            QemuError::Plan(e) => e.path(),
            _ => None,
        }
    }
}

impl From<QemuError> for Error {
    fn from(e: QemuError) -> Error {
        Error::Adapter(AdapterError::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_qmp_timeout_stays_a_timeout_with_its_source() {
        let e: Error = QemuError::Qmp(QmpError::Timeout {
            operation: "stop".into(),
            after: Duration::from_millis(7),
        })
        .into();
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert_eq!(e.to_string(), "QMP: QMP stop timed out after 7 ms");
        let Error::Adapter(a) = &e else { panic!("{e:?}") };
        assert!(matches!(a.downcast_ref::<QemuError>(), Some(QemuError::Qmp(_))));
    }

    #[test]
    fn input_errors_name_the_field_and_capacity_is_its_own_code() {
        let e: Error =
            QemuError::InputMissing { field: "boot.kernel".into(), file: "/nope".into() }.into();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(e.path().as_deref(), Some("boot.kernel"));
        assert_eq!(e.to_string(), "invalid argument boot.kernel: /nope does not exist");
        let e =
            QemuError::HostDisk { vm: "a".into(), needed_mib: 2, free_mib: 1, home: "/h".into() };
        assert_eq!(e.code(), ErrorCode::HostCapacity);
        let io = QemuError::io("cannot create", Path::new("/x"), std::io::Error::other("full"));
        assert_eq!(io.to_string(), "cannot create /x: full");
        assert_eq!(std::error::Error::source(&io).map(|s| s.to_string()), Some("full".into()));
    }
}

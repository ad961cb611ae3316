//! Locks: concurrent `hangar` commands on one VM run one at a time ([`VmLock`]), and what all
//! VMs share is changed by one command at a time ([`SharedLock`]).

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hangar_core::ids::VmName;
use rustix::fs::{flock, FlockOperation};

use crate::StoreError;

/// An exclusive lock on one VM, held until dropped. Backed by `flock`, so a crashed holder
/// releases it automatically. The lock file is never deleted (deleting it would let two
/// processes lock two different inodes).
#[derive(Debug)]
pub struct VmLock {
    _file: File,
}

impl VmLock {
    /// Blocks until the lock on `vm` under `home` is held.
    pub fn acquire(home: &Path, vm: &VmName) -> Result<VmLock, StoreError> {
        let (file, fail) = open(home, vm.as_str())?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| fail(e.into()))?;
        Ok(VmLock { _file: file })
    }

    /// Takes the lock only if it is free right now.
    pub fn try_acquire(home: &Path, vm: &VmName) -> Result<Option<VmLock>, StoreError> {
        let (file, fail) = open(home, vm.as_str())?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(VmLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(fail(e.into())),
        }
    }
}

/// An exclusive lock on something every VM shares (the QEMU uids VMs are given), held until
/// dropped; like [`VmLock`], an `flock` a crashed holder releases.
#[derive(Debug)]
pub struct SharedLock {
    _file: File,
}

impl SharedLock {
    /// Blocks until the lock `what` under `home` is held. Its file is `locks/_<what>.lock`: VM
    /// names have no `_`, so it is never a VM's lock.
    pub fn acquire(home: &Path, what: &'static str) -> Result<SharedLock, StoreError> {
        let (file, fail) = open(home, &format!("_{what}"))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| fail(e.into()))?;
        Ok(SharedLock { _file: file })
    }
}

/// Opens (creating) the lock file `locks/<stem>.lock`; also returns how to report a failure on
/// it.
fn open(
    home: &Path, stem: &str,
) -> Result<(File, impl Fn(std::io::Error) -> StoreError), StoreError> {
    let dir = home.join("locks");
    let fail = move |e: std::io::Error| StoreError::Unavailable {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let dir = crate::home::state_dir(home, "locks")?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(dir.join(format!("{stem}.lock")))
        .map_err(&fail)?;
    Ok((file, fail))
}

//! Per-VM locks: concurrent `hangar` commands on one VM run one at a time.

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
        let (file, fail) = open(home, vm)?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| fail(e.into()))?;
        Ok(VmLock { _file: file })
    }

    /// Takes the lock only if it is free right now.
    pub fn try_acquire(home: &Path, vm: &VmName) -> Result<Option<VmLock>, StoreError> {
        let (file, fail) = open(home, vm)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(VmLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(fail(e.into())),
        }
    }
}

/// Opens (creating) the VM's lock file; also returns how to report a failure on it.
fn open(
    home: &Path,
    vm: &VmName,
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
        .open(dir.join(format!("{vm}.lock")))
        .map_err(&fail)?;
    Ok((file, fail))
}

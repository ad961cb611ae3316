//! `flock` guards: writers hold the file exclusively, verifiers share it.

use std::fs::File;

use rustix::fs::{flock, FlockOperation};

/// A held `flock` on a file, released on drop.
pub(crate) struct Flock<'a> {
    file: &'a File,
}

impl<'a> Flock<'a> {
    /// Blocks until `file` is locked exclusively.
    pub(crate) fn exclusive(file: &'a File) -> std::io::Result<Flock<'a>> {
        Flock::take(file, FlockOperation::LockExclusive)
    }

    /// Blocks until `file` is locked shared.
    pub(crate) fn shared(file: &'a File) -> std::io::Result<Flock<'a>> {
        Flock::take(file, FlockOperation::LockShared)
    }

    fn take(file: &'a File, op: FlockOperation) -> std::io::Result<Flock<'a>> {
        loop {
            match flock(file, op) {
                Ok(()) => return Ok(Flock { file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // Closing the descriptor would release it too; unlocking explicitly matters because the
        // handle stays open between appends. A failure here cannot be acted on.
        let _ = flock(self.file, FlockOperation::Unlock);
    }
}

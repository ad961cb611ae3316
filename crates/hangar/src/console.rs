//! `hangar console`: the serial console, raw, until Ctrl-].

use std::io::{Read, Write};
use std::path::Path;

use hangar_core::error::ErrorCode;
use hangar_qemu::QemuEngine;

use crate::Failure;

use crate::common::*;

/// Restores the terminal when dropped.
pub(crate) struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        let stdin = rustix::stdio::stdin();
        let saved = rustix::termios::tcgetattr(stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            rustix::stdio::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Attaches the terminal to the VM's serial console until Ctrl-] (or the VM stops).
pub fn console(name: &str) -> Result<(), Failure> {
    let vm = vm_name(name)?;
    let engine = engine()?;
    let rec = engine.record(&vm).map_err(fail)?;
    let plan = QemuEngine::plan_of(&rec).map_err(fail)?;
    let Some(socket) = plan.serial.socket.clone() else {
        return Err(crate::failure(
            ErrorCode::Unsupported,
            format!("{vm} has no console socket"),
            "set [serial] mode = \"socket\" (the default) in its spec",
        ));
    };
    if rec.process.is_none() {
        return Err(crate::failure(
            ErrorCode::InvalidTransition,
            format!("{vm} is {}", rec.state),
            &format!("start it first: hangar start {vm}"),
        ));
    }
    // One attacher at a time: QEMU's socket would queue a second client silently.
    let lock_path = Path::new(&plan.runtime_dir).join("console.lock");
    let lock_file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| crate::failure(ErrorCode::Io, e.to_string(), "check the runtime directory"))?;
    if rustix::fs::flock(&lock_file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
    {
        return Err(crate::failure(
            ErrorCode::Busy,
            format!("another `hangar console {vm}` is attached"),
            "detach it first (Ctrl-])",
        ));
    }
    let stream = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| {
        crate::failure(
            ErrorCode::EngineFailed,
            format!("cannot connect to {socket}: {e}"),
            "check `hangar ps`",
        )
    })?;
    eprintln!("connected to {vm}'s console; press Ctrl-] to detach\r");
    let raw = RawMode::enter();
    let mut reader =
        stream.try_clone().map_err(|e| crate::failure(ErrorCode::Io, e.to_string(), ""))?;
    let printer = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut stdout = std::io::stdout();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || stdout.write_all(&buf[..n]).and_then(|_| stdout.flush()).is_err() {
                break;
            }
        }
    });
    let mut writer = stream;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(pos) = buf[..n].iter().position(|b| *b == 0x1d) {
            let _ = writer.write_all(&buf[..pos]);
            break;
        }
        if writer.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(raw);
    let _ = printer.join();
    eprintln!("\ndetached from {vm}");
    Ok(())
}

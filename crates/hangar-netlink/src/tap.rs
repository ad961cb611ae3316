//! TAP devices. The kernel refuses to create them over rtnetlink, so this is the one ioctl
//! Hangar makes: `TUNSETIFF` on `/dev/net/tun`.
//!
//! The TAP is *not* persistent: it lives exactly as long as a descriptor on it is open. Hangar
//! creates it, attaches it to its bridge, hands the descriptor to QEMU (`-netdev tap,fd=N`) and
//! closes its own copy; when QEMU exits, however it exits, the kernel deletes the TAP. A daemon
//! killed between creating a TAP and spawning QEMU leaves nothing either: its descriptor closes
//! with it.

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
/// `TUNSETIFF`: `_IOW('T', 202, int)` (the argument is really a `struct ifreq`).
const TUNSETIFF: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<i32>(b'T', 202);

/// `struct ifreq` as `TUNSETIFF` reads and writes it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

/// Creates TAP `name` (at most 15 bytes; Ethernet frames without packet information) and
/// returns the descriptor that keeps it alive.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > 15 || name.contains(['\0', '/']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name (1 to 15 bytes)"),
        ));
    }
    let fd = rustix::fs::open("/dev/net/tun", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    set_iff(&fd, &mut req)?;
    Ok(fd)
}

#[allow(unsafe_code)]
fn set_iff(fd: &OwnedFd, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes on Linux: a 16-byte name,
    // then a union whose first member is the `short` flags); `IfReq` is that layout, and the
    // kernel writes back only the name.
    unsafe {
        let call = rustix::ioctl::Updater::<TUNSETIFF, IfReq>::new(req);
        rustix::ioctl::ioctl(fd, call)?;
    }
    Ok(())
}

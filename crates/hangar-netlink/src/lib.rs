//! Netlink for Hangar: the host's bridges, TAPs and veths, addresses and routes
//! ([`route::Rtnl`]), TAP devices by ioctl ([`tap`]), and the guest's own interfaces (the
//! static `hangar-init` uses the same [`route::Rtnl`]).
//!
//! Messages are a handful of fixed layouts, encoded here: small enough to read against the
//! kernel's uapi headers, and free of GPL code (libmnl/libnftnl are never linked). Every call
//! asks for an acknowledgement, so a refused request is an `io::Error` with the kernel's errno,
//! never a silent no-op.
//!
//! Everything acts on the network namespace of the calling thread: a test that
//! `unshare(CLONE_NEWNET)`s a thread sees and changes only its own namespace.

pub mod nft;
pub mod route;
pub mod tap;

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// A request (always set).
pub const NLM_F_REQUEST: u16 = 0x1;
/// Ask for an acknowledgement (always set).
pub const NLM_F_ACK: u16 = 0x4;
/// Dump every object of the kind.
pub const NLM_F_DUMP: u16 = 0x300;
/// Replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create the object if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// The attribute holds nested attributes.
pub const NLA_F_NESTED: u16 = 0x8000;

/// Appends one attribute (type, value, padded to 4 bytes).
pub fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute whose content `fill` writes.
pub fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A string attribute value: the bytes and a NUL.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The attributes in `data`, as (type without flags, value). A truncated attribute ends the
/// walk: replies come from the kernel, but are parsed as if they could be anything.
pub fn attrs(data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= data.len() {
        let len = u16::from_ne_bytes([data[at], data[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([data[at + 2], data[at + 3]]) & 0x3fff;
        if len < 4 || at + len > data.len() {
            break;
        }
        out.push((kind, &data[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

/// The six bytes of a MAC address written `aa:bb:cc:dd:ee:ff`, if it is one.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A `u32` attribute value, if it is one.
pub fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// A string attribute value (up to its NUL).
pub fn str_of(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// A netlink socket of one protocol, with its own sequence numbers.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket of netlink `protocol` (0 is route, 12 netfilter).
    pub fn open(protocol: u32) -> io::Result<Socket> {
        // Protocol 0 (route) is "no protocol" to rustix.
        let protocol = std::num::NonZeroU32::new(protocol).map(rustix::net::Protocol::from_raw);
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, protocol)?;
        // A reply that never comes (a kernel that dropped an aborted batch's acknowledgements)
        // is an error after a while, not a hang.
        rustix::net::sockopt::set_socket_timeout(
            &fd,
            rustix::net::sockopt::Timeout::Recv,
            Some(std::time::Duration::from_secs(10)),
        )?;
        Ok(Socket { fd, seq: 0 })
    }

    /// Sends one request (`body` after the 16-byte header) and returns the replies' (type,
    /// payload): for a dump, every message up to DONE. An error answer is that errno.
    pub fn call(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let msg = self.message(kind, flags | NLM_F_REQUEST | NLM_F_ACK, body);
        rustix::net::send(&self.fd, &msg, SendFlags::empty())?;
        self.replies(self.seq, flags & NLM_F_DUMP == NLM_F_DUMP)
    }

    /// Sends `messages` as one nf_tables batch, framed by `begin` and `end` (type and body,
    /// sent without acknowledgement), in one datagram; waits until every message is
    /// acknowledged. The kernel applies a batch whole or not at all; the first error it
    /// reports is returned.
    pub fn call_framed_batch(
        &mut self, begin: (u16, Vec<u8>), messages: &[(u16, u16, Vec<u8>)], end: (u16, Vec<u8>),
    ) -> io::Result<()> {
        let mut datagram = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        datagram.extend(self.message(begin.0, NLM_F_REQUEST, &begin.1));
        let first = self.seq.wrapping_add(1);
        for (kind, flags, body) in messages {
            self.seq = self.seq.wrapping_add(1);
            datagram.extend(self.message(*kind, flags | NLM_F_REQUEST | NLM_F_ACK, body));
        }
        let last = self.seq;
        self.seq = self.seq.wrapping_add(1);
        datagram.extend(self.message(end.0, NLM_F_REQUEST, &end.1));
        // A batch is one datagram, and one with hundreds of rules outgrows the default socket
        // buffers (ENOBUFS), as do its acknowledgements: size both to it (root may exceed the
        // system's maximum, as nft does; otherwise ask for what is allowed).
        let room = datagram.len() * 2 + (1 << 16);
        use rustix::net::sockopt as opt;
        if opt::set_socket_send_buffer_size_force(&self.fd, room).is_err() {
            opt::set_socket_send_buffer_size(&self.fd, room)?;
        }
        if opt::set_socket_recv_buffer_size_force(&self.fd, room).is_err() {
            opt::set_socket_recv_buffer_size(&self.fd, room)?;
        }
        rustix::net::send(&self.fd, &datagram, SendFlags::empty())?;
        // Errors (and the acknowledgements) arrive when the kernel has processed the batch,
        // several to a datagram.
        let mut pending: std::collections::BTreeSet<u32> = (first..=last).collect();
        let mut buf = vec![0u8; 256 * 1024];
        while !pending.is_empty() {
            let n = rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty())?.0;
            for (seq, kind, payload) in messages_in(&buf[..n])? {
                if kind == NLMSG_ERROR && pending.remove(&seq) {
                    let errno = errno_of(payload);
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
            }
        }
        Ok(())
    }

    fn message(&self, kind: u16, flags: u16, body: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        msg
    }

    fn replies(&mut self, seq: u32, dump: bool) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty())?.0;
            for (got, kind, payload) in messages_in(&buf[..n])? {
                if got != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let errno = errno_of(payload);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        // The acknowledgement comes last (after a dump's DONE too).
                        return Ok(replies);
                    }
                    // A dump ends here (whether an acknowledgement follows depends on the
                    // kernel).
                    NLMSG_DONE if dump => return Ok(replies),
                    NLMSG_DONE => {}
                    _ => replies.push((kind, payload.to_vec())),
                }
            }
        }
    }
}

/// The (sequence number, type, payload) of every message in a datagram.
fn messages_in(buf: &[u8]) -> io::Result<Vec<(u32, u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        if len < 16 || at + len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a torn netlink reply"));
        }
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
        out.push((seq, kind, &buf[at + 16..at + len]));
        at += len.next_multiple_of(4);
    }
    Ok(out)
}

/// The (negative) errno of an error answer; 0 for an acknowledgement.
fn errno_of(payload: &[u8]) -> i32 {
    payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(-EPROTO)
}

/// "Protocol error": an error answer too short to carry its errno.
const EPROTO: i32 = 71;

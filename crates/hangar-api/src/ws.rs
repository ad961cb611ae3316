//! The client's side of a WebSocket (RFC 6455) as `hangard`'s exec uses it: whole messages
//! out (masked, as a client must), whole messages in (fragments joined), over blocking halves
//! of a stream. Just enough for `hangar exec`; the server side is tokio-tungstenite.

use std::io::{Read, Write};

/// Text message.
pub const TEXT: u8 = 0x1;
/// Binary message.
pub const BINARY: u8 = 0x2;
/// Close.
pub const CLOSE: u8 = 0x8;
/// Ping.
pub const PING: u8 = 0x9;

/// The largest message accepted from the server.
pub const MAX_MESSAGE: usize = 16 << 20;

/// A fresh `Sec-WebSocket-Key`: 16 bytes, base64.
pub fn key() -> String {
    base64(&mask_bytes::<16>())
}

/// Writes one message (a single masked frame).
pub fn write_message(w: &mut dyn Write, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = mask_bytes::<4>();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one whole message: (opcode, payload). Pings and pongs are skipped (the server sends
/// none); a close is returned as [`CLOSE`].
pub fn read_message(r: &mut dyn Read) -> std::io::Result<(u8, Vec<u8>)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut message: Option<(u8, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head)?;
        let (fin, opcode, masked) = (head[0] & 0x80 != 0, head[0] & 0x0F, head[1] & 0x80 != 0);
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b)?;
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                r.read_exact(&mut b)?;
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let so_far = message.as_ref().map_or(0, |(_, p)| p.len()) as u64;
        if len + so_far > MAX_MESSAGE as u64 {
            return Err(bad("a message over 16 MiB"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        if masked {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        match opcode {
            0x9 | 0xA => continue,
            CLOSE => return Ok((CLOSE, payload)),
            0x0 => match &mut message {
                Some((_, p)) => p.extend_from_slice(&payload),
                None => return Err(bad("a continuation without a message")),
            },
            TEXT | BINARY if message.is_none() => message = Some((opcode, payload)),
            _ => return Err(bad("an unexpected frame")),
        }
        if fin {
            return Ok(message.expect("set above"));
        }
    }
}

/// `N` bytes no earlier call returned: masking keys only need to be unpredictable to
/// intermediaries, which a local socket has none of.
fn mask_bytes<const N: usize>() -> [u8; N] {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{nanos}-{n}-{}", std::process::id()));
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_written_masked_reads_back_whole_at_every_length_class() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            write_message(&mut wire, BINARY, &payload).unwrap();
            let (op, back) = read_message(&mut &wire[..]).unwrap();
            assert_eq!((op, back.len()), (BINARY, len));
            assert!(back == payload);
        }
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(key().len(), 24);
    }
}

//! Just enough of the qcow2 header to know which other files an image makes QEMU open: its
//! backing file and its external data file. (Specification: QEMU's `docs/interop/qcow2.txt`.)

use std::os::unix::fs::FileExt;

/// The first four bytes of every qcow2 image: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Header extension naming an external data file (`"DATA"`).
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// QEMU refuses backing file names longer than this; so do we.
const MAX_NAME: usize = 1023;
/// How much of the header we read: the fixed part, extensions and the backing name all live
/// in the first cluster, and no sane image needs more than this to describe them.
const HEADER_WINDOW: usize = 64 * 1024;

/// The files a qcow2 image refers to, as written in it (uninterpreted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// The backing file name, if any.
    pub backing: Option<String>,
    /// The external data file name, if any.
    pub data_file: Option<String>,
}

/// Why a file could not be read as qcow2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a qcow2 image at all.
    #[error("it is not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2,
    /// A header field points outside what can be read, or a name is not UTF-8.
    #[error("its qcow2 header is damaged: {0}")]
    Damaged(String),
    /// Reading failed.
    #[error("reading it failed: {0}")]
    Io(String),
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn name(bytes: &[u8], what: &str) -> Result<String, HeaderError> {
    if bytes.len() > MAX_NAME {
        return Err(HeaderError::Damaged(format!("its {what} name is {} bytes long", bytes.len())));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| HeaderError::Damaged(format!("its {what} name is not UTF-8")))
}

/// Reads the references of the qcow2 image in `file`.
pub fn references(file: &impl FileExt) -> Result<References, HeaderError> {
    let mut buf = vec![0u8; HEADER_WINDOW];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeaderError::Io(e.to_string())),
        }
    }
    parse(&buf[..len])
}

/// [`references`] of an image's first bytes.
pub fn parse(b: &[u8]) -> Result<References, HeaderError> {
    if b.get(..4) != Some(&MAGIC[..]) {
        return Err(HeaderError::NotQcow2);
    }
    let damaged = |what: &str| HeaderError::Damaged(what.to_string());
    let version = be32(b, 4).ok_or_else(|| damaged("the header is truncated"))?;
    let backing_offset = be64(b, 8).ok_or_else(|| damaged("the header is truncated"))?;
    let backing_size = be32(b, 16).ok_or_else(|| damaged("the header is truncated"))? as usize;
    let mut refs = References::default();
    if backing_offset != 0 && backing_size != 0 {
        let start = usize::try_from(backing_offset)
            .map_err(|_| damaged("the backing file name lies beyond the header"))?;
        let bytes = start
            .checked_add(backing_size)
            .and_then(|end| b.get(start..end))
            .ok_or_else(|| damaged("the backing file name lies beyond the header"))?;
        refs.backing = Some(name(bytes, "backing file")?);
    }
    if version < 3 {
        return Ok(refs);
    }
    let header_len = be32(b, 100).ok_or_else(|| damaged("the v3 header is truncated"))? as usize;
    // Header extensions follow the header: (type, length, data padded to 8 bytes), ending with
    // type 0.
    let mut at = header_len.max(104);
    loop {
        let (Some(kind), Some(size)) = (be32(b, at), be32(b, at + 4)) else {
            return Err(damaged("the header extensions run past the header"));
        };
        if kind == 0 {
            break;
        }
        let size = size as usize;
        let data = b
            .get(at + 8..at + 8 + size)
            .ok_or_else(|| damaged("a header extension runs past the header"))?;
        if kind == EXT_DATA_FILE {
            refs.data_file = Some(name(data, "data file")?);
        }
        at += 8 + size.div_ceil(8) * 8;
    }
    Ok(refs)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Incompatible-feature bit: the guest data lives in an external file.
    const FEATURE_EXTERNAL_DATA: u64 = 1 << 2;

    /// A minimal qcow2 header (v3) with an optional backing name and data-file extension.
    pub(crate) fn image(backing: Option<&str>, data_file: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 104];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        if let Some(d) = data_file {
            b[72..80].copy_from_slice(&FEATURE_EXTERNAL_DATA.to_be_bytes());
            b.extend_from_slice(&EXT_DATA_FILE.to_be_bytes());
            b.extend_from_slice(&(d.len() as u32).to_be_bytes());
            b.extend_from_slice(d.as_bytes());
            b.resize(b.len().div_ceil(8) * 8, 0);
        }
        b.extend_from_slice(&[0u8; 8]);
        if let Some(name) = backing {
            let at = b.len() as u64;
            b.extend_from_slice(name.as_bytes());
            b[8..16].copy_from_slice(&at.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        }
        b
    }

    #[test]
    fn reads_backing_and_data_file_names() {
        assert_eq!(parse(&image(None, None)).unwrap(), References::default());
        assert_eq!(
            parse(&image(Some("../base.qcow2"), Some("/etc/shadow"))).unwrap(),
            References {
                backing: Some("../base.qcow2".into()),
                data_file: Some("/etc/shadow".into()),
            }
        );
    }

    #[test]
    fn refuses_what_is_not_a_sound_header() {
        assert_eq!(parse(b"raw bytes"), Err(HeaderError::NotQcow2));
        let mut b = image(Some("base"), None);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse(&b), Err(HeaderError::Damaged(_))));
        let mut b = image(None, None);
        b.truncate(50);
        assert!(matches!(parse(&b), Err(HeaderError::Damaged(_))));
    }
}

//! Signed heads: what makes removing or rewriting the *last* entries detectable.
//!
//! A hash chain shows any change to a line that a later line commits to, but nothing commits
//! to the last line, so truncating the log or rewriting its tail (and recomputing the chain)
//! leaves a valid, shorter or different, chain. The writer therefore signs the head (the last
//! entry's `seq` and line hash) with an Ed25519 key only it holds, after every append, and
//! keeps the [`SignedHead`] in a second file. [`crate::verify`] then checks the log against it:
//! the log must contain the signed entry, byte for byte. Someone who can edit the log but not
//! read the key cannot produce a head that matches an edited tail. (Someone who can read the
//! key, or who replays an older signed head together with an older log, is only caught by a
//! copy of the head kept elsewhere: `hangar audit verify --expect-head`.)

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::entry::Head;
use crate::AuditError;

/// What is signed: a fixed context string, then the head and the time, one per line.
fn message(seq: u64, hash: &str, at: u64) -> Vec<u8> {
    format!("hangar-audit-head/1\n{seq}\n{hash}\n{at}").into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A public key as written in signed heads: `ed25519:` and 64 hex digits.
pub fn format_public_key(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex(key.as_bytes()))
}

fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let bytes = s
        .strip_prefix("ed25519:")
        .and_then(unhex::<32>)
        .ok_or_else(|| format!("{s:?} is not an ed25519:<64 hex digits> public key"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("{s:?} is not a valid key: {e}"))
}

/// The key the log's writer signs heads with (kept in a `0600` file of its own).
pub struct HeadSigner {
    key: SigningKey,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadSigner").field("public_key", &self.public_key()).finish_non_exhaustive()
    }
}

impl HeadSigner {
    /// Loads the key at `path` (64 hex digits: the Ed25519 seed), creating it from
    /// `/dev/urandom` with mode `0600` if absent. A key file others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<HeadSigner, AuditError> {
        let io = |source| AuditError::Io { path: path.to_owned(), source };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
        {
            Ok(mut file) => {
                let mut seed = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut r| r.read_exact(&mut seed))
                    .map_err(io)?;
                use std::io::Write;
                file.write_all(format!("{}\n", hex(&seed)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                Ok(HeadSigner { key: SigningKey::from_bytes(&seed) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => HeadSigner::load(path),
            Err(e) => Err(io(e)),
        }
    }

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<HeadSigner, AuditError> {
        let corrupt = |reason: String| AuditError::Corrupt { path: path.to_owned(), reason };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
        let meta =
            file.metadata().map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
        if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
            return Err(corrupt(
                "the audit signing key must be a regular file only its owner can read (0600)"
                    .into(),
            ));
        }
        let mut text = String::new();
        (&file)
            .take(256)
            .read_to_string(&mut text)
            .map_err(|source| AuditError::Io { path: path.to_owned(), source })?;
        let seed = unhex::<32>(text.trim())
            .ok_or_else(|| corrupt("the audit signing key is not 64 hex digits".into()))?;
        Ok(HeadSigner { key: SigningKey::from_bytes(&seed) })
    }

    /// The public key (`ed25519:<hex>`): what verifies this signer's heads.
    pub fn public_key(&self) -> String {
        format_public_key(&self.key.verifying_key())
    }

    /// Signs `head` as of `at` (ms since the Unix epoch).
    pub fn sign(&self, head: &Head, at: u64) -> SignedHead {
        let sig = self.key.sign(&message(head.seq, &head.hash, at));
        SignedHead {
            seq: head.seq,
            hash: head.hash.clone(),
            at,
            key: self.public_key(),
            sig: hex(&sig.to_bytes()),
        }
    }
}

/// A head and the writer's signature over it, as kept in the head file and printed by
/// `hangar audit head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// The last entry's sequence number.
    pub seq: u64,
    /// `sha256:<hex>` of the last entry's line.
    pub hash: String,
    /// When it was signed (ms since the Unix epoch).
    pub at: u64,
    /// The signer's public key (`ed25519:<hex>`).
    pub key: String,
    /// The signature (hex).
    pub sig: String,
}

impl SignedHead {
    /// The head itself.
    pub fn head(&self) -> Head {
        Head { seq: self.seq, hash: self.hash.clone() }
    }

    /// Checks the signature, and that it was made by `trusted` (`ed25519:<hex>`; the key in
    /// the document itself proves nothing, anyone can sign with a key of their own).
    pub fn check(&self, trusted: &str) -> Result<(), String> {
        if self.key != trusted {
            return Err(format!("it is signed by {}, not by the trusted key {trusted}", self.key));
        }
        let key = parse_public_key(&self.key)?;
        let sig = unhex::<64>(&self.sig)
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| "its signature is not 128 hex digits".to_string())?;
        key.verify(&message(self.seq, &self.hash, self.at), &sig)
            .map_err(|_| "its signature does not match its contents".to_string())
    }

    /// Reads a signed head file; `None` if there is none.
    pub fn read(path: &Path) -> Result<Option<SignedHead>, AuditError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AuditError::Io { path: path.to_owned(), source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| AuditError::Corrupt {
            path: path.to_owned(),
            reason: format!("not a signed head: {e}"),
        })
    }

    /// Writes it to `path` atomically (a temporary file, then a rename), mode `0600`.
    pub fn write(&self, path: &Path) -> Result<(), AuditError> {
        let tmp: PathBuf = path.with_extension("tmp");
        let io = |source| AuditError::Io { path: path.to_owned(), source };
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        use std::io::Write;
        let json = serde_json::to_string(self).expect("heads serialise");
        file.write_all(format!("{json}\n").as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_verify_only_unchanged_and_under_the_trusted_key() {
        let dir = tempfile::tempdir().unwrap();
        let signer = HeadSigner::load_or_create(&dir.path().join("k")).unwrap();
        let again = HeadSigner::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(signer.public_key(), again.public_key());
        let head = Head { seq: 7, hash: format!("sha256:{}", "a".repeat(64)) };
        let signed = signer.sign(&head, 99);
        signed.check(&signer.public_key()).unwrap();
        let mut moved = signed.clone();
        moved.seq = 6;
        assert!(moved.check(&signer.public_key()).is_err());
        // A head signed with another key is refused even though it verifies under its own.
        let eve = HeadSigner::load_or_create(&dir.path().join("eve")).unwrap();
        let forged = eve.sign(&head, 99);
        forged.check(&eve.public_key()).unwrap();
        assert!(forged.check(&signer.public_key()).is_err());
        // Round trip through the file.
        signed.write(&dir.path().join("head")).unwrap();
        assert_eq!(SignedHead::read(&dir.path().join("head")).unwrap(), Some(signed));
        // A readable key file is refused.
        std::fs::set_permissions(dir.path().join("k"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(HeadSigner::load(&dir.path().join("k")).is_err());
    }
}

//! Documents signed with the cluster's Ed25519 key. Everything the scheduler and the API write
//! to etcd for nodes to act on (pools, quotas, each node's desired state) is a
//! [`SignedPayload`]; a node acts only on one that [`KeyRing::open`] accepts. So whoever can
//! write to etcd, but holds no cluster key, cannot make a node run anything: a forged,
//! tampered, unsigned or replayed-as-another-kind document is refused (`E_SIGNATURE_INVALID`).

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A signed document as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPayload {
    /// What the document is (`desired-state`, `pool`, …): signed too, so a document of one
    /// kind cannot be passed off as another.
    pub kind: String,
    /// Which key signed it ([`ClusterKey::id`]).
    pub key_id: String,
    /// The document, as JSON text (exactly the bytes signed).
    pub payload: String,
    /// The Ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// Why a signed document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not a signed document at all.
    #[error("not a signed document: {0}")]
    Unsigned(String),
    /// Signed by a key this node does not trust.
    #[error("signed by key {0}, which this node does not trust")]
    UnknownKey(String),
    /// The signature does not match the document.
    #[error("the signature does not match the {0} document (tampered, or forged)")]
    BadSignature(String),
    /// A document of another kind than expected.
    #[error("a {found} document where a {expected} was expected")]
    WrongKind {
        /// What the caller expected.
        expected: String,
        /// What the document says it is.
        found: String,
    },
    /// Signed correctly, but not the shape of its kind.
    #[error("the {kind} document does not read: {reason}")]
    Unreadable {
        /// The kind.
        kind: String,
        /// Why.
        reason: String,
    },
}

impl SignatureError {
    /// The error code every refusal carries.
    pub fn code(&self) -> hangar_core::error::ErrorCode {
        hangar_core::error::ErrorCode::SignatureInvalid
    }
}

/// The bytes a signature covers: a domain tag, the kind and the payload.
fn signed_bytes(kind: &str, payload: &str) -> Vec<u8> {
    let mut bytes = b"hangar-cluster-v1\0".to_vec();
    bytes.extend_from_slice(kind.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Bytes from hex digits of any even length.
pub(crate) fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// A public key's id: the first 16 hex digits of its SHA-256.
fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

/// The cluster's private signing key (kept by the nodes that write documents, never in etcd).
pub struct ClusterKey {
    key: SigningKey,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// The key made from a 32-byte seed (read from the key file, or fresh random bytes).
    pub fn from_seed(seed: [u8; 32]) -> ClusterKey {
        ClusterKey { key: SigningKey::from_bytes(&seed) }
    }

    /// The key from its file text (64 hex digits).
    pub fn from_text(text: &str) -> Option<ClusterKey> {
        unhex::<32>(text.trim()).map(ClusterKey::from_seed)
    }

    /// The seed as the key file holds it (64 hex digits).
    pub fn to_text(&self) -> String {
        hex(&self.key.to_bytes())
    }

    /// Its id (what [`SignedPayload::key_id`] names).
    pub fn id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// Its public half, as nodes trust it (`ed25519:<64 hex digits>`).
    pub fn public(&self) -> String {
        format!("ed25519:{}", hex(self.key.verifying_key().as_bytes()))
    }

    /// Signs `value` as a document of `kind`.
    pub fn sign<T: Serialize>(&self, kind: &str, value: &T) -> SignedPayload {
        let payload = serde_json::to_string(value).expect("documents serialise");
        let signature = self.key.sign(&signed_bytes(kind, &payload));
        SignedPayload {
            kind: kind.to_string(),
            key_id: self.id(),
            payload,
            signature: hex(&signature.to_bytes()),
        }
    }
}

/// The public keys a node trusts (from its own disk: a key added in etcd would be trusted by
/// nobody).
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Vec<VerifyingKey>,
}

impl KeyRing {
    /// A ring of the keys in `text`: one `ed25519:<hex>` per line; `#` starts a comment.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bytes = line
                .strip_prefix("ed25519:")
                .and_then(unhex::<32>)
                .ok_or_else(|| format!("line {}: not ed25519:<64 hex digits>", i + 1))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| format!("line {}: not a valid key: {e}", i + 1))?;
            keys.push(key);
        }
        Ok(KeyRing { keys })
    }

    /// Whether it trusts any key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The document in `stored` (the bytes read from etcd), if it is a `kind` document signed
    /// by a trusted key.
    pub fn open<T: DeserializeOwned>(
        &self, kind: &str, stored: &[u8],
    ) -> Result<T, SignatureError> {
        let signed: SignedPayload =
            serde_json::from_slice(stored).map_err(|e| SignatureError::Unsigned(e.to_string()))?;
        let key = self
            .keys
            .iter()
            .find(|k| key_id(k) == signed.key_id)
            .ok_or_else(|| SignatureError::UnknownKey(signed.key_id.clone()))?;
        let signature = unhex::<64>(&signed.signature)
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| SignatureError::BadSignature(signed.kind.clone()))?;
        key.verify(&signed_bytes(&signed.kind, &signed.payload), &signature)
            .map_err(|_| SignatureError::BadSignature(signed.kind.clone()))?;
        if signed.kind != kind {
            return Err(SignatureError::WrongKind { expected: kind.into(), found: signed.kind });
        }
        serde_json::from_str(&signed.payload)
            .map_err(|e| SignatureError::Unreadable { kind: kind.into(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClusterKey {
        ClusterKey::from_seed([n; 32])
    }

    fn ring(keys: &[&ClusterKey]) -> KeyRing {
        let text: Vec<String> = keys.iter().map(|k| k.public()).collect();
        KeyRing::parse(&text.join("\n")).unwrap()
    }

    #[test]
    fn a_signed_document_opens_with_the_trusted_key() {
        let k = key(1);
        let doc = serde_json::json!({"pools": {"acme--web": {"warm": 2}}});
        let stored = serde_json::to_vec(&k.sign("desired-state", &doc)).unwrap();
        let opened: serde_json::Value = ring(&[&k]).open("desired-state", &stored).unwrap();
        assert_eq!(opened, doc);
        assert_eq!(ClusterKey::from_text(&k.to_text()).unwrap().id(), k.id());
    }

    #[test]
    fn tampered_forged_unsigned_and_misused_documents_are_refused() {
        let k = key(1);
        let trusted = ring(&[&k]);
        let signed = k.sign("desired-state", &serde_json::json!({"warm": 2}));
        // Tampered: the payload changed after signing.
        let mut tampered = signed.clone();
        tampered.payload = r#"{"warm":200}"#.into();
        let stored = serde_json::to_vec(&tampered).unwrap();
        let e = trusted.open::<serde_json::Value>("desired-state", &stored).unwrap_err();
        assert!(matches!(e, SignatureError::BadSignature(_)), "{e}");
        // Forged: signed by a key nobody trusts, even under the trusted key's id.
        let mut forged = key(2).sign("desired-state", &serde_json::json!({"warm": 200}));
        let e = trusted
            .open::<serde_json::Value>("desired-state", &serde_json::to_vec(&forged).unwrap())
            .unwrap_err();
        assert!(matches!(e, SignatureError::UnknownKey(_)), "{e}");
        forged.key_id = k.id();
        let e = trusted
            .open::<serde_json::Value>("desired-state", &serde_json::to_vec(&forged).unwrap())
            .unwrap_err();
        assert!(matches!(e, SignatureError::BadSignature(_)), "{e}");
        // Unsigned: a bare document.
        let e = trusted.open::<serde_json::Value>("desired-state", br#"{"warm":2}"#).unwrap_err();
        assert!(matches!(e, SignatureError::Unsigned(_)), "{e}");
        // Another kind, correctly signed, is not accepted as this one; relabelling it breaks
        // the signature.
        let pool = serde_json::to_vec(&k.sign("pool", &serde_json::json!({"warm": 2}))).unwrap();
        let e = trusted.open::<serde_json::Value>("desired-state", &pool).unwrap_err();
        assert!(matches!(e, SignatureError::WrongKind { .. }), "{e}");
        let mut relabelled: SignedPayload = serde_json::from_slice(&pool).unwrap();
        relabelled.kind = "desired-state".into();
        let e = trusted
            .open::<serde_json::Value>("desired-state", &serde_json::to_vec(&relabelled).unwrap())
            .unwrap_err();
        assert!(matches!(e, SignatureError::BadSignature(_)), "{e}");
        assert_eq!(e.code(), hangar_core::error::ErrorCode::SignatureInvalid);
    }

    #[test]
    fn a_key_ring_refuses_what_is_not_a_key() {
        assert!(KeyRing::parse("# none yet\n").unwrap().is_empty());
        assert!(KeyRing::parse("ed25519:zz").is_err());
        assert!(KeyRing::parse("rsa:00").is_err());
        let two =
            KeyRing::parse(&format!("{}\n{} # rotated in\n", key(1).public(), key(2).public()))
                .unwrap();
        let stored = serde_json::to_vec(&key(2).sign("pool", &1)).unwrap();
        assert_eq!(two.open::<u32>("pool", &stored).unwrap(), 1, "a rotated-in key is trusted too");
    }
}

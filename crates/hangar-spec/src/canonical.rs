//! The canonical IR: a normalised spec as RFC 8785 (JCS) JSON, and its hash.

use std::fmt;

use hangar_core::spec::{VmSpec, SPEC_SCHEMA_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `sha256:` followed by 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecHash(pub String);

impl fmt::Display for SpecHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_tagged(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(Serialize)]
struct Versioned<'a> {
    schema_version: u32,
    #[serde(flatten)]
    spec: &'a VmSpec,
}

/// A validated, normalised spec with its canonical bytes and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalSpec {
    /// The normalised spec.
    pub spec: VmSpec,
    /// RFC 8785 JSON of the spec (with `schema_version`).
    pub json: String,
    /// sha256 of `json`.
    pub hash: SpecHash,
}

impl CanonicalSpec {
    /// Canonicalises a normalised spec.
    pub fn new(spec: VmSpec) -> Self {
        let json = serde_json_canonicalizer::to_string(&Versioned {
            schema_version: SPEC_SCHEMA_VERSION,
            spec: &spec,
        })
        .expect("a VmSpec always serialises");
        let hash = SpecHash(sha256_tagged(json.as_bytes()));
        Self { spec, json, hash }
    }
}

//! `manifest.json`: what an image is made of (no paths, no times), and the file digests it
//! records.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The builder's version, recorded in every manifest.
pub const BUILDER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// The image's name.
pub const IMAGE_NAME: &str = "minimal";

/// Size and digest of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl FileDigest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> FileDigest {
        FileDigest { sha256: sha256_hex(bytes), size: bytes.len() as u64 }
    }
}

/// The builder that made an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    /// Always `hangar-image`.
    pub name: String,
    /// [`BUILDER_VERSION`].
    pub version: String,
}

/// The image's output files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFiles {
    /// `vmlinuz`.
    pub vmlinuz: FileDigest,
    /// `initrd.img`.
    #[serde(rename = "initrd.img")]
    pub initrd: FileDigest,
}

/// The inputs baked into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFiles {
    /// `/init`.
    #[serde(rename = "hangar-init")]
    pub hangar_init: FileDigest,
    /// `/bin/busybox`.
    pub busybox: FileDigest,
}

/// `manifest.json`: what an image is made of. Contains no paths or times, so equal inputs
/// give an equal manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The image name ([`IMAGE_NAME`]).
    pub image: String,
    /// Who built it.
    pub builder: Builder,
    /// The guest kernel release (`uname -r` in the guest).
    pub kernel_release: String,
    /// The files in the image directory.
    pub files: OutputFiles,
    /// The binaries inside the initramfs.
    pub inputs: InputFiles,
    /// The kernel modules shipped, in load order (relative to `/lib/modules/<release>/`).
    pub modules: Vec<String>,
    /// The busybox applets linked into `/bin`.
    pub applets: Vec<String>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The exact bytes of `manifest.json` (pretty JSON, trailing newline).
pub fn manifest_bytes(manifest: &Manifest) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let mut bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

//! Hangar's spec format.
//!
//! A VM spec is TOML (or JSON with the same shape). This crate parses it, validates it —
//! collecting **every** problem as a [`Diagnostic`] with a stable code, a field path and a hint —
//! normalises it into a [`hangar_core::spec::VmSpec`] (defaults filled, paths absolute, one
//! spelling per meaning), and serialises that as the canonical IR: RFC 8785 JSON and its sha256.
//!
//! ```
//! use std::path::Path;
//! use hangar_spec::{parse, Format};
//!
//! let a = parse("schema_version = 1\nname = \"web\"\n[machine]\nvcpus = 2\n", Format::Toml, Path::new("/specs")).unwrap();
//! let b = parse(r#"{"machine": {"vcpus": 2}, "name": "web", "schema_version": 1}"#, Format::Json, Path::new("/specs")).unwrap();
//! assert_eq!(a.json, b.json);
//! assert!(a.hash.0.starts_with("sha256:"));
//!
//! let err = parse("schema_version = 1\nname = \"web\"\n[machine]\nvcpu = 2\n", Format::Toml, Path::new("/")).unwrap_err();
//! assert_eq!(err.0[0].code.as_str(), "E_SPEC_UNKNOWN_FIELD");
//! assert_eq!(err.0[0].path, "machine.vcpu");
//! assert_eq!(err.0[0].hint, "did you mean `vcpus`?");
//! ```
//!
//! **Architecture invariant:** [`parse`] is pure (no filesystem, no clock, no environment);
//! only [`load`] reads a file, and it only reads.

use std::path::Path;

use hangar_core::error::ErrorCode;

mod canonical;
mod diag;
mod node;
mod paths;
pub mod schema;
mod secrets;
mod validate;

pub use canonical::{sha256_tagged, CanonicalSpec, SpecHash};
pub use diag::{Diagnostic, SpecErrors};
pub use node::{check_json, Format};
pub use validate::{defaults, limits, BUILTIN_IMAGES};

/// Field lists of each section, for tools and for the schema drift test.
pub mod fields {
    pub use crate::validate::{
        BOOT_FIELDS, DISK_FIELDS, MACHINE_FIELDS, NIC_FIELDS, SERIAL_FIELDS, TOP_FIELDS,
    };
}

/// Largest accepted spec document.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Parses, validates and canonicalises a spec document. Relative paths resolve against
/// `base_dir` (which should be absolute: the spec file's directory).
pub fn parse(text: &str, format: Format, base_dir: &Path) -> Result<CanonicalSpec, SpecErrors> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecErrors(vec![Diagnostic::new(
            ErrorCode::SpecTooLarge,
            "",
            format!("the spec is {} bytes, at most {MAX_SPEC_BYTES}", text.len()),
        )]));
    }
    let root = node::parse(text, format).map_err(|d| SpecErrors(vec![d]))?;
    let spec = validate::Walker::new(base_dir).spec(&root).map_err(SpecErrors)?;
    Ok(CanonicalSpec::new(spec))
}

/// Reads a spec file and [`parse`]s it, resolving relative paths against the file's directory.
pub fn load(path: &Path) -> Result<CanonicalSpec, SpecErrors> {
    load_document(path).map(|d| d.canonical)
}

/// A spec file, validated, with the document as written (as JSON) and the directory its
/// relative paths resolve against: what a client sends so that a daemon validates and
/// canonicalises exactly what the user wrote.
#[derive(Debug, Clone)]
pub struct SpecDocument {
    /// The canonical spec.
    pub canonical: CanonicalSpec,
    /// The document as written, converted to JSON (TOML tables become objects).
    pub document: serde_json::Value,
    /// The absolute directory of the file.
    pub base_dir: std::path::PathBuf,
}

/// Like [`load`], keeping the document and its directory.
pub fn load_document(path: &Path) -> Result<SpecDocument, SpecErrors> {
    let io_error = |message: String| {
        SpecErrors(vec![Diagnostic::new(ErrorCode::Io, "", message).hint(
            "check the file name; `hangar validate` takes the path of a .toml or .json spec",
        )])
    };
    let absolute = std::path::absolute(path)
        .map_err(|e| io_error(format!("cannot resolve {}: {e}", path.display())))?;
    let too_large = |len: String| {
        SpecErrors(vec![Diagnostic::new(
            ErrorCode::SpecTooLarge,
            "",
            format!("{} is {len} bytes, at most {MAX_SPEC_BYTES}", path.display()),
        )])
    };
    let file = std::fs::File::open(&absolute)
        .map_err(|e| io_error(format!("cannot read {}: {e}", path.display())))?;
    let metadata =
        file.metadata().map_err(|e| io_error(format!("cannot read {}: {e}", path.display())))?;
    if metadata.is_dir() {
        return Err(io_error(format!("{} is a directory", path.display())));
    }
    if metadata.len() > MAX_SPEC_BYTES as u64 {
        return Err(too_large(metadata.len().to_string()));
    }
    // Special files (`/dev/zero`, a FIFO) report no length: read at most one byte past the
    // cap, whatever the file says.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_SPEC_BYTES as u64 + 1),
        &mut bytes,
    )
    .map_err(|e| io_error(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(too_large("more than".to_string() + &format!(" {MAX_SPEC_BYTES}")));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        SpecErrors(vec![Diagnostic::new(
            ErrorCode::SpecSyntax,
            "",
            format!("{} is not UTF-8 text", path.display()),
        )
        .hint("save the spec as UTF-8")])
    })?;
    let name = absolute.file_name().and_then(|n| n.to_str());
    let format = Format::detect(name, &text).map_err(|d| SpecErrors(vec![d]))?;
    let base_dir = absolute.parent().unwrap_or(Path::new("/"));
    let canonical = parse(&text, format, base_dir)?;
    // It parsed and validated, so it converts; a failure here is a bug, reported as syntax.
    let document = match format {
        Format::Json => serde_json::from_str(&text).map_err(|e| e.to_string()),
        Format::Toml => toml::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string()),
    }
    .map_err(|e| SpecErrors(vec![Diagnostic::new(ErrorCode::SpecSyntax, "", e)]))?;
    Ok(SpecDocument { canonical, document, base_dir: base_dir.to_path_buf() })
}

//! Lexical path normalisation. No filesystem access: a spec validates the same whether or not
//! its files exist yet, and validation stays pure.

use std::path::{Component, Path, PathBuf};

/// Why a path was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathProblem {
    /// Inside /proc, /sys or /dev (the normalised path).
    Forbidden(String),
    /// Empty, NUL, or not UTF-8.
    Invalid(&'static str),
}

/// Pseudo filesystems that never hold VM inputs, and whose files can hang or harm on read.
pub(crate) const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Resolves `raw` against `base_dir` (when relative) and removes `.` and `..` lexically.
pub(crate) fn normalize(raw: &str, base_dir: &Path) -> Result<String, PathProblem> {
    if raw.trim().is_empty() {
        return Err(PathProblem::Invalid("it is empty"));
    }
    if raw.contains('\0') {
        return Err(PathProblem::Invalid("it contains a NUL byte"));
    }
    let joined = if Path::new(raw).is_absolute() { PathBuf::from(raw) } else { base_dir.join(raw) };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
        }
    }
    let text = out.to_str().ok_or(PathProblem::Invalid("it is not valid UTF-8"))?.to_string();
    if FORBIDDEN_ROOTS.iter().any(|root| text == *root || text.starts_with(&format!("{root}/"))) {
        return Err(PathProblem::Forbidden(text));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_normalises() {
        let base = Path::new("/specs/web");
        assert_eq!(normalize("vmlinuz", base).unwrap(), "/specs/web/vmlinuz");
        assert_eq!(normalize("./a/../vmlinuz", base).unwrap(), "/specs/web/vmlinuz");
        assert_eq!(normalize("../img/base.qcow2", base).unwrap(), "/specs/img/base.qcow2");
        assert_eq!(normalize("/x//y/./z", base).unwrap(), "/x/y/z");
        assert_eq!(normalize("/../../etc", base).unwrap(), "/etc");
    }

    #[test]
    fn refuses_pseudo_filesystems_even_through_dot_dot() {
        let base = Path::new("/specs");
        for p in ["/proc/self/mem", "/sys", "/tmp/../sys/x", "../dev/sda"] {
            assert!(matches!(normalize(p, base), Err(PathProblem::Forbidden(_))), "{p}");
        }
        assert!(normalize("/process/x", base).is_ok());
    }

    #[test]
    fn refuses_empty_and_nul() {
        assert!(matches!(normalize(" ", Path::new("/")), Err(PathProblem::Invalid(_))));
        assert!(matches!(normalize("a\0b", Path::new("/")), Err(PathProblem::Invalid(_))));
    }
}

//! The build's inputs: the kernel (exactly one under the unpacked package), its modules, and
//! the two binaries, which must be statically linked x86-64 executables.

use std::fs;
use std::path::{Path, PathBuf};

use super::contents::MODULES;
use crate::ImageError;

pub(super) fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(ImageError::io("read", path))
}

/// Reads every module of [`MODULES`] from `module_dir` (`lib/modules/<release>` of the kernel
/// package), in load order, paired with its path.
pub(super) fn read_modules(module_dir: &Path) -> Result<Vec<(&'static str, Vec<u8>)>, ImageError> {
    let mut modules = Vec::with_capacity(MODULES.len());
    for rel in MODULES {
        let path = module_dir.join(rel);
        let data = fs::read(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ImageError::MissingModule { module: module_name(rel), path: path.clone() }
            } else {
                ImageError::io("read", &path)(source)
            }
        })?;
        modules.push((*rel, data));
    }
    Ok(modules)
}

/// Finds the single `boot/vmlinuz-<release>` under `kernel_root` and checks that its module
/// tree exists. Returns the release and the kernel's path.
pub fn find_kernel(kernel_root: &Path) -> Result<(String, PathBuf), ImageError> {
    let boot = kernel_root.join("boot");
    let entries = fs::read_dir(&boot).map_err(ImageError::io("read the directory", &boot))?;
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ImageError::io("read the directory", &boot))?;
        if let Some(release) = entry.file_name().to_str().and_then(|n| n.strip_prefix("vmlinuz-")) {
            if !release.is_empty() {
                releases.push(release.to_owned());
            }
        }
    }
    releases.sort();
    let release = match releases.len() {
        0 => return Err(ImageError::NoKernel { dir: boot }),
        1 => releases.remove(0),
        _ => return Err(ImageError::SeveralKernels { dir: boot, releases }),
    };
    let modules = kernel_root.join("lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(ImageError::MissingModulesDir { release, path: modules });
    }
    let vmlinuz = boot.join(format!("vmlinuz-{release}"));
    Ok((release, vmlinuz))
}

/// Checks that `bytes` is an x86-64 ELF executable without a program interpreter (that is,
/// statically linked: the initramfs has no dynamic loader).
pub fn check_static_elf(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let reject = |reason: &str| ImageError::NotStatic {
        what,
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(off..off + 2)?.try_into().ok()?))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(off..off + 4)?.try_into().ok()?))
    };
    let u64_at = |off: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(off..off + 8)?.try_into().ok()?))
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(reject("not an ELF file"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(reject("not a 64-bit little-endian ELF file"));
    }
    if u16_at(0x12) != Some(62) {
        return Err(reject("not an x86-64 binary"));
    }
    if !matches!(u16_at(0x10), Some(2 | 3)) {
        return Err(reject("not an executable"));
    }
    let bad = || reject("truncated or malformed program headers");
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(bad)?);
    if phnum == 0 || phentsize < 4 {
        return Err(bad());
    }
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize).ok_or_else(bad)?;
        if p_type == 3 {
            return Err(reject(
                "dynamically linked (it has an ELF interpreter); a static binary is required",
            ));
        }
    }
    Ok(())
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minimal::tests::fake_elf;

    #[test]
    fn static_elf_check() {
        let p = Path::new("/x");
        assert!(check_static_elf("busybox", p, &fake_elf(false)).is_ok());
        let err = check_static_elf("busybox", p, &fake_elf(true)).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(check_static_elf("busybox", p, b"#!/bin/sh\n").is_err());
        let mut truncated = fake_elf(false);
        truncated.truncate(100);
        assert!(check_static_elf("busybox", p, &truncated).is_err());
    }
}

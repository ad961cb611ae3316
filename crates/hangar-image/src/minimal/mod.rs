//! The built-in `minimal` image: Debian's cloud kernel, a static busybox and `hangar-init`.
//!
//! [`build_minimal`] reads an unpacked `linux-image-*-cloud-amd64` package, the busybox and
//! `hangar-init` binaries, and writes `<out>/vmlinuz`, `<out>/initrd.img` (an uncompressed
//! newc cpio: nothing to decompress at boot, and trivially reproducible) and
//! `<out>/manifest.json`. The output directory is built next to its final place and swapped
//! in with one atomic rename; when the result would be identical to what is already there,
//! nothing is written at all.
//!
//! This module is the build itself ([`build_minimal`]); its parts are `contents` (the modules
//! and applets the image ships), `inputs` (finding the kernel, reading and checking the
//! binaries and modules), `initrd` (assembling the cpio), `manifest` (the manifest and file
//! digests) and `install` (the unchanged check and the atomic swap into place).

use std::fs;
use std::path::PathBuf;

use crate::ImageError;

mod contents;
mod initrd;
mod inputs;
mod install;
mod manifest;

pub use contents::{APPLETS, MODULES, MODULE_LIST_PATH};
pub use initrd::{initrd_bytes, module_list_text};
pub use inputs::{check_static_elf, find_kernel};
pub use manifest::{
    manifest_bytes, sha256_hex, Builder, FileDigest, InputFiles, Manifest, OutputFiles,
    BUILDER_VERSION, IMAGE_NAME, MANIFEST_FORMAT,
};

use inputs::{read, read_modules};
use install::{install, is_unchanged};

/// What [`build_minimal`] reads and where it writes.
#[derive(Debug, Clone)]
pub struct MinimalInputs {
    /// Root of an unpacked kernel package (`dpkg-deb -x linux-image-….deb ROOT`): holds
    /// `boot/vmlinuz-<release>` and `lib/modules/<release>/`.
    pub kernel_root: PathBuf,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// The statically linked `hangar-init`.
    pub init: PathBuf,
    /// The image directory to create or replace.
    pub out_dir: PathBuf,
}

/// The result of [`build_minimal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The image's manifest (as written, or as already present).
    pub manifest: Manifest,
    /// False when the output directory already held exactly this image and was left alone.
    pub changed: bool,
}

/// Builds (or confirms) the `minimal` image in `inputs.out_dir`.
///
/// Fails with a precise [`ImageError`] on a missing kernel, module or binary, or on a
/// dynamically linked init/busybox. On failure the output directory is untouched.
pub fn build_minimal(inputs: &MinimalInputs) -> Result<BuildReport, ImageError> {
    let (release, vmlinuz_path) = find_kernel(&inputs.kernel_root)?;
    let vmlinuz = read(&vmlinuz_path)?;
    let modules = read_modules(&inputs.kernel_root.join("lib/modules").join(&release))?;
    let init = read(&inputs.init)?;
    check_static_elf("hangar-init", &inputs.init, &init)?;
    let busybox = read(&inputs.busybox)?;
    check_static_elf("busybox", &inputs.busybox, &busybox)?;

    let initrd = initrd_bytes(&release, &init, &busybox, &modules)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        image: IMAGE_NAME.to_owned(),
        builder: Builder { name: "hangar-image".to_owned(), version: BUILDER_VERSION.to_owned() },
        kernel_release: release,
        files: OutputFiles { vmlinuz: FileDigest::of(&vmlinuz), initrd: FileDigest::of(&initrd) },
        inputs: InputFiles {
            hangar_init: FileDigest::of(&init),
            busybox: FileDigest::of(&busybox),
        },
        modules: MODULES.iter().map(|m| (*m).to_owned()).collect(),
        applets: APPLETS.iter().map(|a| (*a).to_owned()).collect(),
    };
    let manifest_json = manifest_bytes(&manifest);

    let out = &inputs.out_dir;
    match fs::symlink_metadata(out) {
        Ok(meta) if !meta.is_dir() => return Err(ImageError::OutputNotDir { path: out.clone() }),
        Ok(_) => {
            if is_unchanged(out, &manifest_json, &manifest) {
                return Ok(BuildReport { manifest, changed: false });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("inspect", out)(e)),
    }
    install(
        out,
        &[("vmlinuz", &vmlinuz), ("initrd.img", &initrd), ("manifest.json", &manifest_json)],
    )?;
    Ok(BuildReport { manifest, changed: true })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;

    /// A fake static ELF: header with e_phoff = 64, one PT_LOAD program header.
    pub(super) fn fake_elf(interp: bool) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 * 2];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x10..0x12].copy_from_slice(&3u16.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes());
        let second: u32 = if interp { 3 } else { 1 };
        b[120..124].copy_from_slice(&second.to_le_bytes());
        b
    }

    pub(super) const RELEASE: &str = "6.1.0-99-cloud-amd64";

    /// A fake unpacked kernel package plus init/busybox binaries.
    fn fixture(dir: &Path) -> MinimalInputs {
        let root = dir.join("kernel");
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), b"fake bzImage").unwrap();
        fs::write(root.join(format!("boot/config-{RELEASE}")), b"CONFIG_X=y").unwrap();
        for m in MODULES {
            let p = root.join("lib/modules").join(RELEASE).join(m);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, format!("module {m}")).unwrap();
        }
        fs::write(dir.join("init"), fake_elf(false)).unwrap();
        let mut bb = fake_elf(false);
        bb.extend_from_slice(b"busybox");
        fs::write(dir.join("busybox"), bb).unwrap();
        MinimalInputs {
            kernel_root: root,
            busybox: dir.join("busybox"),
            init: dir.join("init"),
            out_dir: dir.join("images/minimal"),
        }
    }

    #[test]
    fn builds_reproducibly_and_skips_identical_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = fixture(tmp.path());
        let first = build_minimal(&inputs).unwrap();
        assert!(first.changed);
        assert_eq!(first.manifest.kernel_release, RELEASE);
        let out = &inputs.out_dir;
        let initrd1 = fs::read(out.join("initrd.img")).unwrap();
        let manifest1 = fs::read(out.join("manifest.json")).unwrap();
        assert_eq!(fs::read(out.join("vmlinuz")).unwrap(), b"fake bzImage");
        assert_eq!(first.manifest.files.initrd, FileDigest::of(&initrd1));
        let parsed: Manifest = serde_json::from_slice(&manifest1).unwrap();
        assert_eq!(parsed, first.manifest);

        // Identical inputs: nothing rewritten.
        let mtime = fs::metadata(out.join("initrd.img")).unwrap().modified().unwrap();
        let second = build_minimal(&inputs).unwrap();
        assert!(!second.changed);
        assert_eq!(second.manifest, first.manifest);
        assert_eq!(fs::metadata(out.join("initrd.img")).unwrap().modified().unwrap(), mtime);

        // Same inputs into another directory: byte-identical outputs.
        let other =
            MinimalInputs { out_dir: tmp.path().join("elsewhere/minimal"), ..inputs.clone() };
        assert!(build_minimal(&other).unwrap().changed);
        assert_eq!(fs::read(other.out_dir.join("initrd.img")).unwrap(), initrd1);
        assert_eq!(fs::read(other.out_dir.join("manifest.json")).unwrap(), manifest1);

        // A changed input replaces the image (atomic exchange), leaving no staging dirs.
        let mut init = fake_elf(false);
        init.extend_from_slice(b"v2");
        fs::write(&inputs.init, init).unwrap();
        let third = build_minimal(&inputs).unwrap();
        assert!(third.changed);
        assert_ne!(fs::read(out.join("initrd.img")).unwrap(), initrd1);
        let leftovers: Vec<_> =
            fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("minimal")]);
    }

    #[test]
    fn missing_inputs_are_clear_errors_and_leave_no_output() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = fixture(tmp.path());
        let rng = inputs
            .kernel_root
            .join("lib/modules")
            .join(RELEASE)
            .join("kernel/drivers/char/hw_random/virtio-rng.ko");
        fs::remove_file(&rng).unwrap();
        let err = build_minimal(&inputs).unwrap_err();
        assert!(
            matches!(err, ImageError::MissingModule { ref module, .. } if module == "virtio-rng")
        );
        assert!(err.to_string().contains(&rng.display().to_string()), "{err}");
        assert!(!inputs.out_dir.exists());
        assert!(!inputs.out_dir.parent().unwrap().exists());

        let empty = tempfile::tempdir().unwrap();
        fs::create_dir(empty.path().join("boot")).unwrap();
        let err = find_kernel(empty.path()).unwrap_err();
        assert!(matches!(err, ImageError::NoKernel { .. }), "{err}");
        fs::write(empty.path().join("boot/vmlinuz-a"), b"").unwrap();
        fs::write(empty.path().join("boot/vmlinuz-b"), b"").unwrap();
        let err = find_kernel(empty.path()).unwrap_err();
        assert!(err.to_string().contains("a, b"), "{err}");

        let bad =
            MinimalInputs { busybox: tmp.path().join("no-such-busybox"), ..fixture(tmp.path()) };
        fs::write(&rng, b"back").unwrap();
        let err = build_minimal(&bad).unwrap_err();
        assert!(err.to_string().contains("no-such-busybox"), "{err}");
    }
}

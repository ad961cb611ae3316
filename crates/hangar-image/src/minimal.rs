//! The built-in `minimal` image: Debian's cloud kernel, a static busybox and `hangar-init`.
//!
//! [`build_minimal`] reads an unpacked `linux-image-*-cloud-amd64` package, the busybox and
//! `hangar-init` binaries, and writes `<out>/vmlinuz`, `<out>/initrd.img` (an uncompressed
//! newc cpio: nothing to decompress at boot, and trivially reproducible) and
//! `<out>/manifest.json`. The output directory is built next to its final place and swapped
//! in with one atomic rename; when the result would be identical to what is already there,
//! nothing is written at all.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cpio::CpioWriter;
use crate::ImageError;

/// The builder's version, recorded in every manifest.
pub const BUILDER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Version of the manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

/// The image's name.
pub const IMAGE_NAME: &str = "minimal";

/// Path of the module list inside the image (read by `hangar-init`).
pub const MODULE_LIST_PATH: &str = "etc/hangar/modules";

/// Kernel modules shipped in the image, in load order, relative to
/// `/lib/modules/<release>/`: the virtio stack, then the ACPI power button and evdev so the
/// guest sees QMP `system_powerdown`.
pub const MODULES: &[&str] = &[
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
    "kernel/drivers/acpi/button.ko",
    "kernel/drivers/input/evdev.ko",
];

/// Busybox applets linked into `/bin` (each a symlink to `busybox`).
pub const APPLETS: &[&str] = &[
    "[",
    "ash",
    "cat",
    "chmod",
    "cp",
    "cttyhack",
    "cut",
    "date",
    "dd",
    "df",
    "dmesg",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "gunzip",
    "gzip",
    "halt",
    "head",
    "hexdump",
    "hostname",
    "id",
    "ifconfig",
    "insmod",
    "ip",
    "kill",
    "ln",
    "ls",
    "lsmod",
    "mkdir",
    "mknod",
    "modprobe",
    "more",
    "mount",
    "mv",
    "nc",
    "ping",
    "poweroff",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "reboot",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "setsid",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "top",
    "touch",
    "tr",
    "true",
    "udhcpc",
    "umount",
    "uname",
    "uptime",
    "vi",
    "wc",
    "wget",
    "which",
    "xargs",
];

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
        FileDigest {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
        }
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

/// The result of [`build_minimal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The image's manifest (as written, or as already present).
    pub manifest: Manifest,
    /// False when the output directory already held exactly this image and was left alone.
    pub changed: bool,
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

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(ImageError::io("read", path))
}

/// Finds the single `boot/vmlinuz-<release>` under `kernel_root` and checks that its module
/// tree exists. Returns the release and the kernel's path.
pub fn find_kernel(kernel_root: &Path) -> Result<(String, PathBuf), ImageError> {
    let boot = kernel_root.join("boot");
    let entries = fs::read_dir(&boot).map_err(ImageError::io("read the directory", &boot))?;
    let mut releases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ImageError::io("read the directory", &boot))?;
        if let Some(release) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            if !release.is_empty() {
                releases.push(release.to_owned());
            }
        }
    }
    releases.sort();
    let release = match releases.len() {
        0 => return Err(ImageError::NoKernel { dir: boot }),
        1 => releases.remove(0),
        _ => {
            return Err(ImageError::SeveralKernels {
                dir: boot,
                releases,
            })
        }
    };
    let modules = kernel_root.join("lib/modules").join(&release);
    if !modules.is_dir() {
        return Err(ImageError::MissingModulesDir {
            release,
            path: modules,
        });
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
        Some(u16::from_le_bytes(
            bytes.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            bytes.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    let u64_at = |off: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(off..off + 8)?.try_into().ok()?,
        ))
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

/// The contents of the module list file: one path per line, in load order.
pub fn module_list_text(modules: &[&str]) -> String {
    let mut text = String::from("# Kernel modules loaded by hangar-init, in this order.\n");
    for m in modules {
        text.push_str(m);
        text.push('\n');
    }
    text
}

/// Assembles the `minimal` initramfs (pure: same arguments, same bytes).
///
/// `modules` pairs each path of [`MODULES`] with its contents.
pub fn initrd_bytes(
    release: &str,
    init: &[u8],
    busybox: &[u8],
    modules: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>, ImageError> {
    let mut w = CpioWriter::new(Vec::new());
    w.dir("dev", 0o755)?;
    // The kernel opens /dev/console as PID 1's stdio before /init runs.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.dir("proc", 0o555)?;
    w.dir("sys", 0o555)?;
    w.dir("tmp", 0o1777)?;
    w.dir("root", 0o700)?;
    w.dir("etc", 0o755)?;
    let list: Vec<&str> = modules.iter().map(|(p, _)| *p).collect();
    w.file(MODULE_LIST_PATH, 0o644, module_list_text(&list).as_bytes())?;
    w.file("init", 0o755, init)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for (path, data) in modules {
        w.file(&format!("lib/modules/{release}/{path}"), 0o644, data)?;
    }
    Ok(w.finish()?)
}

/// Builds (or confirms) the `minimal` image in `inputs.out_dir`.
///
/// Fails with a precise [`ImageError`] on a missing kernel, module or binary, or on a
/// dynamically linked init/busybox. On failure the output directory is untouched.
pub fn build_minimal(inputs: &MinimalInputs) -> Result<BuildReport, ImageError> {
    let (release, vmlinuz_path) = find_kernel(&inputs.kernel_root)?;
    let vmlinuz = read(&vmlinuz_path)?;
    let module_dir = inputs.kernel_root.join("lib/modules").join(&release);
    let mut modules = Vec::with_capacity(MODULES.len());
    for rel in MODULES {
        let path = module_dir.join(rel);
        let data = fs::read(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ImageError::MissingModule {
                    module: module_name(rel),
                    path: path.clone(),
                }
            } else {
                ImageError::io("read", &path)(source)
            }
        })?;
        modules.push((*rel, data));
    }
    let init = read(&inputs.init)?;
    check_static_elf("hangar-init", &inputs.init, &init)?;
    let busybox = read(&inputs.busybox)?;
    check_static_elf("busybox", &inputs.busybox, &busybox)?;

    let initrd = initrd_bytes(&release, &init, &busybox, &modules)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        image: IMAGE_NAME.to_owned(),
        builder: Builder {
            name: "hangar-image".to_owned(),
            version: BUILDER_VERSION.to_owned(),
        },
        kernel_release: release,
        files: OutputFiles {
            vmlinuz: FileDigest::of(&vmlinuz),
            initrd: FileDigest::of(&initrd),
        },
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
                return Ok(BuildReport {
                    manifest,
                    changed: false,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("inspect", out)(e)),
    }
    install(
        out,
        &[
            ("vmlinuz", &vmlinuz),
            ("initrd.img", &initrd),
            ("manifest.json", &manifest_json),
        ],
    )?;
    Ok(BuildReport {
        manifest,
        changed: true,
    })
}

/// The exact bytes of `manifest.json` (pretty JSON, trailing newline).
pub fn manifest_bytes(manifest: &Manifest) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let mut bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).to_owned()
}

/// True when `out` already holds this manifest and files matching it.
fn is_unchanged(out: &Path, manifest_json: &[u8], manifest: &Manifest) -> bool {
    let same = |name: &str, want: &FileDigest| {
        fs::read(out.join(name)).is_ok_and(|bytes| FileDigest::of(&bytes) == *want)
    };
    fs::read(out.join("manifest.json")).is_ok_and(|m| m == manifest_json)
        && same("vmlinuz", &manifest.files.vmlinuz)
        && same("initrd.img", &manifest.files.initrd)
}

/// Removes a staging directory unless disarmed.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `files` into a fresh sibling directory of `out`, then puts it in place with one
/// atomic rename (or an atomic exchange when `out` exists), so readers see either the old
/// image or the new one, never a mix.
fn install(out: &Path, files: &[(&str, &[u8])]) -> Result<(), ImageError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(ImageError::io("create the directory", &parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned());
    let staging_path = parent.join(format!(".{name}.staging-{}", std::process::id()));
    if staging_path.exists() {
        fs::remove_dir_all(&staging_path)
            .map_err(ImageError::io("remove the stale directory", &staging_path))?;
    }
    fs::create_dir(&staging_path).map_err(ImageError::io("create the directory", &staging_path))?;
    let mut staging = Staging {
        path: staging_path,
        armed: true,
    };
    for (file_name, bytes) in files {
        let path = staging.path.join(file_name);
        let mut f = File::create(&path).map_err(ImageError::io("create", &path))?;
        f.write_all(bytes).map_err(ImageError::io("write", &path))?;
        f.sync_all().map_err(ImageError::io("sync", &path))?;
    }
    sync_dir(&staging.path)?;

    if out.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staging.path,
            rustix::fs::CWD,
            out,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| ImageError::io("exchange into place", out)(e.into()))?;
        // The staging path now holds the previous image; the guard removes it.
    } else {
        fs::rename(&staging.path, out).map_err(ImageError::io("rename into place", out))?;
        staging.armed = false;
    }
    sync_dir(&parent)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io("sync the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake static ELF: header with e_phoff = 64, one PT_LOAD program header.
    fn fake_elf(interp: bool) -> Vec<u8> {
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

    const RELEASE: &str = "6.1.0-99-cloud-amd64";

    /// A fake unpacked kernel package plus init/busybox binaries.
    fn fixture(dir: &Path) -> MinimalInputs {
        let root = dir.join("kernel");
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(
            root.join(format!("boot/vmlinuz-{RELEASE}")),
            b"fake bzImage",
        )
        .unwrap();
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
        let mtime = fs::metadata(out.join("initrd.img"))
            .unwrap()
            .modified()
            .unwrap();
        let second = build_minimal(&inputs).unwrap();
        assert!(!second.changed);
        assert_eq!(second.manifest, first.manifest);
        assert_eq!(
            fs::metadata(out.join("initrd.img"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );

        // Same inputs into another directory: byte-identical outputs.
        let other = MinimalInputs {
            out_dir: tmp.path().join("elsewhere/minimal"),
            ..inputs.clone()
        };
        assert!(build_minimal(&other).unwrap().changed);
        assert_eq!(fs::read(other.out_dir.join("initrd.img")).unwrap(), initrd1);
        assert_eq!(
            fs::read(other.out_dir.join("manifest.json")).unwrap(),
            manifest1
        );

        // A changed input replaces the image (atomic exchange), leaving no staging dirs.
        let mut init = fake_elf(false);
        init.extend_from_slice(b"v2");
        fs::write(&inputs.init, init).unwrap();
        let third = build_minimal(&inputs).unwrap();
        assert!(third.changed);
        assert_ne!(fs::read(out.join("initrd.img")).unwrap(), initrd1);
        let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("minimal")]);
    }

    #[test]
    fn initrd_contains_the_expected_entries() {
        let modules: Vec<(&str, Vec<u8>)> = MODULES.iter().map(|m| (*m, vec![1, 2, 3])).collect();
        let bytes = initrd_bytes(RELEASE, b"INIT", b"BUSYBOX", &modules).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in [
            "dev/console\0",
            "init\0",
            "bin/busybox\0",
            "bin/sh\0",
            "bin/poweroff\0",
            "etc/hangar/modules\0",
            "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/char/hw_random/virtio-rng.ko\0",
            "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/input/evdev.ko\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        for applet in [
            "sh", "ls", "cat", "echo", "mount", "uname", "sleep", "poweroff",
        ] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
        assert_eq!(
            bytes,
            initrd_bytes(RELEASE, b"INIT", b"BUSYBOX", &modules).unwrap()
        );
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
        assert!(
            err.to_string().contains(&rng.display().to_string()),
            "{err}"
        );
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

        let bad = MinimalInputs {
            busybox: tmp.path().join("no-such-busybox"),
            ..fixture(tmp.path())
        };
        fs::write(&rng, b"back").unwrap();
        let err = build_minimal(&bad).unwrap_err();
        assert!(err.to_string().contains("no-such-busybox"), "{err}");
    }
}

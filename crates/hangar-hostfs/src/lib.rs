//! What a spec may name on the host.
//!
//! A spec names host files: a kernel, an initrd, the base images of its disks. Whoever may
//! submit a spec must not thereby read files the host keeps from them (`/etc/shadow`, another
//! VM's overlay or saved memory). [`AllowedRoots`] holds the directories such files may come
//! from (`$HANGAR_HOME/images`, `$HANGAR_HOME/volumes`, and any an administrator adds) and
//! checks every file a spec names:
//!
//! - the file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)` relative to its root, so no symlink, `..` or `/proc` magic link
//!   can lead out of the root (`/etc/mtab` and `/run/shm` are symlinks and are refused);
//! - it must be a regular file (no devices, FIFOs or directories);
//! - nothing inside Hangar's own state (runtime directories, overlays, snapshots, the store) is
//!   allowed, even when an added root covers it;
//! - a qcow2 image's backing file and external data file must pass the same checks, all the
//!   way down its chain, and must be plain file names (QEMU reads `json:{…}` or `nbd:…` names
//!   as protocols, which could open anything).
//!
//! Roots themselves are trusted: only the host's administrator can write into them. Checks run
//! when a VM is defined and again before each boot.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use hangar_core::error::{Coded, ErrorCode};
use hangar_core::spec::{BootSource, DiskFormat, DiskSource, VmSpec};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

pub mod qcow2;

/// A file name written inside an image (a backing or data file), resolved the way QEMU
/// resolves it: relative to the image's directory. Protocol names (`json:`, `nbd:…`) and
/// malformed names are refused, with why.
pub fn resolve_reference(image: &Path, name: &str) -> Result<PathBuf, String> {
    if name.starts_with("json:") {
        return Err(format!(
            "it refers to {name:?}, a QEMU protocol description; only plain file names are allowed"
        ));
    }
    let before_slash = name.split('/').next().unwrap_or_default();
    if before_slash.contains(':') {
        return Err(format!(
            "it refers to {name:?}, which QEMU reads as a protocol ({}); only plain file names are allowed",
            before_slash.split(':').next().unwrap_or_default()
        ));
    }
    if name.is_empty() || name.contains('\0') {
        return Err("it refers to an empty or malformed file name".into());
    }
    let base = image.parent().unwrap_or(Path::new("/"));
    Ok(lexical(&base.join(name)))
}

/// Every file a qcow2 image makes QEMU open besides itself (backing files and data files,
/// down the chain), in the order QEMU opens them. What cannot be read or resolved ends its
/// branch: this lists files, [`AllowedRoots::check_file`] decides whether they may be used.
pub fn qcow2_references(image: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut next = vec![image.to_path_buf()];
    while let Some(file) = next.pop() {
        let Ok(refs) = std::fs::File::open(&file)
            .map_err(|e| e.to_string())
            .and_then(|f| qcow2::references(&f).map_err(|e| e.to_string()))
        else {
            continue;
        };
        for name in [refs.backing, refs.data_file].into_iter().flatten() {
            let Ok(path) = resolve_reference(&file, &name) else {
                continue;
            };
            if out.len() >= MAX_CHAIN || out.contains(&path) || path == image {
                return out;
            }
            out.push(path.clone());
            next.push(path);
        }
    }
    out
}

/// How deep a qcow2 backing chain may go.
pub const MAX_CHAIN: usize = 16;

/// Pseudo filesystems that can never be roots.
const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a file a spec names may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {file}: {reason}")]
pub struct Denied {
    /// The spec field (`boot.kernel`, `disk[0].source`).
    pub field: String,
    /// The file (for a backing chain, the file in the chain that failed).
    pub file: String,
    /// Why.
    pub reason: String,
    /// `E_PATH_NOT_ALLOWED`, or `E_INVALID_ARGUMENT` for a file that does not exist.
    pub code: ErrorCode,
}

impl Coded for Denied {
    fn code(&self) -> ErrorCode {
        self.code
    }
    fn path(&self) -> Option<String> {
        Some(self.field.clone())
    }
    fn hint(&self) -> Option<String> {
        Some(match self.code {
            ErrorCode::PathNotAllowed => "put the file under $HANGAR_HOME/images or a directory the administrator allows (`hangar doctor` lists them; `hangard --allow-path DIR` adds one), and name it without symlinks".to_string(),
            _ => "check the path; relative paths are relative to the spec file".to_string(),
        })
    }
}

/// A bad root given by an administrator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow-path {root}: {reason}")]
pub struct BadRoot {
    /// The root as given.
    pub root: String,
    /// Why it cannot be one.
    pub reason: String,
}

/// The directories a spec's host files may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedRoots {
    /// Absolute, lexically normal roots, in the order given (Hangar's own first).
    roots: Vec<PathBuf>,
    /// Hangar's state directory: nothing in it is allowed except under `images` and `volumes`.
    home: PathBuf,
    /// The same directories with symlinks resolved, for paths that name them that way.
    home_real: Option<PathBuf>,
}

/// `p` made absolute (against the current directory) and lexically normal (no `.`/`..`).
fn lexical(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            _ => {}
        }
    }
    out
}

impl AllowedRoots {
    /// Hangar's own roots under `home` (`images`, `volumes`) plus `extra` (what an
    /// administrator allowed). An extra root inside a pseudo filesystem or inside Hangar's
    /// state is refused.
    pub fn new(home: &Path, extra: &[PathBuf]) -> Result<AllowedRoots, BadRoot> {
        let home = lexical(home);
        let mut roots = vec![home.join("images"), home.join("volumes")];
        let home_real = std::fs::canonicalize(&home).ok().filter(|r| *r != home);
        for root in extra {
            let bad = |reason: String| BadRoot { root: root.display().to_string(), reason };
            let r = lexical(root);
            if FORBIDDEN_ROOTS.iter().any(|f| r == Path::new(f) || r.starts_with(f)) {
                return Err(bad("a pseudo filesystem cannot hold VM inputs".into()));
            }
            let inside_home = r.starts_with(&home) && r != home
                || home_real.as_ref().is_some_and(|h| r.starts_with(h) && r != *h);
            if inside_home && !roots.iter().any(|own| r.starts_with(own)) {
                return Err(bad(format!(
                    "it is inside Hangar's state directory {}, whose files belong to VMs",
                    home.display()
                )));
            }
            if !roots.contains(&r) {
                roots.push(r);
            }
        }
        Ok(AllowedRoots { roots, home, home_real })
    }

    /// The roots, Hangar's own first.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn in_state_dir(&self, p: &Path) -> bool {
        let own = |home: &Path| {
            p.starts_with(home)
                && !p.starts_with(home.join("images"))
                && !p.starts_with(home.join("volumes"))
        };
        own(&self.home) || self.home_real.as_deref().is_some_and(own)
    }

    /// Checks every host file `spec` names (kernel, initrd, disk sources and their qcow2
    /// chains); every problem, not only the first.
    pub fn check_spec(&self, spec: &VmSpec) -> Result<(), Vec<Denied>> {
        let mut denied = Vec::new();
        if let BootSource::Kernel { kernel, initrd, .. } = &spec.boot {
            if let Err(d) = self.check_file("boot.kernel", kernel, None) {
                denied.push(d);
            }
            if let Some(initrd) = initrd {
                if let Err(d) = self.check_file("boot.initrd", initrd, None) {
                    denied.push(d);
                }
            }
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            if let DiskSource::Base { source } = &disk.source {
                let field = format!("disk[{i}].source");
                if let Err(d) = self.check_file(&field, source, Some(disk.format)) {
                    denied.push(d);
                }
            }
        }
        if denied.is_empty() {
            Ok(())
        } else {
            Err(denied)
        }
    }

    /// Checks one file named by spec field `field`; with `format` qcow2, its whole chain too.
    pub fn check_file(
        &self, field: &str, file: &str, format: Option<DiskFormat>,
    ) -> Result<(), Denied> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut current = PathBuf::from(file);
        let mut format = format;
        loop {
            let fd = self.open(field, &current)?;
            if format != Some(DiskFormat::Qcow2) {
                return Ok(());
            }
            let deny = |reason: String| Denied {
                field: field.to_string(),
                file: current.display().to_string(),
                reason,
                code: ErrorCode::PathNotAllowed,
            };
            let file = std::fs::File::from(fd);
            let refs = match qcow2::references(&file) {
                Ok(refs) => refs,
                // The spec says qcow2 but the file is not: QEMU will refuse it at boot and
                // reads nothing else meanwhile.
                Err(qcow2::HeaderError::NotQcow2) => return Ok(()),
                Err(e) => return Err(deny(e.to_string())),
            };
            seen.push(current.clone());
            if let Some(data) = &refs.data_file {
                let data = self.referenced(&current, data).map_err(&deny)?;
                self.open(field, &data)?;
            }
            let Some(backing) = refs.backing else {
                return Ok(());
            };
            let next = self.referenced(&current, &backing).map_err(&deny)?;
            if seen.contains(&next) {
                return Err(deny(format!("its backing chain loops back to {}", next.display())));
            }
            if seen.len() >= MAX_CHAIN {
                return Err(deny(format!("its backing chain is deeper than {MAX_CHAIN} images")));
            }
            current = next;
            // A backing file's format is probed by QEMU unless recorded; follow it as qcow2
            // if it is one (probing raw bytes as qcow2 finds no magic and stops).
            format = Some(DiskFormat::Qcow2);
        }
    }

    /// [`resolve_reference`], the reason becoming the refusal.
    fn referenced(&self, image: &Path, name: &str) -> Result<PathBuf, String> {
        resolve_reference(image, name)
    }

    /// Opens `path` beneath the root that holds it, refusing symlinks and escapes, and checks
    /// it is a regular file. Returns an `O_PATH` descriptor reopened for reading.
    fn open(&self, field: &str, path: &Path) -> Result<OwnedFd, Denied> {
        let deny = |code: ErrorCode, reason: String| Denied {
            field: field.to_string(),
            file: path.display().to_string(),
            reason,
            code,
        };
        let not_allowed = |reason: String| deny(ErrorCode::PathNotAllowed, reason);
        let path = lexical(path);
        if self.in_state_dir(&path) {
            return Err(not_allowed(format!(
                "it is inside Hangar's state directory {} (VMs' overlays, snapshots and runtime files belong to their VMs)",
                self.home.display()
            )));
        }
        let Some(root) = self.roots.iter().find(|r| path.starts_with(r)) else {
            return Err(not_allowed(format!(
                "it is outside the allowed directories ({})",
                self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        let rel = path.strip_prefix(root).expect("checked by starts_with");
        if rel.as_os_str().is_empty() {
            return Err(not_allowed("it is an allowed directory, not a file".into()));
        }
        let root_fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            deny(
                ErrorCode::InvalidArgument,
                format!("its directory {} cannot be opened: {e}", root.display()),
            )
        })?;
        let fd = rustix::fs::openat2(
            &root_fd,
            rel,
            // Without O_NOFOLLOW: a trailing symlink must fail with ELOOP, not open the link.
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => {
                not_allowed("it is, or goes through, a symbolic link; name the real file".into())
            }
            rustix::io::Errno::XDEV => {
                not_allowed(format!("it resolves outside {}", root.display()))
            }
            rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => {
                deny(ErrorCode::InvalidArgument, "it does not exist".into())
            }
            rustix::io::Errno::NOSYS => not_allowed(
                "this kernel lacks openat2 (Linux 5.6+), so the path cannot be checked safely"
                    .into(),
            ),
            e => deny(ErrorCode::InvalidArgument, format!("it cannot be opened: {e}")),
        })?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| deny(ErrorCode::InvalidArgument, format!("it cannot be examined: {e}")))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(not_allowed(
                "it is not a regular file (devices, FIFOs and directories are never VM inputs)"
                    .into(),
            ));
        }
        // Reopen the very inode for reading (O_PATH descriptors cannot be read).
        let proc_path = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        rustix::fs::open(
            proc_path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| deny(ErrorCode::InvalidArgument, format!("it cannot be read: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Host {
        _dir: tempfile::TempDir,
        home: PathBuf,
        extra: PathBuf,
        outside: PathBuf,
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let extra = dir.path().join("srv");
        let outside = dir.path().join("secret");
        for d in
            [home.join("images/minimal"), home.join("vms/other"), extra.clone(), outside.clone()]
        {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(home.join("images/minimal/vmlinuz"), b"kernel").unwrap();
        std::fs::write(home.join("vms/other/root.qcow2"), b"their disk").unwrap();
        std::fs::write(extra.join("base.raw"), b"raw").unwrap();
        std::fs::write(outside.join("shadow"), b"root:x").unwrap();
        Host { _dir: dir, home, extra, outside }
    }

    fn roots(h: &Host) -> AllowedRoots {
        AllowedRoots::new(&h.home, std::slice::from_ref(&h.extra)).unwrap()
    }

    fn check(r: &AllowedRoots, p: &Path, format: Option<DiskFormat>) -> Result<(), Denied> {
        r.check_file("disk[0].source", p.to_str().unwrap(), format)
    }

    #[test]
    fn files_under_the_roots_pass_and_everything_else_is_refused() {
        let h = host();
        let r = roots(&h);
        check(&r, &h.home.join("images/minimal/vmlinuz"), None).unwrap();
        check(&r, &h.extra.join("base.raw"), Some(DiskFormat::Raw)).unwrap();
        for bad in [
            h.outside.join("shadow"),
            PathBuf::from("/etc/shadow"),
            h.home.join("vms/other/root.qcow2"),
            h.home.join("state.db"),
            h.extra.clone(),
        ] {
            let e = check(&r, &bad, None).unwrap_err();
            assert_eq!(e.code, ErrorCode::PathNotAllowed, "{bad:?}: {e}");
            assert_eq!(e.field, "disk[0].source");
        }
        let missing = check(&r, &h.extra.join("nope"), None).unwrap_err();
        assert_eq!(missing.code, ErrorCode::InvalidArgument, "{missing}");
    }

    #[test]
    fn symlinks_never_lead_out() {
        let h = host();
        let r = roots(&h);
        symlink(h.outside.join("shadow"), h.extra.join("innocent.raw")).unwrap();
        symlink("/proc/self/environ", h.extra.join("proc.raw")).unwrap();
        symlink("/proc/self/mounts", h.extra.join("mtab")).unwrap();
        symlink(&h.outside, h.extra.join("dir")).unwrap();
        symlink(h.extra.join("base.raw"), h.extra.join("inside.raw")).unwrap();
        for link in ["innocent.raw", "proc.raw", "mtab", "dir/shadow", "inside.raw"] {
            let e = check(&r, &h.extra.join(link), None).unwrap_err();
            assert_eq!(e.code, ErrorCode::PathNotAllowed, "{link}: {e}");
            assert!(e.reason.contains("symbolic link"), "{link}: {e}");
        }
        // A lexical `..` out of a root is outside every root.
        let e = check(&r, &h.extra.join("../secret/shadow"), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::PathNotAllowed);
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        let h = host();
        let r = roots(&h);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            h.extra.join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = check(&r, &h.extra.join("fifo"), None).unwrap_err();
        assert!(e.reason.contains("regular file"), "{e}");
    }

    #[test]
    fn qcow2_chains_are_followed_and_checked() {
        let h = host();
        let r = roots(&h);
        let write = |name: &str, bytes: Vec<u8>| std::fs::write(h.extra.join(name), bytes).unwrap();
        write("ok.qcow2", qcow2::tests::image(Some("base.raw"), None));
        check(&r, &h.extra.join("ok.qcow2"), Some(DiskFormat::Qcow2)).unwrap();
        // As raw, QEMU never reads the header: nothing to follow.
        write("evil.qcow2", qcow2::tests::image(Some("../secret/shadow"), None));
        check(&r, &h.extra.join("evil.qcow2"), Some(DiskFormat::Raw)).unwrap();
        let shadow = h.outside.join("shadow").display().to_string();
        write("abs.qcow2", qcow2::tests::image(Some(&shadow), None));
        write("data.qcow2", qcow2::tests::image(None, Some(&shadow)));
        write(
            "json.qcow2",
            qcow2::tests::image(Some(r#"json:{"driver":"file","filename":"/etc/shadow"}"#), None),
        );
        write("nbd.qcow2", qcow2::tests::image(Some("nbd:127.0.0.1:10809"), None));
        write("state.qcow2", qcow2::tests::image(Some("../home/vms/other/root.qcow2"), None));
        write("loop.qcow2", qcow2::tests::image(Some("loop.qcow2"), None));
        write("deep.qcow2", qcow2::tests::image(Some("evil.qcow2"), None));
        for bad in ["evil", "abs", "data", "json", "nbd", "state", "loop", "deep"] {
            let e = check(&r, &h.extra.join(format!("{bad}.qcow2")), Some(DiskFormat::Qcow2))
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::PathNotAllowed, "{bad}: {e}");
        }
    }

    #[test]
    fn roots_cannot_be_pseudo_filesystems_or_state() {
        let h = host();
        for bad in [
            PathBuf::from("/proc"),
            PathBuf::from("/dev/shm"),
            h.home.join("vms"),
            h.home.join("snapshots/x"),
        ] {
            assert!(AllowedRoots::new(&h.home, std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        // Covering the state directory is allowed, but its files stay refused.
        let r = AllowedRoots::new(&h.home, &[h.home.parent().unwrap().to_path_buf()]).unwrap();
        assert_eq!(
            check(&r, &h.home.join("vms/other/root.qcow2"), None).unwrap_err().code,
            ErrorCode::PathNotAllowed
        );
        check(&r, &h.outside.join("shadow"), None).unwrap();
    }

    #[test]
    fn check_spec_names_every_bad_field() {
        let h = host();
        let r = roots(&h);
        let spec = VmSpec {
            boot: BootSource::Kernel {
                kernel: "/etc/shadow".into(),
                initrd: Some(h.home.join("images/minimal/vmlinuz").display().to_string()),
                cmdline: String::new(),
            },
            disks: vec![hangar_core::spec::DiskSpec {
                name: hangar_core::ids::DeviceName::new("root").unwrap(),
                source: DiskSource::Base { source: h.outside.join("shadow").display().to_string() },
                format: DiskFormat::Raw,
                readonly: true,
            }],
            ..test_spec()
        };
        let denied = r.check_spec(&spec).unwrap_err();
        let fields: Vec<_> = denied.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["boot.kernel", "disk[0].source"]);
    }

    fn test_spec() -> VmSpec {
        use hangar_core::spec::*;
        let mut spec = VmSpec::new(hangar_core::ids::VmName::new("t").unwrap());
        spec.machine.memory_mib = 128;
        spec.serial.mode = SerialMode::Log;
        spec
    }
}

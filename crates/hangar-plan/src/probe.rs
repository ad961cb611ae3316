//! The real host probe. This is the only part of the crate that looks at the host, and it only
//! reads: files under /proc and /sys, an open of /dev/kvm, `PATH`, and `qemu --version`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::facts::{
    Capacity, CgroupVersion, ConfinementFacts, HostFacts, HostProbe, KvmFacts, QemuFacts,
};

/// The QEMU binary Hangar drives.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The system-wide image directory: `scripts/setup` builds the built-in images here, readable
/// by every user, so an ordinary user's Hangar boots them without a copy of its own.
pub const SYSTEM_IMAGE_DIR: &str = "/usr/local/share/hangar/images";

/// Hangar's state directory: `$HANGAR_HOME`, else `/var/lib/hangar` for root, else
/// `$XDG_DATA_HOME/hangar` or `~/.local/share/hangar`.
pub fn hangar_home() -> PathBuf {
    if let Some(home) = std::env::var_os("HANGAR_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    if is_root() {
        return PathBuf::from("/var/lib/hangar");
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(data).join("hangar");
    }
    // Without HOME, the user's home from the password database; never a shared directory
    // such as /tmp, where another user could have made the state directory first.
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(passwd_home)
        .unwrap_or_else(|| PathBuf::from("/nonexistent-home"));
    home.join(".local/share/hangar")
}

/// This user's home directory as `/etc/passwd` has it.
fn passwd_home() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 6 && f[2] == uid && !f[5].is_empty()).then(|| PathBuf::from(f[5]))
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's effective uid; no unsafe libc call needed.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Probes the machine it runs on.
#[derive(Debug, Clone)]
pub struct SystemProbe {
    /// Hangar's state directory (runtime and image directories live below it).
    pub home: PathBuf,
}

impl Default for SystemProbe {
    fn default() -> Self {
        Self { home: hangar_home() }
    }
}

impl HostProbe for SystemProbe {
    fn probe(&self) -> HostFacts {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let binary = find_in_path(QEMU_BINARY);
        let version = binary
            .as_deref()
            .and_then(|b| cached_qemu_version(&self.home, b).or_else(|| qemu_version(b)));
        HostFacts {
            qemu: QemuFacts {
                binary: binary
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| QEMU_BINARY.to_string()),
                version,
            },
            kvm: KvmFacts {
                dev_kvm_rw: std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok(),
                cpu_virt_flags: cpu_has_virt_flags(&cpuinfo),
                kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            },
            tsc_khz: tsc_khz(&cpuinfo),
            cpu_count: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
            runtime_dir: self.home.join("vms").display().to_string(),
            image_dir: self.home.join("images").display().to_string(),
            shared_images: shared_images(&self.home.join("images"), Path::new(SYSTEM_IMAGE_DIR)),
            confinement: confinement_facts(),
            capacity: capacity(&self.home),
            nic_networks: Default::default(),
            nameservers: nameservers(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        }
    }
}

/// The images in `shared` (a directory each, with a `vmlinuz`) that `own` does not have.
pub fn shared_images(own: &Path, shared: &Path) -> std::collections::BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(shared) else { return Default::default() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .filter(|name| shared.join(name).join("vmlinuz").is_file())
        .filter(|name| !own.join(name).join("vmlinuz").exists())
        .map(|name| (name.clone(), shared.join(name).display().to_string()))
        .collect()
}

/// The IPv4 `nameserver` lines of a resolv.conf, loopback ones left out.
pub fn nameservers(resolv_conf: &str) -> Vec<std::net::Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

/// What this host offers to confine QEMU.
pub fn confinement_facts() -> ConfinementFacts {
    let root = is_root();
    ConfinementFacts {
        enabled: std::env::var("HANGAR_CONFINE").map_or(true, |v| v != "off"),
        root,
        qemu_group: group_id(QEMU_GROUP),
        kvm_group: std::fs::metadata("/dev/kvm").ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.gid()
        }),
        // Debian's QEMU is built with seccomp; a build without it fails on `-sandbox` at the
        // first boot, saying so in qemu.log (HANGAR_CONFINE=off runs it unconfined).
        seccomp: true,
        // Only root can make cgroups (a delegated subtree is not used yet).
        cgroup: if root {
            cgroup_version(Path::new("/sys/fs/cgroup"))
        } else {
            CgroupVersion::None
        },
        memory_overhead_mib: crate::DEFAULT_MEMORY_OVERHEAD_MIB,
    }
}

/// The group QEMU's processes belong to besides their own (made by scripts/setup).
pub const QEMU_GROUP: &str = "hangar-qemu";

/// The gid of group `name` in /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Which cgroup hierarchy is mounted at `root` with the memory, cpu and pids controllers.
pub fn cgroup_version(root: &Path) -> CgroupVersion {
    if let Ok(controllers) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("cpu") && has("pids") {
            return CgroupVersion::V2;
        }
        return CgroupVersion::None;
    }
    let v1 = ["memory", "cpu", "pids"].iter().all(|c| root.join(c).join("cgroup.procs").exists());
    if v1 {
        CgroupVersion::V1
    } else {
        CgroupVersion::None
    }
}

/// Free memory and disk now.
pub fn capacity(home: &Path) -> Option<Capacity> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // The home may not exist yet: its nearest existing ancestor is on the same filesystem.
    let mut at = home.to_path_buf();
    while !at.exists() {
        if !at.pop() {
            break;
        }
    }
    let fs = rustix::fs::statvfs(&at).ok()?;
    Some(Capacity {
        memory_available_mib: available_kib / 1024,
        disk_free_mib: fs.f_bavail.saturating_mul(fs.f_frsize) >> 20,
    })
}

/// Looks `name` up in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// What identifies one installed QEMU binary: path, size, modification time and inode. A
/// package upgrade changes at least one of them.
fn binary_key(binary: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(binary).ok()?;
    Some(format!("{}|{}|{}.{}|{}", binary.display(), m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

fn version_cache(home: &Path) -> PathBuf {
    home.join("cache/qemu-version")
}

/// The version recorded for exactly this binary by [`remember_qemu_version`], if any. Asking
/// QEMU costs a process start (~20 ms) on every command; reading this file does not. The probe
/// only ever reads it, so `hangar plan` still touches nothing.
pub fn cached_qemu_version(home: &Path, binary: &Path) -> Option<String> {
    let text = std::fs::read_to_string(version_cache(home)).ok()?;
    let (key, version) = text.trim_end().split_once('\n')?;
    (Some(key) == binary_key(binary).as_deref()
        && parse_qemu_version(&format!("version {version}")).as_deref() == Some(version))
    .then(|| version.to_string())
}

/// Records `version` for this binary (best effort, atomic). Called by the engine, which writes
/// under `home` anyway.
pub fn remember_qemu_version(home: &Path, binary: &Path, version: &str) {
    // Every engine start calls this: a cache that already says so is left alone.
    if cached_qemu_version(home, binary).as_deref() == Some(version) {
        return;
    }
    let Some(key) = binary_key(binary) else {
        return;
    };
    let path = version_cache(home);
    let tmp = path.with_extension("tmp");
    let written = path
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|()| std::fs::write(&tmp, format!("{key}\n{version}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn qemu_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
}

/// `QEMU emulator version 10.0.2 (Debian …)` → `10.0.2`.
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.split("version ").nth(1)?;
    let version: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    (!version.is_empty()).then_some(version)
}

fn cpu_has_virt_flags(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The first `cpu MHz` in /proc/cpuinfo, in kHz.
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_text() {
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some("10.0.2".into())
        );
        assert_eq!(parse_qemu_version("nonsense"), None);
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2999.998\nflags\t\t: fpu vme svm sse\n";
        assert_eq!(tsc_khz(cpuinfo), Some(2_999_998));
        assert!(cpu_has_virt_flags(cpuinfo));
        assert!(!cpu_has_virt_flags("flags : fpu sse\n"));
    }
}

#[cfg(test)]
mod version_cache_tests {
    use super::*;

    #[test]
    fn nameservers_leave_out_loopback_and_ipv6() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n\
                    nameserver ::1\nnameserver fd00::1\n  nameserver 192.168.0.53  \noptions edns0\n";
        assert_eq!(
            nameservers(text),
            [std::net::Ipv4Addr::new(10, 255, 255, 53), std::net::Ipv4Addr::new(192, 168, 0, 53)]
        );
        assert!(nameservers("nameserver 127.0.0.1\n").is_empty());
    }

    #[test]
    fn the_cached_version_is_used_only_for_the_same_binary() {
        let home = std::env::temp_dir().join(format!("hgv-{}", std::process::id()));
        let binary = home.join("qemu");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(&binary, b"one").unwrap();
        assert_eq!(cached_qemu_version(&home, &binary), None);
        remember_qemu_version(&home, &binary, "10.0.2");
        assert_eq!(cached_qemu_version(&home, &binary).as_deref(), Some("10.0.2"));
        // An upgraded binary (new size and mtime) is asked again.
        std::fs::write(&binary, b"a newer qemu").unwrap();
        assert_eq!(cached_qemu_version(&home, &binary), None);
        // A damaged cache is ignored, not trusted.
        remember_qemu_version(&home, &binary, "10.0.2");
        let cache = home.join("cache/qemu-version");
        let text = std::fs::read_to_string(&cache).unwrap().replace("10.0.2", "x; rm -rf");
        std::fs::write(&cache, text).unwrap();
        assert_eq!(cached_qemu_version(&home, &binary), None);
        std::fs::remove_dir_all(&home).unwrap();
    }
}

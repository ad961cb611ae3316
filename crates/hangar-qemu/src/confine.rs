//! Confining each QEMU: a user of its own, no capabilities, `no_new_privs`, QEMU's seccomp
//! sandbox (in the plan's argv), and a cgroup limiting its memory, CPU and processes.
//!
//! The plan says what (`Plan::confinement`, pure); this module does it. The state directory
//! and `vms/` belong to group `hangar-qemu` with `g+x`, so a QEMU (in that group) can pass
//! through them and nothing more: its own runtime directory is `0750 root:<its gid>` (it may
//! read it, but create nothing in it), every other VM's is closed to it, and the store,
//! snapshots, audit log and keys are `0600`/`0700` root. The files it writes (its disks, its
//! console log, a snapshot being saved) are its own; files it needs but may not open (its
//! control sockets, a snapshot to restore) are opened here and passed as descriptors.

use crate::error::QemuError;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hangar_core::error::Result;
use hangar_plan::{CgroupPlan, CgroupVersion, Confinement, Plan};

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The directories of a VM's cgroup: one per controller (v1) or one (v2).
pub fn cgroup_dirs(cg: &CgroupPlan) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    match cg.version {
        CgroupVersion::V1 => {
            ["memory", "cpu", "pids"].iter().map(|c| root.join(c).join(&cg.path)).collect()
        }
        CgroupVersion::V2 => vec![root.join(&cg.path)],
        CgroupVersion::None => vec![],
    }
}

/// The limit files of a VM's cgroup and their values, in the order they must be written.
fn limit_files(cg: &CgroupPlan) -> Vec<(PathBuf, String)> {
    let root = Path::new(CGROUP_ROOT);
    match cg.version {
        CgroupVersion::V1 => {
            let at = |c: &str, f: &str| root.join(c).join(&cg.path).join(f);
            let memsw = at("memory", "memory.memsw.limit_in_bytes");
            // With swap accounting (memsw), memory + swap is limited too, else the guest's
            // RAM could spill into swap past the limit. memsw may never be below the memory
            // limit: lifted first, set last.
            let swap =
                if memsw.exists() { vec![(memsw.clone(), "-1".to_string())] } else { vec![] };
            let mut files = swap.clone();
            files.extend([
                (at("memory", "memory.limit_in_bytes"), cg.memory_max_bytes.to_string()),
                (at("cpu", "cpu.cfs_period_us"), cg.cpu_period_us.to_string()),
                (at("cpu", "cpu.cfs_quota_us"), cg.cpu_quota_us.to_string()),
                // v1 shares: 1024 is the default weight (100).
                (
                    at("cpu", "cpu.shares"),
                    (u64::from(cg.cpu_weight) * 1024 / 100).max(2).to_string(),
                ),
                (at("pids", "pids.max"), cg.pids_max.to_string()),
            ]);
            if !swap.is_empty() {
                files.push((memsw, cg.memory_max_bytes.to_string()));
            }
            files
        }
        CgroupVersion::V2 => {
            let at = |f: &str| root.join(&cg.path).join(f);
            vec![
                (at("memory.max"), cg.memory_max_bytes.to_string()),
                // No swap: RAM and swap together stay within the limit, as v1's memsw does.
                (at("memory.swap.max"), "0".to_string()),
                (at("cpu.max"), format!("{} {}", cg.cpu_quota_us, cg.cpu_period_us)),
                (at("cpu.weight"), cg.cpu_weight.to_string()),
                (at("pids.max"), cg.pids_max.to_string()),
            ]
        }
        CgroupVersion::None => vec![],
    }
}

/// Makes (or finds again) a VM's cgroup and sets its limits; returns the `cgroup.procs` files a
/// new QEMU joins before it runs anything.
pub fn setup_cgroup(cg: &CgroupPlan) -> Result<Vec<PathBuf>> {
    if cg.version == CgroupVersion::V2 {
        // Controllers are handed down level by level: the root to `hangar`, `hangar` to VMs.
        let root = Path::new(CGROUP_ROOT);
        let parent = root.join(cg.path.split('/').next().unwrap_or("hangar"));
        std::fs::create_dir_all(&parent).map_err(|e| QemuError::io("cannot create", &parent, e))?;
        for dir in [root, parent.as_path()] {
            let control = dir.join("cgroup.subtree_control");
            std::fs::write(&control, "+memory +cpu +pids")
                .map_err(|e| QemuError::io("cannot enable controllers in", &control, e))?;
        }
    }
    let dirs = cgroup_dirs(cg);
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(|e| QemuError::io("cannot create cgroup", dir, e))?;
    }
    for (file, value) in limit_files(cg) {
        // Swap limits exist only where the kernel accounts swap.
        let optional = file.ends_with("memory.swap.max");
        if optional && !file.exists() {
            continue;
        }
        std::fs::write(&file, &value)
            .map_err(|e| QemuError::io(format!("cannot set {value} in"), &file, e))?;
    }
    Ok(dirs.iter().map(|d| d.join("cgroup.procs")).collect())
}

/// Removes a VM's cgroup (its QEMU is gone). Best effort: an absent one is fine. A QEMU that
/// has exited still holds its cgroup until it is reaped (by our reaper thread, or by init for
/// an adopted one), which follows within moments: `EBUSY` is retried for up to half a second.
pub fn remove_cgroup(cg: &CgroupPlan) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    for dir in cgroup_dirs(cg) {
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            match std::fs::remove_dir(&dir) {
                Err(e)
                    if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error())
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                _ => break,
            }
        }
    }
}

/// What a VM's cgroup says now: each limit file's value, and the memory in use and how often
/// the limit was hit (for `hangar inspect`).
pub fn read_cgroup(cg: &CgroupPlan) -> serde_json::Value {
    let mut limits = serde_json::Map::new();
    for (file, _) in limit_files(cg) {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let value = std::fs::read_to_string(&file)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "(absent)".into());
        limits.insert(name, value.into());
    }
    let root = Path::new(CGROUP_ROOT);
    let (usage, events) = match cg.version {
        CgroupVersion::V1 => (
            root.join("memory").join(&cg.path).join("memory.usage_in_bytes"),
            root.join("memory").join(&cg.path).join("memory.failcnt"),
        ),
        _ => {
            (root.join(&cg.path).join("memory.current"), root.join(&cg.path).join("memory.events"))
        }
    };
    let read =
        |p: &Path| std::fs::read_to_string(p).map(|v| v.trim().to_string()).unwrap_or_default();
    serde_json::json!({
        "version": cg.version.as_str(),
        "path": cg.path,
        "limits": limits,
        "memory_in_use": read(&usage),
        "memory_limit_hits": read(&events),
    })
}

/// Lays a VM's runtime directory out for its QEMU user: the directory and `disks/` stay
/// root's (`0750`, group the VM's own gid, so its QEMU can enter them and create nothing), and
/// only the files QEMU writes (its disks, the console log) become its own (`0600`). A QEMU can
/// therefore never replace an entry with a symlink for Hangar to follow later.
pub fn own_runtime(plan: &Plan, uid: u32, gid: u32) -> Result<()> {
    let dir = Path::new(&plan.runtime_dir);
    let give = |p: &Path, owner: u32, mode: u32| {
        std::os::unix::fs::lchown(p, Some(owner), Some(gid))
            .and_then(|()| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| QemuError::io("cannot give to the VM's user", p, e))
    };
    give(dir, 0, 0o750)?;
    let disks = dir.join("disks");
    if disks.is_dir() {
        give(&disks, 0, 0o750)?;
        let entries =
            std::fs::read_dir(&disks).map_err(|e| QemuError::io("cannot read", &disks, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| QemuError::io("cannot read", &disks, e))?;
            let kind =
                entry.file_type().map_err(|e| QemuError::io("cannot read", &entry.path(), e))?;
            // Only plain files: a symlink was refused before, a directory is not a disk.
            if kind.is_file() {
                give(&entry.path(), uid, 0o600)?;
            }
        }
    }
    if let Some(log) = plan.serial.log.as_deref().map(Path::new) {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(log)
            .map_err(|e| QemuError::io("cannot create", log, e))?;
        give_file(&file, log, uid, gid)?;
    }
    Ok(())
}

/// Makes an open file (`path`, for the error) the VM user's: `uid` and `gid`.
pub(crate) fn give_file(file: &std::fs::File, path: &Path, uid: u32, gid: u32) -> Result<()> {
    rustix::fs::fchown(
        file,
        Some(rustix::process::Uid::from_raw(uid)),
        Some(rustix::process::Gid::from_raw(gid)),
    )
    .map_err(|e| QemuError::io("cannot give to the VM's user", path, e.into()).into())
}

/// Whether a process with `uid` and `gids` may read `path` (and walk to it), by the mode bits
/// of the file and every directory above it. (Root is not asked: it reads everything.)
pub fn can_read(path: &Path, uid: u32, gids: &[u32]) -> bool {
    let allows = |meta: &std::fs::Metadata, bit: u32| {
        let mode = meta.mode();
        if meta.uid() == uid {
            mode & (bit << 6) != 0
        } else if gids.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let Ok(file) = std::fs::metadata(path) else {
        return false;
    };
    if !allows(&file, 0o4) {
        return false;
    }
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| allows(&m, 0o1)))
}

/// How often the cgroup's OOM killer has killed in it, and the most memory it ever used (bytes,
/// where the kernel keeps it): read when a QEMU died, to say why.
pub fn oom_kills(cg: &CgroupPlan) -> Option<(u64, Option<u64>)> {
    let root = Path::new(CGROUP_ROOT);
    let (events, peak) = match cg.version {
        CgroupVersion::V1 => {
            let dir = root.join("memory").join(&cg.path);
            (dir.join("memory.oom_control"), dir.join("memory.max_usage_in_bytes"))
        }
        CgroupVersion::V2 => {
            let dir = root.join(&cg.path);
            (dir.join("memory.events"), dir.join("memory.peak"))
        }
        CgroupVersion::None => return None,
    };
    let kills = std::fs::read_to_string(events)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()?;
    let peak = std::fs::read_to_string(peak).ok().and_then(|p| p.trim().parse().ok());
    Some((kills, peak))
}

/// Whether process `pid` is in `cg` (every controller's, for v1).
pub fn is_in_cgroup(cg: &CgroupPlan, pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let want = format!("/{}", cg.path);
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?, f.next()?))
        })
        .collect();
    match cg.version {
        CgroupVersion::V1 => ["memory", "cpu", "pids"].iter().all(|c| {
            lines.iter().any(|(ctl, path)| ctl.split(',').any(|x| x == *c) && *path == want)
        }),
        CgroupVersion::V2 => lines.iter().any(|(ctl, path)| ctl.is_empty() && *path == want),
        CgroupVersion::None => true,
    }
}

/// Whether QEMU `pid` is in its cgroup, moving it there first if it is not (a QEMU started by
/// an older Hangar, moved by someone, or whose starter died before joining it).
pub fn ensure_in_cgroup(cg: &CgroupPlan, pid: u32) -> bool {
    is_in_cgroup(cg, pid) || join_cgroup(cg, pid).is_ok()
}

/// Moves a running QEMU (adopted after a restart) into its cgroup, if it is not there yet.
pub fn join_cgroup(cg: &CgroupPlan, pid: u32) -> Result<()> {
    for procs in setup_cgroup(cg)? {
        std::fs::write(&procs, pid.to_string())
            .map_err(|e| QemuError::io(format!("cannot move {pid} into"), &procs, e))?;
    }
    Ok(())
}

/// Binds a listening unix socket at `path` (a stale one is replaced) for QEMU to inherit.
pub fn listen(path: &Path) -> Result<std::os::fd::OwnedFd> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(QemuError::NotASocket { path: path.to_path_buf() }.into()),
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| QemuError::io("cannot listen on", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| QemuError::io("cannot make private", path, e))?;
    Ok(listener.into())
}

/// Takes a file back from a VM's user (a saved snapshot): root's, `0600`.
pub fn take_back(file: &Path) -> Result<()> {
    std::os::unix::fs::lchown(file, Some(0), Some(0))
        .and_then(|()| std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| QemuError::io("cannot take back", file, e).into())
}

/// Lets the QEMU group enter (search, not list) the state directory and `vms/`, so a QEMU
/// reaches its own runtime directory and nothing else: group `hangar-qemu`, `g+x` added to the
/// mode the operator chose (`0700` becomes `0710`; a `0711` that lets users reach the daemon's
/// socket stays open to them).
pub fn open_home_to_qemu(home: &Path, runtime_dir: &Path, group: u32) -> Result<()> {
    for dir in [home, runtime_dir.parent().unwrap_or(runtime_dir)] {
        let meta =
            std::fs::symlink_metadata(dir).map_err(|e| QemuError::io("cannot read", dir, e))?;
        if meta.gid() != group {
            std::os::unix::fs::lchown(dir, None, Some(group))
                .map_err(|e| QemuError::io("cannot open to the QEMU group", dir, e))?;
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o010 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o010))
                .map_err(|e| QemuError::io("cannot open to the QEMU group", dir, e))?;
        }
    }
    Ok(())
}

/// How a QEMU process is started: its credentials, the cgroups it joins and the descriptors
/// it inherits.
#[derive(Debug, Default)]
pub struct Launch {
    /// The uid, gid and supplementary groups to switch to (when Hangar runs as root).
    pub credentials: Option<(u32, u32, Vec<u32>)>,
    /// `cgroup.procs` files to join before running anything.
    pub cgroup_procs: Vec<PathBuf>,
    /// Descriptors QEMU inherits, each at the number its argv names (`fd=3`).
    pub fds: Vec<(i32, std::os::fd::OwnedFd)>,
    /// Join the cgroups from the caller once QEMU is spawned, while it starts, instead of in
    /// the child before `exec`. Only for a QEMU that cannot run guest code until told to
    /// (`-incoming defer`): see [`Launch::joining_while_starting`].
    pub join_while_starting: bool,
}

impl Launch {
    /// What `confinement` asks for (after its cgroup was set up).
    pub fn of(confinement: Option<&Confinement>, cgroup_procs: Vec<PathBuf>) -> Launch {
        Launch {
            credentials: confinement.and_then(|c| Some((c.uid?, c.gid?, c.groups.clone()))),
            cgroup_procs,
            fds: Vec::new(),
            join_while_starting: false,
        }
    }

    /// The cgroups are joined by the caller right after the spawn, overlapping QEMU's own
    /// start-up, instead of in the child before `exec`. The first `cgroup.procs` write of a
    /// burst waits for an RCU grace period (~15 ms on cgroup v1 here); in the child it delays
    /// the `exec`, here it runs beside QEMU's dynamic linking. The guest stays confined from
    /// its first instruction only if QEMU runs none before it is told to: a QEMU waiting in
    /// `-incoming defer` (whose RAM is filled by the load the caller starts after this
    /// returns). What QEMU itself allocates in its first milliseconds (a few MiB of relocated
    /// library data) is charged to the caller's cgroup.
    pub fn joining_while_starting(mut self) -> Launch {
        self.join_while_starting = true;
        self
    }

    /// Adds a descriptor QEMU finds at `number`.
    pub fn pass(mut self, number: i32, fd: std::os::fd::OwnedFd) -> Launch {
        self.fds.push((number, fd));
        self
    }
}

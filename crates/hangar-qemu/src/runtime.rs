//! A VM's runtime directory, its disks, and what a confined QEMU needs before it starts:
//! host admission, its own user, files it can reach.

use crate::error::QemuError;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hangar_core::error::{Error, Result};
use hangar_core::spec::{BootSource, VmSpec};
use hangar_plan::{Creation, Plan};
use hangar_store::{ProcessIdentity, VmRecord};

use crate::confine::{self, Launch};
use crate::engine::*;
use crate::img;
use crate::process;

impl QemuEngine {
    /// Creates the runtime directory, the plan file and every disk the plan declares (existing
    /// disks of a stopped VM are kept: they are its state).
    pub(crate) fn prepare_runtime(&self, plan: &Plan) -> Result<()> {
        // Directories first, each made private and reached without a symlink; then nothing in
        // the runtime directory may be a symlink (QEMU, running as root, opens files there).
        for creation in &plan.creates {
            if let Creation::Dir { path } = creation {
                self.own_dir(Path::new(path))?;
            }
        }
        hangar_store::home::no_symlink_in(Path::new(&plan.runtime_dir))
            .map_err(QemuError::Store)?;
        for creation in &plan.creates {
            match creation {
                Creation::Dir { .. } => {}
                Creation::Overlay { path, backing, backing_format, .. } => {
                    let path = Path::new(path);
                    if !path.exists() {
                        if !Path::new(backing).exists() {
                            return Err(QemuError::InputMissing {
                                field: "disk source".into(),
                                file: backing.clone(),
                            }
                            .into());
                        }
                        img::create_overlay(path, Path::new(backing), *backing_format).map_err(
                            |e| {
                                let _ = std::fs::remove_file(path);
                                QemuError::Img(e)
                            },
                        )?;
                    }
                }
                Creation::Disk { path, format, size_mib, .. } => {
                    let path = Path::new(path);
                    if !path.exists() {
                        img::create_blank(path, *format, *size_mib).map_err(|e| {
                            let _ = std::fs::remove_file(path);
                            QemuError::Img(e)
                        })?;
                    }
                }
                Creation::Tap { ifname, .. } => {
                    return Err(Error::Unsupported(format!(
                        "tap networking ({ifname}) is not implemented yet"
                    )));
                }
                // Leases are taken at define; TAPs are made at boot, handed to QEMU.
                // The RAM file is made at boot: a restore may map a snapshot's instead.
                Creation::File { .. }
                | Creation::RamFile { .. }
                | Creation::Socket { .. }
                | Creation::Lease { .. }
                | Creation::Rule { .. }
                | Creation::BridgePort { .. } => {}
            }
        }
        let plan_path = Path::new(&plan.runtime_dir).join("plan.json");
        let tmp = plan_path.with_extension("json.tmp");
        std::fs::write(&tmp, plan.to_json())
            .and_then(|_| std::fs::rename(&tmp, &plan_path))
            .map_err(|e| QemuError::io("cannot write", &plan_path, e))?;
        Ok(())
    }

    /// A directory of Hangar's: under the home, made private with no symlink on the way;
    /// elsewhere (a runtime dir from host facts), made as asked.
    pub(crate) fn own_dir(&self, dir: &Path) -> Result<PathBuf> {
        match dir.strip_prefix(&self.home) {
            Ok(rel) => {
                Ok(hangar_store::home::state_dir(&self.home, rel).map_err(QemuError::Store)?)
            }
            Err(_) => std::fs::create_dir_all(dir)
                .map(|()| dir.to_path_buf())
                .map_err(|e| QemuError::io("cannot create", dir, e).into()),
        }
    }

    /// Removes what only a running QEMU uses: sockets, the pid file and its cgroup (made
    /// again at the next start; an empty cgroup would outlive a home deleted by hand).
    pub(crate) fn cleanup_runtime(&self, plan: &Plan) {
        let dir = Path::new(&plan.runtime_dir);
        Self::await_last_qemu(dir);
        // The guest RAM file too: with no QEMU it is garbage the size of what the guest
        // touched (a cold boot makes a fresh one; a sleep has already moved it away).
        for f in ["qmp.sock", "console.sock", "agent.sock", "pid", "ram"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        if let Some(cg) = plan.confinement.as_ref().and_then(|c| c.cgroup.as_ref()) {
            confine::remove_cgroup(cg);
        }
    }

    /// Waits for the QEMU the runtime directory's pid file names, while it is alive and still
    /// this VM's (writing to its `qemu.log`): a sleep tells its QEMU to quit without waiting
    /// for the exit (~12 ms of kernel teardown here, a third of the sleep), so whatever comes
    /// next for the VM waits here before its sockets and cgroup go or are made again. One that
    /// does not exit within the grace is terminated.
    fn await_last_qemu(dir: &Path) {
        let Some(p) = std::fs::read_to_string(dir.join("pid")).ok().and_then(|text| {
            let mut fields = text.split_whitespace().map(str::parse::<u64>);
            match (fields.next(), fields.next()) {
                (Some(Ok(pid)), Some(Ok(start_time))) => {
                    Some(ProcessIdentity { pid: u32::try_from(pid).ok()?, start_time })
                }
                _ => None,
            }
        }) else {
            return;
        };
        if process::alive(p)
            && process::writes_to(p, &dir.join("qemu.log"))
            && !process::wait_exit(p, QUIT_GRACE)
        {
            process::terminate(p, TERM_GRACE);
        }
    }

    /// Host admission: refuses (`E_HOST_CAPACITY`) a VM whose memory (RAM plus QEMU's
    /// overhead) is more than the host has available now, or whose new disks (blank disks not
    /// made yet, plus `copied_bytes` of disks to copy, plus a guest RAM file of its own when
    /// `ram_file`) are more than the free disk.
    pub(crate) fn admit(
        &self, spec: &VmSpec, plan: &Plan, copied_bytes: u64, ram_file: bool,
    ) -> Result<()> {
        let Some(cap) = hangar_plan::probe::capacity(&self.home) else {
            return Ok(());
        };
        let overhead = self.facts.confinement.memory_overhead_mib;
        let memory = u64::from(spec.machine.memory_mib) + overhead;
        if memory > cap.memory_available_mib {
            return Err(QemuError::HostMemory {
                vm: spec.name.to_string(),
                needed_mib: memory,
                ram_mib: spec.machine.memory_mib,
                overhead_mib: overhead,
                available_mib: cap.memory_available_mib,
            }
            .into());
        }
        let blank: u64 = plan
            .creates
            .iter()
            .filter_map(|c| match c {
                Creation::Disk { path, size_mib, .. } if !Path::new(path).exists() => {
                    Some(*size_mib)
                }
                _ => None,
            })
            .sum();
        // A guest RAM file of its own may grow to its whole size.
        let ram = crate::boot::ram_file(plan).filter(|_| ram_file).map_or(0, |(_, mib)| mib);
        let disk = blank + copied_bytes.div_ceil(1 << 20) + u64::from(ram);
        if disk > cap.disk_free_mib {
            return Err(QemuError::HostDisk {
                vm: spec.name.to_string(),
                needed_mib: disk,
                free_mib: cap.disk_free_mib,
                home: self.home.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Gives the plan's QEMU a uid no other VM here has: the one derived from its name, or,
    /// if another VM's name hashes to the same, the next free one (kept in the stored plan).
    pub(crate) fn unique_user(&self, plan: &mut Plan) -> Result<()> {
        let Some(c) = plan.confinement.as_mut() else {
            return Ok(());
        };
        let Some(mut uid) = c.uid else {
            return Ok(());
        };
        let taken: std::collections::HashSet<u32> = self
            .db(|s| s.list_vms())?
            .iter()
            .filter_map(|r| Self::plan_of(r).ok()?.confinement?.uid)
            .collect();
        while taken.contains(&uid) {
            uid = hangar_plan::QEMU_UID_BASE
                + (uid - hangar_plan::QEMU_UID_BASE + 1) % hangar_plan::QEMU_UID_SPAN;
        }
        c.uid = Some(uid);
        c.gid = Some(uid);
        Ok(())
    }

    /// The VM's own guest RAM file, empty and sparse, its QEMU's to map shared (the runtime
    /// directory is root's, so QEMU cannot swap it for a link).
    pub(crate) fn fresh_ram_file(&self, plan: &Plan, path: &Path, size_mib: u32) -> Result<()> {
        // Made afresh: a cold boot must not see a previous run's memory, and a file already
        // there (a restore from a stream, a crash) is replaced, never trusted.
        let _ = std::fs::remove_file(path);
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| QemuError::io("cannot create", path, e))?;
        size_ram_file(&file, path, u64::from(size_mib) << 20)?;
        self.give_to_qemu(plan, &file, path)
    }

    /// The VM's own guest RAM file as a copy of a snapshot's (only its data blocks), its
    /// QEMU's to map shared.
    pub(crate) fn copied_ram_file(&self, plan: &Plan, from: &Path, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        // Made at the snapshot file's size (sparse, like a fresh one) and only given away here.
        let file = crate::snapshots::copy_sparse(from, path).map_err(|e| {
            let _ = std::fs::remove_file(path);
            QemuError::io("cannot copy the snapshot's RAM to", path, e)
        })?;
        self.give_to_qemu(plan, &file, path)
    }

    /// The snapshot's RAM file itself, linked as the VM's own (a hard link: same filesystem)
    /// and made its QEMU's to map shared: a wake that consumes its snapshot copies nothing.
    /// A link, not a move: whatever interrupts the wake (a daemon killed, QEMU dying) removes
    /// only the VM's name for the file, and the snapshot keeps its memory; the wake deletes
    /// the snapshot's name once the VM runs. [`QemuEngine::return_ram_file`] undoes it.
    pub(crate) fn adopted_ram_file(&self, plan: &Plan, from: &Path, path: &Path) -> Result<()> {
        let _ = std::fs::remove_file(path);
        std::fs::hard_link(from, path)
            .map_err(|e| QemuError::io("cannot link the snapshot's RAM to", path, e))?;
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .and_then(|f| {
                std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .map(|()| f)
            })
            .map_err(|e| {
                self.return_ram_file(plan, from);
                QemuError::io("cannot open", path, e)
            })?;
        self.give_to_qemu(plan, &file, path).inspect_err(|_| self.return_ram_file(plan, from))
    }

    /// Takes back a linked RAM file: the VM's name for it goes, and the snapshot's file is
    /// root's and read-only again (a failed consuming wake keeps its snapshot).
    pub(crate) fn return_ram_file(&self, plan: &Plan, snapshot_ram: &Path) {
        if let Some((own, _)) = crate::boot::ram_file(plan) {
            let _ = std::fs::remove_file(own);
        }
        let _ = std::os::unix::fs::lchown(snapshot_ram, Some(0), self.facts.confinement.qemu_group);
        let _ = std::fs::set_permissions(
            snapshot_ram,
            std::os::unix::fs::PermissionsExt::from_mode(0o440),
        );
    }

    /// Makes a file Hangar created for QEMU its VM user's (when QEMU runs as one).
    fn give_to_qemu(&self, plan: &Plan, file: &std::fs::File, path: &Path) -> Result<()> {
        match plan.confinement.as_ref().and_then(|c| Some((c.uid?, c.gid?))) {
            Some((uid, gid)) => crate::confine::give_file(file, path, uid, gid),
            None => Ok(()),
        }
    }

    /// An empty file in the VM's runtime directory that its QEMU may write a memory snapshot
    /// to (the directory is root's, so QEMU cannot swap the file for a link).
    pub(crate) fn state_file_for_qemu(&self, plan: &Plan) -> Result<PathBuf> {
        let out = Path::new(&plan.runtime_dir).join("save.state");
        let _ = std::fs::remove_file(&out);
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&out)
            .map_err(|e| QemuError::io("cannot create", &out, e))?;
        self.give_to_qemu(plan, &file, &out)?;
        Ok(out)
    }

    /// Before a VM moves: lets the QEMU group into the state directory and refuses inputs
    /// the VM's QEMU user could not read, naming the field.
    pub(crate) fn check_reachable(&self, rec: &VmRecord, plan: &Plan) -> Result<()> {
        let Some((uid, gid, groups)) =
            plan.confinement.as_ref().and_then(|c| Some((c.uid?, c.gid?, &c.groups)))
        else {
            return Ok(());
        };
        if let Some(group) = groups.first() {
            let runtime = Path::new(&plan.runtime_dir);
            if let Some(parent) = runtime.parent() {
                self.own_dir(parent)?;
            }
            confine::open_home_to_qemu(&self.home, runtime, *group)?;
        }
        let mut gids = groups.clone();
        gids.push(gid);
        for (field, file) in read_only_inputs(&rec.spec, plan) {
            if !confine::can_read(Path::new(&file), uid, &gids) {
                return Err(QemuError::InputUnreadable {
                    field,
                    file,
                    uid,
                    group: hangar_plan::probe::QEMU_GROUP,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Gets everything ready for a confined QEMU (its runtime directory laid out for its user,
    /// its cgroup made with the plan's limits) and says how to launch it.
    pub(crate) fn confine(&self, plan: &Plan) -> Result<Launch> {
        let Some(c) = &plan.confinement else {
            return Ok(Launch::default());
        };
        if let (Some(uid), Some(gid)) = (c.uid, c.gid) {
            confine::own_runtime(plan, uid, gid)?;
        }
        let procs = match &c.cgroup {
            Some(cg) => confine::setup_cgroup(cg)?,
            None => Vec::new(),
        };
        Ok(Launch::of(Some(c), procs))
    }
}

/// Checks that every host file the spec names exists, naming the field of the first that
/// does not (before anything is made or spawned).
pub(crate) fn check_inputs(spec: &VmSpec) -> Result<()> {
    let missing = |field: String, file: &str| {
        if Path::new(file).exists() {
            Ok(())
        } else {
            Err(QemuError::InputMissing { field, file: file.to_string() })
        }
    };
    if let BootSource::Kernel { kernel, initrd, .. } = &spec.boot {
        missing("boot.kernel".into(), kernel)?;
        if let Some(initrd) = initrd {
            missing("boot.initrd".into(), initrd)?;
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if let hangar_core::spec::DiskSource::Base { source } = &disk.source {
            missing(format!("disk[{i}].source"), source)?;
        }
    }
    Ok(())
}

/// Moves a file, copying it where a rename cannot (another filesystem).
pub(crate) fn move_file(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            std::fs::copy(from, to).and_then(|_| std::fs::remove_file(from)).map_err(|e| {
                let _ = std::fs::remove_file(to);
                QemuError::io("cannot move to", to, e).into()
            })
        }
        Err(e) => Err(QemuError::io("cannot move", from, e).into()),
    }
}

/// The files a VM's QEMU opens by path and only reads: its kernel and initrd, read-only disks
/// and the bases of its overlays, each with the spec field that names it.
pub(crate) fn read_only_inputs(spec: &VmSpec, plan: &Plan) -> Vec<(String, String)> {
    let mut files = Vec::new();
    match &spec.boot {
        BootSource::Kernel { kernel, initrd, .. } => {
            files.push(("boot.kernel".to_string(), kernel.clone()));
            if let Some(initrd) = initrd {
                files.push(("boot.initrd".to_string(), initrd.clone()));
            }
        }
        BootSource::Image { .. } => {
            let arg = |flag: &str| {
                let i = plan.argv.iter().position(|a| a == flag)?;
                plan.argv.get(i + 1).cloned()
            };
            files.extend(arg("-kernel").map(|k| ("boot.image".to_string(), k)));
            files.extend(arg("-initrd").map(|k| ("boot.image".to_string(), k)));
        }
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if let hangar_core::spec::DiskSource::Base { source } = &disk.source {
            let field = format!("disk[{i}].source");
            files.push((field.clone(), source.clone()));
            // QEMU opens a qcow2's backing and data files by path too, as the VM's user.
            for file in hangar_hostfs::qcow2_references(Path::new(source)) {
                files.push((field.clone(), file.display().to_string()));
            }
        }
    }
    files
}

/// Sizes a guest RAM file, sparse: blocks are allocated as the guest touches its memory, and
/// a sleeping VM's snapshot takes only what its guest touched. The disk is checked for the
/// whole size at admission; the blocks are not reserved (`fallocate`), so a disk filled by
/// someone else later can still fail a write fault, which kills QEMU (reserving was tried;
/// this machine was too noisy that day to tell what it costs a boot).
fn size_ram_file(file: &std::fs::File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len).map_err(|e| {
        let _ = std::fs::remove_file(path);
        QemuError::io("cannot size", path, e).into()
    })
}

#[cfg(test)]
mod tests {
    use hangar_core::spec::DiskFormat;

    #[test]
    fn the_files_a_qcow2_chain_makes_qemu_open_are_inputs_too() {
        if std::process::Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("SKIPPED: qemu-img is not installed (scripts/setup installs it)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        crate::img::create_overlay(&mid, &base, DiskFormat::Raw).unwrap();
        crate::img::create_overlay(&top, &mid, DiskFormat::Qcow2).unwrap();
        let chain = hangar_hostfs::qcow2_references(&top);
        assert_eq!(
            chain,
            [mid.clone(), base.clone()],
            "top → mid → base, in the order QEMU opens them"
        );
        assert!(
            hangar_hostfs::qcow2_references(&base).is_empty(),
            "a raw image opens nothing else"
        );
    }
}

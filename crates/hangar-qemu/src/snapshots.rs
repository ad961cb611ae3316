//! Memory snapshots: save, restore (wake, roll back or clone) and their frozen disks.

use crate::error::QemuError;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::lifecycle::{Cause, VmState};
use hangar_core::spec::{NicMode, VmSpec};
use hangar_plan::{Creation, Plan};
use hangar_spec::CanonicalSpec;
use hangar_store::{FrozenDisk, SnapshotRecord, VmRecord};

use crate::boot::{Incoming, RestoreKind};
use crate::confine::{self};
use crate::engine::*;
use crate::process;
use crate::runtime::*;

impl QemuEngine {
    pub(crate) fn check_snapshot_fits(&self, rec: &VmRecord, snap: &SnapshotRecord) -> Result<()> {
        if let Some(reason) = info(snap).clone_refusal(rec.name(), &rec.spec) {
            return Err(Error::SnapshotMismatch { snapshot: snap.id.clone(), reason });
        }
        let version = format!("qemu-{}", self.facts.qemu.version.as_deref().unwrap_or("unknown"));
        if snap.spec_hash != rec.spec_hash {
            // Not the same spec: only a clone (same spec but for name, tenant and pool) fits.
            let reason = match &snap.clone_hash {
                None => Some(format!(
                    "taken from spec {} (before clones were supported), but {} has spec {}",
                    snap.spec_hash,
                    rec.name(),
                    rec.spec_hash
                )),
                Some(h) if *h != clone_hash(&rec.spec) => Some(format!(
                    "taken from {}, whose spec differs from {}'s in more than name, tenant and pool",
                    snap.vm,
                    rec.name()
                )),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                return Err(Error::SnapshotMismatch { snapshot: snap.id.clone(), reason });
            }
        }
        if snap.engine_version != version {
            return Err(Error::SnapshotMismatch {
                snapshot: snap.id.clone(),
                reason: format!("written by {} but this host runs {version}", snap.engine_version),
            });
        }
        if !Path::new(&snap.path).exists() {
            return Err(Error::SnapshotMismatch {
                snapshot: snap.id.clone(),
                reason: format!("its state file {} is missing", snap.path),
            });
        }
        if snap.layout == SnapshotLayout::Mapped {
            let mismatch =
                |reason: String| Error::SnapshotMismatch { snapshot: snap.id.clone(), reason };
            let plan = Self::plan_of(rec)?;
            let Some((_, size_mib)) = crate::boot::ram_file(&plan) else {
                return Err(mismatch(format!(
                    "its RAM is a file to map, and {} was defined before guest RAM files (remove and define it again)",
                    rec.name()
                )));
            };
            let want = u64::from(size_mib) << 20;
            let ram = snap.ram_path.as_deref().unwrap_or_default();
            match std::fs::symlink_metadata(ram) {
                Ok(m) if m.is_file() && m.len() == want => {}
                Ok(m) if m.is_file() => {
                    return Err(mismatch(format!(
                        "its RAM file {ram} holds {} bytes, {} has {want}",
                        m.len(),
                        rec.name()
                    )))
                }
                _ => return Err(mismatch(format!("its RAM file {ram:?} is missing"))),
            }
        }
        Ok(())
    }
}

/// The hash of a spec without what tells clones apart: snapshots restore across equal ones.
pub(crate) fn clone_hash(spec: &VmSpec) -> String {
    CanonicalSpec::new(spec.clone_template()).hash.0
}

/// A plan's writable disks: (disk name, file).
pub(crate) fn writable_disks(plan: &Plan) -> impl Iterator<Item = (&str, &str)> {
    plan.creates.iter().filter_map(|c| match c {
        Creation::Overlay { path, disk, .. } | Creation::Disk { path, disk, .. } => {
            Some((disk.as_str(), path.as_str()))
        }
        _ => None,
    })
}

/// Where a snapshot's frozen disks live, beside its state file.
pub(crate) fn frozen_dir(state_file: &Path) -> PathBuf {
    state_file.with_extension("disks")
}

/// Copies a paused VM's writable disks beside the snapshot's state file, so the snapshot can be
/// restored later (into this VM or a clone) with the disks its memory expects.
pub(crate) fn freeze_disks(plan: &Plan, state_file: &Path) -> Result<Vec<FrozenDisk>> {
    let dir = frozen_dir(state_file);
    let mut frozen = Vec::new();
    for (disk, file) in writable_disks(plan) {
        let from = Path::new(file);
        if !from.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| QemuError::io("cannot create", &dir, e))?;
        let to = dir.join(from.file_name().unwrap_or(disk.as_ref()));
        std::fs::copy(from, &to).map_err(|e| QemuError::io("cannot copy disk to", &to, e))?;
        frozen.push(FrozenDisk { disk: disk.to_string(), path: to.display().to_string() });
    }
    Ok(frozen)
}

/// Puts a snapshot's frozen disks in place of the VM's writable disks (each VM gets its own
/// copy). A writable disk the snapshot has no copy of is an error for a clone: its memory would
/// not match the disk.
pub(crate) fn thaw_disks(snap: &SnapshotRecord, plan: &Plan, clone: bool) -> Result<()> {
    for (disk, file) in writable_disks(plan) {
        let to = Path::new(file);
        match snap.disks.iter().find(|f| f.disk == disk) {
            Some(f) => {
                if let Some(dir) = to.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| QemuError::io("cannot create", dir, e))?;
                }
                let tmp = to.with_extension("thaw.tmp");
                std::fs::copy(&f.path, &tmp).and_then(|_| std::fs::rename(&tmp, to)).map_err(
                    |e| {
                        let _ = std::fs::remove_file(&tmp);
                        QemuError::io("cannot copy frozen disk to", to, e)
                    },
                )?;
            }
            None if clone => {
                return Err(Error::SnapshotMismatch {
                    snapshot: snap.id.clone(),
                    reason: format!("it holds no copy of disk {disk}, so it cannot seed a clone"),
                })
            }
            None => {}
        }
    }
    Ok(())
}

impl Snapshots for QemuEngine {
    fn save(
        &self, vm: &VmName, id: &SnapshotId, mode: SaveMode, cancel: &CancelToken,
    ) -> Result<SnapshotInfo> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if self.db(|s| s.get_snapshot(id))?.is_some() {
            return Err(Error::SnapshotExists(id.clone()));
        }
        if !matches!(rec.state, VmState::Running | VmState::Paused) {
            return Err(refuse(vm, rec.state, VmState::Saving));
        }
        cancel.check()?;
        let plan = Self::plan_of(&rec)?;
        let ctl = self.qmp(&plan)?;
        if rec.state == VmState::Running {
            // With no disk, the guest has no filesystem outside its memory to flush.
            if !rec.spec.disks.is_empty() {
                flush_guest(plan.agent_socket.as_deref());
            }
            self.step(&mut rec, VmState::Pausing, Cause::User)?;
            ctl.stop()?;
            self.step(&mut rec, VmState::Paused, Cause::Engine)?;
        } else if ctl.status()?.is_after_save() {
            // Paused by an earlier save: QEMU migrates such a VM only once it has run again
            // ("paused due to previous migration"). Its vCPUs run for the two commands.
            ctl.cont()?;
            ctl.stop()?;
        }
        self.step(&mut rec, VmState::Saving, Cause::User)?;
        let dir = self.own_dir(&self.home.join("snapshots"))?;
        // Named after the VM too: two VMs saving under one id at once never share a file
        // (the store's record decides which of them gets the id; the other removes its own).
        let path = dir.join(format!("{id}@{vm}.state"));
        let tmp = dir.join(format!("{id}@{vm}.state.tmp"));
        let ram = dir.join(format!("{id}@{vm}.ram"));
        for f in [&path, &tmp, &ram, &frozen_dir(&path)] {
            hangar_store::home::no_symlink(f).map_err(QemuError::Store)?;
        }
        // A VM whose RAM is its own file (every cold-booted VM) saves only its device state and
        // keeps the file; one running on a snapshot's RAM (a clone, a woken VM) has its RAM in
        // private memory and writes it into the stream.
        let own_ram = crate::boot::ram_file(&plan)
            .map(|(p, _)| PathBuf::from(p))
            .filter(|_| ctl.ram_is_own_file());
        let layout =
            if own_ram.is_some() { SnapshotLayout::Mapped } else { SnapshotLayout::Stream };
        // Puts the VM's RAM file back if the save took it (a sleep moves it), else drops the
        // copy; and removes the rest of what the save wrote.
        let undo = |own_ram: &Option<PathBuf>| {
            match own_ram {
                Some(own) if mode == SaveMode::Sleep && ram.exists() => {
                    let _ = std::fs::rename(&ram, own);
                }
                _ => {
                    let _ = std::fs::remove_file(&ram);
                }
            }
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir_all(frozen_dir(&path));
        };
        // QEMU writes the state into a file of its own in its runtime directory (it may not
        // open anything under snapshots/), which Hangar then moves there and takes back.
        // Set either way: a VM restored from a mapped snapshot still has it on, and a stream
        // saved with it on is refused by a QEMU restoring without it.
        let written = ctl
            .ignore_shared_ram(own_ram.is_some())
            .and_then(|()| self.state_file_for_qemu(&plan))
            .and_then(|out| {
                ctl.migrate_to_file(&out, Instant::now() + MIGRATION_DEADLINE)
                    .and_then(|()| move_file(&out, &tmp))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&out);
                    })
            })
            .and_then(|()| confine::take_back(&tmp))
            .and_then(|()| {
                std::fs::rename(&tmp, &path)
                    .map_err(|e| QemuError::io("cannot rename", &tmp, e).into())
            })
            .and_then(|()| match &own_ram {
                Some(own) => self.keep_ram(own, &ram, mode),
                None => Ok(()),
            })
            .and_then(|()| freeze_disks(&plan, &path));
        let disks = match written {
            Ok(disks) => disks,
            Err(e) => {
                undo(&own_ram);
                self.step(&mut rec, VmState::Paused, Cause::Fault)?;
                return Err(e);
            }
        };
        let ram_path = own_ram.as_ref().map(|_| ram.display().to_string());
        let on_disk = [&path, &ram]
            .into_iter()
            .map(|p| p.as_path())
            .chain(disks.iter().map(|d| Path::new(&d.path)))
            .map(allocated_bytes)
            .sum();
        let record = SnapshotRecord {
            id: id.clone(),
            vm: vm.clone(),
            path: path.display().to_string(),
            spec_hash: rec.spec_hash.clone(),
            clone_hash: Some(clone_hash(&rec.spec)),
            disks,
            engine_version: format!(
                "qemu-{}",
                self.facts.qemu.version.as_deref().unwrap_or("unknown")
            ),
            size_bytes: on_disk,
            layout,
            ram_path,
            created_at: self.clock.now(),
            tenant: rec.spec.tenant.clone(),
            pool: rec.spec.pool.clone(),
        };
        if let Err(e) = self.db(|s| s.insert_snapshot(&record)) {
            // Another VM took the id meanwhile: its files are its own; remove ours.
            undo(&own_ram);
            self.step(&mut rec, VmState::Paused, Cause::Fault)?;
            return Err(e);
        }
        match mode {
            SaveMode::KeepPaused => self.step(&mut rec, VmState::Paused, Cause::Engine)?,
            SaveMode::Sleep => {
                // Its state is saved: the QEMU is told to quit and not waited for. Its exit
                // (the kernel tearing down its memory) is awaited by whatever next needs the
                // VM's runtime directory (`cleanup_runtime`), which also removes its sockets
                // and cgroup.
                if ctl.quit().is_err() {
                    if let Some(p) = rec.process {
                        process::terminate(p, TERM_GRACE);
                    }
                }
                rec.process = None;
                rec.sleeping_on = Some(id.clone());
                self.step(&mut rec, VmState::Sleeping, Cause::Engine)?;
            }
        }
        Ok(info(&record))
    }

    fn restore(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus> {
        self.restore_with(vm, id, cancel, RestoreKind::Shared)
    }

    fn restore_unshared(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        self.restore_with(vm, id, cancel, RestoreKind::Unshared)
    }

    fn prepare_restore(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        self.restore_with(vm, id, cancel, RestoreKind::Spare)
    }

    fn wake(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus> {
        // Held until the boot has moved the RAM file: no clone can start mapping it meanwhile.
        let hold = self.consumable(vm, id)?;
        let kind = if hold.is_some() { RestoreKind::Consume } else { RestoreKind::Shared };
        let status = self.restore_with(vm, id, cancel, kind)?;
        drop(hold);
        let _ = self.delete_snapshot_files(id);
        Ok(status)
    }

    fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotInfo>> {
        Ok(self.db(|s| s.list_snapshots(vm))?.iter().map(info).collect())
    }

    fn delete_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.delete_snapshot_files(id)
    }
}

impl QemuEngine {
    /// Every restore of the contract, by `kind`; a spare is finished by a later restore of
    /// the same snapshot ([`QemuEngine::wake_spare`]).
    fn restore_with(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken, kind: RestoreKind,
    ) -> Result<VmStatus> {
        let spare = kind == RestoreKind::Spare;
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        if rec.state == VmState::Spare && !spare {
            if rec.sleeping_on.as_ref() != Some(id) {
                return Err(spare_mismatch(vm, id, rec.sleeping_on.as_ref()));
            }
            return self.wake_spare(&mut rec, id, cancel);
        }
        let snap =
            self.db(|s| s.get_snapshot(id))?.ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        let via = match rec.state {
            VmState::Sleeping if !spare => VmState::Waking,
            VmState::Defined | VmState::Stopped => VmState::Starting,
            other if spare => return Err(refuse(vm, other, VmState::Starting)),
            other => return Err(refuse(vm, other, VmState::Waking)),
        };
        self.check_snapshot_fits(&rec, &snap)?;
        check_inputs(&rec.spec)?;
        let thawed_bytes: u64 = snap
            .disks
            .iter()
            .filter_map(|d| std::fs::metadata(&d.path).ok())
            .map(|m| m.len())
            .sum();
        let plan = Self::plan_of(&rec)?;
        self.check_reachable(&rec, &plan)?;
        // Only a restore that copies a mapped snapshot's RAM makes a RAM file of the VM's own.
        let own_ram = kind == RestoreKind::Unshared && snap.layout == SnapshotLayout::Mapped;
        self.admit(&rec.spec, &plan, thawed_bytes, own_ram)?;
        cancel.check()?;
        // A VM sleeping on this snapshot has not touched its disks since the save; any other
        // restore (a clone, or rolling a VM back) needs the disks as they were at the save.
        let untouched = via == VmState::Waking && rec.sleeping_on.as_ref() == Some(id);
        let clone = snap.spec_hash != rec.spec_hash || snap.vm != *vm;
        // Only a VM's own wake from its own mapped snapshot may take the snapshot's RAM.
        let kind = match kind {
            RestoreKind::Consume
                if !(untouched && !clone && snap.layout == SnapshotLayout::Mapped) =>
            {
                RestoreKind::Shared
            }
            other => other,
        };
        self.step(&mut rec, via, Cause::User)?;
        let thawed = if untouched { Ok(()) } else { thaw_disks(&snap, &plan, clone) };
        match thawed.and_then(|()| {
            let incoming = Incoming {
                state: Path::new(&snap.path),
                ram: snap.ram_path.as_deref().map(Path::new),
                kind,
            };
            self.boot(&mut rec, &plan, Some(incoming), &StartOptions::default(), cancel)?;
            if spare {
                return Ok(());
            }
            // A clone wakes with its base's MACs and addresses: on a shared bridge it takes its
            // own before anyone may use it.
            if snap.vm != *vm
                && plan.creates.iter().any(|c| matches!(c, Creation::BridgePort { .. }))
            {
                self.readdress(&rec, &snap.vm, &plan)?;
            }
            Ok(())
        }) {
            Ok(()) if spare => {
                // Which snapshot the spare waits for: its restore must name the same.
                rec.sleeping_on = Some(id.clone());
                self.step(&mut rec, VmState::Spare, Cause::Engine)?;
            }
            Ok(()) => {
                rec.sleeping_on = None;
                self.step(&mut rec, VmState::Running, Cause::Engine)?;
            }
            Err(e) => {
                // A failed consuming wake keeps its snapshot: the RAM file goes back first
                // (reaping removes the VM's own).
                if let (RestoreKind::Consume, Some(ram)) = (kind, snap.ram_path.as_deref()) {
                    self.return_ram_file(&plan, Path::new(ram));
                }
                self.reap(&mut rec, &plan);
                let what = if spare { "preparing a spare for" } else { "restore from" };
                rec.reason = Some(format!("{what} {id} failed: {e}"));
                self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                return Err(e);
            }
        }
        Ok(Self::status_of(&rec))
    }

    /// A spare's restore: its QEMU already waits with the snapshot's stream and RAM handed
    /// over, so this only tells it to load and run (and gives a clone its own addresses).
    fn wake_spare(
        &self, rec: &mut VmRecord, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        let snap =
            self.db(|s| s.get_snapshot(id))?.ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        let plan = Self::plan_of(rec)?;
        cancel.check()?;
        self.step(rec, VmState::Waking, Cause::User)?;
        // Its QEMU joined its cgroups as it started; one whose starter died before that has
        // been joined by a later look, or is now (its guest has not run yet).
        let confined = if self.in_its_cgroup(rec, &plan) {
            Ok(())
        } else {
            Err(QemuError::io(
                "cannot move the spare's QEMU into its cgroup under",
                Path::new("/sys/fs/cgroup"),
                std::io::ErrorKind::PermissionDenied.into(),
            )
            .into())
        };
        let woken = confined.and_then(|()| self.qmp(&plan)).and_then(|ctl| {
            let deadline = std::time::Instant::now() + self.options.boot_timeout;
            crate::boot::load_incoming(&ctl, true, deadline)?;
            if snap.vm != *rec.name()
                && plan.creates.iter().any(|c| matches!(c, Creation::BridgePort { .. }))
            {
                self.readdress(rec, &snap.vm, &plan)?;
            }
            Ok(())
        });
        match woken {
            Ok(()) => {
                rec.sleeping_on = None;
                self.step(rec, VmState::Running, Cause::Engine)?;
                Ok(Self::status_of(rec))
            }
            Err(e) => {
                self.reap(rec, &plan);
                rec.reason = Some(format!("waking a spare for {id} failed: {e}"));
                self.step(rec, VmState::Failed, Cause::Fault)?;
                Err(e)
            }
        }
    }

    /// Whether `vm`'s wake may take snapshot `id`'s RAM file as its own: its own mapped
    /// snapshot, the one it sleeps on, whose file nobody else has open (an exclusive `flock`,
    /// which every restore mapping the file holds shared, see `open_snapshot_ram`) or mapped
    /// (its inode in no live VM's memory map). Returns the held lock.
    fn consumable(&self, vm: &VmName, id: &SnapshotId) -> Result<Option<std::fs::File>> {
        use std::os::unix::fs::MetadataExt;
        let (Some(rec), Some(snap)) =
            (self.db(|s| s.get_vm(vm))?, self.db(|s| s.get_snapshot(id))?)
        else {
            return Ok(None);
        };
        let own = rec.state == VmState::Sleeping
            && rec.sleeping_on.as_ref() == Some(id)
            && snap.vm == *vm
            && snap.spec_hash == rec.spec_hash
            && snap.layout == SnapshotLayout::Mapped;
        let Some(ram) = snap.ram_path.as_deref().map(Path::new).filter(|_| own) else {
            return Ok(None);
        };
        let Ok(file) = crate::boot::open_read_only(ram) else { return Ok(None) };
        let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        let Ok(meta) = file.metadata() else { return Ok(None) };
        let needle = format!(" {} ", meta.ino());
        let mapped = self.db(|s| s.list_vms())?.iter().filter_map(|r| r.process).any(|p| {
            std::fs::read_to_string(format!("/proc/{}/maps", p.pid))
                .is_ok_and(|maps| maps.lines().any(|l| l.contains(&needle)))
        });
        Ok((locked.is_ok() && !mapped).then_some(file))
    }

    fn delete_snapshot_files(&self, id: &SnapshotId) -> Result<()> {
        let snap =
            self.db(|s| s.get_snapshot(id))?.ok_or_else(|| Error::SnapshotNotFound(id.clone()))?;
        let user = self.db(|s| s.list_vms())?.into_iter().find(|r| {
            matches!(r.state, VmState::Sleeping | VmState::Spare)
                && r.sleeping_on.as_ref() == Some(id)
        });
        if let Some(user) = user {
            return Err(Error::SnapshotInUse { snapshot: id.clone(), vm: user.name().clone() });
        }
        let _ = std::fs::remove_file(&snap.path);
        if let Some(ram) = &snap.ram_path {
            let _ = std::fs::remove_file(ram);
        }
        let _ = std::fs::remove_dir_all(frozen_dir(Path::new(&snap.path)));
        self.db(|s| s.delete_snapshot(id))
    }
}

/// Bytes `path` takes on disk (allocated blocks: a RAM file is sparse); 0 when absent.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

impl QemuEngine {
    /// Keeps a paused VM's RAM file as a snapshot's at `to`: a sleep moves it there (its QEMU
    /// is about to exit, nothing writes it again), a save that keeps the VM copies it (only
    /// the blocks the guest touched). Either way it ends root's, readable by the QEMU group
    /// only through a descriptor Hangar hands over (`snapshots/` is root's, `0700`).
    fn keep_ram(&self, own: &Path, to: &Path, mode: SaveMode) -> Result<()> {
        match mode {
            SaveMode::Sleep => std::fs::rename(own, to)
                .map_err(|e| QemuError::io("cannot move the RAM file to", to, e))?,
            SaveMode::KeepPaused => {
                let tmp = to.with_extension("ram.tmp");
                copy_sparse(own, &tmp).and_then(|_| std::fs::rename(&tmp, to)).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    QemuError::io("cannot copy the RAM file to", to, e)
                })?;
            }
        }
        std::os::unix::fs::lchown(to, Some(0), self.facts.confinement.qemu_group)
            .and_then(|()| {
                std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o440))
            })
            .or_else(|e| match e.kind() {
                // Not root (an unconfined, per-user home): the file is the user's already.
                std::io::ErrorKind::PermissionDenied if !self.facts.confinement.root => {
                    std::fs::set_permissions(
                        to,
                        std::os::unix::fs::PermissionsExt::from_mode(0o400),
                    )
                }
                _ => Err(e),
            })
            .map_err(|e| QemuError::io("cannot take back", to, e).into())
    }
}

/// Copies `from` to a new file `to` of the same length, only the ranges that hold data
/// (`SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`): a guest's RAM file is mostly holes.
/// Returns the new file, open for writing.
pub(crate) fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::SeekFrom;
    let src = std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(from)?;
    let dst = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(to)?;
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut at = 0u64;
    while at < len {
        let start = match rustix::fs::seek(&src, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(&src, SeekFrom::Hole(start))?.min(len);
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let want = (end - off_in) as usize;
            let n = rustix::fs::copy_file_range(
                &src,
                Some(&mut off_in),
                &dst,
                Some(&mut off_out),
                want,
            )?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        at = end;
    }
    Ok(dst)
}

/// Asks the guest's agent, if it has one, to flush its filesystems before its memory is saved,
/// so the disks saved beside the memory hold what the guest wrote. Best effort and bounded: a
/// guest without an agent, or one that does not answer within half a second, is saved as it
/// is (the memory image is consistent with its disks either way; this only shortens what a
/// disk read without the memory would miss).
fn flush_guest(agent_socket: Option<&str>) {
    let Some(socket) = agent_socket else { return };
    let wait = std::time::Duration::from_millis(500);
    let _ = hangar_agent::Connection::open_with(std::path::Path::new(socket), wait, 1)
        .and_then(|mut agent| agent.set_timeout(Some(wait)).and_then(|()| agent.sync()));
}

impl QemuEngine {
    /// Gives a freshly restored clone its own MAC on every NIC and its own addresses, through
    /// its agent (the base's MACs find its interfaces).
    fn readdress(&self, rec: &VmRecord, base: &VmName, plan: &Plan) -> Result<()> {
        let planned = plan.guest_network.clone().unwrap_or_default();
        let mut network = GuestNetwork {
            nics: Vec::new(),
            dns: planned.dns.clone(),
            hostname: Some(rec.name().to_string()),
        };
        for nic in rec.spec.nics.iter().filter(|n| n.mode != NicMode::None) {
            let own = hangar_plan::mac_for(rec.name().as_str(), nic.name.as_str());
            let addressed = planned.nics.iter().find(|n| n.mac.as_deref() == Some(own.as_str()));
            network.nics.push(GuestNic {
                mac: Some(hangar_plan::mac_for(base.as_str(), nic.name.as_str())),
                set_mac: Some(own),
                ..addressed.cloned().unwrap_or_default()
            });
        }
        let socket = plan.agent_socket.as_deref().ok_or_else(|| {
            Error::Unsupported(format!(
                "re-addressing clone {}: its kernel has no Hangar agent (boot a built-in image)",
                rec.name()
            ))
        })?;
        self.configure_network_at(socket, &network)
    }
}

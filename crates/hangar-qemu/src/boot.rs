//! Booting: spawning QEMU from the plan (fresh or from a memory snapshot) and waiting for
//! the guest.

use crate::error::QemuError;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::{Error, Result};
use hangar_core::ids::VmName;
use hangar_core::lifecycle::{Cause, VmState};
use hangar_core::spec::BootSource;
use hangar_plan::Plan;
use hangar_store::{ProcessIdentity, VmRecord};

use crate::confine::{self};
use crate::console::{self, LogTail, Marker};
use crate::engine::*;
use crate::process;
use crate::qmp::QmpSession;
use crate::runtime::*;

impl QemuEngine {
    /// Spawns QEMU from the plan and waits until the guest is up (or, with `incoming`, until
    /// the memory snapshot is loaded and the vCPUs run).
    pub(crate) fn boot(
        &self, rec: &mut VmRecord, plan: &Plan, incoming: Option<Incoming<'_>>,
        opts: &StartOptions<'_>, cancel: &CancelToken,
    ) -> Result<()> {
        if self.facts.qemu.version.is_none() {
            return Err(QemuError::QemuMissing { binary: plan.argv[0].clone() }.into());
        }
        if let BootSource::Image { image, .. } = &rec.spec.boot {
            let kernel = Path::new(&self.facts.image_path(image)).join("vmlinuz");
            if !kernel.exists() {
                return Err(QemuError::ImageMissing { image: image.clone(), kernel }.into());
            }
        }
        opts.phase(Phase::Disks);
        self.prepare_runtime(plan)?;
        self.cleanup_runtime(plan);
        opts.phase(Phase::Engine);
        let console_path = Self::console_log(plan);
        let boot_log_offset = console_path.as_deref().map(console::len).unwrap_or(0);
        let mut tail = LogTail::from(boot_log_offset);
        let mut argv = plan.argv.clone();
        let mut launch = self.confine(plan)?;
        launch = launch.pass(hangar_plan::QMP_FD, confine::listen(Path::new(&plan.qmp_socket))?);
        if let Some(socket) = &plan.serial.socket {
            launch = launch.pass(hangar_plan::CONSOLE_FD, confine::listen(Path::new(socket))?);
        }
        if let Some(socket) = &plan.agent_socket {
            launch = launch.pass(hangar_plan::AGENT_FD, confine::listen(Path::new(socket))?);
        }
        let mut bridged = false;
        for creation in &plan.creates {
            if let hangar_plan::Creation::BridgePort { ifname, network, fd, .. } = creation {
                launch = launch.pass(*fd, self.bridge_port(network, ifname)?);
                bridged = true;
            }
        }
        if bridged {
            // Its anti-spoofing rules before its first frame (and every network's rules back
            // after a host reboot).
            self.with_store(|s| hangar_net::rules::sync(s, None))?;
        }
        let mapped = incoming.as_ref().and_then(|i| i.ram);
        let kind = incoming.as_ref().map(|i| i.kind);
        let unshared = kind == Some(RestoreKind::Unshared);
        let consume = kind == Some(RestoreKind::Consume);
        let spare = kind == Some(RestoreKind::Spare);
        let deferred = mapped.is_some() || spare;
        if let Some((own, size_mib)) = ram_file(plan) {
            // The plan's RAM backend (the VM's own file, shared), replaced for some restores.
            let planned = hangar_plan::ram_object(own, size_mib, true);
            let at = argv.iter().position(|a| *a == planned).ok_or_else(|| {
                QemuError::io(
                    "cannot find the RAM backend in the plan of",
                    Path::new(&plan.runtime_dir),
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
            match mapped {
                // The snapshot's RAM copied into the VM's own file, mapped shared as planned.
                Some(snapshot_ram) if unshared => {
                    self.copied_ram_file(plan, snapshot_ram, Path::new(own))?
                }
                // The snapshot's RAM file itself, the VM's own from now on (shared, planned).
                Some(snapshot_ram) if consume => {
                    self.adopted_ram_file(plan, snapshot_ram, Path::new(own))?
                }
                Some(snapshot_ram) => {
                    // The snapshot's RAM, mapped copy-on-write: the VM has no file of its own.
                    let _ = std::fs::remove_file(own);
                    let ram = open_snapshot_ram(snapshot_ram)?;
                    launch = launch.pass(hangar_plan::RAM_FD, ram.into());
                    let fd = format!("/proc/self/fd/{}", hangar_plan::RAM_FD);
                    argv[at] = hangar_plan::ram_object(&fd, size_mib, false);
                }
                // A stream restore writes every page it loads: into a file that costs a
                // filesystem fault per page (1.25 s instead of 0.15 s for 93 MiB here, shared;
                // a private mapping doubles the memory charged), so its RAM is plain memory
                // and its next save is a stream again.
                None if incoming.is_some() => {
                    let _ = std::fs::remove_file(own);
                    argv[at] = hangar_plan::anonymous_ram_object(size_mib);
                }
                None => self.fresh_ram_file(plan, Path::new(own), size_mib)?,
            }
        }
        if let Some(incoming) = &incoming {
            drop_boot_payload(&mut argv);
            // Opened here and handed over: snapshots are root's and QEMU may not open them.
            let file = open_read_only(incoming.state)?;
            launch = launch.pass(hangar_plan::INCOMING_FD, file.into());
            argv.extend(["-add-fd".into(), format!("fd={},set=1", hangar_plan::INCOMING_FD)]);
            // A mapped snapshot's stream holds only device state: QEMU must be told to expect
            // that (a capability) before it reads, so the load is started over QMP; a spare
            // starts it only when claimed.
            let uri = if deferred { "defer" } else { INCOMING_URI };
            argv.extend(["-incoming".into(), uri.into()]);
        }
        if deferred {
            // No guest instruction runs before `migrate-incoming` and `cont` below, so the
            // cgroups can be joined while QEMU starts (a clone ~15 ms sooner on cgroup v1).
            launch = launch.joining_while_starting();
        }
        let started = Instant::now();
        let qemu_log = Path::new(&plan.runtime_dir).join("qemu.log");
        let p = process::spawn_detached(&argv, &qemu_log, launch)
            .map_err(|source| QemuError::Spawn { binary: argv[0].clone(), source })?;
        let pid_file = Path::new(&plan.runtime_dir).join("pid");
        let _ = std::fs::write(&pid_file, format!("{} {}\n", p.pid, p.start_time));
        rec.process = Some(p);
        rec.boot_log_offset = Some(boot_log_offset);
        self.save(rec)?;

        // The socket is ours and already listening: the connection waits in its backlog until
        // QEMU accepts, and a QEMU that refuses its arguments and exits resets it at once
        // (said then, not after the connect deadline).
        let socket = Path::new(&plan.qmp_socket);
        let ctl = match QmpSession::connect_while(self.rt(), socket, QMP_CONNECT, || {
            process::alive(p)
        }) {
            Some(Ok(ctl)) => ctl,
            Some(Err(e)) if process::alive(p) => {
                return Err(QemuError::NoAnswer {
                    source: e,
                    last_output: Self::last_console(plan),
                }
                .into())
            }
            // Gone: its connection was reset as it exited, or it exited while we waited.
            Some(Err(_)) | None => {
                return Err(
                    QemuError::ExitedAtStartUp { last_output: Self::last_console(plan) }.into()
                )
            }
        };
        let timeout = opts.timeout.unwrap_or(self.options.boot_timeout);
        let deadline = started + timeout;
        opts.phase(Phase::Boot);
        if incoming.is_some() {
            if mapped.is_some() {
                ctl.ignore_shared_ram(true)?;
            }
            if !spare {
                load_incoming(&ctl, deferred, deadline)?;
            }
        } else if opts.no_wait {
            ctl.wait_running(deadline)?;
        } else {
            self.wait_ready(rec, &ctl, p, plan, &mut tail, deadline, timeout, cancel)?;
        }
        rec.boot_ms = Some(started.elapsed().as_millis() as u64);
        opts.phase(Phase::Ready);
        Ok(())
    }

    /// A TAP on `network`'s bridge for QEMU (the bridge comes back if the host lost it).
    fn bridge_port(&self, network: &str, ifname: &str) -> Result<std::os::fd::OwnedFd> {
        let name = hangar_core::ids::NetworkName::new(network).map_err(Error::InvalidName)?;
        let record = self.db(|s| s.network(&name))?;
        let record = record.ok_or(Error::NetworkNotFound(name))?;
        hangar_net::host::open_port(&record, ifname)
    }

    /// Waits for `HANGAR_READY` after the tail's offset, watching the process and QMP. A
    /// planned address the guest did not report becomes an engine event for `rec` (the VM is up
    /// and its console says why; failing the boot would hide the guest from the user fixing it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn wait_ready(
        &self, rec: &VmRecord, ctl: &QmpSession<'_>, p: ProcessIdentity, plan: &Plan,
        tail: &mut LogTail, deadline: Instant, timeout: Duration, cancel: &CancelToken,
    ) -> Result<()> {
        let Some(log) = Self::console_log(plan) else {
            // No console: the best available signal is QEMU running the vCPUs.
            return ctl.wait_running(deadline);
        };
        let mut last_status_check = Instant::now();
        loop {
            for line in tail.read_lines(&log) {
                if let Some(Marker::Ready { addresses, network_error, .. }) =
                    console::parse_marker(&line)
                {
                    if let Some(problem) = network_problem(plan, &addresses, network_error) {
                        self.engine_event(rec, problem);
                    }
                    return Ok(());
                }
            }
            cancel.check()?;
            if !process::alive(p) {
                return Err(QemuError::ExitedDuringBoot {
                    oom_note: Self::oom_note(plan).unwrap_or_default(),
                    last_output: Self::last_console(plan),
                }
                .into());
            }
            if last_status_check.elapsed() > Duration::from_millis(250) {
                last_status_check = Instant::now();
                if let Ok(status) = ctl.status() {
                    if status.is_fatal() {
                        return Err(QemuError::Fatal {
                            status: status.name(),
                            context: format!(
                                " during boot; last output: {}",
                                Self::last_console(plan)
                            ),
                        }
                        .into());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout.as_millis() as u64));
            }
            // The console is a plain file QEMU appends to; a short poll interval keeps
            // readiness latency low without inotify plumbing.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Boots a defined or stopped VM, with progress and per-call settings.
    pub fn start_with(
        &self, vm: &VmName, opts: &StartOptions<'_>, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        let _lock = self.lock(vm)?;
        let mut rec = self.record(vm)?;
        cancel.check()?;
        match rec.state {
            VmState::Running => return Ok(Self::status_of(&rec)),
            VmState::Defined | VmState::Stopped => {}
            other => return Err(refuse(vm, other, VmState::Starting)),
        }
        let plan = Self::plan_of(&rec)?;
        // A missing input is the caller's to fix: refused before the VM moves at all.
        check_inputs(&rec.spec)?;
        self.check_reachable(&rec, &plan)?;
        self.admit(&rec.spec, &plan, 0, true)?;
        self.step(&mut rec, VmState::Starting, Cause::User)?;
        match self.boot(&mut rec, &plan, None, opts, cancel) {
            Ok(()) => self.step(&mut rec, VmState::Running, Cause::Engine)?,
            Err(e) => {
                self.reap(&mut rec, &plan);
                rec.reason = Some(match e {
                    // Other boot errors already quote the console.
                    Error::Timeout(_) | Error::Cancelled => {
                        format!("boot failed: {e}; last output: {}", Self::last_console(&plan))
                    }
                    _ => format!("boot failed: {e}"),
                });
                self.step(&mut rec, VmState::Failed, Cause::Fault)?;
                return Err(e);
            }
        }
        Ok(Self::status_of(&rec))
    }
}

/// What a boot restores from: a snapshot's device-state stream, and for a `mapped` snapshot
/// its RAM file (mapped copy-on-write instead of read).
pub(crate) struct Incoming<'a> {
    /// The migration stream.
    pub state: &'a Path,
    /// The RAM file of a `mapped` snapshot.
    pub ram: Option<&'a Path>,
    /// How the restore uses them.
    pub kind: RestoreKind,
}

/// The three restores the [`Snapshots`] contract has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreKind {
    /// [`Snapshots::restore`]: runs at once; a mapped snapshot's RAM is mapped copy-on-write.
    Shared,
    /// [`Snapshots::restore_unshared`]: runs at once, with a copy of a mapped snapshot's RAM as
    /// the VM's own file (mapped shared, as after a cold boot).
    Unshared,
    /// [`Snapshots::prepare_restore`]: stops once QEMU waits for the stream (a spare);
    /// [`load_incoming`] later.
    Spare,
    /// [`Snapshots::wake`] of a VM from its own mapped snapshot that nothing else maps: the
    /// snapshot's RAM file becomes the VM's own (moved, mapped shared), so its next sleep is a
    /// rename again; the snapshot is deleted once the VM runs.
    Consume,
}

/// Loads the stream a restoring QEMU was given and runs the vCPUs; `deferred`: QEMU was
/// started with `-incoming defer` and waits to be told to read.
pub(crate) fn load_incoming(ctl: &QmpSession<'_>, deferred: bool, deadline: Instant) -> Result<()> {
    if deferred {
        ctl.migrate_incoming(INCOMING_URI)?;
    }
    ctl.wait_incoming_done(deadline)?;
    ctl.cont()
}

/// Removes `-kernel`, `-initrd` and `-append` (with their values) from a restore's argv.
///
/// Why: QEMU reads the kernel into its own heap for the guest's firmware to fetch at boot, and
/// a restored guest booted long ago: that copy (14 MiB for the built-in image) was a third of
/// a spare's memory and sat in every clone, for nothing. It is never needed again either: a
/// Hangar VM runs with `-no-reboot`, so a guest reboot ends QEMU instead of booting anew. The
/// migration stream does not carry it (a restore without it loads and runs; tested on the
/// real guest by the clone and conformance suites).
pub(crate) fn drop_boot_payload(argv: &mut Vec<String>) {
    let mut kept = Vec::with_capacity(argv.len());
    let mut args = std::mem::take(argv).into_iter();
    while let Some(arg) = args.next() {
        if matches!(arg.as_str(), "-kernel" | "-initrd" | "-append") {
            args.next();
        } else {
            kept.push(arg);
        }
    }
    *argv = kept;
}

/// Where a restoring QEMU reads its stream: the descriptor Hangar passed (`-add-fd`).
pub(crate) const INCOMING_URI: &str = "file:/dev/fdset/1";

/// The plan's guest RAM file and its size in MiB (plans made before RAM files have none).
pub(crate) fn ram_file(plan: &Plan) -> Option<(&str, u32)> {
    plan.creates.iter().find_map(|c| match c {
        hangar_plan::Creation::RamFile { path, size_mib } => Some((path.as_str(), *size_mib)),
        _ => None,
    })
}

/// Opens a file of Hangar's to hand to QEMU, never through a symlink.
/// A mapped snapshot's RAM file, opened to be mapped copy-on-write, with a shared `flock`
/// that lives as long as the descriptor (QEMU inherits and keeps it): a wake that would give
/// the file to its VM ([`RestoreKind::Consume`]) takes the lock exclusively, so it never takes
/// a file a clone maps. One that took it first moved the file away: then the path names
/// another file (or none) and this refuses, rather than map memory a running VM writes.
fn open_snapshot_ram(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let file = open_read_only(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .map_err(|e| QemuError::io("cannot lock", path, e.into()))?;
    let opened = file.metadata().map_err(|e| QemuError::io("cannot stat", path, e))?;
    let still = std::fs::symlink_metadata(path)
        .is_ok_and(|m| (m.dev(), m.ino()) == (opened.dev(), opened.ino()));
    if !still {
        return Err(QemuError::io(
            "the snapshot's RAM was taken by its VM's wake meanwhile:",
            path,
            std::io::ErrorKind::NotFound.into(),
        )
        .into());
    }
    Ok(file)
}

pub(crate) fn open_read_only(path: &Path) -> Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| QemuError::io("cannot open", path, e).into())
}

/// What is wrong with the guest's network after boot, if anything: its init's error, or a
/// planned address it does not have.
fn network_problem(plan: &Plan, reported: &[String], init_error: Option<String>) -> Option<String> {
    if let Some(error) = init_error {
        return Some(format!("the guest could not configure its network: {error}"));
    }
    let planned = plan.guest_network.iter().flat_map(|n| &n.nics).flat_map(|n| &n.addresses);
    let missing: Vec<&String> =
        planned.filter(|a| !reported.iter().any(|r| r.ends_with(&format!(" {a}")))).collect();
    (!missing.is_empty()).then(|| {
        format!("the guest came up without {missing:?} (it has {reported:?}); see `hangar logs`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_argv_drops_the_boot_payload_and_keeps_everything_else() {
        let mut argv: Vec<String> =
            ["qemu", "-m", "256", "-kernel", "/k", "-initrd", "/i", "-append", "a b", "-S"]
                .into_iter()
                .map(String::from)
                .collect();
        drop_boot_payload(&mut argv);
        assert_eq!(argv, ["qemu", "-m", "256", "-S"]);
    }
}

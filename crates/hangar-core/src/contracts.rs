//! The backend contracts every engine adapter implements.
//!
//! The traits are granular so a consumer depends on the least it needs (a snapshot scheduler
//! needs [`Snapshots`], not all of [`Lifecycle`]). They are synchronous and object-safe: an
//! adapter may use an async runtime inside, but the domain does not impose one. Long calls take a
//! [`CancelToken`]. The conformance suite (`hangar-conformance`) pins down their behaviour; the
//! in-memory [`crate::fake`] implementations are the reference.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{DeviceName, PoolId, SnapshotId, TenantId, VmName, VolumeId};
use crate::lifecycle::{LifecycleObserver, TransitionEvent, VmState};
use crate::spec::{DiskFormat, NicSpec, VmSpec};

/// A VM as an engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM.
    pub name: VmName,
    /// Its current state.
    pub state: VmState,
    /// When it entered that state.
    pub since: Timestamp,
    /// Why it is in that state, when that is not obvious (the reason for `failed`).
    pub reason: Option<String>,
}

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMode {
    /// Ask the guest to power off; after `timeout` escalate to a forced stop.
    Graceful {
        /// How long the guest gets.
        timeout: Duration,
    },
    /// Stop the engine at once.
    Force,
}

/// What a stop did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopOutcome {
    /// The VM's status afterwards.
    pub status: VmStatus,
    /// Whether a graceful stop had to be escalated to force.
    pub escalated: bool,
    /// How long the stop took, by the engine's clock.
    pub took: Duration,
}

/// VM lifecycle.
///
/// Idempotency rules (checked by the conformance suite): `define` with an equal spec returns the
/// existing VM, with a different spec fails with `E_VM_EXISTS`; `start` on a running VM, `stop`
/// on a VM that is not running (defined or stopped), `pause` on a paused VM and `resume` on a
/// running VM succeed without any transition. Every other illegal move returns
/// `E_INVALID_TRANSITION` and changes nothing.
pub trait Lifecycle: Send + Sync {
    /// Records a VM (state `defined`).
    fn define(&self, spec: &VmSpec) -> Result<VmStatus>;
    /// Boots a defined or stopped VM until it runs.
    fn start(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus>;
    /// Stops a VM; graceful stops escalate to force after their timeout.
    fn stop(&self, vm: &VmName, mode: StopMode, cancel: &CancelToken) -> Result<StopOutcome>;
    /// Pauses a running VM's vCPUs.
    fn pause(&self, vm: &VmName) -> Result<VmStatus>;
    /// Resumes a paused VM.
    fn resume(&self, vm: &VmName) -> Result<VmStatus>;
    /// Restarts the guest of a running VM; it ends up running.
    fn reboot(&self, vm: &VmName, cancel: &CancelToken) -> Result<VmStatus>;
    /// Removes a VM that is not running (its state becomes `deleted` and it leaves `list`).
    fn undefine(&self, vm: &VmName) -> Result<()>;
    /// The VM's current status.
    fn status(&self, vm: &VmName) -> Result<VmStatus>;
    /// Every VM not deleted, sorted by name.
    fn list(&self) -> Result<Vec<VmStatus>>;
    /// Registers an observer told about every transition of every VM, after registration.
    fn observe(&self, observer: Arc<dyn LifecycleObserver>);
}

/// What happens to a VM after its memory was saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaveMode {
    /// Stay paused in memory (a checkpoint).
    KeepPaused,
    /// Release the engine process: the VM is `sleeping` on the snapshot.
    Sleep,
}

/// A memory snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// The VM it was taken from.
    pub vm: VmName,
    /// Bytes it takes on disk (blocks allocated to its files: a RAM file is sparse).
    pub size_bytes: u64,
    /// How its memory is stored.
    #[serde(default)]
    pub layout: SnapshotLayout,
    /// When it was taken.
    pub created_at: Timestamp,
    /// The engine and version that wrote it (restores require the same).
    pub engine_version: String,
    /// The tenant of the VM it was taken from: the snapshot belongs to that tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// The pool of the VM it was taken from, if that VM was a pool instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolId>,
}

/// How a memory snapshot stores the guest's RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotLayout {
    /// RAM and device state in one migration stream: a restore reads the whole RAM back.
    /// Snapshots from before `mapped` existed are all `stream`.
    #[default]
    Stream,
    /// RAM in a file laid out page by page (the VM's own RAM file, kept), device state in a
    /// small stream beside it: a restore maps the RAM file copy-on-write and reads only the
    /// device state, and clones of one snapshot share its untouched pages.
    Mapped,
}

impl SnapshotLayout {
    /// Its name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotLayout::Stream => "stream",
            SnapshotLayout::Mapped => "mapped",
        }
    }

    /// The layout named `name`, if this version knows it.
    pub fn from_name(name: &str) -> Option<SnapshotLayout> {
        match name {
            "stream" => Some(SnapshotLayout::Stream),
            "mapped" => Some(SnapshotLayout::Mapped),
            _ => None,
        }
    }
}

impl std::fmt::Display for SnapshotLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SnapshotInfo {
    /// Why `snapshot` (taken from a VM of `spec`'s kind or another) may not seed a *clone*
    /// (a restore into a VM other than the one it was taken from) named `vm` with `spec`: a
    /// snapshot holds its source's memory and disks, so it never crosses a tenant, and a pool
    /// instance is cloned only from its own pool's snapshots (and a plain VM from no pool's).
    /// `None` when it may.
    pub fn clone_refusal(&self, vm: &VmName, spec: &VmSpec) -> Option<String> {
        if self.vm == *vm {
            return None;
        }
        if self.tenant != spec.tenant {
            return Some(format!(
                "it belongs to {}, and {vm} to {}: snapshots never cross tenants",
                owner_name(self.tenant.as_ref()),
                owner_name(spec.tenant.as_ref())
            ));
        }
        if self.pool != spec.pool {
            return Some(format!(
                "it was taken from {}, and {vm} is {}: a clone restores only its own pool's snapshots",
                match &self.pool {
                    Some(p) => format!("an instance of pool {p}"),
                    None => "a VM outside any pool".to_string(),
                },
                match &spec.pool {
                    Some(p) => format!("an instance of pool {p}"),
                    None => "outside any pool".to_string(),
                }
            ));
        }
        None
    }
}

fn owner_name(t: Option<&TenantId>) -> String {
    match t {
        Some(t) => format!("tenant {t}"),
        None => "no tenant".to_string(),
    }
}

/// Memory snapshots.
pub trait Snapshots: Send + Sync {
    /// Saves a running or paused VM's memory (pausing it first if running).
    fn save(
        &self, vm: &VmName, id: &SnapshotId, mode: SaveMode, cancel: &CancelToken,
    ) -> Result<SnapshotInfo>;
    /// Restores a sleeping, stopped or defined VM (or a spare prepared for this snapshot, see
    /// [`Snapshots::prepare_restore`]) from a snapshot; it ends up running.
    ///
    /// The snapshot may have been taken from another VM whose spec has the same
    /// [`VmSpec::clone_template`](crate::spec::VmSpec::clone_template): `vm` then becomes a
    /// clone of it, its writable disks starting as the source's were when the snapshot was
    /// taken, provided the source had the same tenant and pool
    /// ([`SnapshotInfo::clone_refusal`]). Any other difference is `E_SNAPSHOT_MISMATCH`.
    fn restore(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus>;
    /// [`Snapshots::restore`] for a VM that is about to be saved again (a pool instance made
    /// for the sleeping set): an engine whose restores share the snapshot's memory between
    /// clones gives this VM memory of its own instead, so that its next save is cheap. Same
    /// outcome and errors as `restore`, which is the default.
    fn restore_unshared(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus> {
        self.restore(vm, id, cancel)
    }
    /// Wakes a VM from the snapshot it sleeps on and deletes that snapshot (what a fleet's
    /// wake wants: the state lives on in the running guest, and nothing restores the snapshot
    /// again). An engine may hand the snapshot's memory to the VM as its own instead of
    /// sharing or copying it, so the VM's next sleep is as cheap as its first, provided nothing
    /// else still uses that memory. A VM that is not sleeping on `id` is refused as
    /// [`Snapshots::restore`] refuses it; if the wake fails the snapshot is kept. The default
    /// restores, then deletes (a failed deletion only leaves the snapshot behind).
    fn wake(&self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken) -> Result<VmStatus> {
        let status = self.restore(vm, id, cancel)?;
        let _ = self.delete_snapshot(id);
        Ok(status)
    }
    /// Makes a defined or stopped VM a **spare** for snapshot `id`: everything a restore of it
    /// does before loading the guest's state is done now (checks, disks, the engine process
    /// started and waiting, no guest running), so that a later [`Snapshots::restore`] of the
    /// same snapshot only loads that state and continues. `starting` → `spare`. Same refusals
    /// as `restore`; a spare's restore of any other snapshot is `E_SNAPSHOT_MISMATCH` (the spare
    /// is left as it was). A spare is stopped like any VM.
    fn prepare_restore(
        &self, vm: &VmName, id: &SnapshotId, cancel: &CancelToken,
    ) -> Result<VmStatus>;
    /// Snapshots, optionally only one VM's, sorted by id.
    fn list_snapshots(&self, vm: Option<&VmName>) -> Result<Vec<SnapshotInfo>>;
    /// Deletes a snapshot no VM is sleeping on.
    fn delete_snapshot(&self, id: &SnapshotId) -> Result<()>;
}

/// The refusal of a spare asked to restore `id` while it waits for `prepared` (see
/// [`Snapshots::prepare_restore`]): the same words from every engine.
pub fn spare_mismatch(vm: &VmName, id: &SnapshotId, prepared: Option<&SnapshotId>) -> Error {
    let prepared = prepared.map(|p| p.to_string()).unwrap_or_else(|| "nothing".into());
    Error::SnapshotMismatch {
        snapshot: id.clone(),
        reason: format!("{vm} is a spare for {prepared}; stop it to restore anything else"),
    }
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeSource {
    /// Empty, of this size.
    Blank {
        /// Size in MiB.
        size_mib: u64,
    },
    /// A copy-on-write overlay over another volume.
    Overlay {
        /// The base volume.
        base: VolumeId,
    },
    /// A copy-on-write overlay over an image file outside Hangar's control.
    ImageFile {
        /// Absolute path of the base image.
        path: String,
        /// Its format.
        format: DiskFormat,
    },
}

/// A volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its id.
    pub id: VolumeId,
    /// Virtual size in MiB.
    pub size_mib: u64,
    /// Its format.
    pub format: DiskFormat,
    /// The volume it overlays, if any.
    pub base: Option<VolumeId>,
    /// Its disk snapshots, sorted.
    pub snapshots: Vec<SnapshotId>,
}

/// Disk volumes.
pub trait Disks: Send + Sync {
    /// Creates a volume.
    fn create_volume(&self, id: &VolumeId, source: &VolumeSource) -> Result<VolumeInfo>;
    /// Grows a volume (shrinking is refused with `E_INVALID_ARGUMENT`).
    fn resize_volume(&self, id: &VolumeId, size_mib: u64) -> Result<VolumeInfo>;
    /// Deletes a volume; refused while it has snapshots or overlays.
    fn delete_volume(&self, id: &VolumeId) -> Result<()>;
    /// Takes an internal disk snapshot.
    fn snapshot_volume(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo>;
    /// Deletes a disk snapshot.
    fn delete_volume_snapshot(&self, id: &VolumeId, snapshot: &SnapshotId) -> Result<VolumeInfo>;
    /// One volume.
    fn volume(&self, id: &VolumeId) -> Result<VolumeInfo>;
    /// Every volume, sorted by id.
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>>;
}

/// Network interfaces of a VM.
pub trait Nics: Send + Sync {
    /// Adds a NIC. While the VM runs this needs [`Capability::NicHotplug`].
    fn attach_nic(&self, vm: &VmName, nic: &NicSpec) -> Result<()>;
    /// Removes a NIC. While the VM runs this needs [`Capability::NicHotplug`].
    fn detach_nic(&self, vm: &VmName, nic: &DeviceName) -> Result<()>;
    /// The VM's NICs in guest order.
    fn list_nics(&self, vm: &VmName) -> Result<Vec<NicSpec>>;
}

/// One entry of an engine's event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the stream: 1, 2, 3, … without holes.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
}

/// Event payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A lifecycle transition.
    Transition(TransitionEvent),
    /// Something the engine reported that is not a transition.
    Engine {
        /// The VM concerned.
        vm: VmName,
        /// When the engine saw it.
        at: Timestamp,
        /// What, in the engine's words.
        message: String,
    },
}

/// Events the reader missed because the source no longer holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First missed sequence number.
    pub from: u64,
    /// Last missed sequence number.
    pub to: u64,
}

/// A batch of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// Events after the requested sequence number, in order, without holes.
    pub events: Vec<Event>,
    /// Set when events between the requested position and the first returned one were lost.
    pub gap: Option<Gap>,
}

/// The event stream.
pub trait Events: Send + Sync {
    /// Up to `limit` events with `seq > after`, oldest first.
    fn events_since(&self, after: u64, limit: usize) -> Result<EventPage>;
}

/// Reads an event stream and detects gaps, even ones the source failed to report.
#[derive(Debug, Clone, Default)]
pub struct EventCursor {
    after: u64,
}

impl EventCursor {
    /// A cursor positioned after `seq` (0 for the beginning).
    pub fn after(seq: u64) -> Self {
        Self { after: seq }
    }

    /// The last sequence number consumed.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Fetches the next page and advances. The returned gap is the source's, or one derived from
    /// the sequence numbers when the source did not say.
    pub fn next_page(&mut self, source: &dyn Events, limit: usize) -> Result<EventPage> {
        let mut page = source.events_since(self.after, limit)?;
        if page.gap.is_none() {
            if let Some(first) = page.events.first() {
                if first.seq > self.after + 1 {
                    page.gap = Some(Gap { from: self.after + 1, to: first.seq - 1 });
                }
            }
        }
        if let Some(last) = page.events.last() {
            self.after = last.seq;
        }
        Ok(page)
    }
}

/// Optional engine features. Operations needing a missing one fail with `E_UNSUPPORTED`, and
/// conformance scenarios needing it are skipped with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// The guest can be asked to power off.
    GracefulStop,
    /// vCPUs can be paused and resumed.
    Pause,
    /// The guest can be rebooted in place.
    Reboot,
    /// Memory snapshots (save/restore, sleep/wake).
    MemorySnapshots,
    /// Disk volumes (create, overlay, resize, delete).
    Volumes,
    /// Internal disk snapshots.
    DiskSnapshots,
    /// NICs can be added or removed while running.
    NicHotplug,
    /// A guest agent: exec, files, info and sync in a running guest ([`Guest`]).
    GuestAgent,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 8] = [
        Capability::GracefulStop,
        Capability::Pause,
        Capability::Reboot,
        Capability::MemorySnapshots,
        Capability::Volumes,
        Capability::DiskSnapshots,
        Capability::NicHotplug,
        Capability::GuestAgent,
    ];
}

/// A set of capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CapabilitySet(pub BTreeSet<Capability>);

impl CapabilitySet {
    /// Every capability.
    pub fn all() -> Self {
        Self(Capability::ALL.into_iter().collect())
    }

    /// Whether `c` is present.
    pub fn has(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    /// The set without `c`.
    pub fn without(mut self, c: Capability) -> Self {
        self.0.remove(&c);
        self
    }
}

/// What the engine supports.
pub trait Capabilities: Send + Sync {
    /// The engine's capabilities.
    fn capabilities(&self) -> CapabilitySet;
}

/// What to run in a guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The program and its arguments (no shell unless argv names one).
    pub argv: Vec<String>,
    /// Extra environment, `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (`/` if absent).
    #[serde(default)]
    pub cwd: Option<String>,
    /// `UID` or `UID:GID` (root if absent).
    #[serde(default)]
    pub user: Option<String>,
    /// A pseudo-terminal of `[rows, cols]`: stdout and stderr are then one stream (stdout).
    #[serde(default)]
    pub tty: Option<[u16; 2]>,
}

/// How a guest program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code (127: no such program, 126: not executable, as a shell says).
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The shell's (and docker exec's) number: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// Sent to a running guest program from outside (a Ctrl-C, a terminal resize).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecControl {
    /// Deliver this signal to the program.
    Signal(i32),
    /// Its terminal is now `[rows, cols]` (ignored without one).
    Resize([u16; 2]),
}

/// The streams of one exec. The caller keeps the sending side of `control` for as long as
/// it may signal the program; the exec ends without waiting for it.
pub struct ExecIo<'a> {
    /// The program's standard input; `None` gives it end-of-file at once.
    pub stdin: Option<Box<dyn std::io::Read + Send>>,
    /// Where its standard output goes, as it comes.
    pub stdout: &'a mut dyn std::io::Write,
    /// Where its standard error goes (nothing with a terminal).
    pub stderr: &'a mut dyn std::io::Write,
    /// Signals and resizes for the program while it runs.
    pub control: Option<std::sync::mpsc::Receiver<ExecControl>>,
}

/// A guest file's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Permission bits.
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Bytes.
    pub size: u64,
}

/// A guest's network as its agent configures it (addresses, routes, DNS, hostname); what a
/// clone gets to re-address it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNetwork {
    /// Interfaces, each found by MAC address or kernel name.
    #[serde(default)]
    pub nics: Vec<GuestNic>,
    /// DNS servers (`/etc/resolv.conf`), unchanged when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// The hostname, unchanged when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// One guest interface's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestNic {
    /// Its MAC address; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// its kernel name (`eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// IPv4 `ADDRESS/PREFIX`es; they replace the ones it has.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The default route's gateway through it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Its MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// A MAC address to give it first: a clone wakes with its base's, and takes its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mac: Option<String>,
}

/// What a directory copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCounts {
    /// Regular files.
    pub files: u64,
    /// Directories, the top one included.
    pub dirs: u64,
    /// Entries left out: neither files nor directories (symlinks, devices, …).
    pub skipped: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// What a running guest says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The agent's name and version (`hangar-init 0.1.0`).
    pub agent: String,
    /// The guest kernel's release.
    pub kernel: String,
    /// Seconds since the guest booted.
    pub uptime_s: f64,
    /// Load averages over 1, 5 and 15 minutes.
    #[serde(default)]
    pub load: Vec<f64>,
    /// Memory, as the guest sees it.
    #[serde(default)]
    pub memory: GuestMemory,
    /// Mounted filesystems.
    #[serde(default)]
    pub filesystems: Vec<GuestFilesystem>,
    /// The guest's IPv4 addresses.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// A guest's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemory {
    /// Total.
    pub total_kib: Option<u64>,
    /// Available to programs.
    pub available_kib: Option<u64>,
}

/// One mounted filesystem in a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFilesystem {
    /// What is mounted.
    pub device: String,
    /// Where.
    pub path: String,
    /// Its type.
    #[serde(rename = "type")]
    pub fs_type: String,
}

/// Work inside a running guest, through its agent ([`Capability::GuestAgent`]).
///
/// Rules (checked by the conformance suite, `CONF-G-xx`): every call needs the VM running,
/// else `E_AGENT_UNAVAILABLE` (an unknown VM is `E_VM_NOT_FOUND`); a program that does not
/// exist ends with code 127 and one not executable with 126, like a shell, not with an error;
/// files keep their bytes, mode and mtime both ways; an agent that does not answer is
/// `E_AGENT_UNAVAILABLE` within a bounded time, never a hang.
pub trait Guest: Send + Sync {
    /// Runs a program and streams its I/O; how it ended.
    fn exec(&self, vm: &VmName, request: &ExecRequest, io: ExecIo<'_>) -> Result<ExitStatus>;
    /// Copies the guest's regular file `path` into `out`.
    fn read_file(&self, vm: &VmName, path: &str, out: &mut dyn std::io::Write)
        -> Result<GuestFile>;
    /// Writes `input` to the guest's `path` whole (a reader never sees half of it), with
    /// `mode` and `mtime`.
    fn write_file(
        &self, vm: &VmName, path: &str, mode: u32, mtime: i64, input: Box<dyn std::io::Read + Send>,
    ) -> Result<()>;
    /// Writes the guest directory `path` as a tar stream into `out`: regular files and
    /// directories with their modes and mtimes, nothing else (see `hangar-tree`).
    fn read_tree(
        &self, vm: &VmName, path: &str, out: &mut dyn std::io::Write,
    ) -> Result<TreeCounts>;
    /// Unpacks the tar stream `input` into the new guest directory `path` (which must not
    /// exist), whole or not at all.
    fn write_tree(
        &self, vm: &VmName, path: &str, input: Box<dyn std::io::Read + Send>,
    ) -> Result<TreeCounts>;
    /// The guest's facts.
    fn guest_info(&self, vm: &VmName) -> Result<GuestInfo>;
    /// Flushes the guest's filesystems (before its memory is saved).
    fn sync_guest(&self, vm: &VmName) -> Result<()>;
    /// Configures the guest's network: links up, addresses replaced, default route, DNS,
    /// hostname; the addresses show in [`GuestInfo::addresses`] afterwards.
    fn configure_network(&self, vm: &VmName, network: &GuestNetwork) -> Result<()>;
}

/// Everything an engine adapter implements; the conformance suite runs against this.
pub trait Engine: Lifecycle + Snapshots + Disks + Nics + Events + Capabilities + Guest {}

impl<T: Lifecycle + Snapshots + Disks + Nics + Events + Capabilities + Guest> Engine for T {}

//! [`Local`]: operations carried out on this host, journaled in the store.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use hangar_api::{ErrorBody, EventView, Operation, OperationRequest, VmView};
use hangar_core::clock::{Clock, SystemClock, Timestamp};
use hangar_core::contracts::{
    ExecIo, ExecRequest, ExitStatus, Guest, GuestFile, GuestInfo, SnapshotInfo, TreeCounts,
};
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::{OperationId, VmName};
use hangar_core::spec::VmSpec;
use hangar_fleet::{Admission, Fleet};
use hangar_hostfs::AllowedRoots;
use hangar_qemu::{process, EngineOptions, QemuEngine};
use hangar_store::{OperationRecord, ProcessIdentity, Store};

use crate::backend::Backend;
use crate::{Control, ControlError, Result};

mod execute;
mod prepare;
mod recover;

pub use execute::Pending;
use prepare::*;
pub use prepare::{allowed_roots, check_paths};

/// Operations on this host, through the engine, journaled in the store.
pub struct Local {
    engine: Arc<dyn Backend>,
    /// Hangar's home: the journal is its state store.
    home: std::path::PathBuf,
    /// Where a spec's host files may come from.
    roots: AllowedRoots,
    /// Tenants and their quotas: every VM of a tenant is admitted through it.
    fleet: Arc<Fleet<dyn Backend>>,
    /// A connection of its own, so journal writes never wait behind a long engine call.
    journal: Mutex<Store>,
    /// This process, recorded as the owner of the operations it runs.
    me: Option<ProcessIdentity>,
}

/// Room in a tenant's quotas, held while an operation runs.
type Held = Admission<dyn Backend>;

/// Default graceful-stop timeout, when a request names none.
pub const DEFAULT_STOP_TIMEOUT_S: u64 = 30;

/// The longest timeout a request may ask for (a day): durations from requests are bounded
/// so no deadline arithmetic can overflow.
pub const MAX_TIMEOUT_S: u64 = 86_400;

fn store_failure(e: hangar_store::StoreError) -> ControlError {
    ControlError::Store(e)
}

/// A fresh operation id: `op-` + the time in hex + 32 random bits.
fn new_operation_id(now: Timestamp) -> OperationId {
    let mut random = [0u8; 4];
    let filled =
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).is_ok();
    if !filled {
        // Uniqueness then rests on the time and this process id.
        random = (std::process::id() ^ now.0 as u32).to_le_bytes();
    }
    OperationId::new(format!("op-{:x}-{:08x}", now.0, u32::from_le_bytes(random)))
        .expect("generated ids are valid names")
}

fn to_operation(rec: &OperationRecord, request: OperationRequest) -> Operation {
    Operation {
        id: rec.id.to_string(),
        kind: rec.kind,
        target: rec.target.clone(),
        status: rec.status,
        progress: rec.progress.clone(),
        request,
        result: rec.result_json.as_deref().and_then(|j| serde_json::from_str(j).ok()),
        error: rec.error_json.as_deref().and_then(|j| serde_json::from_str(j).ok()),
        created_at: rec.created_at.0,
        updated_at: rec.updated_at.0,
    }
}

fn decode(rec: &OperationRecord) -> Result<Operation> {
    let request: OperationRequest = serde_json::from_str(&rec.request_json).map_err(|e| {
        ErrorBody::new(
            ErrorCode::StoreCorrupt,
            format!("operation {} has an unreadable request: {e}", rec.id),
        )
    })?;
    Ok(to_operation(rec, request))
}

impl Local {
    /// Opens the engine over `home` and settles operations left by dead processes (those that
    /// can be settled now; see [`Local::recover`]). Specs may name host files under `home`'s
    /// images and volumes and under `allow` (see [`AllowedRoots`]); quotas are read from the
    /// fleet registry in the store.
    pub fn open(home: &Path, allow: &[std::path::PathBuf]) -> Result<Local> {
        let engine: Arc<dyn Backend> = Arc::new(QemuEngine::open(home, EngineOptions::default())?);
        let roots = allowed_roots(home, allow)?;
        let fleet = crate::fleet::open(engine.clone(), home, false)?;
        let local = Local::new(engine, home, roots, fleet)?;
        local.recover();
        Ok(local)
    }

    /// Wraps an engine (any [`Backend`]: QEMU, or the fake) with the home whose store holds
    /// the journal, the roots specs may name files under and the fleet whose tenants' quotas
    /// every tenant VM is admitted against.
    pub fn new(
        engine: Arc<dyn Backend>, home: &Path, roots: AllowedRoots, fleet: Arc<Fleet<dyn Backend>>,
    ) -> Result<Local> {
        let journal = Store::open_in(home).map_err(store_failure)?;
        Ok(Local {
            engine,
            home: home.to_path_buf(),
            roots,
            fleet,
            journal: Mutex::new(journal),
            me: process::identify(std::process::id()),
        })
    }

    /// The roots specs may name host files under.
    pub fn roots(&self) -> &AllowedRoots {
        &self.roots
    }

    /// Checks every host file `spec` names against the allowed roots: `E_PATH_NOT_ALLOWED`
    /// (or `E_INVALID_ARGUMENT` for a missing file) naming the first bad field, with every
    /// problem in `errors`.
    pub fn check_paths(&self, spec: &VmSpec) -> Result<()> {
        check_paths(&self.roots, spec)
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Backend> {
        &self.engine
    }

    /// Hangar's home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    pub(super) fn journal<T>(
        &self, f: impl FnOnce(&Store) -> std::result::Result<T, hangar_store::StoreError>,
    ) -> Result<T> {
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        f(&store).map_err(store_failure)
    }

    pub(super) fn now(&self) -> Timestamp {
        SystemClock.now()
    }

    pub(super) fn view(&self, vm: &VmName) -> std::result::Result<VmView, Error> {
        self.engine.view(vm)
    }
}

impl Control for Local {
    fn list(&self) -> Result<Vec<VmView>> {
        let names: Vec<VmName> = self.engine.list()?.into_iter().map(|s| s.name).collect();
        names.iter().map(|n| self.view(n).map_err(ControlError::from)).collect()
    }

    fn get(&self, vm: &str) -> Result<VmView> {
        Ok(self.view(&vm_name(vm)?)?)
    }

    fn run(&self, request: OperationRequest, progress: &dyn Fn(&str)) -> Result<Operation> {
        self.run_here(request, progress)
    }

    fn operation(&self, id: &str) -> Result<Operation> {
        let not_found =
            || ErrorBody::new(ErrorCode::OperationNotFound, format!("no operation {id:?}"));
        let id = OperationId::new(id).map_err(|_| not_found())?;
        let record = self.journal(|s| s.get_operation(&id))?.ok_or_else(not_found)?;
        decode(&record)
    }

    fn operations(&self, limit: usize) -> Result<Vec<Operation>> {
        self.journal(|s| s.list_operations(false, limit))?.iter().map(decode).collect()
    }

    fn snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let vm = vm.map(vm_name).transpose()?;
        Ok(self.engine.list_snapshots(vm.as_ref())?)
    }

    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<EventView>> {
        Ok(self
            .engine
            .events_since(after, limit)?
            .events
            .iter()
            .map(EventView::from_event)
            .collect())
    }

    fn describe(&self) -> String {
        format!("local ({})", self.home.display())
    }

    fn guest(&self) -> &dyn Guest {
        self
    }

    fn networks(&self) -> Result<Vec<hangar_api::NetworkView>> {
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let list = hangar_net::list(&store)?;
        Ok(list.iter().map(|(n, leases)| crate::networks::view(n, leases)).collect())
    }

    fn create_network(&self, req: &hangar_api::NetworkRequest) -> Result<hangar_api::NetworkView> {
        let network = crate::networks::network_of(req)?;
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        hangar_net::create(&store, &network, self.now(), |n| self.engine.host_network(n, true))?;
        Ok(crate::networks::view(&network, &[]))
    }

    fn ensure_tenant_network(&self, tenant: &hangar_core::ids::TenantId) -> Result<()> {
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        hangar_net::ensure_default(&store, tenant, self.now()).map(drop).map_err(Into::into)
    }

    fn remove_tenant_networks(&self, tenant: &hangar_core::ids::TenantId) -> Result<()> {
        let mine: Vec<String> = self
            .networks()?
            .into_iter()
            .filter(|n| n.tenant.as_deref() == Some(tenant.as_str()))
            .map(|n| n.name)
            .collect();
        for name in mine {
            self.remove_network(&name)?;
        }
        Ok(())
    }

    fn remove_network(&self, name: &str) -> Result<()> {
        let name = crate::networks::name_of(name)?;
        self.engine.sweep_leases()?;
        let store = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        Ok(hangar_net::remove(&store, &name, |n| self.engine.host_network(n, false))?)
    }
}

/// Straight to the engine's agents.
impl Guest for Local {
    fn exec(
        &self, vm: &VmName, request: &ExecRequest, io: ExecIo<'_>,
    ) -> hangar_core::Result<ExitStatus> {
        self.engine.exec(vm, request, io)
    }

    fn read_file(
        &self, vm: &VmName, path: &str, out: &mut dyn std::io::Write,
    ) -> hangar_core::Result<GuestFile> {
        self.engine.read_file(vm, path, out)
    }

    fn write_file(
        &self, vm: &VmName, path: &str, mode: u32, mtime: i64, input: Box<dyn std::io::Read + Send>,
    ) -> hangar_core::Result<()> {
        self.engine.write_file(vm, path, mode, mtime, input)
    }

    fn read_tree(
        &self, vm: &VmName, path: &str, out: &mut dyn std::io::Write,
    ) -> hangar_core::Result<TreeCounts> {
        self.engine.read_tree(vm, path, out)
    }

    fn write_tree(
        &self, vm: &VmName, path: &str, input: Box<dyn std::io::Read + Send>,
    ) -> hangar_core::Result<TreeCounts> {
        self.engine.write_tree(vm, path, input)
    }

    fn guest_info(&self, vm: &VmName) -> hangar_core::Result<GuestInfo> {
        self.engine.guest_info(vm)
    }

    fn sync_guest(&self, vm: &VmName) -> hangar_core::Result<()> {
        self.engine.sync_guest(vm)
    }

    fn configure_network(
        &self, vm: &VmName, network: &hangar_core::contracts::GuestNetwork,
    ) -> hangar_core::Result<()> {
        self.engine.configure_network(vm, network)
    }
}

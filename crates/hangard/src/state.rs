//! The daemon's state: the engine, the control library, the fleet, the token store and the
//! caches every handler shares.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use hangar_api::{Operation, VmView};
use hangar_control::{Backend, Local};
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent};
use hangar_qemu::QemuEngine;

use crate::auth::UidMap;
use crate::error::StartError;
use crate::{fleet, metrics, server, trail};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The daemon's shared state.
pub struct Daemon {
    /// Operations and reads, through the engine (the CLI's own library).
    pub local: Arc<Local>,
    /// Woken whenever an operation ends or is settled.
    pub(crate) ops_changed: Arc<tokio::sync::Notify>,
    /// Token lookups for the TCP listener and fleet event notes (a connection of its own).
    pub(crate) tokens: std::sync::Mutex<hangar_store::Store>,
    /// Woken on every transition, so event streams need not poll.
    pub(crate) changed: Arc<tokio::sync::Notify>,
    /// Tenants, pools and instances, over the same engine as `local`.
    pub fleet: Arc<hangar_fleet::Fleet<dyn Backend>>,
    /// The gateway to pools' instances (listening once [`Daemon::start_gateway`] ran).
    pub gateway: Arc<hangar_gateway::Gateway<dyn Backend>>,
    /// The host facts plans are made with (`/v1/plan`, `/v1/host`).
    pub(crate) facts: hangar_plan::HostFacts,
    /// The reconcile loop's schedule and last pass.
    pub reconciler: fleet::Reconciler,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The audit log (`<home>/audit.log`, signed head in `audit.head`): what every mutating
    /// request, operation end, reconcile step and failed authentication left.
    pub(crate) trail: trail::Trail,
    /// Bumped on every transition this process makes.
    pub(crate) generation: Arc<std::sync::atomic::AtomicU64>,
    /// `GET /v1/vms`: (when, generation, the views, serialised). Readers that find it fresh
    /// only take the read lock, never held across an await.
    pub(crate) list_cache: std::sync::RwLock<Option<ListSnapshot>>,
    /// Held while the list is recomputed: one refresh serves every reader waiting for it.
    pub(crate) list_refresh: tokio::sync::Mutex<()>,
    /// Unix-socket peers other than root and this daemon's user.
    pub(crate) uids: UidMap,
    /// This daemon's effective uid (its peers with the same uid are admins).
    pub(crate) own_uid: u32,
    /// Connection limits.
    pub(crate) limits: server::Limits,
    /// This node's membership in a cluster (`hangard --cluster`; set once by
    /// [`Daemon::join_cluster`]).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Membership>>,
    /// The engine's name (`qemu`, `fake`).
    pub(crate) engine_name: &'static str,
    /// The cluster's keys (set with [`Daemon::cluster`]).
    pub(crate) keys: std::sync::OnceLock<Arc<crate::scheduler::Keys>>,
    /// The scheduling loop's state.
    pub(crate) scheduling: crate::scheduler::Scheduling,
    /// Node credentials accepted (each is good once).
    pub(crate) seen_credentials: crate::forwarding::SeenCredentials,
}

/// `GET /v1/vms` as last computed: when, at which transition generation, the views and their
/// JSON.
pub(crate) type ListSnapshot = (Instant, u64, Arc<Vec<VmView>>, Bytes);

/// How a daemon is set up (`hangard`'s flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds between reconcile passes when nothing asks for one sooner.
    pub reconcile_interval: Duration,
    /// Directories (besides `$HANGAR_HOME/images` and `volumes`) specs may name files under.
    pub allow_paths: Vec<std::path::PathBuf>,
    /// What unix-socket peers other than root and the daemon's own user may do.
    pub uids: UidMap,
    /// What one connection and one peer may hold.
    pub limits: server::Limits,
    /// The engine's name (`qemu`, `fake`), as this node reports it to a cluster.
    pub engine_name: &'static str,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            reconcile_interval: fleet::DEFAULT_INTERVAL,
            allow_paths: Vec::new(),
            uids: UidMap::default(),
            limits: server::Limits::default(),
            engine_name: "qemu",
        }
    }
}

/// How stale `GET /v1/vms` may be when no transition happened in this daemon: changes made
/// elsewhere (a QEMU dying, a CLI with HANGAR_DAEMON=never) show within this time.
pub const LIST_MAX_AGE: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection: the peer's uid from the unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub(crate) uid: Option<u32>,
    pub(crate) tcp: Option<std::net::SocketAddr>,
}

pub(crate) struct Wake(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicU64>);

impl LifecycleObserver for Wake {
    fn on_transition(&self, _: &TransitionEvent) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.notify_waiters();
    }
}

impl Daemon {
    /// Wraps an engine; opens (or creates) the audit log and the operation journal in the
    /// engine's home, and restores the fleet. Call [`Daemon::recover`] next, then
    /// [`Daemon::start_reconciler`].
    pub fn new(engine: QemuEngine) -> Result<Daemon, StartError> {
        Daemon::with_options(engine, Options::default())
    }

    /// [`Daemon::new`], with reconcile passes every `interval` (and whenever something asks).
    pub fn with_reconcile_interval(
        engine: QemuEngine, interval: Duration,
    ) -> Result<Daemon, StartError> {
        Daemon::with_options(engine, Options { reconcile_interval: interval, ..Options::default() })
    }

    /// [`Daemon::new`] with every setting.
    pub fn with_options(engine: QemuEngine, options: Options) -> Result<Daemon, StartError> {
        let (home, facts) = (engine.home().to_path_buf(), engine.facts().clone());
        Daemon::on(Arc::new(engine), &home, facts, options)
    }

    /// A daemon on any engine (the QEMU engine, or the fake for `hangard --engine fake`),
    /// with its state (journal, tokens, audit log, fleet registry) in `home` and plans made
    /// with `facts`.
    pub fn on(
        engine: Arc<dyn Backend>, home: &Path, facts: hangar_plan::HostFacts, options: Options,
    ) -> Result<Daemon, StartError> {
        let roots = hangar_control::allowed_roots(home, &options.allow_paths)
            .map_err(StartError::AllowedPaths)?;
        let trail = trail::Trail::open(home);
        let tokens = hangar_store::Store::open_in(home).map_err(StartError::Store)?;
        let changed = Arc::new(tokio::sync::Notify::new());
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        engine.observe(Arc::new(Wake(changed.clone(), generation.clone())));
        let fleet =
            hangar_control::fleet::open(engine.clone(), home, true).map_err(StartError::Fleet)?;
        let local =
            Arc::new(Local::new(engine, home, roots, fleet.clone()).map_err(StartError::Journal)?);
        let metrics = Arc::new(metrics::Metrics::default());
        let gateway = {
            let (lookup, counted) = (local.clone(), metrics.clone());
            // An instance's address is the first its VM was given (a bridged NIC's lease).
            let resolve = Arc::new(move |vm: &hangar_core::ids::VmName| {
                let view = hangar_control::Control::get(&*lookup, vm.as_str()).ok()?;
                view.addresses.first()?.split('/').next()?.parse().ok()
            });
            hangar_gateway::Gateway::new(
                fleet.clone(),
                Arc::new(hangar_core::clock::SystemClock),
                resolve,
                move |route, refusal| {
                    counted.error(refusal.code.as_str());
                    tracing::warn!(route = %route.id, code = %refusal.code, "{}", refusal.message);
                },
            )
        };
        Ok(Daemon {
            local,
            gateway,
            ops_changed: Arc::new(tokio::sync::Notify::new()),
            tokens: std::sync::Mutex::new(tokens),
            changed,
            fleet,
            facts,
            reconciler: fleet::Reconciler::new(options.reconcile_interval),
            metrics,
            trail,
            generation,
            list_cache: std::sync::RwLock::new(None),
            list_refresh: tokio::sync::Mutex::new(()),
            uids: options.uids,
            own_uid: rustix::process::geteuid().as_raw(),
            limits: options.limits,
            engine_name: options.engine_name,
            cluster: std::sync::OnceLock::new(),
            keys: std::sync::OnceLock::new(),
            scheduling: Default::default(),
            seen_credentials: Default::default(),
        })
    }
}

impl Daemon {
    /// Settles operations a dead process left running (a daemon killed mid-operation), and
    /// rotates console logs. Runs at start and then every second in the background, because
    /// an operation whose guest is still booting can only be settled once the boot ends.
    pub fn recover(self: &Arc<Self>) -> Vec<Operation> {
        let settled = self.local.recover();
        for op in &settled {
            tracing::info!(
                operation = %op.id,
                kind = %op.kind,
                target = %op.target,
                status = %op.status,
                "settled interrupted operation {} ({} {}): {}",
                op.id,
                op.kind,
                op.target,
                op.status
            );
        }
        if !settled.is_empty() {
            self.ops_changed.notify_waiters();
        }
        // Console logs are capped here too, so a chatty guest is rotated within a second
        // even when nobody asks about it.
        if let Err(e) = self.engine().upkeep() {
            tracing::warn!("rotating console logs: {e}");
        }
        settled
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn Backend> {
        self.local.engine()
    }
}

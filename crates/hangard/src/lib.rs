//! `hangard`, the node daemon: Hangar's REST API v1 on a unix socket.
//!
//! Every handler is a thin translation between HTTP and `hangar-control`'s [`Local`], the same
//! library the CLI uses without a daemon; the wire types live in `hangar-api`. A mutating call
//! is journaled as an operation and carried out on its own thread (engine calls block while
//! they wait for guests, so they never run on the async runtime's threads). VMs never depend on
//! the daemon: QEMU processes outlive it; a restarted daemon finds them again through the store
//! (PID + start time + QMP) and settles every operation its predecessor left running.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hangar_api::{
    http_status, ErrorBody, EventView, Health, ImageView, NewToken, Operation, OperationRequest,
    OperationResult, SnapshotRequest, StartRequest, StopRequest, TokenRequest, TokenView, VmView,
};
use hangar_control::{Control, Local};
use hangar_core::access::{Action, Resource};
use hangar_core::contracts::{Lifecycle, SnapshotInfo};
use hangar_core::error::{Coded, Error, ErrorCode};
use hangar_core::ids::{SnapshotId, TenantId, VmName};
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent};
use hangar_qemu::QemuEngine;
use hangar_spec::Format;
use serde::Deserialize;
use utoipa::OpenApi;

mod admin;
pub mod auth;
pub mod fleet;
pub mod metrics;
pub mod server;
pub mod trail;

pub use auth::{Caller, UidMap};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The daemon's shared state.
pub struct Daemon {
    /// Operations and reads, through the engine (the CLI's own library).
    pub local: Arc<Local>,
    /// Woken whenever an operation ends or is settled.
    ops_changed: Arc<tokio::sync::Notify>,
    /// Token lookups for the TCP listener and fleet event notes (a connection of its own).
    tokens: std::sync::Mutex<hangar_store::Store>,
    /// Woken on every transition, so event streams need not poll.
    changed: Arc<tokio::sync::Notify>,
    /// Tenants, pools and instances, over the same engine as `local`.
    pub fleet: Arc<hangar_fleet::Fleet<QemuEngine>>,
    /// The reconcile loop's schedule and last pass.
    pub reconciler: fleet::Reconciler,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The audit log (`<home>/audit.log`, signed head in `audit.head`): what every mutating
    /// request, operation end, reconcile step and failed authentication left.
    pub(crate) trail: trail::Trail,
    /// Bumped on every transition this process makes.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// `GET /v1/vms`: (when, generation, the views, serialised).
    list_cache: tokio::sync::Mutex<Option<ListSnapshot>>,
    /// Unix-socket peers other than root and this daemon's user.
    uids: UidMap,
    /// This daemon's effective uid (its peers with the same uid are admins).
    own_uid: u32,
    /// Connection limits.
    limits: server::Limits,
}

/// `GET /v1/vms` as last computed: when, at which transition generation, the views and their
/// JSON.
type ListSnapshot = (Instant, u64, Arc<Vec<VmView>>, Bytes);

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
}

impl Default for Options {
    fn default() -> Options {
        Options {
            reconcile_interval: fleet::DEFAULT_INTERVAL,
            allow_paths: Vec::new(),
            uids: UidMap::default(),
            limits: server::Limits::default(),
        }
    }
}

/// How stale `GET /v1/vms` may be when no transition happened in this daemon: changes made
/// elsewhere (a QEMU dying, a CLI with HANGAR_DAEMON=never) show within this time.
pub const LIST_MAX_AGE: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection: the peer's uid from the unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    uid: Option<u32>,
    tcp: Option<std::net::SocketAddr>,
}

struct Wake(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicU64>);

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
    pub fn new(engine: QemuEngine) -> Result<Daemon, String> {
        Daemon::with_options(engine, Options::default())
    }

    /// [`Daemon::new`], with reconcile passes every `interval` (and whenever something asks).
    pub fn with_reconcile_interval(
        engine: QemuEngine,
        interval: Duration,
    ) -> Result<Daemon, String> {
        Daemon::with_options(
            engine,
            Options {
                reconcile_interval: interval,
                ..Options::default()
            },
        )
    }

    /// [`Daemon::new`] with every setting.
    pub fn with_options(engine: QemuEngine, options: Options) -> Result<Daemon, String> {
        let roots = hangar_control::allowed_roots(engine.home(), &options.allow_paths)
            .map_err(|e| e.message)?;
        let trail = trail::Trail::open(engine.home());
        let tokens =
            hangar_store::Store::open_in(engine.home()).map_err(|e| format!("state store: {e}"))?;
        let changed = Arc::new(tokio::sync::Notify::new());
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        engine.observe(Arc::new(Wake(changed.clone(), generation.clone())));
        let engine = Arc::new(engine);
        let fleet = hangar_control::fleet::open(engine.clone(), true)
            .map_err(|e| format!("{}: {}; {}", e.code, e.message, e.hint))?;
        let local =
            Local::new(engine, roots, fleet.clone()).map_err(|e| format!("state store: {e}"))?;
        Ok(Daemon {
            local: Arc::new(local),
            ops_changed: Arc::new(tokio::sync::Notify::new()),
            tokens: std::sync::Mutex::new(tokens),
            changed,
            fleet,
            reconciler: fleet::Reconciler::new(options.reconcile_interval),
            metrics: metrics::Metrics::default(),
            trail,
            generation,
            list_cache: tokio::sync::Mutex::new(None),
            uids: options.uids,
            own_uid: rustix::process::geteuid().as_raw(),
            limits: options.limits,
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
            eprintln!(
                "hangard: settled interrupted operation {} ({} {}): {}",
                op.id, op.kind, op.target, op.status
            );
        }
        if !settled.is_empty() {
            self.ops_changed.notify_waiters();
        }
        // Console logs are capped here too, so a chatty guest is rotated within a second
        // even when nobody asks about it.
        if let Err(e) = self.engine().rotate_logs() {
            eprintln!("hangard: rotating console logs: {e}");
        }
        settled
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<QemuEngine> {
        self.local.engine()
    }
}

/// An error response: a status and a coded body.
#[derive(Debug)]
pub struct ApiError(u16, Box<ErrorBody>);

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        let status = body.error_code().map(http_status).unwrap_or(500);
        ApiError(status, Box::new(body))
    }
}

impl ApiError {
    fn new(
        code: ErrorCode,
        message: impl Into<String>,
        path: Option<String>,
        hint: Option<String>,
    ) -> ApiError {
        let mut body = ErrorBody::new(code, message);
        body.path = path;
        if let Some(hint) = hint {
            body.hint = hint;
        }
        ApiError::from(body)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::from(ErrorBody::from(e))
    }
}

impl From<hangar_spec::SpecErrors> for ApiError {
    fn from(e: hangar_spec::SpecErrors) -> ApiError {
        ApiError::from(ErrorBody::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = self.1.code.clone();
        (status, [("x-hangar-error", code)], Json(*self.1)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs a blocking engine call on its own thread (engine calls wait for guests and drive their
/// own QMP runtime, which must not run inside this one).
///
/// A panic (a bug) fails this one request with a coded 500 and is logged; the daemon goes on.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(internal_error(&*panic)),
        Err(_) => Err(internal_error(&"the worker thread ended without an answer")),
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A request that hit a bug: `500 E_ENGINE_FAILED`, logged.
fn internal_error(panic: &(dyn std::any::Any + Send)) -> ApiError {
    let message = panic_message(panic);
    eprintln!("hangard: BUG: a request's worker panicked: {message}");
    ApiError::new(
        ErrorCode::EngineFailed,
        format!("internal error (a bug, logged by hangard): {message}"),
        None,
        Some("retry; if it happens again, report it with hangard's log".into()),
    )
}

fn vm_name(name: &str) -> ApiResult<VmName> {
    VmName::new(name).map_err(|e| Error::InvalidName(e).into())
}

/// A request body, refusing one over [`MAX_BODY_BYTES`] and JSON that names a key twice in
/// one object (which a JSON value would silently resolve to the last one: every body is read
/// as the sender meant it or not at all). Other syntax errors are left to each route's parser,
/// which knows what it expected.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    let bytes = read_body(body)?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if let Err(d) = hangar_spec::check_json(text) {
            if d.code == ErrorCode::SpecDuplicateKey {
                return Err(hangar_spec::SpecErrors(vec![d]).into());
            }
        }
    }
    Ok(bytes)
}

fn read_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::SpecTooLarge,
                format!("request body over {MAX_BODY_BYTES} bytes"),
                None,
                None,
            )
        } else {
            ApiError::new(
                ErrorCode::SpecSyntax,
                r.body_text(),
                None,
                Some("send a JSON body".into()),
            )
        }
    })
}

fn spec_from_body(body: &[u8]) -> ApiResult<hangar_spec::CanonicalSpec> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            ErrorCode::SpecSyntax,
            "the body is not UTF-8",
            None,
            Some("send the spec as JSON".into()),
        )
    })?;
    // API callers have no spec file: relative paths resolve against "/".
    Ok(hangar_spec::parse(text, Format::Json, Path::new("/"))?)
}

/// `GET /v1/health`
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health(State(d): State<Arc<Daemon>>) -> Json<Health> {
    let facts = d.engine().facts();
    let (kvm, why) = facts.kvm.verdict();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        qemu: facts.qemu.version.clone(),
        accel: if kvm {
            format!("kvm: {why}")
        } else {
            format!("tcg: {why}")
        },
    })
}

/// `GET /v1/vms`: every VM the caller may see (a tenant's token: its tenant's), refreshed
/// against reality.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmView]), (status = 500, body = ErrorBody)))]
async fn list_vms(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let (views, body) = d.vm_list().await?;
    let body = if caller.tenant().is_none() {
        body
    } else {
        let mine: Vec<&VmView> = views
            .iter()
            .filter(|v| caller.sees(v.tenant.as_deref()))
            .collect();
        Bytes::from(serde_json::to_vec(&mine).expect("views serialise"))
    };
    Ok(([("content-type", "application/json")], body).into_response())
}

impl Daemon {
    /// Every VM, from a snapshot at most [`LIST_MAX_AGE`] old and invalidated by any
    /// transition: the views and their JSON.
    async fn vm_list(&self) -> ApiResult<(Arc<Vec<VmView>>, Bytes)> {
        // One refresh serves every concurrent reader: the lock makes the others wait for it.
        let mut cache = self.list_cache.lock().await;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if let Some((at, seen, views, body)) = cache.as_ref() {
            if *seen == generation && at.elapsed() < LIST_MAX_AGE {
                return Ok((views.clone(), body.clone()));
            }
        }
        let local = self.local.clone();
        let views = Arc::new(blocking(move || local.list()).await??);
        let body = Bytes::from(serde_json::to_vec(&*views).expect("views serialise"));
        // Refreshing may itself record transitions (a dead QEMU becomes failed): take the
        // generation after it, so the next reader does not recompute for our own changes.
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        *cache = Some((Instant::now(), generation, views.clone(), body.clone()));
        Ok((views, body))
    }

    /// The VM `name` means to `caller` (inside a tenant's namespace), if the caller may do
    /// `action` to it: its view. Another tenant's VM, like a missing one, is `E_VM_NOT_FOUND`.
    async fn visible_vm(&self, caller: &Caller, action: Action, name: &str) -> ApiResult<VmView> {
        let resolved = caller.resolve(name);
        let vm = vm_name(&resolved)?;
        let local = self.local.clone();
        let lookup = resolved.clone();
        let view = blocking(move || local.get(&lookup)).await??;
        caller.allow_owned(action, view.tenant.as_deref(), || {
            Error::VmNotFound(vm).into()
        })?;
        Ok(view)
    }
}

/// `GET /v1/vms/{name}`
#[utoipa::path(get, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
async fn get_vm(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<VmView>> {
    Ok(Json(d.visible_vm(&caller, Action::VmRead, &name).await?))
}

/// `?wait=` on every mutating call.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer once the operation has finished (200 with the operation, or its error with the
    /// error's status) instead of at once (202 with the running operation).
    #[serde(default)]
    pub wait: bool,
}

/// Journals `request`, carries it out on a worker thread and answers with the operation: at
/// once (202, `Location: /v1/operations/{id}`) or, with `wait`, when it has finished. The
/// request's names must already be resolved for `caller` and its objects checked; its end is
/// recorded in the audit log.
async fn submit(
    d: Arc<Daemon>,
    caller: &Caller,
    request: OperationRequest,
    wait: bool,
) -> ApiResult<Response> {
    let local = d.local.clone();
    let pending = blocking(move || local.begin(request)).await??;
    let accepted = pending.operation();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = d.clone();
    let who = caller.who.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let op = worker.local.execute(pending, &|_| {});
        worker.record_end(&who, &op);
        worker
            .metrics
            .operation(&op.kind, &op.status, started.elapsed().as_secs_f64());
        if op.kind == "start" && op.status == "succeeded" {
            if let Some(ms) = op.result.as_ref().and_then(|r| r.vm.as_ref()?.boot_ms) {
                worker.metrics.boot(ms as f64 / 1000.0);
            }
        }
        let _ = tx.send(op);
    });
    let id = accepted.id.clone();
    let mut response = if wait {
        let op = rx
            .await
            .map_err(|_| internal_error(&"the operation's worker ended without an answer"))?;
        d.ops_changed.notify_waiters();
        match (&op.error, op.status.as_str()) {
            (Some(e), status) if status != "succeeded" => ApiError::from(e.clone()).into_response(),
            _ => Json(op).into_response(),
        }
    } else {
        let waker = d.clone();
        tokio::spawn(async move {
            let _ = rx.await;
            waker.ops_changed.notify_waiters();
        });
        let location = format!("/v1/operations/{id}");
        (
            StatusCode::ACCEPTED,
            [("location", location)],
            Json(accepted),
        )
            .into_response()
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-hangar-operation", v);
    }
    Ok(response)
}

impl Daemon {
    /// Records how an operation ended (best effort: the operation is over either way, and
    /// its end is also in the journal).
    fn record_end(&self, who: &str, op: &Operation) {
        let entry = hangar_audit::NewEntry {
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
            who: who.to_string(),
            what: format!("operation.{}", op.kind),
            target: op.target.clone(),
            result: op
                .error
                .as_ref()
                .filter(|_| op.status != "succeeded")
                .map(|e| e.code.clone())
                .unwrap_or_else(|| "ok".into()),
            detail: Some(format!("operation {} {}", op.id, op.status)),
        };
        if let Err(e) = self.trail.record(entry) {
            eprintln!("hangard: AUDIT FAILURE recording the end of {}: {e}", op.id);
            self.metrics.error(ErrorCode::AuditUnavailable.as_str());
        }
    }
}

fn bad_body(what: &str, e: impl std::fmt::Display, hint: &str) -> ApiError {
    let mut body = ErrorBody::new(ErrorCode::InvalidArgument, format!("invalid {what}: {e}"));
    body.hint = hint.to_string();
    ApiError::from(body)
}

/// Decodes an optional JSON body (empty means the type's default).
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
    hint: &str,
) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_body(what, e, hint))
}

/// `POST /v1/vms`: define a VM from a spec (JSON, the shape of vm.json). Idempotent for an
/// identical spec; `E_VM_EXISTS` (409) for a different spec under the same name.
#[utoipa::path(post, path = "/v1/vms", params(WaitQuery),
    request_body(content = Object, description = "A VM spec (schema/vm-spec-v1.json)"),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_vm(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_bytes(body)?;
    // Refuse a bad spec with every diagnostic before an operation is made.
    spec_from_body(&body)?;
    let spec = serde_json::from_slice(&body).expect("a spec that parsed is JSON");
    let request = scoped(
        &d,
        &caller,
        OperationRequest::Create {
            spec,
            base_dir: None,
        },
    )
    .await?;
    submit(d, &caller, request, q.wait).await
}

/// `request` as `caller` means it: names resolved inside the caller's tenant, a created VM
/// put in the caller's tenant, and the policy asked about the object it acts on (another
/// tenant's VM or snapshot answers exactly like a missing one).
async fn scoped(
    d: &Daemon,
    caller: &Caller,
    mut request: OperationRequest,
) -> ApiResult<OperationRequest> {
    let action = request.action();
    match &mut request {
        OperationRequest::Create { spec, base_dir } => {
            caller.may_use_base_dir(base_dir.as_deref())?;
            let named = spec
                .get("tenant")
                .and_then(|t| t.as_str())
                .map(String::from);
            let tenant = match (caller.tenant(), named) {
                (Some(mine), None) => {
                    if let Some(obj) = spec.as_object_mut() {
                        obj.insert("tenant".into(), mine.to_string().into());
                    }
                    Some(mine.clone())
                }
                (_, Some(t)) => Some(TenantId::new(&t).map_err(Error::InvalidName)?),
                (None, None) => None,
            };
            let resource = match &tenant {
                Some(t) => Resource::Tenant(t),
                None => Resource::Owned(None),
            };
            // Naming another tenant is forbidden, whether or not it exists.
            caller.allow(action, resource, || auth::forbidden(&caller.scope, action))?;
        }
        OperationRequest::SnapshotDelete { id } => {
            let resolved = caller.resolve(id);
            let snap = SnapshotId::new(&resolved).map_err(Error::InvalidName)?;
            let local = d.local.clone();
            let all = blocking(move || local.snapshots(None)).await??;
            let found = all.into_iter().find(|s| s.id == snap);
            let owner = found
                .as_ref()
                .and_then(|s| s.tenant.as_ref().map(|t| t.to_string()));
            if found.is_none() {
                return Err(Error::SnapshotNotFound(snap).into());
            }
            caller.allow_owned(action, owner.as_deref(), || {
                Error::SnapshotNotFound(snap.clone()).into()
            })?;
            *id = resolved;
        }
        other => {
            let target = other.target_mut().expect("every other kind names its VM");
            let view = d.visible_vm(caller, action, target).await?;
            *target = view.name;
        }
    }
    Ok(request)
}

/// The lifecycle actions of `POST /v1/vms/{name}/{action}`.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = Action)]
pub enum VmAction {
    /// Boot and wait for the guest (body: StartRequest).
    Start,
    /// Stop (body: StopRequest).
    Stop,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Reboot the guest.
    Reboot,
}

/// `POST /v1/vms/{name}/{action}`: start, stop, pause, resume or reboot.
#[utoipa::path(post, path = "/v1/vms/{name}/{action}",
    params(("name" = String, Path, description = "VM name"), ("action" = VmAction, Path, description = "What to do"), WaitQuery),
    request_body(content = Option<StopRequest>, description = "StartRequest for start, StopRequest for stop, nothing otherwise"),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn vm_action(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    Query(q): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    vm_name(&name)?;
    let action: VmAction = serde_json::from_value(serde_json::Value::String(action.clone()))
        .map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("unknown action {action:?}"),
                None,
                Some("use start, stop, pause, resume or reboot".into()),
            )
        })?;
    let body = body_bytes(body)?;
    let request = match action {
        VmAction::Start => {
            let s: StartRequest = json_or_default(
                &body,
                "start request",
                "send {\"no_wait\": bool, \"timeout_s\": n} or nothing",
            )?;
            OperationRequest::Start {
                vm: name,
                no_wait: s.no_wait,
                timeout_s: s.timeout_s,
            }
        }
        VmAction::Stop => {
            let s: StopRequest = json_or_default(
                &body,
                "stop request",
                "send {\"force\": bool, \"timeout_s\": n} or nothing",
            )?;
            OperationRequest::Stop {
                vm: name,
                force: s.force,
                timeout_s: s.timeout_s,
            }
        }
        VmAction::Pause => OperationRequest::Pause { vm: name },
        VmAction::Resume => OperationRequest::Resume { vm: name },
        VmAction::Reboot => OperationRequest::Reboot { vm: name },
    };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.wait).await
}

/// `POST /v1/operations`: any operation, as an OperationRequest (what the CLI sends).
#[utoipa::path(post, path = "/v1/operations", params(WaitQuery), request_body = OperationRequest,
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_operation(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: OperationRequest = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        bad_body(
            "operation request",
            e,
            "send {\"kind\": \"start\", \"vm\": \"name\"}; GET /v1/openapi.json lists the kinds",
        )
    })?;
    // The route lets anyone in; what the request does decides.
    caller.allow(request.action(), Resource::Host, || unreachable!())?;
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.wait).await
}

/// `GET /v1/operations` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// How many, newest first (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// `GET /v1/operations`: the journal, newest first.
#[utoipa::path(get, path = "/v1/operations", params(OperationsQuery),
    responses((status = 200, body = [Operation])))]
async fn list_operations(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<OperationsQuery>,
) -> ApiResult<Json<Vec<Operation>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let local = d.local.clone();
    // A tenant's share of the newest 10,000 (the journal is not indexed by tenant).
    let fetch = if caller.tenant().is_some() {
        10_000
    } else {
        limit
    };
    let mut ops = blocking(move || local.operations(fetch)).await??;
    ops.retain(|op| caller.sees(op.request.tenant().as_deref()));
    ops.truncate(limit);
    Ok(Json(ops))
}

/// `GET /v1/operations/{id}`; with `wait=true`, answers once it has finished (at most 10 min).
#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path, description = "Operation id"), WaitQuery),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
async fn get_operation(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Operation>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let changed = d.ops_changed.notified();
        let local = d.local.clone();
        let lookup = id.clone();
        let op = blocking(move || local.operation(&lookup)).await??;
        caller.allow_owned(
            Action::OperationRead,
            op.request.tenant().as_deref(),
            || {
                ApiError::new(
                    ErrorCode::OperationNotFound,
                    format!("no operation {id:?}"),
                    None,
                    None,
                )
            },
        )?;
        if !q.wait || op.is_done() || Instant::now() >= deadline {
            return Ok(Json(op));
        }
        // Woken when any operation ends; the timeout covers ones another process finishes.
        let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
    }
}

/// `GET /v1/images`: the guest images in `$HANGAR_HOME/images`.
#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = [ImageView])))]
async fn list_images(State(d): State<Arc<Daemon>>) -> ApiResult<Json<Vec<ImageView>>> {
    let home = d.local.engine().home().to_path_buf();
    Ok(Json(
        blocking(move || hangar_api::images(&home))
            .await?
            .map_err(|e| ApiError::new(ErrorCode::Io, e.to_string(), None, None))?,
    ))
}

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay from after this sequence number (0: from the beginning of the store's history).
    #[serde(default)]
    pub since: u64,
    /// Keep the stream open for new events (default true); false ends it once caught up.
    pub follow: Option<bool>,
}

/// `GET /v1/events`: Server-Sent Events: `event: transition` for every lifecycle transition
/// (from, to, cause, operation) and `event: engine` for what the engine observed that is not a
/// state change (a stop escalated, a QEMU adopted after a crash); `id:` is the sequence number,
/// `data:` an EventView. Replays from the store first, so `since=N` after a disconnect misses
/// nothing.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = EventView, description = "A stream of events")))]
async fn events(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let follow = q.follow.unwrap_or(true);
    let state = (q.since, VecDeque::new(), d.clone());
    let caller = Arc::new(caller);
    let stream = futures_util::stream::unfold(state, move |(mut after, mut queue, d)| {
        let caller = caller.clone();
        async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((Ok(event), (after, queue, d)));
                }
                // Subscribe before reading, so a transition between the read and the wait wakes us.
                let changed = d.changed.clone();
                let woken = changed.notified();
                let local = d.local.clone();
                let page = blocking(move || local.events_since(after, 256))
                    .await
                    .and_then(|r| r.map_err(ApiError::from));
                match page {
                    Ok(page) if !page.is_empty() => {
                        for e in page {
                            after = e.seq();
                            if !caller.sees(event_owner(&e)) {
                                continue;
                            }
                            let kind = match e {
                                EventView::Transition { .. } => "transition",
                                EventView::Engine { .. } => "engine",
                            };
                            queue.push_back(
                                SseEvent::default()
                                    .id(after.to_string())
                                    .event(kind)
                                    .data(serde_json::to_string(&e).expect("events serialise")),
                            );
                        }
                    }
                    _ if !follow => return None,
                    _ => {
                        // Also wake periodically: transitions made by another process (a CLI with
                        // HANGAR_DAEMON=never) reach the store without notifying us.
                        let _ = tokio::time::timeout(Duration::from_millis(500), woken).await;
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /v1/events/page` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPageQuery {
    /// Events after this sequence number.
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 256, at most 10000).
    pub limit: Option<usize>,
}

/// `GET /v1/events/page`: the same events as JSON, one page at a time (what `hangar events`
/// reads).
#[utoipa::path(get, path = "/v1/events/page", params(EventPageQuery),
    responses((status = 200, body = [EventView])))]
async fn events_page(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EventPageQuery>,
) -> ApiResult<Json<Vec<EventView>>> {
    let limit = q.limit.unwrap_or(256).clamp(1, 10_000);
    let local = d.local.clone();
    Ok(Json(
        blocking(move || -> hangar_control::Result<Vec<EventView>> {
            // Read on until `limit` events the caller may see are found or the stream ends, so
            // a page is never empty while visible events follow.
            let mut out = Vec::new();
            let mut after = q.since;
            loop {
                let page = local.events_since(after, 1000)?;
                let Some(last) = page.last() else {
                    return Ok(out);
                };
                after = last.seq();
                for e in page {
                    if caller.sees(event_owner(&e)) {
                        out.push(e);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
            }
        })
        .await??,
    ))
}

/// The tenant an event belongs to: its VM's (a tenant's VMs are named `tenant--name`);
/// reconcile passes (`fleet`) belong to the host.
fn event_owner(e: &EventView) -> Option<&str> {
    hangar_core::ids::tenant_prefix(e.vm())
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    let engine = d.engine().clone();
    let (by_state, store_seconds) = blocking(move || {
        let started = Instant::now();
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        if let Ok(list) = engine.list() {
            for vm in list {
                *by_state.entry(vm.state.as_str().to_string()).or_default() += 1;
            }
        }
        (by_state, started.elapsed().as_secs_f64())
    })
    .await?;
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        d.metrics.render(&by_state, store_seconds),
    )
        .into_response())
}

/// Every request passes here: it finds the caller (a bearer token on TCP, the peer's uid on
/// the unix socket), asks the route table whether the caller's role allows the route at all,
/// records a mutating request in the audit log *before* it runs (refusing it with `503
/// E_AUDIT_UNAVAILABLE` if that fails) and its outcome after, and counts and times it.
async fn gate(State(d): State<Arc<Daemon>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let target = request.uri().path().to_string();
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .map(|c| c.0);
    let gate = auth::gate_of(&method, &route);
    let finish = |d: &Daemon, response: Response| {
        let status = response.status().as_u16();
        d.metrics.request(
            method.as_str(),
            &route,
            status,
            started.elapsed().as_secs_f64(),
        );
        if let Some(code) = response
            .headers()
            .get("x-hangar-error")
            .and_then(|v| v.to_str().ok())
        {
            d.metrics.error(code);
        }
        response
    };
    if gate == Some(auth::Gate::Open) {
        let response = next.run(request).await;
        return finish(&d, response);
    }
    let caller = match d.caller(&request, peer) {
        Ok(c) => c,
        Err((peer_name, why)) => {
            d.trail
                .failed_auth(&peer_name, &format!("{method} {route}"), &target, &why);
            let mut response = auth::unauthorized(&why).into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return finish(&d, response);
        }
    };
    let mutating = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && route != "/v1/validate"
        && route != "/v1/plan";
    let entry = |result: String, detail: Option<String>| hangar_audit::NewEntry {
        at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
        who: caller.who.clone(),
        what: format!("{method} {route}"),
        target: target.clone(),
        result,
        detail,
    };
    // What the caller's role never allows is refused before any handler looks at it.
    let refused = match gate {
        Some(auth::Gate::Action(action)) => caller
            .allow(action, Resource::Host, || unreachable!())
            .err(),
        _ => None,
    };
    if let Some(refusal) = refused {
        let response = refusal.into_response();
        if mutating {
            let _ = d.trail.record(entry(
                ErrorCode::Forbidden.as_str().into(),
                Some(format!("scope {}", caller.scope)),
            ));
        }
        return finish(&d, response);
    }
    if mutating {
        if let Err(why) = d.trail.record(entry("requested".into(), None)) {
            eprintln!("hangard: AUDIT FAILURE, refusing {method} {target}: {why}");
            let response = ApiError::new(
                ErrorCode::AuditUnavailable,
                format!("the audit log cannot be written, so nothing was done: {why}"),
                None,
                None,
            )
            .into_response();
            return finish(&d, response);
        }
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    if mutating {
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-hangar-error")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut detail: Vec<String> = Vec::new();
        if let Some(op) = response
            .headers()
            .get("x-hangar-operation")
            .and_then(|v| v.to_str().ok())
        {
            detail.push(format!("operation {op}"));
        }
        if let Some(more) = response
            .headers_mut()
            .remove("x-hangar-audit-detail")
            .and_then(|v| v.to_str().ok().map(String::from))
        {
            detail.push(more);
        }
        // A 202 means the operation was accepted; its end gets an entry of its own.
        let result =
            code.unwrap_or_else(|| if status == 202 { "accepted" } else { "ok" }.to_string());
        let detail = (!detail.is_empty()).then(|| detail.join("; "));
        if let Err(e) = d.trail.record(entry(result, detail)) {
            // The action happened but its outcome is not audited (its request is): say so.
            eprintln!("hangard: AUDIT FAILURE recording the outcome of {method} {target}: {e}");
            d.metrics.error(ErrorCode::AuditUnavailable.as_str());
        }
    }
    finish(&d, response)
}

impl Daemon {
    /// Who sent `request`: on TCP the holder of a stored bearer token (the `Bearer` scheme in
    /// any case), on the unix socket the peer's uid. Else the peer and why it was refused.
    fn caller(&self, request: &Request, peer: Option<Peer>) -> Result<Caller, (String, String)> {
        match peer {
            Some(Peer {
                tcp: Some(addr), ..
            }) => {
                let presented = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (scheme, token) = v.trim().split_once(' ')?;
                        scheme
                            .eq_ignore_ascii_case("bearer")
                            .then(|| token.trim().to_string())
                    });
                let peer = addr.ip().to_string();
                let Some(token) = presented else {
                    return Err((peer, "missing bearer token".into()));
                };
                let found = {
                    let store = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    hangar_control::tokens::authenticate(&store, &token)
                };
                match found {
                    Ok(Some(t)) => Ok(Caller {
                        scope: t.scope,
                        who: format!("token:{} ({addr})", t.id),
                    }),
                    Ok(None) => Err((peer, "unknown bearer token".into())),
                    Err(e) => Err((peer, format!("tokens cannot be checked: {}", e.message))),
                }
            }
            Some(Peer { uid: Some(uid), .. }) => match self.uids.scope_of(uid, self.own_uid) {
                Some(scope) => Ok(Caller {
                    scope,
                    who: format!("local:uid={uid}"),
                }),
                None => Err((
                    format!("uid {uid}"),
                    format!(
                        "unix-socket user {uid} is not mapped to a principal (hangard --map-uid)"
                    ),
                )),
            },
            _ => Err(("unknown".into(), "the peer cannot be identified".into())),
        }
    }
}

/// `DELETE /v1/vms/{name}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Stop it first if it runs.
    #[serde(default)]
    pub force: bool,
    /// Answer once done.
    #[serde(default)]
    pub wait: bool,
}

/// `DELETE /v1/vms/{name}`: remove a VM that is not running (or any, with `force=true`).
#[utoipa::path(delete, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name"), DeleteQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_vm(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let request = OperationRequest::Delete {
        vm: name,
        force: q.force,
    };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.wait).await
}

/// `GET /v1/vms/{name}/snapshots`
#[utoipa::path(get, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Object, description = "SnapshotInfo list")))]
async fn list_vm_snapshots(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let view = d.visible_vm(&caller, Action::SnapshotRead, &name).await?;
    let local = d.local.clone();
    let mut list = blocking(move || local.snapshots(Some(&view.name))).await??;
    list.retain(|s| caller.sees(s.tenant.as_ref().map(|t| t.as_str())));
    Ok(Json(list))
}

/// `GET /v1/snapshots`: every snapshot the caller may see.
#[utoipa::path(get, path = "/v1/snapshots", responses((status = 200, body = Object, description = "SnapshotInfo list")))]
async fn list_snapshots(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let local = d.local.clone();
    let mut list = blocking(move || local.snapshots(None)).await??;
    list.retain(|s| caller.sees(s.tenant.as_ref().map(|t| t.as_str())));
    Ok(Json(list))
}

/// `POST /v1/vms/{name}/snapshots`: save the VM's memory.
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name"), WaitQuery),
    request_body = SnapshotRequest,
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"), (status = 409, body = ErrorBody)))]
async fn save_snapshot(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: SnapshotRequest = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        bad_body(
            "snapshot request",
            e,
            "send {\"id\": \"name\", \"sleep\": bool}",
        )
    })?;
    let request = OperationRequest::SnapshotSave {
        vm: name,
        id: req.id,
        sleep: req.sleep,
    };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.wait).await
}

/// `POST /v1/vms/{name}/snapshots/{id}/restore`
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots/{id}/restore",
    params(("name" = String, Path, description = "VM name"), ("id" = String, Path, description = "Snapshot id"), WaitQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn restore_snapshot(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath((name, id)): UrlPath<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    // The snapshot id is resolved in the VM's tenant by the engine's side (hangar-control),
    // so a tenant reaches only its own snapshots.
    let request = scoped(
        &d,
        &caller,
        OperationRequest::SnapshotRestore { vm: name, id },
    )
    .await?;
    submit(d, &caller, request, q.wait).await
}

/// `DELETE /v1/snapshots/{id}`
#[utoipa::path(delete, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "Snapshot id"), WaitQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_snapshot(
    State(d): State<Arc<Daemon>>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let request = scoped(&d, &caller, OperationRequest::SnapshotDelete { id }).await?;
    submit(d, &caller, request, q.wait).await
}

/// `POST /v1/validate`: every problem in a spec. Always 200; `ok` tells.
#[utoipa::path(post, path = "/v1/validate", request_body(content = Object, description = "A VM spec"),
    responses((status = 200, body = Object, description = "{ok, errors, spec_hash}")))]
async fn validate(
    State(d): State<Arc<Daemon>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body = body_bytes(body)?;
    Ok(Json(match spec_from_body(&body) {
        // The files it names must be ones this host lets specs use.
        Ok(c) => match d.local.check_paths(&c.spec) {
            Ok(()) => serde_json::json!({ "ok": true, "errors": [], "spec_hash": c.hash.0 }),
            Err(e) => serde_json::json!({ "ok": false, "errors": e.errors }),
        },
        Err(ApiError(_, e)) if !e.errors.is_empty() => {
            serde_json::json!({ "ok": false, "errors": e.errors })
        }
        Err(e) => return Err(e),
    }))
}

/// `POST /v1/plan`: the plan `POST /v1/vms` + start would run on this host; touches nothing.
#[utoipa::path(post, path = "/v1/plan", request_body(content = Object, description = "A VM spec"),
    responses((status = 200, body = Object, description = "A plan"), (status = 400, body = ErrorBody)))]
async fn plan(
    State(d): State<Arc<Daemon>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let spec = spec_from_body(&body_bytes(body)?)?;
    let plan = hangar_plan::plan(&spec, d.engine().facts())
        .map_err(|e| ApiError::new(e.code(), e.to_string(), e.path(), None))?;
    Ok(Json(serde_json::to_value(plan).expect("plans serialise")))
}

/// `GET /v1/openapi.json`
async fn openapi() -> Response {
    ([("content-type", "application/json")], openapi_json()).into_response()
}

async fn not_found() -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidArgument,
        "no such endpoint",
        None,
        Some("GET /v1/openapi.json lists every endpoint".into()),
    );
    e.0 = 404;
    e
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidArgument,
        format!("this endpoint does not take {method}"),
        None,
        Some("GET /v1/openapi.json lists every endpoint and its methods".into()),
    );
    e.0 = 405;
    e
}

/// Serves the API on a TCP listener, every request authenticated by a bearer token: over TLS
/// with `tls` (what `hangard` does unless told `--insecure-plaintext`), else plain HTTP.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = daemon.limits;
    server::run(
        server::Listener::Tcp(listener, tls),
        router(daemon),
        limits,
        shutdown,
    )
    .await
}

/// Serves the API on the unix socket until `shutdown` resolves (used by `main` and by tests).
pub async fn serve(
    listener: tokio::net::UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = daemon.limits;
    server::run(
        server::Listener::Unix(listener),
        router(daemon),
        limits,
        shutdown,
    )
    .await
}

/// The OpenAPI 3 document of API v1.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar API",
        version = "1",
        description = "The hangard REST API. Errors carry a stable code (GET /v1/openapi.json; `hangar errors`)."
    ),
    paths(
        health,
        list_vms,
        get_vm,
        create_vm,
        vm_action,
        delete_vm,
        list_vm_snapshots,
        list_snapshots,
        save_snapshot,
        restore_snapshot,
        delete_snapshot,
        create_operation,
        list_operations,
        get_operation,
        list_images,
        validate,
        plan,
        events,
        events_page,
        fleet::list_tenants,
        fleet::put_tenant,
        fleet::delete_tenant,
        fleet::list_pools,
        fleet::create_pool,
        fleet::get_pool,
        fleet::update_pool,
        fleet::delete_pool,
        fleet::claim,
        fleet::list_instances,
        fleet::release_instance,
        fleet::fleet_status,
        fleet::reconcile_now,
        admin::list_tokens,
        admin::create_token,
        admin::delete_token,
        admin::host
    ),
    components(schemas(VmView, ErrorBody, Health, StartRequest, StopRequest, SnapshotRequest, VmAction,
        Operation, OperationRequest, OperationResult, EventView, ImageView, TokenRequest, TokenView,
        NewToken, admin::HostView)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Documents the TCP listener's bearer tokens.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on the TCP listener (`hangard --listen-tcp`). A token has a scope: admin, or one tenant with a role (viewer, operator, owner); a tenant's token sees only its tenant's objects and resolves names inside its namespace (`web` means `acme--web`). On the unix socket the peer's uid decides (root and the daemon's user are admins; others only with `hangard --map-uid`). Create tokens with `hangar token create`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as served and committed (`schema/openapi-v1.json`).
pub fn openapi_json() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("openapi serialises");
    s.push('\n');
    s
}

/// The API's routes.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(get_vm).delete(delete_vm))
        .route(
            "/v1/vms/{name}/snapshots",
            get(list_vm_snapshots).post(save_snapshot),
        )
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/operations",
            get(list_operations).post(create_operation),
        )
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/images", get(list_images))
        .route("/v1/events/page", get(events_page))
        .route(
            "/v1/vms/{name}/snapshots/{id}/restore",
            post(restore_snapshot),
        )
        .route("/v1/vms/{name}/{action}", post(vm_action))
        .route("/v1/snapshots/{id}", axum::routing::delete(delete_snapshot))
        .route("/v1/validate", post(validate))
        .route("/v1/plan", post(plan))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics_text))
        .route("/v1/tenants", get(fleet::list_tenants))
        .route(
            "/v1/tenants/{id}",
            axum::routing::put(fleet::put_tenant).delete(fleet::delete_tenant),
        )
        .route("/v1/pools", get(fleet::list_pools).post(fleet::create_pool))
        .route(
            "/v1/pools/{pool}",
            get(fleet::get_pool)
                .patch(fleet::update_pool)
                .delete(fleet::delete_pool),
        )
        .route("/v1/pools/{pool}/claim", post(fleet::claim))
        .route("/v1/instances", get(fleet::list_instances))
        .route(
            "/v1/instances/{id}",
            axum::routing::delete(fleet::release_instance),
        )
        .route("/v1/fleet", get(fleet::fleet_status))
        .route("/v1/fleet/reconcile", post(fleet::reconcile_now))
        .route(
            "/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::delete_token),
        )
        .route("/v1/host", get(admin::host))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), gate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

/// Binds the unix socket, refusing if another daemon answers on it. Mode 0600 (only the
/// daemon's user connects), or 0666 with `shared` (other users mapped with `--map-uid`
/// connect; the peer's uid decides what each may do, and unmapped ones are refused).
pub fn bind(socket: &Path, shared: bool) -> std::io::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        use std::os::unix::fs::FileTypeExt;
        // Only a stale socket is ever removed: a file, a directory or a symlink at the path
        // (a typo in --socket, or a trap) is left alone and refused.
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; hangard removes only a stale socket of its own",
                    socket.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another hangard is listening on {}", socket.display()),
            ));
        }
        std::fs::remove_file(socket)?;
    }
    // Create the socket with no group/other permissions from the start (no chmod race).
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = tokio::net::UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = listener?;
    if shared {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_worker_fails_its_request_with_a_coded_500_and_the_next_one_runs() {
        let failed = blocking(|| -> u32 { panic!("boom in a handler") })
            .await
            .unwrap_err();
        assert_eq!(failed.0, 500);
        assert_eq!(failed.1.error_code(), Some(ErrorCode::EngineFailed));
        assert!(failed.1.message.contains("boom in a handler"), "{failed:?}");
        assert_eq!(blocking(|| 7).await.unwrap(), 7);
    }
}

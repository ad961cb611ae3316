//! `hangard`, the node daemon: Hangar's REST API v1 on a unix socket.
//!
//! Every handler is a thin translation between HTTP and the engine library the CLI uses
//! (`hangar-qemu`); the wire types live in `hangar-api`. Engine calls block (they wait for
//! guests), so they run on plain worker threads, never on the async runtime's threads. VMs never
//! depend on the daemon: QEMU processes outlive it, and a restarted daemon finds them again
//! through the store (PID + start time + QMP), exactly as a later CLI invocation does.

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
use axum::{Json, Router};
use hangar_api::{http_status, ErrorBody, Health, SnapshotRequest, StopRequest, VmView};
use hangar_core::cancel::CancelToken;
use hangar_core::contracts::{
    EventKind, Events, Lifecycle, SaveMode, SnapshotInfo, Snapshots, StopMode,
};
use hangar_core::error::{Coded, Error, ErrorCode};
use hangar_core::ids::{SnapshotId, VmName};
use hangar_core::lifecycle::{LifecycleObserver, TransitionEvent};
use hangar_qemu::QemuEngine;
use hangar_spec::{Format, SpecErrors};
use serde::Deserialize;
use utoipa::OpenApi;

pub mod metrics;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The daemon's shared state.
pub struct Daemon {
    /// The engine, shared with nothing else in this process.
    pub engine: Arc<QemuEngine>,
    /// Woken on every transition, so event streams need not poll.
    changed: Arc<tokio::sync::Notify>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// The audit log (`<home>/audit.log`): one hash-chained entry per mutating request.
    audit: std::sync::Mutex<hangar_audit::AuditLog>,
    /// Bumped on every transition this process makes.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// `GET /v1/vms`, serialised: (when, generation, body).
    list_cache: tokio::sync::Mutex<Option<(Instant, u64, Bytes)>>,
}

/// How stale `GET /v1/vms` may be when no transition happened in this daemon: changes made
/// elsewhere (a QEMU dying, a CLI with HANGAR_DAEMON=never) show within this time.
pub const LIST_MAX_AGE: Duration = Duration::from_secs(1);

/// Who is on the other end of a connection: the peer's uid from the unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

struct Wake(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicU64>);

impl LifecycleObserver for Wake {
    fn on_transition(&self, _: &TransitionEvent) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.notify_waiters();
    }
}

impl Daemon {
    /// Wraps an engine; opens (or creates) the audit log in the engine's home.
    pub fn new(engine: QemuEngine) -> Result<Daemon, hangar_audit::AuditError> {
        let audit = hangar_audit::AuditLog::open(engine.home().join("audit.log"))?;
        if let Some(torn) = audit.recovered_tail() {
            eprintln!(
                "hangard: removed a torn, never-acknowledged audit line: {}",
                String::from_utf8_lossy(torn)
            );
        }
        let changed = Arc::new(tokio::sync::Notify::new());
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        engine.observe(Arc::new(Wake(changed.clone(), generation.clone())));
        Ok(Daemon {
            engine: Arc::new(engine),
            changed,
            metrics: metrics::Metrics::default(),
            audit: std::sync::Mutex::new(audit),
            generation,
            list_cache: tokio::sync::Mutex::new(None),
        })
    }
}

/// An error response: a status and a coded body.
#[derive(Debug)]
pub struct ApiError(u16, Box<ErrorBody>);

impl ApiError {
    fn new(
        code: ErrorCode,
        message: impl Into<String>,
        path: Option<String>,
        hint: Option<String>,
    ) -> ApiError {
        ApiError(
            http_status(code),
            Box::new(ErrorBody {
                code: code.as_str().to_string(),
                message: message.into(),
                path,
                hint: hint.unwrap_or_else(|| code.typical_fix().to_string()),
                errors: vec![],
            }),
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::new(e.code(), e.to_string(), e.path(), Coded::hint(&e))
    }
}

impl From<SpecErrors> for ApiError {
    fn from(e: SpecErrors) -> ApiError {
        let first = e.0[0].clone();
        let mut err = ApiError::new(
            first.code,
            first.message.clone(),
            Some(first.path.clone()).filter(|p| !p.is_empty()),
            Some(first.hint.clone()),
        );
        err.1.errors =
            e.0.iter()
                .map(|d| serde_json::to_value(d).expect("json"))
                .collect();
        err
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
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await
        .expect("engine worker thread ended without an answer")
}

fn vm_name(name: &str) -> ApiResult<VmName> {
    VmName::new(name).map_err(|e| Error::InvalidName(e).into())
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
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

fn view(engine: &QemuEngine, vm: &VmName) -> Result<VmView, Error> {
    engine.record(vm).map(|r| VmView::from_record(&r))
}

/// `GET /v1/health`
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
async fn health(State(d): State<Arc<Daemon>>) -> Json<Health> {
    let facts = d.engine.facts();
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

/// `GET /v1/vms`: every VM, refreshed against reality.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmView]), (status = 500, body = ErrorBody)))]
async fn list_vms(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
    // One refresh serves every concurrent reader: the lock makes the others wait for it.
    let mut cache = d.list_cache.lock().await;
    let generation = d.generation.load(std::sync::atomic::Ordering::SeqCst);
    if let Some((at, seen, body)) = cache.as_ref() {
        if *seen == generation && at.elapsed() < LIST_MAX_AGE {
            return Ok(([("content-type", "application/json")], body.clone()).into_response());
        }
    }
    let engine = d.engine.clone();
    let views = blocking(move || -> Result<Vec<VmView>, Error> {
        let names: Vec<VmName> = engine.list()?.into_iter().map(|s| s.name).collect();
        names.iter().map(|n| view(&engine, n)).collect()
    })
    .await?;
    let body = Bytes::from(serde_json::to_vec(&views).expect("views serialise"));
    // Refreshing may itself record transitions (a dead QEMU becomes failed): take the
    // generation after it, so the next reader does not recompute for our own changes.
    let generation = d.generation.load(std::sync::atomic::Ordering::SeqCst);
    *cache = Some((Instant::now(), generation, body.clone()));
    Ok(([("content-type", "application/json")], body).into_response())
}

/// `GET /v1/vms/{name}`
#[utoipa::path(get, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
async fn get_vm(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<VmView>> {
    let vm = vm_name(&name)?;
    let engine = d.engine.clone();
    Ok(Json(blocking(move || view(&engine, &vm)).await?))
}

/// `POST /v1/vms`: define a VM from a spec (JSON, the shape of vm.json). Idempotent for an
/// identical spec; `E_VM_EXISTS` (409) for a different spec under the same name.
#[utoipa::path(post, path = "/v1/vms", request_body(content = Object, description = "A VM spec (schema/vm-spec-v1.json)"),
    responses((status = 201, body = VmView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_vm(
    State(d): State<Arc<Daemon>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<VmView>)> {
    let spec = spec_from_body(&body_bytes(body)?)?;
    let engine = d.engine.clone();
    let view = blocking(move || {
        engine.define(&spec.spec)?;
        view(&engine, &spec.spec.name)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The lifecycle actions of `POST /v1/vms/{name}/{action}`.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Boot and wait for the guest.
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

/// `POST /v1/vms/{name}/{action}`: start, stop, pause, resume or reboot; waits until done.
#[utoipa::path(post, path = "/v1/vms/{name}/{action}",
    params(("name" = String, Path, description = "VM name"), ("action" = Action, Path, description = "What to do")),
    request_body(content = Option<StopRequest>, description = "For stop only"),
    responses((status = 200, body = VmView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn vm_action(
    State(d): State<Arc<Daemon>>,
    UrlPath((name, action)): UrlPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<VmView>> {
    let vm = vm_name(&name)?;
    let action: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
        .map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("unknown action {action:?}"),
                None,
                Some("use start, stop, pause, resume or reboot".into()),
            )
        })?;
    let body = body_bytes(body)?;
    let stop: StopRequest = if body.is_empty() {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("invalid stop request: {e}"),
                None,
                Some("send {\"force\": bool, \"timeout_s\": n}".into()),
            )
        })?
    };
    let engine = d.engine.clone();
    let was_running = matches!(action, Action::Start);
    let view = blocking(move || -> Result<VmView, Error> {
        let c = CancelToken::new();
        match action {
            Action::Start => engine.start(&vm, &c).map(drop),
            Action::Stop => {
                let mode = if stop.force {
                    StopMode::Force
                } else {
                    StopMode::Graceful {
                        timeout: Duration::from_secs(stop.timeout_s.unwrap_or(30)),
                    }
                };
                engine.stop(&vm, mode, &c).map(drop)
            }
            Action::Pause => engine.pause(&vm).map(drop),
            Action::Resume => engine.resume(&vm).map(drop),
            Action::Reboot => engine.reboot(&vm, &c).map(drop),
        }?;
        view(&engine, &vm)
    })
    .await?;
    if was_running {
        if let Some(ms) = view.boot_ms {
            d.metrics.boot(ms as f64 / 1000.0);
        }
    }
    Ok(Json(view))
}

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Replay from after this sequence number (0: from the beginning of the store's history).
    #[serde(default)]
    pub since: u64,
    /// Keep the stream open for new events (default true); false ends it once caught up.
    pub follow: Option<bool>,
}

/// `GET /v1/events`: Server-Sent Events, one per lifecycle transition (`event: transition`,
/// `id:` its sequence number, `data:` the transition as JSON). Replays from the store first, so
/// `since=N` after a disconnect misses nothing.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", description = "A stream of transition events")))]
async fn events(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let follow = q.follow.unwrap_or(true);
    let state = (q.since, VecDeque::new(), d.clone());
    let stream = futures_util::stream::unfold(state, move |(mut after, mut queue, d)| async move {
        loop {
            if let Some(event) = queue.pop_front() {
                return Some((Ok(event), (after, queue, d)));
            }
            // Subscribe before reading, so a transition between the read and the wait wakes us.
            let changed = d.changed.clone();
            let woken = changed.notified();
            let engine = d.engine.clone();
            let page = blocking(move || engine.events_since(after, 256)).await;
            match page {
                Ok(page) if !page.events.is_empty() => {
                    for e in page.events {
                        after = e.seq;
                        if let EventKind::Transition(t) = &e.kind {
                            let data = serde_json::json!({ "seq": e.seq, "vm": t.vm, "from": t.from, "to": t.to, "at": t.at, "cause": t.cause, "operation": t.operation });
                            queue.push_back(
                                SseEvent::default()
                                    .id(e.seq.to_string())
                                    .event("transition")
                                    .data(data.to_string()),
                            );
                        }
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
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(d): State<Arc<Daemon>>) -> Response {
    let engine = d.engine.clone();
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
    .await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        d.metrics.render(&by_state, store_seconds),
    )
        .into_response()
}

/// Counts and times every request, counts error responses by code, and writes one audit
/// entry per mutating request (who, what, target, result).
async fn observe(State(d): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let target = request.uri().path().to_string();
    let who = match request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .and_then(|c| c.0.uid)
    {
        Some(uid) => format!("local:uid={uid}"),
        None => "local:unknown".to_string(),
    };
    let response = next.run(request).await;
    let status = response.status().as_u16();
    d.metrics.request(
        method.as_str(),
        &route,
        status,
        started.elapsed().as_secs_f64(),
    );
    let code = response
        .headers()
        .get("x-hangar-error")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if let Some(code) = &code {
        d.metrics.error(code);
    }
    let mutating = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if mutating && route != "/v1/validate" && route != "/v1/plan" {
        let entry = hangar_audit::NewEntry {
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
            who,
            what: format!("{method} {route}"),
            target,
            result: code.unwrap_or_else(|| "ok".into()),
            detail: None,
        };
        let appended = d
            .audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(entry);
        if let Err(e) = appended {
            // The action happened but is not audited: say so loudly rather than hide it.
            eprintln!("hangard: AUDIT FAILURE: {e}");
            d.metrics.error("E_AUDIT_WRITE");
        }
    }
    response
}

/// `DELETE /v1/vms/{name}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Stop it first if it runs.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /v1/vms/{name}`: remove a VM that is not running (or any, with `force=true`).
#[utoipa::path(delete, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name"), DeleteQuery),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_vm(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let vm = vm_name(&name)?;
    let engine = d.engine.clone();
    blocking(move || -> Result<(), Error> {
        if q.force {
            engine.stop(&vm, StopMode::Force, &CancelToken::new())?;
        }
        engine.undefine(&vm)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/vms/{name}/snapshots`
#[utoipa::path(get, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Object, description = "SnapshotInfo list")))]
async fn list_snapshots(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let vm = vm_name(&name)?;
    let engine = d.engine.clone();
    Ok(Json(
        blocking(move || engine.list_snapshots(Some(&vm))).await?,
    ))
}

/// `POST /v1/vms/{name}/snapshots`: save the VM's memory.
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name")),
    request_body = SnapshotRequest, responses((status = 201, body = Object, description = "SnapshotInfo"), (status = 409, body = ErrorBody)))]
async fn save_snapshot(
    State(d): State<Arc<Daemon>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    let vm = vm_name(&name)?;
    let req: SnapshotRequest = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("invalid snapshot request: {e}"),
            None,
            None,
        )
    })?;
    let id = SnapshotId::new(req.id).map_err(|e| ApiError::from(Error::InvalidName(e)))?;
    let mode = if req.sleep {
        SaveMode::Sleep
    } else {
        SaveMode::KeepPaused
    };
    let engine = d.engine.clone();
    let info = blocking(move || engine.save(&vm, &id, mode, &CancelToken::new())).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `POST /v1/vms/{name}/snapshots/{id}/restore`
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots/{id}/restore",
    params(("name" = String, Path, description = "VM name"), ("id" = String, Path, description = "Snapshot id")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn restore_snapshot(
    State(d): State<Arc<Daemon>>,
    UrlPath((name, id)): UrlPath<(String, String)>,
) -> ApiResult<Json<VmView>> {
    let vm = vm_name(&name)?;
    let id = SnapshotId::new(id).map_err(|e| ApiError::from(Error::InvalidName(e)))?;
    let engine = d.engine.clone();
    Ok(Json(
        blocking(move || {
            engine.restore(&vm, &id, &CancelToken::new())?;
            view(&engine, &vm)
        })
        .await?,
    ))
}

/// `DELETE /v1/snapshots/{id}`
#[utoipa::path(delete, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "Snapshot id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_snapshot(
    State(d): State<Arc<Daemon>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let id = SnapshotId::new(id).map_err(|e| ApiError::from(Error::InvalidName(e)))?;
    let engine = d.engine.clone();
    blocking(move || engine.delete_snapshot(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/validate`: every problem in a spec. Always 200; `ok` tells.
#[utoipa::path(post, path = "/v1/validate", request_body(content = Object, description = "A VM spec"),
    responses((status = 200, body = Object, description = "{ok, errors, spec_hash}")))]
async fn validate(body: Result<Bytes, BytesRejection>) -> ApiResult<Json<serde_json::Value>> {
    let body = body_bytes(body)?;
    Ok(Json(match spec_from_body(&body) {
        Ok(c) => serde_json::json!({ "ok": true, "errors": [], "spec_hash": c.hash.0 }),
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
    let plan = hangar_plan::plan(&spec, d.engine.facts())
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

/// Serves `router` on `listener` until `shutdown` resolves (used by `main` and by tests).
pub async fn serve(
    listener: tokio::net::UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(daemon).into_make_service_with_connect_info::<Peer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
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
        list_snapshots,
        save_snapshot,
        restore_snapshot,
        delete_snapshot,
        validate,
        plan,
        events
    ),
    components(schemas(VmView, ErrorBody, Health, StopRequest, SnapshotRequest, Action))
)]
pub struct ApiDoc;

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
            get(list_snapshots).post(save_snapshot),
        )
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
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            observe,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

/// Binds the unix socket (mode 0600), refusing if another daemon answers on it.
pub fn bind(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if socket.exists() {
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
    listener
}

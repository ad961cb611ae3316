//! `/v1/operations`, and how every mutating call becomes a journaled operation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{ErrorBody, Operation, OperationKind, OperationRequest, OperationStatus};
use hangar_control::Control;
use hangar_core::access::{Action, Resource};
use hangar_core::error::ErrorCode;
use serde::Deserialize;

use crate::auth::Caller;
use crate::body::*;
use crate::error::*;
use crate::middleware::Ctx;
use crate::routes::vms::*;
use crate::state::*;

/// `?wait=` and `?stream=` on every mutating call.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer once the operation has finished (200 with the operation, or its error with the
    /// error's status) instead of at once (202 with the running operation).
    #[serde(default)]
    pub wait: bool,
    /// Answer at once (200) with a stream, `application/x-ndjson`: one `ProgressLine` per
    /// phase as the operation reports it (`{"phase":"boot"}`), then the operation as it ended
    /// (`{"operation":{...}}`), whatever its status. No phase is lost, however short.
    #[serde(default)]
    pub stream: bool,
}

impl WaitQuery {
    /// How the caller wants its answer.
    pub(crate) fn answer(&self) -> Answer {
        Answer::of(self.wait, self.stream)
    }
}

/// When and how a mutating call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 202 with the running operation.
    Accepted,
    /// The finished operation (or its error).
    Finished,
    /// Its phases as they happen, then the finished operation.
    Streamed,
}

impl Answer {
    /// From `?wait=` and `?stream=` (`stream` wins).
    pub(crate) fn of(wait: bool, stream: bool) -> Answer {
        match (stream, wait) {
            (true, _) => Answer::Streamed,
            (false, true) => Answer::Finished,
            (false, false) => Answer::Accepted,
        }
    }
}

/// How long a progress stream may stay silent before a keep-alive line (a long boot reports
/// nothing between `boot` and `ready`; clients time out reads at a minute).
const STREAM_KEEPALIVE: Duration = Duration::from_secs(10);

/// The streamed answer: every line `lines` yields, as NDJSON, with keep-alives between.
fn progress_stream(
    lines: tokio::sync::mpsc::UnboundedReceiver<hangar_api::ProgressLine>,
) -> Response {
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = match tokio::time::timeout(STREAM_KEEPALIVE, lines.recv()).await {
            Ok(Some(line)) => {
                let mut bytes = serde_json::to_vec(&line).expect("progress lines serialise");
                bytes.push(b'\n');
                bytes
            }
            // The worker is done and the last line sent.
            Ok(None) => return None,
            Err(_) => b"\n".to_vec(),
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), lines))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Journals `request`, carries it out on a worker thread and answers with the operation: at
/// once (202, `Location: /v1/operations/{id}`) or, with `wait`, when it has finished. The
/// request's names must already be resolved for `caller` and its objects checked; its end is
/// recorded in the audit log.
pub(crate) async fn submit(
    d: Arc<Daemon>, caller: &Caller, request: OperationRequest, answer: Answer,
) -> ApiResult<Response> {
    let local = d.local.clone();
    let received = Instant::now();
    let pending = blocking(move || local.begin(request)).await??;
    let begun_ms = received.elapsed().as_secs_f64() * 1000.0;
    let accepted = pending.operation();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (lines, streamed) = tokio::sync::mpsc::unbounded_channel();
    let lines = (answer == Answer::Streamed).then_some(lines);
    let worker = d.clone();
    let who = caller.who.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let op = worker.local.execute(pending, &|phase| {
            if let Some(lines) = &lines {
                let _ = lines.send(hangar_api::ProgressLine::Phase(phase.to_string()));
            }
        });
        let executed_ms = started.elapsed().as_secs_f64() * 1000.0;
        worker.record_end(&who, &op);
        // Where an operation's time goes, for whoever profiles the daemon (`HANGARD_LOG=debug`).
        tracing::debug!(
            op = %op.id,
            kind = op.kind.as_str(),
            begin_ms = begun_ms,
            execute_ms = executed_ms,
            audit_ms = started.elapsed().as_secs_f64() * 1000.0 - executed_ms,
            "operation timings"
        );
        worker.metrics.operation(
            op.kind.as_str(),
            op.status.as_str(),
            started.elapsed().as_secs_f64(),
        );
        if op.kind == OperationKind::Start && op.status == OperationStatus::Succeeded {
            if let Some(ms) = op.result.as_ref().and_then(|r| r.vm.as_ref()?.boot_ms) {
                worker.metrics.boot(ms as f64 / 1000.0);
            }
        }
        // Its end is audited before the stream says it ended, as with `wait`.
        if let Some(lines) = &lines {
            let _ = lines.send(hangar_api::ProgressLine::Operation(Box::new(op.clone())));
        }
        let _ = tx.send(op);
    });
    let id = accepted.id.clone();
    let mut response = if answer == Answer::Finished {
        let op = rx
            .await
            .map_err(|_| internal_error(&"the operation's worker ended without an answer"))?;
        d.ops_changed.notify_waiters();
        match (&op.error, op.status) {
            (Some(e), status) if status != OperationStatus::Succeeded => {
                ApiError::from(e.clone()).into_response()
            }
            _ => Json(op).into_response(),
        }
    } else {
        let waker = d.clone();
        tokio::spawn(async move {
            let _ = rx.await;
            waker.ops_changed.notify_waiters();
        });
        if answer == Answer::Streamed {
            progress_stream(streamed)
        } else {
            let location = format!("/v1/operations/{id}");
            (StatusCode::ACCEPTED, [("location", location)], Json(accepted)).into_response()
        }
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-hangar-operation", v);
    }
    Ok(response)
}

impl Daemon {
    /// Records how an operation ended (best effort: the operation is over either way, and
    /// its end is also in the journal).
    pub(crate) fn record_end(&self, who: &str, op: &Operation) {
        let entry = hangar_audit::NewEntry {
            at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
            who: who.to_string(),
            what: format!("operation.{}", op.kind),
            target: op.target.clone(),
            result: op
                .error
                .as_ref()
                .filter(|_| op.status != OperationStatus::Succeeded)
                .map(|e| e.code.clone())
                .unwrap_or_else(|| "ok".into()),
            detail: Some(format!("operation {} {}", op.id, op.status)),
        };
        if let Err(e) = self.trail.record(entry) {
            tracing::error!("AUDIT FAILURE recording the end of {}: {e}", op.id);
            self.metrics.error(ErrorCode::AuditUnavailable.as_str());
        }
    }
}

/// `POST /v1/operations`: any operation, as an OperationRequest (what the CLI sends).
#[utoipa::path(post, path = "/v1/operations", params(WaitQuery), request_body = OperationRequest,
    responses((status = 202, body = Operation),
        (status = 200, description = "With wait=true, the ended operation; with stream=true, one ProgressLine per phase, then the ended operation",
            content((Operation = "application/json"), (hangar_api::ProgressLine = "application/x-ndjson"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_operation(
    Ctx { d, caller }: Ctx, Query(q): Query<WaitQuery>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: OperationRequest = json_body(body)?;
    // The route lets anyone in; what the request does decides.
    caller.allow(request.action(), Resource::Host, || unreachable!())?;
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.answer()).await
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
pub(crate) async fn list_operations(
    Ctx { d, caller }: Ctx, Query(q): Query<OperationsQuery>,
) -> ApiResult<Json<Vec<Operation>>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let local = d.local.clone();
    // A tenant's share of the newest 10,000 (the journal is not indexed by tenant).
    let fetch = if caller.tenant().is_some() { 10_000 } else { limit };
    let mut ops = blocking(move || local.operations(fetch)).await??;
    ops.retain(|op| caller.sees(op.request.tenant().as_deref()));
    ops.truncate(limit);
    Ok(Json(ops))
}

/// `GET /v1/operations/{id}`; with `wait=true`, answers once it has finished (at most 10 min).
/// `GET /v1/operations/{id}` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationQuery {
    /// Answer once the operation has finished (at most ten minutes later).
    #[serde(default)]
    pub wait: bool,
}

#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path, description = "Operation id"), OperationQuery),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_operation(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>, Query(q): Query<OperationQuery>,
) -> ApiResult<Json<Operation>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let changed = d.ops_changed.notified();
        let local = d.local.clone();
        let lookup = id.clone();
        let op = blocking(move || local.operation(&lookup)).await??;
        caller.allow_owned(Action::OperationRead, op.request.tenant().as_deref(), || {
            ApiError::new(ErrorCode::OperationNotFound, format!("no operation {id:?}"), None, None)
        })?;
        if !q.wait || op.is_done() || Instant::now() >= deadline {
            return Ok(Json(op));
        }
        // Woken when any operation ends; the timeout covers ones another process finishes.
        let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
    }
}

//! `/v1/health`, `/v1/images`, `/metrics`, `/v1/openapi.json` and the coded 404 and 405.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{Health, ImageView};
use hangar_core::error::ErrorCode;

use crate::error::*;
use crate::openapi::*;
use crate::state::*;

/// `GET /v1/health`
#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)))]
pub(crate) async fn health(State(d): State<Arc<Daemon>>) -> Json<Health> {
    let facts = &d.facts;
    let (kvm, why) = facts.kvm.verdict();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        qemu: facts.qemu.version.clone(),
        accel: if kvm { format!("kvm: {why}") } else { format!("tcg: {why}") },
    })
}

/// `GET /v1/images`: the guest images in `$HANGAR_HOME/images`.
#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = [ImageView])))]
pub(crate) async fn list_images(State(d): State<Arc<Daemon>>) -> ApiResult<Json<Vec<ImageView>>> {
    let home = d.local.home().to_path_buf();
    Ok(Json(
        blocking(move || {
            hangar_api::images(&home, std::path::Path::new(hangar_plan::probe::SYSTEM_IMAGE_DIR))
        })
        .await?
        .map_err(|e| ApiError::new(ErrorCode::Io, e.to_string(), None, None))?,
    ))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics_text(State(d): State<Arc<Daemon>>) -> ApiResult<Response> {
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
        d.metrics.render(&by_state, store_seconds)
            + &crate::metrics::gateway_text(&d.fleet.instances(None))
            + &d.node_metrics(),
    )
        .into_response())
}

/// `GET /v1/openapi.json`
pub(crate) async fn openapi() -> Response {
    ([("content-type", "application/json")], openapi_json()).into_response()
}

pub(crate) async fn not_found() -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidArgument,
        "no such endpoint",
        None,
        Some("GET /v1/openapi.json lists every endpoint".into()),
    );
    e.0 = 404;
    e
}

pub(crate) async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    let mut e = ApiError::new(
        ErrorCode::InvalidArgument,
        format!("this endpoint does not take {method}"),
        None,
        Some("GET /v1/openapi.json lists every endpoint and its methods".into()),
    );
    e.0 = 405;
    e
}

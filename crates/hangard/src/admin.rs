//! What only an admin reaches besides tenants: API tokens and the host's settings
//! (`/v1/tokens`, `/v1/host`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{ErrorBody, NewToken, TokenRequest, TokenView};
use serde::{Deserialize, Serialize};

use crate::body::json_body;
use crate::error::ApiResult;
use crate::state::Daemon;

/// `GET /v1/tokens`: every token (never a secret).
#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = [TokenView]), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_tokens(State(d): State<Arc<Daemon>>) -> ApiResult<Json<Vec<TokenView>>> {
    let store = d.tokens.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Json(hangar_control::tokens::list(&store)?))
}

/// `POST /v1/tokens`: a new token; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 201, body = NewToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn create_token(
    State(d): State<Arc<Daemon>>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: TokenRequest = json_body(body)?;
    let scope = hangar_control::tokens::parse_scope(&request.scope)?;
    if let Some(tenant) = scope.tenant() {
        // A token for a tenant that does not exist would reach nothing; say so now.
        d.fleet.tenant(tenant).ok_or_else(|| {
            let mut e = ErrorBody::new(
                hangar_core::error::ErrorCode::TenantNotFound,
                format!("no tenant {tenant}"),
            );
            e.path = Some("scope".into());
            e
        })?;
    }
    let token = {
        let store = d.tokens.lock().unwrap_or_else(|p| p.into_inner());
        hangar_control::tokens::create(&store, &request.name, &scope)?
    };
    let detail = format!("token {} scope {}", token.id, token.scope);
    let mut response = (StatusCode::CREATED, Json(token)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&detail) {
        response.headers_mut().insert("x-hangar-audit-detail", v);
    }
    Ok(response)
}

/// `DELETE /v1/tokens/{id}`: revoke a token (its next request is refused).
#[utoipa::path(delete, path = "/v1/tokens/{id}", params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn delete_token(
    State(d): State<Arc<Daemon>>, UrlPath(id): UrlPath<String>,
) -> ApiResult<Response> {
    {
        let store = d.tokens.lock().unwrap_or_else(|p| p.into_inner());
        hangar_control::tokens::remove(&store, &id)?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("token {id} revoked")) {
        response.headers_mut().insert("x-hangar-audit-detail", v);
    }
    Ok(response)
}

/// The host's settings as `hangar doctor` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    /// Directories specs may name host files under.
    pub allowed_paths: Vec<String>,
    /// The audit log: `ok`, or why changes are refused.
    pub audit: String,
    /// The latest signed head of the audit log (keep a copy elsewhere; `hangar audit verify
    /// --expect-head` checks the log against it).
    #[schema(value_type = Option<Object>)]
    pub audit_head: Option<hangar_audit::SignedHead>,
    /// The public key that signs the audit log's heads.
    pub audit_key: Option<String>,
}

/// `GET /v1/host`: allowed paths and the audit log's state and signed head.
#[utoipa::path(get, path = "/v1/host", responses((status = 200, body = HostView), (status = 403, body = ErrorBody)))]
pub(crate) async fn host(State(d): State<Arc<Daemon>>) -> Json<HostView> {
    let head = d.trail.head();
    Json(HostView {
        allowed_paths: d.local.roots().roots().iter().map(|p| p.display().to_string()).collect(),
        audit: d.trail.unavailable().unwrap_or_else(|| "ok".into()),
        audit_key: head.as_ref().map(|(_, k)| k.clone()),
        audit_head: head.map(|(h, _)| h),
    })
}

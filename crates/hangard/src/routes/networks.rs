//! `/v1/networks`: networks (a subnet behind one host bridge) and their address leases. Only
//! an admin creates or removes one (subnets are the host's to hand out); a tenant sees its own.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{ErrorBody, NetworkRequest, NetworkView};
use hangar_control::Control;
use hangar_core::error::ErrorCode;

use crate::body::*;
use crate::error::*;
use crate::middleware::Ctx;

/// `GET /v1/networks`: the networks the caller may see, with their leases.
#[utoipa::path(get, path = "/v1/networks", responses((status = 200, body = [NetworkView])))]
pub(crate) async fn list_networks(Ctx { d, caller }: Ctx) -> ApiResult<Json<Vec<NetworkView>>> {
    let local = d.local.clone();
    let mut list = blocking(move || local.networks()).await??;
    list.retain(|n| caller.sees(n.tenant.as_deref()));
    Ok(Json(list))
}

/// `GET /v1/networks/{name}`
#[utoipa::path(get, path = "/v1/networks/{name}", params(("name" = String, Path, description = "Network name")),
    responses((status = 200, body = NetworkView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_network(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<NetworkView>> {
    let name = caller.resolve(&name);
    let local = d.local.clone();
    let list = blocking(move || local.networks()).await??;
    list.into_iter()
        .find(|n| n.name == name && caller.sees(n.tenant.as_deref()))
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(ErrorCode::NetworkNotFound, format!("no network {name:?}"), None, None)
        })
}

/// `POST /v1/networks`: create a network and its host bridge.
#[utoipa::path(post, path = "/v1/networks", request_body = NetworkRequest,
    responses((status = 201, body = NetworkView), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "E_NETWORK_EXISTS or E_NETWORK_OVERLAP")))]
pub(crate) async fn create_network(
    Ctx { d, .. }: Ctx, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: NetworkRequest = json_body(body)?;
    let local = d.local.clone();
    let view = blocking(move || local.create_network(&req)).await??;
    let detail = format!("network {} subnet {} nat {}", view.name, view.subnet, view.nat);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&detail) {
        response.headers_mut().insert("x-hangar-audit-detail", v);
    }
    Ok(response)
}

/// `DELETE /v1/networks/{name}`: remove a network no VM uses, and its bridge.
#[utoipa::path(delete, path = "/v1/networks/{name}", params(("name" = String, Path, description = "Network name")),
    responses((status = 204), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "E_NETWORK_IN_USE")))]
pub(crate) async fn delete_network(
    Ctx { d, .. }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let local = d.local.clone();
    blocking(move || local.remove_network(&name)).await??;
    Ok(StatusCode::NO_CONTENT)
}

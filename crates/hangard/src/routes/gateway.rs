//! `/v1/routes`: the gateway's routes to pools' instances, and the gateway's start.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::fleet::RouteRequest;
use hangar_api::ErrorBody;
use hangar_core::access::{Action, Resource};
use hangar_core::error::ErrorCode;
use hangar_core::ids::RouteId;
use hangar_fleet::Route;

use crate::body::json_body;
use crate::error::{ApiError, ApiResult};
use crate::fleet::{bad_id, managed_tenant, pool_id, visible};
use crate::middleware::Ctx;
use crate::state::Daemon;
use crate::Caller;

impl Daemon {
    /// Starts the gateway: listens on every route's address (an address it cannot take is
    /// logged; its routes answer nothing until a restart frees it) and hands what it counts to
    /// the fleet every second, for the pools' idle policies. Call inside the runtime.
    pub fn start_gateway(self: &Arc<Self>) {
        for (address, e) in self.gateway.sync() {
            tracing::error!(%address, "the gateway cannot listen on {address}: {e}");
        }
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                gateway.publish();
            }
        });
    }
}

/// `GET /v1/routes`: the gateway's routes the caller may see.
#[utoipa::path(get, path = "/v1/routes", tag = "fleet", responses((status = 200, body = [Route])))]
pub(crate) async fn list_routes(Ctx { d, caller }: Ctx) -> Json<Vec<Route>> {
    visible(&caller, d.fleet.routes(), |r| r.tenant.as_str(), |r| r)
}

/// `POST /v1/routes`: a new route. The gateway listens on its address before it is added, so
/// a port another program holds is refused here (`E_ROUTE_CONFLICT`), not at the first
/// connection.
#[utoipa::path(post, path = "/v1/routes", tag = "fleet", request_body = RouteRequest,
    responses((status = 201, body = Route), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn create_route(
    Ctx { d, caller }: Ctx, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: RouteRequest = json_body(body)?;
    let tenant = managed_tenant(&caller, request.tenant.as_deref(), "route")?;
    let invalid = |field: &str, message: String, hint: &str| {
        ApiError::new(ErrorCode::InvalidArgument, message, Some(field.into()), Some(hint.into()))
    };
    let address: std::net::IpAddr = match request.address.as_deref() {
        None => std::net::Ipv4Addr::LOCALHOST.into(),
        Some(a) => a.parse().map_err(|_| {
            invalid("address", format!("{a:?} is not an IP address"), "e.g. 127.0.0.1")
        })?,
    };
    // Host-wide resources: a tenant gets loopback and unprivileged ports only.
    if caller.tenant().is_some() && (!address.is_loopback() || request.port < 1024) {
        return Err(invalid(
            "address",
            format!(
                "a tenant's route listens on loopback, on port 1024 or above (asked {address}:{})",
                request.port
            ),
            "leave out address, and pick a port of 1024 or above; an admin can listen elsewhere",
        ));
    }
    let qualify = |name: &str| hangar_core::ids::qualify(&tenant, name);
    let route = Route {
        id: RouteId::new(qualify(&request.id)).map_err(|e| bad_id("route", &request.id, e))?,
        tenant: tenant.clone(),
        listen: std::net::SocketAddr::new(address, request.port),
        matcher: request.matcher.unwrap_or(hangar_fleet::Match::Tcp),
        target: hangar_fleet::RouteTarget {
            pool: pool_id(&qualify(&request.pool))?,
            port: request.guest_port,
        },
        max_waiting: request.max_waiting.unwrap_or(hangar_fleet::routes::DEFAULT_MAX_WAITING),
    };
    let listening = d.gateway.listening().contains(&route.listen);
    if !listening {
        d.gateway.listen(route.listen).map_err(|e| {
            ApiError::new(
                ErrorCode::RouteConflict,
                format!("the gateway cannot listen on {}: {e}", route.listen),
                Some("port".into()),
                Some("pick a port nothing else on the host listens on".into()),
            )
        })?;
    }
    if let Err(e) = d.fleet.add_route(route.clone()) {
        // Stop listening again if nothing else needs the address.
        d.gateway.sync();
        return Err(e.into());
    }
    Ok((StatusCode::CREATED, Json(route)).into_response())
}

/// `DELETE /v1/routes/{id}`: removes a route (its address stops listening when no other route
/// uses it; connections already spliced go on).
#[utoipa::path(delete, path = "/v1/routes/{id}", tag = "fleet", params(("id" = String, Path, description = "Route id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_route(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let route = d.visible_route(&caller, Action::PoolManage, &id)?;
    d.fleet.remove_route(&route.id)?;
    d.gateway.sync();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/routes/{id}`
#[utoipa::path(get, path = "/v1/routes/{id}", tag = "fleet", params(("id" = String, Path, description = "Route id")),
    responses((status = 200, body = Route), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_route(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<Route>> {
    Ok(Json(d.visible_route(&caller, Action::PoolRead, &id)?))
}

impl Daemon {
    /// The route `id` means to `caller`; another tenant's, like a missing one, is
    /// `E_ROUTE_NOT_FOUND`.
    fn visible_route(&self, caller: &Caller, action: Action, id: &str) -> ApiResult<Route> {
        let resolved = caller.resolve(id);
        let id = RouteId::new(&resolved).map_err(|e| bad_id("route", &resolved, e))?;
        let route = self.fleet.route(&id)?;
        caller.allow(action, Resource::Owned(Some(&route.tenant)), || {
            hangar_core::error::Error::from(hangar_fleet::FleetError::RouteNotFound(id.clone()))
                .into()
        })?;
        Ok(route)
    }
}

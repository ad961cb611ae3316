//! `/v1/nodes`: the cluster's nodes (`hangard --cluster`), and an operator's cordon or drain. Without a
//! cluster the host is a cluster of one: listed, but not cordoned (there is nowhere else to go).

use axum::extract::Path as UrlPath;
use axum::Json;
use hangar_api::{ClusterNode, ErrorBody};
use hangar_cluster::Schedule;
use hangar_core::error::ErrorCode;

use crate::error::*;
use crate::middleware::Ctx;
use crate::state::Daemon;

/// This host as the one node of its own cluster.
fn this_host(d: &Daemon) -> ClusterNode {
    let name = crate::cluster::host_name();
    let info = d.node_info(&name, "", None);
    ClusterNode {
        name,
        alive: true,
        schedule: Schedule::Ready,
        this_node: true,
        info: Some(info),
        stats: Some(d.node_stats()),
        report: None,
        problem: None,
    }
}

/// `GET /v1/nodes`: every node, alive or cordoned; `E_CLUSTER_UNAVAILABLE` when etcd does not
/// answer.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = [ClusterNode]), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_nodes(Ctx { d, .. }: Ctx) -> ApiResult<Json<Vec<ClusterNode>>> {
    match d.membership() {
        Some(m) => Ok(Json(m.nodes().await?)),
        None => {
            let d = d.clone();
            Ok(Json(vec![blocking(move || this_host(&d)).await?]))
        }
    }
}

/// `GET /v1/nodes/{name}`
#[utoipa::path(get, path = "/v1/nodes/{name}", params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = ClusterNode), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_node(
    ctx: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<ClusterNode>> {
    let Json(nodes) = list_nodes(ctx).await?;
    nodes.into_iter().find(|n| n.name == name).map(Json).ok_or_else(|| no_node(&name))
}

fn no_node(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidArgument,
        format!("no node {name:?}"),
        Some("name".into()),
        Some("`hangar node ls` lists the nodes".into()),
    )
}

async fn set_schedule(d: &Daemon, name: &str, schedule: Schedule) -> ApiResult<Json<ClusterNode>> {
    let Some(m) = d.membership() else {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "this hangard is not in a cluster, so it has no node to cordon",
            None,
            Some("start hangard with --cluster to join one".into()),
        ));
    };
    Ok(Json(m.set_schedule(name, schedule).await?))
}

/// `POST /v1/nodes/{name}/cordon`: no new instances go to the node; those there stay.
#[utoipa::path(post, path = "/v1/nodes/{name}/cordon", params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = ClusterNode), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn cordon_node(
    Ctx { d, .. }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<ClusterNode>> {
    set_schedule(&d, &name, Schedule::Cordoned).await
}

/// `POST /v1/nodes/{name}/drain`: no new instances go to the node, and the scheduler moves
/// those there to other nodes (the node removes its own once its share is gone).
#[utoipa::path(post, path = "/v1/nodes/{name}/drain", params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = ClusterNode), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn drain_node(
    Ctx { d, .. }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<ClusterNode>> {
    set_schedule(&d, &name, Schedule::Draining).await
}

/// `POST /v1/nodes/{name}/uncordon`: the node takes new instances again (after a cordon or a
/// drain).
#[utoipa::path(post, path = "/v1/nodes/{name}/uncordon", params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = ClusterNode), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn uncordon_node(
    Ctx { d, .. }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<ClusterNode>> {
    set_schedule(&d, &name, Schedule::Ready).await
}

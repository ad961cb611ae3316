//! `/v1/snapshots` and `/v1/vms/{name}/snapshots`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Query};
use axum::response::Response;
use axum::Json;
use hangar_api::{ErrorBody, Operation, OperationRequest, SnapshotRequest};
use hangar_control::Control;
use hangar_core::access::Action;
use hangar_core::contracts::SnapshotInfo;

use crate::body::*;
use crate::error::*;
use crate::middleware::Ctx;
use crate::routes::operations::*;
use crate::routes::vms::*;

/// `GET /v1/vms/{name}/snapshots`
#[utoipa::path(get, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = Object, description = "SnapshotInfo list")))]
pub(crate) async fn list_vm_snapshots(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let view = d.visible_vm(&caller, Action::SnapshotRead, &name).await?;
    let local = d.local.clone();
    let mut list = blocking(move || local.snapshots(Some(&view.name))).await??;
    list.retain(|s| caller.sees(s.tenant.as_ref().map(|t| t.as_str())));
    Ok(Json(list))
}

/// `GET /v1/snapshots`: every snapshot the caller may see.
#[utoipa::path(get, path = "/v1/snapshots", responses((status = 200, body = Object, description = "SnapshotInfo list")))]
pub(crate) async fn list_snapshots(Ctx { d, caller }: Ctx) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let local = d.local.clone();
    let mut list = blocking(move || local.snapshots(None)).await??;
    list.retain(|s| caller.sees(s.tenant.as_ref().map(|t| t.as_str())));
    Ok(Json(list))
}

/// `POST /v1/vms/{name}/snapshots`: save the VM's memory.
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots", params(("name" = String, Path, description = "VM name"), WaitQuery),
    request_body = SnapshotRequest,
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"), (status = 409, body = ErrorBody)))]
pub(crate) async fn save_snapshot(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>, Query(q): Query<WaitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: SnapshotRequest = json_body(body)?;
    let request = OperationRequest::SnapshotSave { vm: name, id: req.id, sleep: req.sleep };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.answer()).await
}

/// `POST /v1/vms/{name}/snapshots/{id}/restore`
#[utoipa::path(post, path = "/v1/vms/{name}/snapshots/{id}/restore",
    params(("name" = String, Path, description = "VM name"), ("id" = String, Path, description = "Snapshot id"), WaitQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn restore_snapshot(
    Ctx { d, caller }: Ctx, UrlPath((name, id)): UrlPath<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    // The snapshot id is resolved in the VM's tenant by the engine's side (hangar-control),
    // so a tenant reaches only its own snapshots.
    let request = scoped(&d, &caller, OperationRequest::SnapshotRestore { vm: name, id }).await?;
    submit(d, &caller, request, q.answer()).await
}

/// `DELETE /v1/snapshots/{id}`
#[utoipa::path(delete, path = "/v1/snapshots/{id}", params(("id" = String, Path, description = "Snapshot id"), WaitQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_snapshot(
    Ctx { d, caller }: Ctx, UrlPath(id): UrlPath<String>, Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let request = scoped(&d, &caller, OperationRequest::SnapshotDelete { id }).await?;
    submit(d, &caller, request, q.answer()).await
}

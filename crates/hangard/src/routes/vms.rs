//! `/v1/vms`, `/v1/validate` and `/v1/plan`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{ErrorBody, Operation, OperationRequest, StartRequest, StopRequest, VmView};
use hangar_control::Control;
use hangar_core::access::{Action, Resource};
use hangar_core::error::{Coded, Error, ErrorCode};
use hangar_core::ids::{SnapshotId, TenantId};
use serde::Deserialize;

use crate::auth::{self, Caller};
use crate::body::*;
use crate::error::*;
use crate::middleware::Ctx;
use crate::routes::operations::*;
use crate::state::*;

/// `GET /v1/vms`: every VM the caller may see (a tenant's token: its tenant's), refreshed
/// against reality.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmView]), (status = 500, body = ErrorBody)))]
pub(crate) async fn list_vms(Ctx { d, caller }: Ctx) -> ApiResult<Response> {
    let (views, body) = d.vm_list().await?;
    let body = if caller.tenant().is_none() {
        body
    } else {
        let mine: Vec<&VmView> =
            views.iter().filter(|v| caller.sees(v.tenant.as_deref())).collect();
        Bytes::from(serde_json::to_vec(&mine).expect("views serialise"))
    };
    Ok(([("content-type", "application/json")], body).into_response())
}

impl Daemon {
    /// Every VM, from a snapshot at most [`LIST_MAX_AGE`] old and invalidated by any
    /// transition: the views and their JSON.
    pub(crate) async fn vm_list(&self) -> ApiResult<(Arc<Vec<VmView>>, Bytes)> {
        // A burst of readers must not queue behind one another: a fresh list is a read lock
        // and two reference counts.
        if let Some(fresh) = self.fresh_list() {
            return Ok(fresh);
        }
        // One refresh serves every concurrent reader: the others wait for it, then find it.
        let _refreshing = self.list_refresh.lock().await;
        if let Some(fresh) = self.fresh_list() {
            return Ok(fresh);
        }
        let local = self.local.clone();
        let views = Arc::new(blocking(move || local.list()).await??);
        let body = Bytes::from(serde_json::to_vec(&*views).expect("views serialise"));
        // Refreshing may itself record transitions (a dead QEMU becomes failed): take the
        // generation after it, so the next reader does not recompute for our own changes.
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let snapshot = (Instant::now(), generation, views.clone(), body.clone());
        *self.list_cache.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        Ok((views, body))
    }

    /// The cached list, if no transition happened since it was made and it is younger than
    /// [`LIST_MAX_AGE`].
    fn fresh_list(&self) -> Option<(Arc<Vec<VmView>>, Bytes)> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let cache = self.list_cache.read().unwrap_or_else(|p| p.into_inner());
        let (at, seen, views, body) = cache.as_ref()?;
        (*seen == generation && at.elapsed() < LIST_MAX_AGE).then(|| (views.clone(), body.clone()))
    }

    /// The VM `name` means to `caller` (inside a tenant's namespace), if the caller may do
    /// `action` to it: its view. Another tenant's VM, like a missing one, is `E_VM_NOT_FOUND`.
    pub(crate) async fn visible_vm(
        &self, caller: &Caller, action: Action, name: &str,
    ) -> ApiResult<VmView> {
        let resolved = caller.resolve(name);
        let vm = vm_name(&resolved)?;
        let local = self.local.clone();
        let lookup = resolved.clone();
        let view = blocking(move || local.get(&lookup)).await??;
        caller.allow_owned(action, view.tenant.as_deref(), || Error::VmNotFound(vm).into())?;
        Ok(view)
    }
}

/// `GET /v1/vms/{name}`
#[utoipa::path(get, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name")),
    responses((status = 200, body = VmView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_vm(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<VmView>> {
    Ok(Json(d.visible_vm(&caller, Action::VmRead, &name).await?))
}

/// `POST /v1/vms`: define a VM from a spec (JSON, the shape of vm.json). Idempotent for an
/// identical spec; `E_VM_EXISTS` (409) for a different spec under the same name.
#[utoipa::path(post, path = "/v1/vms", params(WaitQuery),
    request_body(content = Object, description = "A VM spec (schema/vm-spec-v1.json)"),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_vm(
    Ctx { d, caller }: Ctx, Query(q): Query<WaitQuery>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_bytes(body)?;
    // Refuse a bad spec with every diagnostic before an operation is made.
    spec_from_body(&body)?;
    let spec = serde_json::from_slice(&body).expect("a spec that parsed is JSON");
    let request = scoped(&d, &caller, OperationRequest::Create { spec, base_dir: None }).await?;
    submit(d, &caller, request, q.answer()).await
}

/// `request` as `caller` means it: names resolved inside the caller's tenant, a created VM
/// put in the caller's tenant, and the policy asked about the object it acts on (another
/// tenant's VM or snapshot answers exactly like a missing one).
pub(crate) async fn scoped(
    d: &Daemon, caller: &Caller, mut request: OperationRequest,
) -> ApiResult<OperationRequest> {
    let action = request.action();
    match &mut request {
        OperationRequest::Create { spec, base_dir } => {
            caller.may_use_base_dir(base_dir.as_deref())?;
            let named = spec.get("tenant").and_then(|t| t.as_str()).map(String::from);
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
            let owner = found.as_ref().and_then(|s| s.tenant.as_ref().map(|t| t.to_string()));
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
pub(crate) async fn vm_action(
    Ctx { d, caller }: Ctx, UrlPath((name, action)): UrlPath<(String, String)>,
    Query(q): Query<WaitQuery>, body: Result<Bytes, BytesRejection>,
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
            let s: StartRequest = json_or_default(&body)?;
            OperationRequest::Start { vm: name, no_wait: s.no_wait, timeout_s: s.timeout_s }
        }
        VmAction::Stop => {
            let s: StopRequest = json_or_default(&body)?;
            OperationRequest::Stop { vm: name, force: s.force, timeout_s: s.timeout_s }
        }
        VmAction::Pause => OperationRequest::Pause { vm: name },
        VmAction::Resume => OperationRequest::Resume { vm: name },
        VmAction::Reboot => OperationRequest::Reboot { vm: name },
    };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, q.answer()).await
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
    /// Answer with a progress stream (as `stream` on every mutating call).
    #[serde(default)]
    pub stream: bool,
}

/// `DELETE /v1/vms/{name}`: remove a VM that is not running (or any, with `force=true`).
#[utoipa::path(delete, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM name"), DeleteQuery),
    responses((status = 202, body = Operation), (status = 200, body = Operation, description = "With wait=true"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_vm(
    Ctx { d, caller }: Ctx, UrlPath(name): UrlPath<String>, Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let request = OperationRequest::Delete { vm: name, force: q.force };
    let request = scoped(&d, &caller, request).await?;
    submit(d, &caller, request, Answer::of(q.wait, q.stream)).await
}

/// `POST /v1/validate`: every problem in a spec. Always 200; `ok` tells.
#[utoipa::path(post, path = "/v1/validate", request_body(content = Object, description = "A VM spec"),
    responses((status = 200, body = Object, description = "{ok, errors, spec_hash}")))]
pub(crate) async fn validate(
    State(d): State<Arc<Daemon>>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body = body_bytes(body)?;
    Ok(Json(match spec_from_body(&body) {
        // The files it names must be ones this host lets specs use.
        Ok(c) => match d.local.check_paths(&c.spec) {
            Ok(()) => serde_json::json!({ "ok": true, "errors": [], "spec_hash": c.hash.0 }),
            Err(e) => serde_json::json!({ "ok": false, "errors": ErrorBody::from(e).errors }),
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
pub(crate) async fn plan(
    State(d): State<Arc<Daemon>>, body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let spec = spec_from_body(&body_bytes(body)?)?;
    let plan = hangar_plan::plan(&spec, &d.facts)
        .map_err(|e| ApiError::new(e.code(), e.to_string(), e.path(), None))?;
    Ok(Json(serde_json::to_value(plan).expect("plans serialise")))
}

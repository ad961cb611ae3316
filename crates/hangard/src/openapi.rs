//! The OpenAPI document, generated from the handlers' annotations.

use hangar_api::{
    ErrorBody, EventView, Health, ImageView, NewToken, Operation, OperationRequest,
    OperationResult, SnapshotRequest, StartRequest, StopRequest, TokenRequest, TokenView, VmView,
};
use utoipa::OpenApi;

use crate::routes::events::*;
use crate::routes::operations::*;
use crate::routes::snapshots::*;
use crate::routes::system::*;
use crate::routes::vms::*;
use crate::{admin, fleet};

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
        crate::routes::guest::guest_info,
        crate::routes::guest::get_file,
        crate::routes::guest::put_file,
        crate::routes::guest::exec,
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
        crate::routes::events::cluster_events,
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
        crate::routes::gateway::list_routes,
        crate::routes::gateway::create_route,
        crate::routes::gateway::get_route,
        crate::routes::gateway::delete_route,
        admin::list_tokens,
        admin::create_token,
        admin::delete_token,
        admin::host,
        crate::routes::networks::list_networks,
        crate::routes::networks::get_network,
        crate::routes::networks::create_network,
        crate::routes::networks::delete_network,
        crate::routes::nodes::list_nodes,
        crate::routes::nodes::get_node,
        crate::routes::nodes::cordon_node,
        crate::routes::nodes::uncordon_node,
        crate::routes::nodes::drain_node
    ),
    components(schemas(VmView, ErrorBody, Health, StartRequest, StopRequest, SnapshotRequest, VmAction,
        Operation, OperationRequest, OperationResult, EventView, ImageView, TokenRequest, TokenView,
        NewToken, admin::HostView, hangar_api::NetworkView, hangar_api::LeaseView,
        hangar_api::NetworkRequest, hangar_api::ProgressLine, hangar_api::ClusterNode,
        hangar_api::ClusterEvents, hangar_api::NodeEvent)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Documents the TCP listener's bearer tokens.
pub(crate) struct BearerAuth;

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
    let mut s = ApiDoc::openapi().to_pretty_json().expect("openapi serialises");
    s.push('\n');
    s
}

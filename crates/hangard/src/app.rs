//! The router and the listeners it is served on.

use std::path::Path;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::middleware::*;
use crate::routes::events::*;
use crate::routes::guest;
use crate::routes::operations::*;
use crate::routes::snapshots::*;
use crate::routes::system::*;
use crate::routes::vms::*;
use crate::state::*;
use crate::{admin, fleet, server};

/// Serves the API on a TCP listener, every request authenticated by a bearer token: over TLS
/// with `tls` (what `hangard` does unless told `--insecure-plaintext`), else plain HTTP.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener, daemon: Arc<Daemon>, tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = daemon.limits;
    server::run(server::Listener::Tcp(listener, tls), router(daemon), limits, shutdown).await
}

/// Serves the API on the unix socket until `shutdown` resolves (used by `main` and by tests).
pub async fn serve(
    listener: tokio::net::UnixListener, daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = daemon.limits;
    server::run(server::Listener::Unix(listener), router(daemon), limits, shutdown).await
}

/// The API's routes.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(get_vm).delete(delete_vm))
        .route("/v1/vms/{name}/snapshots", get(list_vm_snapshots).post(save_snapshot))
        .route("/v1/snapshots", get(list_snapshots))
        .route("/v1/operations", get(list_operations).post(create_operation))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/images", get(list_images))
        .route("/v1/events/page", get(events_page))
        .route("/v1/vms/{name}/snapshots/{id}/restore", post(restore_snapshot))
        .route("/v1/vms/{name}/guest", get(guest::guest_info))
        .route("/v1/vms/{name}/files", get(guest::get_file).put(guest::put_file))
        .route("/v1/vms/{name}/exec", post(guest::exec))
        .route("/v1/vms/{name}/{action}", post(vm_action))
        .route("/v1/snapshots/{id}", axum::routing::delete(delete_snapshot))
        .route("/v1/validate", post(validate))
        .route("/v1/plan", post(plan))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics_text))
        .route("/v1/tenants", get(fleet::list_tenants))
        .route(
            "/v1/tenants/{id}",
            axum::routing::put(fleet::put_tenant).delete(fleet::delete_tenant),
        )
        .route("/v1/pools", get(fleet::list_pools).post(fleet::create_pool))
        .route(
            "/v1/pools/{pool}",
            get(fleet::get_pool).patch(fleet::update_pool).delete(fleet::delete_pool),
        )
        .route("/v1/pools/{pool}/claim", post(fleet::claim))
        .route("/v1/cluster/events", get(crate::routes::events::cluster_events))
        .route("/v1/instances", get(fleet::list_instances))
        .route("/v1/instances/{id}", axum::routing::delete(fleet::release_instance))
        .route(
            "/v1/routes",
            get(crate::routes::gateway::list_routes).post(crate::routes::gateway::create_route),
        )
        .route(
            "/v1/routes/{id}",
            get(crate::routes::gateway::get_route).delete(crate::routes::gateway::delete_route),
        )
        .route("/v1/fleet", get(fleet::fleet_status))
        .route("/v1/fleet/reconcile", post(fleet::reconcile_now))
        .route("/v1/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/v1/tokens/{id}", axum::routing::delete(admin::delete_token))
        .route("/v1/host", get(admin::host))
        .route(
            "/v1/networks",
            get(crate::routes::networks::list_networks)
                .post(crate::routes::networks::create_network),
        )
        .route(
            "/v1/networks/{name}",
            get(crate::routes::networks::get_network)
                .delete(crate::routes::networks::delete_network),
        )
        .route("/v1/nodes", get(crate::routes::nodes::list_nodes))
        .route("/v1/nodes/{name}", get(crate::routes::nodes::get_node))
        .route("/v1/nodes/{name}/cordon", post(crate::routes::nodes::cordon_node))
        .route("/v1/nodes/{name}/uncordon", post(crate::routes::nodes::uncordon_node))
        .route("/v1/nodes/{name}/drain", post(crate::routes::nodes::drain_node))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), gate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(daemon)
}

/// Refuses when a hangard answers on `socket`. A socket that accepts connections but never
/// answers is a killed daemon's, still open in a child it forked a moment before it died (a
/// QEMU between fork and exec holds every descriptor until its exec closes them): that lasts
/// milliseconds, so it is waited out (up to 5 s) instead of being taken for a live daemon.
fn still_held(socket: &Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
            return Ok(()); // nobody accepts: stale
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
        let _ = stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nHost: hangard\r\nConnection: close\r\n\r\n");
        let mut head = [0u8; 8];
        if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another hangard is listening on {}", socket.display()),
            ));
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "a process holds {} open without answering (a child of a killed hangard?); find it with `fuser {}` and retry",
                    socket.display(),
                    socket.display()
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Binds the unix socket, refusing if another daemon answers on it. Mode 0600 (only the
/// daemon's user connects), or 0666 with `shared` (other users mapped with `--map-uid`
/// connect; the peer's uid decides what each may do, and unmapped ones are refused).
pub fn bind(socket: &Path, shared: bool) -> std::io::Result<tokio::net::UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        use std::os::unix::fs::FileTypeExt;
        // Only a stale socket is ever removed: a file, a directory or a symlink at the path
        // (a typo in --socket, or a trap) is left alone and refused.
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; hangard removes only a stale socket of its own",
                    socket.display()
                ),
            ));
        }
        still_held(socket)?;
        std::fs::remove_file(socket)?;
    }
    // Create the socket with no group/other permissions from the start (no chmod race).
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = tokio::net::UnixListener::bind(socket);
    rustix::process::umask(old);
    let listener = listener?;
    if shared {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    }
    Ok(listener)
}

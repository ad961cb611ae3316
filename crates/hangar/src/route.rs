//! `hangar route …`: the gateway's routes, through hangard (which listens for them).

use std::io::Write;

use clap::Subcommand;
use hangar_api::fleet::{Match, Route, RouteRequest};
use serde_json::{json, Value};

use crate::fleet::call;
use crate::table::print_listing;
use crate::{Failure, Output};

/// Gateway routes: how connections reach a pool's instances (needs hangard, which listens).
#[derive(Subcommand)]
pub enum RouteCommand {
    /// Add a route: connections to 127.0.0.1:PORT (and, for HTTP, matching Host and path)
    /// go to POOL's instances on GUEST_PORT; with none running, the first connection wakes
    /// one (warm, spare, sleeping or new) and waits for it.
    ///
    /// Example: `hangar route add web --tenant acme --port 8080 --pool web --guest-port 80
    /// --http --host shop.test`
    Add {
        /// Route id (in the tenant's namespace, like pools).
        id: String,
        /// The owning tenant (it owns the pool).
        #[arg(long)]
        tenant: Option<String>,
        /// Host address to listen on (default 127.0.0.1; admins only may pick another).
        #[arg(long)]
        address: Option<String>,
        /// Host port to listen on.
        #[arg(long)]
        port: u16,
        /// The pool whose instances serve it.
        #[arg(long)]
        pool: String,
        /// The port instances serve on.
        #[arg(long)]
        guest_port: u16,
        /// Match HTTP/1.1 requests (by --host and --path-prefix) instead of the whole port.
        #[arg(long)]
        http: bool,
        /// HTTP: the Host to match (any when absent).
        #[arg(long, requires = "http")]
        host: Option<String>,
        /// HTTP: the path prefix to match.
        #[arg(long, requires = "http", default_value = "/")]
        path_prefix: String,
        /// Connections that may wait for an instance at once; beyond, 503 at once.
        #[arg(long)]
        max_waiting: Option<u32>,
    },
    /// Routes.
    Ls {
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        output: Output,
    },
    /// Remove a route.
    Rm {
        /// The route id.
        id: String,
    },
}

/// `hangar route …`
pub fn route(cmd: RouteCommand, out: &mut dyn Write) -> Result<(), Failure> {
    match cmd {
        RouteCommand::Add {
            id,
            tenant,
            address,
            port,
            pool,
            guest_port,
            http,
            host,
            path_prefix,
            max_waiting,
        } => {
            let matcher = http.then_some(Match::Http { host, path_prefix });
            let request =
                RouteRequest { id, tenant, address, port, matcher, pool, guest_port, max_waiting };
            let r: Route = call("POST", "/v1/routes", Some(json!(request)))?;
            let _ = writeln!(
                out,
                "route {}: {} -> {}:{}",
                r.id,
                describe(&r),
                r.target.pool,
                r.target.port
            );
            Ok(())
        }
        RouteCommand::Ls { output } => {
            let list: Vec<Route> = call("GET", "/v1/routes", None)?;
            let columns = ("ROUTE<24 LISTEN<40 POOL<20", "GUEST PORT");
            print_listing(out, output, &list, columns, |r| {
                (
                    vec![r.id.to_string(), describe(r), r.target.pool.to_string()],
                    r.target.port.to_string(),
                )
            })
        }
        RouteCommand::Rm { id } => {
            call::<Value>("DELETE", &format!("/v1/routes/{id}"), None)?;
            let _ = writeln!(out, "removed route {id}");
            Ok(())
        }
    }
}

/// `tcp://127.0.0.1:9000` or `http://shop.test@127.0.0.1:8080/api`.
fn describe(r: &Route) -> String {
    match &r.matcher {
        Match::Tcp => format!("tcp://{}", r.listen),
        Match::Http { host, path_prefix } => match host {
            Some(h) => format!("http://{h}@{}{path_prefix}", r.listen),
            None => format!("http://{}{path_prefix}", r.listen),
        },
    }
}

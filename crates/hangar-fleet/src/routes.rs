//! Gateway routes: where a connection arrives (host address and port), how it is matched
//! (plain TCP: the port alone; HTTP/1.1: `Host` and path prefix) and which pool and guest port
//! it goes to. Pure: validation and matching here, the listening and splicing in `hangard`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hangar_core::ids::{PoolId, RouteId, TenantId};
use serde::{Deserialize, Serialize};

/// How many connections may wait for one route's instance (while it wakes) before the next is
/// refused at once.
pub const DEFAULT_MAX_WAITING: u32 = 256;

/// The longest `Host` a route may match (a DNS name's limit).
const MAX_HOST_LEN: usize = 253;

/// The longest path prefix a route may match.
const MAX_PATH_LEN: usize = 1024;

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Route {
    /// The route's id (`tenant--name`, like a pool's).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: RouteId,
    /// The tenant that owns it: the target pool must be this tenant's.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: TenantId,
    /// Where the gateway listens (default `127.0.0.1`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub listen: SocketAddr,
    /// Which connections on that address it takes.
    #[serde(rename = "match")]
    pub matcher: Match,
    /// Where they go.
    pub target: RouteTarget,
    /// Connections that may wait for an instance at once; beyond, a refusal at once (HTTP 503).
    #[serde(default = "default_max_waiting")]
    pub max_waiting: u32,
}

fn default_max_waiting() -> u32 {
    DEFAULT_MAX_WAITING
}

/// How a route matches connections on its listen address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "protocol", rename_all = "snake_case")]
pub enum Match {
    /// Every connection on the port.
    Tcp,
    /// HTTP/1.1 requests whose `Host` (without port; any host when absent) and path prefix
    /// match; the longest matching prefix wins, an exact host before any host.
    Http {
        /// The `Host` to match, lowercase; `None` matches any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// The path prefix to match (`/` matches every path).
        #[serde(default = "root_path")]
        path_prefix: String,
    },
}

fn root_path() -> String {
    "/".into()
}

/// Where a route sends connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteTarget {
    /// The pool whose instances serve the route.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pool: PoolId,
    /// The port the guest listens on.
    pub port: u16,
}

/// Why a route is refused, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    /// The field (`listen`, `match.host`, …).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Route {
    /// The default listen address for `port`: loopback only.
    pub fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// Checks the route on its own: a listen port, a guest port, a host and a path prefix that
    /// can match something.
    pub fn check(&self) -> Result<(), RouteProblem> {
        let problem = |field, message: String| Err(RouteProblem { field, message });
        if self.listen.port() == 0 {
            return problem("listen", "the listen port must be 1-65535".into());
        }
        if self.target.port == 0 {
            return problem("target.port", "the guest port must be 1-65535".into());
        }
        if self.max_waiting == 0 {
            return problem("max_waiting", "at least one connection must be able to wait".into());
        }
        if let Match::Http { host, path_prefix } = &self.matcher {
            if let Some(host) = host {
                let valid = !host.is_empty()
                    && host.len() <= MAX_HOST_LEN
                    && host
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
                    && !host.starts_with(['.', '-']);
                if !valid {
                    return problem(
                        "match.host",
                        format!("{host:?} is not a host name (lowercase letters, digits, dots and dashes; no port)"),
                    );
                }
            }
            let valid = path_prefix.starts_with('/')
                && path_prefix.len() <= MAX_PATH_LEN
                && path_prefix.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return problem(
                    "match.path_prefix",
                    format!("{path_prefix:?} is not a path prefix (it starts with /, printable ASCII, no spaces)"),
                );
            }
        }
        Ok(())
    }

    /// Whether `self` and `other` would take the same connections, or cannot share their port.
    pub fn conflicts_with(&self, other: &Route) -> bool {
        if self.listen.port() != other.listen.port() {
            return false;
        }
        // A wildcard address shares its port with every address.
        let same_socket = self.listen.ip() == other.listen.ip()
            || self.listen.ip().is_unspecified()
            || other.listen.ip().is_unspecified();
        if !same_socket {
            return false;
        }
        match (&self.matcher, &other.matcher) {
            (
                Match::Http { host: h1, path_prefix: p1 },
                Match::Http { host: h2, path_prefix: p2 },
            ) => h1 == h2 && p1 == p2,
            // TCP takes the whole port; it cannot share it with anything.
            _ => true,
        }
    }
}

/// What a connection carries for matching: the address it arrived on and, for HTTP, its first
/// request's `Host` (without port) and path.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// Its request's `Host`, lowercase, without port (HTTP only).
    pub host: Option<&'a str>,
    /// Its request's path (HTTP only).
    pub path: Option<&'a str>,
}

/// The route that takes `arrival`, among `routes`: for HTTP the exact host before any host,
/// then the longest path prefix.
pub fn select<'r>(routes: &'r [Route], arrival: Arrival<'_>) -> Option<&'r Route> {
    let on_socket = |r: &&Route| {
        r.listen.port() == arrival.local.port()
            && (r.listen.ip() == arrival.local.ip() || r.listen.ip().is_unspecified())
    };
    routes
        .iter()
        .filter(on_socket)
        .filter_map(|r| match &r.matcher {
            Match::Tcp => Some((r, (0, 0))),
            Match::Http { host, path_prefix } => {
                let host_ok = match host {
                    None => true,
                    Some(h) => arrival.host == Some(h.as_str()),
                };
                let path_ok = arrival.path.is_some_and(|p| p.starts_with(path_prefix.as_str()));
                (host_ok && path_ok)
                    .then_some((r, (usize::from(host.is_some()), path_prefix.len())))
            }
        })
        .max_by_key(|(_, rank)| *rank)
        .map(|(r, _)| r)
}

/// Whether a listen address speaks HTTP (every route on it does) or plain TCP.
pub fn is_http(routes: &[Route], listen: SocketAddr) -> bool {
    routes.iter().any(|r| r.listen == listen && matches!(r.matcher, Match::Http { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(id: &str, port: u16, host: Option<&str>, prefix: &str) -> Route {
        Route {
            id: RouteId::new(id).unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            listen: Route::loopback(port),
            matcher: Match::Http { host: host.map(str::to_string), path_prefix: prefix.into() },
            target: RouteTarget { pool: PoolId::new("acme--web").unwrap(), port: 80 },
            max_waiting: DEFAULT_MAX_WAITING,
        }
    }

    fn tcp(id: &str, port: u16) -> Route {
        Route { matcher: Match::Tcp, ..http(id, port, None, "/") }
    }

    fn at(port: u16, host: Option<&'static str>, path: Option<&'static str>) -> Arrival<'static> {
        Arrival { local: Route::loopback(port), host, path }
    }

    #[test]
    fn the_exact_host_wins_then_the_longest_prefix() {
        let routes = [
            http("any-root", 8080, None, "/"),
            http("any-api", 8080, None, "/api/"),
            http("shop-root", 8080, Some("shop.test"), "/"),
            tcp("raw", 9000),
        ];
        let id = |a| select(&routes, a).map(|r| r.id.as_str().to_string());
        assert_eq!(id(at(8080, None, Some("/index.html"))).as_deref(), Some("any-root"));
        assert_eq!(id(at(8080, None, Some("/api/v1"))).as_deref(), Some("any-api"));
        assert_eq!(id(at(8080, Some("shop.test"), Some("/api/v1"))).as_deref(), Some("shop-root"));
        assert_eq!(id(at(8080, Some("other.test"), Some("/api/x"))).as_deref(), Some("any-api"));
        assert_eq!(id(at(9000, None, None)).as_deref(), Some("raw"));
        assert_eq!(id(at(9001, None, None)), None, "no route on that port");
        let only_shop = [http("shop-root", 8080, Some("shop.test"), "/")];
        assert!(select(&only_shop, at(8080, Some("x.test"), Some("/"))).is_none());
        // Another address on the same port is another socket.
        let elsewhere =
            Arrival { local: "10.0.0.1:8080".parse().unwrap(), host: None, path: Some("/") };
        assert!(select(&routes, elsewhere).is_none());
    }

    #[test]
    fn conflicts_are_same_match_on_one_socket_or_tcp_sharing_a_port() {
        assert!(http("a", 80, None, "/").conflicts_with(&http("b", 80, None, "/")));
        assert!(!http("a", 80, None, "/").conflicts_with(&http("b", 80, None, "/x")));
        assert!(!http("a", 80, Some("a.test"), "/").conflicts_with(&http("b", 80, None, "/")));
        assert!(tcp("a", 80).conflicts_with(&http("b", 80, None, "/x")));
        assert!(!tcp("a", 80).conflicts_with(&tcp("b", 81)));
        let mut wild = tcp("w", 80);
        wild.listen = "0.0.0.0:80".parse().unwrap();
        assert!(wild.conflicts_with(&http("b", 80, None, "/")));
    }

    #[test]
    fn checks_name_the_field() {
        let field = |r: Route| r.check().unwrap_err().field;
        assert!(http("a", 80, Some("shop.test"), "/api").check().is_ok());
        assert_eq!(field(http("a", 0, None, "/")), "listen");
        assert_eq!(field(http("a", 80, Some("Shop.test"), "/")), "match.host");
        assert_eq!(field(http("a", 80, Some("shop.test:80"), "/")), "match.host");
        assert_eq!(field(http("a", 80, None, "api")), "match.path_prefix");
        assert_eq!(field(http("a", 80, None, "/a b")), "match.path_prefix");
        let mut r = tcp("a", 80);
        r.target.port = 0;
        assert_eq!(field(r), "target.port");
        let mut r = tcp("a", 80);
        r.max_waiting = 0;
        assert_eq!(field(r), "max_waiting");
    }

    #[test]
    fn the_wire_form_is_tagged_by_protocol() {
        let r = http("a", 8080, Some("shop.test"), "/api");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["match"]["protocol"], "http");
        assert_eq!(v["listen"], "127.0.0.1:8080");
        let back: Route = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let t: Route = serde_json::from_str(
            r#"{"id":"t","tenant":"acme","listen":"127.0.0.1:9","match":{"protocol":"tcp"},"target":{"pool":"acme--web","port":22}}"#,
        )
        .unwrap();
        assert_eq!((t.matcher, t.max_waiting), (Match::Tcp, DEFAULT_MAX_WAITING));
    }
}

//! The one middleware every route runs through: authentication, the route table's role check
//! and the audit trail around the handler.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_core::access::Resource;
use hangar_core::error::ErrorCode;

use crate::auth::{self, Caller};
use crate::error::*;
use crate::state::*;

/// Every request passes here: it finds the caller (a bearer token on TCP, the peer's uid on
/// the unix socket), asks the route table whether the caller's role allows the route at all,
/// records a mutating request in the audit log *before* it runs (refusing it with `503
/// E_AUDIT_UNAVAILABLE` if that fails) and its outcome after, and counts and times it.
pub(crate) async fn gate(
    State(d): State<Arc<Daemon>>, mut request: Request, next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let target = request.uri().path().to_string();
    let peer = request.extensions().get::<axum::extract::ConnectInfo<Peer>>().map(|c| c.0);
    let gate = auth::gate_of(&method, &route);
    let finish = |d: &Daemon, response: Response| {
        let status = response.status().as_u16();
        d.metrics.request(method.as_str(), &route, status, started.elapsed().as_secs_f64());
        if let Some(code) = response.headers().get("x-hangar-error").and_then(|v| v.to_str().ok()) {
            d.metrics.error(code);
        }
        response
    };
    if gate == Some(auth::Gate::Open) {
        let response = next.run(request).await;
        return finish(&d, response);
    }
    let caller = match d.caller(&request, peer) {
        Ok(c) => c,
        Err((peer_name, why)) => {
            d.trail.failed_auth(&peer_name, &format!("{method} {route}"), &target, &why);
            let mut response = auth::unauthorized(&why).into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return finish(&d, response);
        }
    };
    let mutating = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) && route != "/v1/validate"
        && route != "/v1/plan";
    let entry = |result: String, detail: Option<String>| hangar_audit::NewEntry {
        at: hangar_core::clock::Clock::now(&hangar_core::clock::SystemClock),
        who: caller.who.clone(),
        what: format!("{method} {route}"),
        target: target.clone(),
        result,
        detail,
    };
    // What the caller's role never allows is refused before any handler looks at it.
    let refused = match gate {
        Some(auth::Gate::Action(action)) => {
            caller.allow(action, Resource::Host, || unreachable!()).err()
        }
        _ => None,
    };
    if let Some(refusal) = refused {
        let response = refusal.into_response();
        if mutating {
            let _ = d.trail.record(entry(
                ErrorCode::Forbidden.as_str().into(),
                Some(format!("scope {}", caller.scope)),
            ));
        }
        return finish(&d, response);
    }
    if mutating {
        if let Err(why) = d.trail.record(entry("requested".into(), None)) {
            tracing::error!("AUDIT FAILURE, refusing {method} {target}: {why}");
            let response = ApiError::new(
                ErrorCode::AuditUnavailable,
                format!("the audit log cannot be written, so nothing was done: {why}"),
                None,
                None,
            )
            .into_response();
            return finish(&d, response);
        }
    }
    request.extensions_mut().insert(caller.clone());
    let mut response = next.run(request).await;
    if mutating {
        let status = response.status().as_u16();
        let code = response
            .headers()
            .get("x-hangar-error")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut detail: Vec<String> = Vec::new();
        if let Some(op) = response.headers().get("x-hangar-operation").and_then(|v| v.to_str().ok())
        {
            detail.push(format!("operation {op}"));
        }
        if let Some(more) = response
            .headers_mut()
            .remove("x-hangar-audit-detail")
            .and_then(|v| v.to_str().ok().map(String::from))
        {
            detail.push(more);
        }
        // A 202 means the operation was accepted; its end gets an entry of its own.
        let result =
            code.unwrap_or_else(|| if status == 202 { "accepted" } else { "ok" }.to_string());
        let detail = (!detail.is_empty()).then(|| detail.join("; "));
        if let Err(e) = d.trail.record(entry(result, detail)) {
            // The action happened but its outcome is not audited (its request is): say so.
            tracing::error!("AUDIT FAILURE recording the outcome of {method} {target}: {e}");
            d.metrics.error(ErrorCode::AuditUnavailable.as_str());
        }
    }
    finish(&d, response)
}

impl Daemon {
    /// Who sent `request`: on TCP the holder of a stored bearer token (the `Bearer` scheme in
    /// any case), on the unix socket the peer's uid. Else the peer and why it was refused.
    pub(crate) fn caller(
        &self, request: &Request, peer: Option<Peer>,
    ) -> Result<Caller, (String, String)> {
        match peer {
            Some(Peer { tcp: Some(addr), .. }) => {
                let presented = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (scheme, token) = v.trim().split_once(' ')?;
                        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
                    });
                let peer = addr.ip().to_string();
                let Some(token) = presented else {
                    return Err((peer, "missing bearer token".into()));
                };
                if token.starts_with(hangar_cluster::CREDENTIAL_PREFIX) {
                    return self
                        .forwarded_caller(&token, request.method(), request.uri().path())
                        .map_err(|why| (peer, why));
                }
                let found = {
                    let store = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
                    hangar_control::tokens::authenticate(&store, &token)
                };
                match found {
                    Ok(Some(t)) => Ok(Caller {
                        scope: t.scope,
                        who: format!("token:{} ({addr})", t.id),
                        forwarded: None,
                    }),
                    Ok(None) => Err((peer, "unknown bearer token".into())),
                    Err(e) => Err((peer, format!("tokens cannot be checked: {e}"))),
                }
            }
            Some(Peer { uid: Some(uid), .. }) => match self.uids.scope_of(uid, self.own_uid) {
                Some(scope) => {
                    Ok(Caller { scope, who: format!("local:uid={uid}"), forwarded: None })
                }
                None => Err((
                    format!("uid {uid}"),
                    format!(
                        "unix-socket user {uid} is not mapped to a principal (hangard --map-uid)"
                    ),
                )),
            },
            _ => Err(("unknown".into(), "the peer cannot be identified".into())),
        }
    }
}

/// What an authenticated handler starts from: the daemon and who is calling (put in the
/// request by [`gate`] above, before any handler runs).
pub(crate) struct Ctx {
    /// The daemon.
    pub d: Arc<Daemon>,
    /// Who is calling.
    pub caller: Caller,
}

impl axum::extract::FromRequestParts<Arc<Daemon>> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts, d: &Arc<Daemon>,
    ) -> Result<Ctx, ApiError> {
        let caller = parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            // A route outside the authenticating layer: a bug, never the caller's fault.
            tracing::error!("BUG: {} reached a handler without a caller", parts.uri.path());
            ApiError::new(
                ErrorCode::EngineFailed,
                "internal error (a bug, logged by hangard): no caller on this route",
                None,
                Some("report it with hangard's log".into()),
            )
        })?;
        Ok(Ctx { d: d.clone(), caller })
    }
}

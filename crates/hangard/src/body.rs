//! Reading requests: names from the path, bounded bodies, specs and JSON bodies.

use std::path::Path;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use hangar_core::error::{Error, ErrorCode};
use hangar_core::ids::VmName;
use hangar_spec::Format;

use crate::error::*;
use crate::state::*;

pub(crate) fn vm_name(name: &str) -> ApiResult<VmName> {
    VmName::new(name).map_err(|e| Error::InvalidName(e).into())
}

/// A request body, refusing one over [`MAX_BODY_BYTES`] and JSON that names a key twice in
/// one object (which a JSON value would silently resolve to the last one: every body is read
/// as the sender meant it or not at all). Other syntax errors are left to each route's parser,
/// which knows what it expected.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    let bytes = read_body(body)?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        if let Err(d) = hangar_spec::check_json(text) {
            if d.code == ErrorCode::SpecDuplicateKey {
                return Err(hangar_spec::SpecErrors(vec![d]).into());
            }
        }
    }
    Ok(bytes)
}

pub(crate) fn read_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::SpecTooLarge,
                format!("request body over {MAX_BODY_BYTES} bytes"),
                None,
                None,
            )
        } else {
            ApiError::new(
                ErrorCode::SpecSyntax,
                r.body_text(),
                None,
                Some("send a JSON body".into()),
            )
        }
    })
}

pub(crate) fn spec_from_body(body: &[u8]) -> ApiResult<hangar_spec::CanonicalSpec> {
    let text = std::str::from_utf8(body).map_err(|_| {
        ApiError::new(
            ErrorCode::SpecSyntax,
            "the body is not UTF-8",
            None,
            Some("send the spec as JSON".into()),
        )
    })?;
    // API callers have no spec file: relative paths resolve against "/".
    Ok(hangar_spec::parse(text, Format::Json, Path::new("/"))?)
}

/// A JSON request body: what errors call it, and how a correct one looks (the hint).
pub(crate) trait RequestBody: serde::de::DeserializeOwned {
    /// Its name in errors ("pool request").
    const WHAT: &'static str;
    /// An example of a correct body.
    const HINT: &'static str;
}

macro_rules! request_bodies {
    ($($body:ty => $what:literal, $hint:literal;)*) => {
        $(impl RequestBody for $body {
            const WHAT: &'static str = $what;
            const HINT: &'static str = $hint;
        })*
    };
}

request_bodies! {
    hangar_api::OperationRequest => "operation request",
        "send {\"kind\": \"start\", \"vm\": \"name\"}; GET /v1/openapi.json lists the kinds";
    hangar_api::TokenRequest => "token request",
        "send {\"name\": \"ci\", \"scope\": \"tenant:acme:operator\"} (or \"admin\")";
    hangar_api::SnapshotRequest => "snapshot request", "send {\"id\": \"name\", \"sleep\": bool}";
    hangar_api::StartRequest => "start request", "send {\"no_wait\": bool, \"timeout_s\": n} or nothing";
    hangar_api::StopRequest => "stop request", "send {\"force\": bool, \"timeout_s\": n} or nothing";
    hangar_api::fleet::TenantRequest => "tenant request",
        "send {\"quotas\": {\"max_vcpus\": 8, \"max_memory_mib\": 4096, …}}";
    hangar_api::fleet::PoolRequest => "pool request",
        "send {\"id\": \"web\", \"tenant\": \"acme\", \"spec\": {…}, \"desired\": {\"running\": 0, \"warm\": 3, \"sleeping\": 0}}";
    hangar_api::fleet::PoolUpdate => "pool update",
        "send any of {\"desired\": {…}, \"policy\": {…}, \"spec\": {…}}";
    hangar_api::fleet::RouteRequest => "route request",
        "send {\"id\": \"web\", \"port\": 8080, \"pool\": \"web\", \"guest_port\": 80, \"match\": {\"protocol\": \"http\", \"host\": \"shop.test\", \"path_prefix\": \"/\"}}";
    hangar_api::NetworkRequest => "network request",
        "send {\"name\": \"lab\", \"subnet\": \"10.88.0.0/24\", \"tenant\": \"acme\", \"nat\": true}";
}

/// Decodes a JSON body (checked as [`body_bytes`] checks it).
pub(crate) fn json_body<T: RequestBody>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    serde_json::from_slice(&body_bytes(body)?).map_err(|e| bad_body(T::WHAT, e, T::HINT))
}

/// Decodes an optional JSON body (empty means the type's default).
pub(crate) fn json_or_default<T: RequestBody + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad_body(T::WHAT, e, T::HINT))
}

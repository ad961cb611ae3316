//! Errors as the API answers them: a status and a coded body; and the blocking-call runner
//! that turns a panicking worker into one coded 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_api::{http_status, ErrorBody};
use hangar_core::error::{Error, ErrorCode};

/// Why the daemon could not start (it says so and exits with 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An `--allow-path` cannot be used.
    #[error("--allow-path: {0}")]
    AllowedPaths(#[source] hangar_control::ControlError),
    /// The state store (tokens) cannot be opened.
    #[error("state store: {0}")]
    Store(#[source] hangar_store::StoreError),
    /// The operation journal cannot be opened.
    #[error("state store: {0}")]
    Journal(#[source] hangar_control::ControlError),
    /// The fleet registry cannot be restored.
    #[error("{}: {}; {}", .0.code, .0.message, .0.hint)]
    Fleet(ErrorBody),
}

/// An error response: a status and a coded body.
#[derive(Debug)]
pub struct ApiError(pub(crate) u16, pub(crate) Box<ErrorBody>);

impl From<hangar_control::ControlError> for ApiError {
    fn from(e: hangar_control::ControlError) -> ApiError {
        ErrorBody::from(e).into()
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        let status = body.error_code().map(http_status).unwrap_or(500);
        ApiError(status, Box::new(body))
    }
}

impl ApiError {
    pub(crate) fn new(
        code: ErrorCode, message: impl Into<String>, path: Option<String>, hint: Option<String>,
    ) -> ApiError {
        let mut body = ErrorBody::new(code, message);
        body.path = path;
        if let Some(hint) = hint {
            body.hint = hint;
        }
        ApiError::from(body)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::from(ErrorBody::from(e))
    }
}

impl From<hangar_spec::SpecErrors> for ApiError {
    fn from(e: hangar_spec::SpecErrors) -> ApiError {
        ApiError::from(ErrorBody::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = self.1.code.clone();
        (status, [("x-hangar-error", code)], Json(*self.1)).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Runs a blocking engine call on its own thread (engine calls wait for guests and drive their
/// own QMP runtime, which must not run inside this one).
///
/// A panic (a bug) fails this one request with a coded 500 and is logged; the daemon goes on.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(internal_error(&*panic)),
        Err(_) => Err(internal_error(&"the worker thread ended without an answer")),
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A request that hit a bug: `500 E_ENGINE_FAILED`, logged.
pub(crate) fn internal_error(panic: &(dyn std::any::Any + Send)) -> ApiError {
    let message = panic_message(panic);
    tracing::error!("BUG: a request's worker panicked: {message}");
    ApiError::new(
        ErrorCode::EngineFailed,
        format!("internal error (a bug, logged by hangard): {message}"),
        None,
        Some("retry; if it happens again, report it with hangard's log".into()),
    )
}

pub(crate) fn bad_body(what: &str, e: impl std::fmt::Display, hint: &str) -> ApiError {
    let mut body = ErrorBody::new(ErrorCode::InvalidArgument, format!("invalid {what}: {e}"));
    body.hint = hint.to_string();
    ApiError::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    pub(crate) async fn a_panicking_worker_fails_its_request_with_a_coded_500_and_the_next_one_runs(
    ) {
        let failed = blocking(|| -> u32 { panic!("boom in a handler") }).await.unwrap_err();
        assert_eq!(failed.0, 500);
        assert_eq!(failed.1.error_code(), Some(ErrorCode::EngineFailed));
        assert!(failed.1.message.contains("boom in a handler"), "{failed:?}");
        assert_eq!(blocking(|| 7).await.unwrap(), 7);
    }
}

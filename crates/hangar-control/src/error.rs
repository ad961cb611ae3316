//! [`ControlError`]: what the control library reports. It keeps the cause it came from (the
//! engine's error whole, the spec's diagnostics, the store's error); it becomes the API's
//! [`ErrorBody`] only at the edges (hangard's responses, the journal, the CLI's diagnostics).

use hangar_api::ErrorBody;
use hangar_core::error::{Coded, ErrorCode};

/// An error of the control library.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The engine refused or failed: its code, hint and sources carried whole.
    #[error(transparent)]
    Engine(#[from] hangar_core::error::Error),
    /// The spec is invalid (every diagnostic, the first one's code).
    #[error(transparent)]
    Spec(#[from] hangar_spec::SpecErrors),
    /// The state store (journal, tokens) failed.
    #[error(transparent)]
    Store(#[from] hangar_store::StoreError),
    /// Already a coded body: a request refused before anything was journaled, an operation
    /// that ended with this error, or what a daemon answered.
    #[error("{}", .0.message)]
    Coded(Box<ErrorBody>),
}

impl ControlError {
    /// A refusal with its code and message (add the field and the fix with [`Self::at`] and
    /// [`Self::hint`]).
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError::Coded(Box::new(ErrorBody::new(code, message)))
    }

    /// The API's error body: what crosses an edge (a response, the journal, a diagnostic).
    pub fn into_body(self) -> ErrorBody {
        self.into()
    }

    /// The field the refusal is about.
    pub fn at(self, path: &str) -> ControlError {
        let mut body = ErrorBody::from(self);
        body.path = Some(path.to_string());
        ControlError::Coded(Box::new(body))
    }

    /// How to fix it.
    pub fn hint(self, hint: impl Into<String>) -> ControlError {
        let mut body = ErrorBody::from(self);
        body.hint = hint.into();
        ControlError::Coded(Box::new(body))
    }
}

impl From<ErrorBody> for ControlError {
    fn from(body: ErrorBody) -> ControlError {
        ControlError::Coded(Box::new(body))
    }
}

impl From<ControlError> for ErrorBody {
    fn from(e: ControlError) -> ErrorBody {
        match e {
            ControlError::Engine(e) => e.into(),
            ControlError::Spec(e) => e.into(),
            ControlError::Store(e) => {
                let mut body = ErrorBody::new(e.code(), e.to_string());
                if let Some(hint) = e.hint() {
                    body.hint = hint;
                }
                body
            }
            ControlError::Coded(body) => *body,
        }
    }
}

impl Coded for ControlError {
    fn code(&self) -> ErrorCode {
        match self {
            ControlError::Engine(e) => e.code(),
            ControlError::Spec(e) => e.0.first().map(|d| d.code).unwrap_or(ErrorCode::SpecSyntax),
            ControlError::Store(e) => e.code(),
            ControlError::Coded(body) => body.error_code().unwrap_or(ErrorCode::EngineFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_error_keeps_its_code_until_it_becomes_a_body() {
        let e = ControlError::from(hangar_core::error::Error::VmNotFound(
            hangar_core::ids::VmName::new("web").unwrap(),
        ));
        assert_eq!(e.code(), ErrorCode::VmNotFound);
        assert!(matches!(e, ControlError::Engine(_)));
        let body = ErrorBody::from(e);
        assert_eq!(body.code, "E_VM_NOT_FOUND");
        let refused = ControlError::refused(ErrorCode::InvalidArgument, "base_dir is relative")
            .at("base_dir")
            .hint("send an absolute directory");
        assert_eq!(refused.code(), ErrorCode::InvalidArgument);
        let body = ErrorBody::from(refused);
        assert_eq!(
            (body.path.as_deref(), body.hint.as_str()),
            (Some("base_dir"), "send an absolute directory")
        );
    }
}

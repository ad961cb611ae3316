//! How a command fails: coded diagnostics on stderr and the exit code.

use hangar_core::error::{Coded, ErrorClass, ErrorCode};
use hangar_spec::{Diagnostic, SpecErrors};

/// A failure to report: diagnostics on stderr, and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) diagnostics: Vec<Diagnostic>,
    /// An explicit exit code (a guest command's), overriding the diagnostics' class.
    pub(crate) exit: Option<u8>,
}

impl Failure {
    pub(crate) fn exit_code(&self) -> u8 {
        if let Some(code) = self.exit {
            return code;
        }
        let env = self.diagnostics.iter().any(|d| d.code.class() == ErrorClass::Environment);
        if env {
            2
        } else {
            1
        }
    }
}

impl From<SpecErrors> for Failure {
    fn from(e: SpecErrors) -> Self {
        Self { diagnostics: e.0, exit: None }
    }
}

pub(crate) fn coded(e: &dyn CodedError) -> Failure {
    Failure {
        diagnostics: vec![Diagnostic::new(e.code(), e.path().unwrap_or_default(), e.to_string())
            .hint(Coded::hint(e).unwrap_or_else(|| e.code().typical_fix().to_string()))],
        exit: None,
    }
}

pub(crate) fn failure(code: ErrorCode, message: String, hint: &str) -> Failure {
    let hint = if hint.is_empty() { code.typical_fix() } else { hint };
    Failure { diagnostics: vec![Diagnostic::new(code, "", message).hint(hint)], exit: None }
}

pub(crate) trait CodedError: Coded + std::fmt::Display {}
impl<T: Coded + std::fmt::Display> CodedError for T {}

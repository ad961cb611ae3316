//! Validation diagnostics.

use std::fmt;

use hangar_core::error::{Coded, ErrorCode};
use serde::{Deserialize, Serialize};

/// One problem found in a spec: a stable code, where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Stable error code.
    pub code: ErrorCode,
    /// Field path, e.g. `disk[1].format`; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// 1-based line, for syntax errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, for syntax errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Diagnostic {
    /// A diagnostic whose hint is the code's typical fix.
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            path: path.into(),
            message: message.into(),
            hint: code.typical_fix().to_string(),
            line: None,
            column: None,
        }
    }

    /// Replaces the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.path.is_empty() {
            write!(f, " at {}", self.path)?;
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        write!(f, ": {}\n  hint: {}", self.message, self.hint)
    }
}

impl Coded for Diagnostic {
    fn code(&self) -> ErrorCode {
        self.code
    }
    fn path(&self) -> Option<String> {
        (!self.path.is_empty()).then(|| self.path.clone())
    }
    fn hint(&self) -> Option<String> {
        Some(self.hint.clone())
    }
}

/// Every problem found in one spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<Diagnostic>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl SpecErrors {
    /// The distinct codes, in first-seen order.
    pub fn codes(&self) -> Vec<ErrorCode> {
        let mut out: Vec<ErrorCode> = Vec::new();
        for d in &self.0 {
            if !out.contains(&d.code) {
                out.push(d.code);
            }
        }
        out
    }
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance, if any.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < c.len())
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("vcpu", &["vcpus", "memory_mib"]), Some("vcpus"));
        assert_eq!(closest("memroy_mib", &["vcpus", "memory_mib"]), Some("memory_mib"));
        assert_eq!(closest("zzz", &["vcpus", "memory_mib"]), None);
    }
}

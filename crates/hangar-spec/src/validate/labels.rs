//! `labels`: a table of short printable strings under well-formed keys, none a secret.

use std::collections::BTreeMap;

use hangar_core::error::ErrorCode;

use super::constants::limits;
use super::{Obj, Walker};
use crate::diag::Diagnostic;
use crate::node::Node;
use crate::secrets;

impl Walker<'_> {
    pub(super) fn labels(&mut self, top: &Obj<'_>) -> Option<BTreeMap<String, String>> {
        let Some(node) = top.map.get("labels") else {
            return Some(BTreeMap::new());
        };
        let Node::Obj(map) = node else {
            self.type_error("labels".into(), "a table of strings", node);
            return None;
        };
        let before = self.errors.len();
        if map.len() > limits::LABELS {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecOutOfRange,
                    "labels",
                    format!("{} labels, at most {}", map.len(), limits::LABELS),
                )
                .hint(format!("use at most {} labels", limits::LABELS)),
            );
        }
        let mut out = BTreeMap::new();
        for (key, value) in map {
            let path = format!("labels.{key}");
            let Node::Str(value) = value else {
                self.type_error(path, "a string", value);
                continue;
            };
            if !valid_label_key(key) {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidLabel,
                    path.clone(),
                    format!("label key {key:?} is malformed"),
                ));
                continue;
            }
            if value.chars().count() > 256 || value.chars().any(|c| c.is_control()) {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidLabel,
                    path.clone(),
                    "label values are at most 256 printable characters",
                ));
                continue;
            }
            if secrets::secret_key(key) && !value.is_empty() {
                self.push(Diagnostic::new(
                    ErrorCode::SpecSecret,
                    path.clone(),
                    format!(
                        "label {key:?} looks like it holds a secret; specs are stored and printed"
                    ),
                ));
                continue;
            }
            self.secret_check(path, &format!("label {key:?}"), value);
            out.insert(key.clone(), value.clone());
        }
        (self.errors.len() == before).then_some(out)
    }
}

fn valid_label_key(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && key.len() <= 63
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        assert!(valid_label_key("app"));
        assert!(valid_label_key("hangar.dev/role"));
        assert!(!valid_label_key("App"));
        assert!(!valid_label_key("-x"));
        assert!(!valid_label_key(""));
    }
}

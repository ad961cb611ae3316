//! Typed readers of one value (string, integer in range, boolean, choice, path, device name),
//! the table shapes (a table with known keys, an optional section, an array of tables), and the
//! diagnostics they share (type error, missing field, invalid name, secret).

use std::collections::BTreeSet;

use hangar_core::error::ErrorCode;
use hangar_core::ids::{DeviceName, InvalidName};

use super::constants::ALIASES;
use super::{join, Obj, Walker};
use crate::diag::{closest, Diagnostic};
use crate::node::Node;
use crate::paths::{normalize, PathProblem};
use crate::secrets;

impl Walker<'_> {
    pub(super) fn type_error(&mut self, path: String, want: &str, got: &Node) {
        self.push(
            Diagnostic::new(
                ErrorCode::SpecType,
                path,
                format!("expected {want}, found {}", got.type_name()),
            )
            .hint(format!("write this value as {want}")),
        );
    }

    /// A table whose keys must all be in `known`.
    pub(super) fn obj<'n>(
        &mut self, node: &'n Node, path: String, known: &[&str],
    ) -> Option<Obj<'n>> {
        let Node::Obj(map) = node else {
            self.type_error(path, "a table", node);
            return None;
        };
        for key in map.keys() {
            if known.contains(&key.as_str()) {
                continue;
            }
            let suggestion = ALIASES
                .iter()
                .find(|(alias, target)| alias == key && known.contains(target))
                .map(|(_, target)| *target)
                .or_else(|| closest(key, known));
            let hint = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("remove it; fields allowed here: {}", known.join(", ")),
            };
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecUnknownField,
                    join(&path, key),
                    format!("unknown field `{key}`"),
                )
                .hint(hint),
            );
        }
        Some(Obj { map, path })
    }

    pub(super) fn string<'n>(&mut self, o: &Obj<'n>, key: &str) -> Option<&'n str> {
        match o.map.get(key)? {
            Node::Str(s) => Some(s),
            other => {
                self.type_error(o.at(key), "a string", other);
                None
            }
        }
    }

    pub(super) fn int(
        &mut self, o: &Obj<'_>, key: &str, (min, max): (i64, i64), unit: &str,
    ) -> Option<i64> {
        match o.map.get(key)? {
            Node::Int(i) if (min..=max).contains(i) => Some(*i),
            Node::Int(i) => {
                self.push(
                    Diagnostic::new(
                        ErrorCode::SpecOutOfRange,
                        o.at(key),
                        format!("{i}{unit} is outside the allowed range {min}..={max}{unit}"),
                    )
                    .hint(format!("use a value from {min} to {max}")),
                );
                None
            }
            other => {
                self.type_error(o.at(key), "an integer", other);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, o: &Obj<'_>, key: &str) -> Option<bool> {
        match o.map.get(key)? {
            Node::Bool(b) => Some(*b),
            other => {
                self.type_error(o.at(key), "true or false", other);
                None
            }
        }
    }

    pub(super) fn choice<T: Copy>(
        &mut self, o: &Obj<'_>, key: &str, choices: &[(&str, T)],
    ) -> Option<T> {
        let value = self.string(o, key)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == value) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let hint = match closest(value, &names) {
            Some(s) => format!("did you mean \"{s}\"? allowed: {}", names.join(", ")),
            None => format!("allowed values: {}", names.join(", ")),
        };
        self.push(
            Diagnostic::new(
                ErrorCode::SpecInvalidValue,
                o.at(key),
                format!("{value:?} is not a valid {key}"),
            )
            .hint(hint),
        );
        None
    }

    pub(super) fn missing(&mut self, o: &Obj<'_>, key: &str, example: &str) {
        self.push(
            Diagnostic::new(
                ErrorCode::SpecMissingField,
                o.at(key),
                format!("required field `{key}` is missing"),
            )
            .hint(format!("add {example}")),
        );
    }

    pub(super) fn name_error(&mut self, path: String, e: InvalidName) {
        self.push(Diagnostic::new(e.code(), path, e.to_string()).hint(e.hint()));
    }

    pub(super) fn file_path(&mut self, o: &Obj<'_>, key: &str) -> Option<String> {
        let raw = self.string(o, key)?;
        match normalize(raw, self.base_dir) {
            Ok(p) => Some(p),
            Err(PathProblem::Forbidden(p)) => {
                self.push(
                    Diagnostic::new(
                        ErrorCode::SpecForbiddenPath,
                        o.at(key),
                        format!("{p} is inside /proc, /sys or /dev"),
                    )
                    .hint("point it at a regular image or kernel file"),
                );
                None
            }
            Err(PathProblem::Invalid(why)) => {
                self.push(Diagnostic::new(
                    ErrorCode::SpecInvalidPath,
                    o.at(key),
                    format!("{raw:?} is not a usable path: {why}"),
                ));
                None
            }
        }
    }

    pub(super) fn secret_check(&mut self, path: String, what: &str, value: &str) {
        if let Some(kind) = secrets::looks_secret(value) {
            self.push(Diagnostic::new(
                ErrorCode::SpecSecret,
                path,
                format!("{what} looks like it contains a {kind}; specs are stored and printed"),
            ));
        }
    }

    pub(super) fn section<'n>(
        &mut self, top: &Obj<'n>, key: &str, known: &[&str],
    ) -> Result<Option<Obj<'n>>, ()> {
        match top.map.get(key) {
            None => Ok(None),
            Some(node) => self.obj(node, top.at(key), known).map(Some).ok_or(()),
        }
    }

    pub(super) fn array_of_tables<'n>(
        &mut self, top: &Obj<'n>, key: &str, known: &[&str], max: usize,
    ) -> Option<Vec<Obj<'n>>> {
        let node = match top.map.get(key) {
            None => return Some(Vec::new()),
            Some(node) => node,
        };
        let Node::Arr(items) = node else {
            self.type_error(top.at(key), &format!("an array of tables ([[{key}]])"), node);
            return None;
        };
        if items.len() > max {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecOutOfRange,
                    top.at(key),
                    format!("{} {key} entries, at most {max}", items.len()),
                )
                .hint(format!("use at most {max} {key} entries")),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.obj(item, format!("{}[{i}]", top.at(key)), known) {
                Some(o) => out.push(o),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn device_name(
        &mut self, o: &Obj<'_>, seen: &mut BTreeSet<String>, what: &str,
    ) -> Option<DeviceName> {
        let Some(raw) = self.string(o, "name") else {
            if !o.map.contains_key("name") {
                self.missing(o, "name", &format!("`name = \"{what}0\"`"));
            }
            return None;
        };
        let name = DeviceName::new(raw).map_err(|e| self.name_error(o.at("name"), e)).ok()?;
        if !seen.insert(raw.to_string()) {
            self.push(
                Diagnostic::new(
                    ErrorCode::SpecDuplicateName,
                    o.at("name"),
                    format!("another {what} is already named {raw:?}"),
                )
                .hint(format!("give each {what} a unique name")),
            );
            return None;
        }
        Some(name)
    }
}

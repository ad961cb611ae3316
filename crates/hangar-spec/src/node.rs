//! A format-neutral document tree, so TOML and JSON are validated by one walker.

use std::collections::BTreeMap;

use hangar_core::error::ErrorCode;

use crate::diag::Diagnostic;

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<Node>),
    Obj(BTreeMap<String, Node>),
    /// A value no spec field accepts (TOML datetime, JSON null), by type name.
    Other(&'static str),
}

impl Node {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Node::Str(_) => "string",
            Node::Int(_) => "integer",
            Node::Float(_) => "float",
            Node::Bool(_) => "boolean",
            Node::Arr(_) => "array",
            Node::Obj(_) => "table",
            Node::Other(name) => name,
        }
    }
}

/// The input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML (the default).
    Toml,
    /// JSON.
    Json,
}

impl Format {
    /// Picks the format from a file name, or from the content when the name says nothing
    /// (standard input): a document starting with `{` is JSON.
    pub fn detect(file_name: Option<&str>, text: &str) -> Result<Format, Diagnostic> {
        let ext = file_name
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            None => Ok(if text.trim_start().starts_with('{') {
                Format::Json
            } else {
                Format::Toml
            }),
            Some(other) => Err(Diagnostic::new(
                ErrorCode::SpecFormat,
                "",
                format!("unsupported spec file extension .{other}"),
            )),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

pub(crate) fn parse(text: &str, format: Format) -> Result<Node, Diagnostic> {
    match format {
        Format::Toml => {
            let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
                let mut d = Diagnostic::new(
                    ErrorCode::SpecSyntax,
                    "",
                    format!("invalid TOML: {}", e.message()),
                );
                d.line = Some(line);
                d.column = Some(column);
                d
            })?;
            Ok(from_toml(toml::Value::Table(table)))
        }
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                let mut d =
                    Diagnostic::new(ErrorCode::SpecSyntax, "", format!("invalid JSON: {e}"));
                d.line = Some(e.line());
                d.column = Some(e.column());
                d
            })?;
            Ok(from_json(value))
        }
    }
}

fn from_toml(v: toml::Value) -> Node {
    match v {
        toml::Value::String(s) => Node::Str(s),
        toml::Value::Integer(i) => Node::Int(i),
        toml::Value::Float(f) => Node::Float(f),
        toml::Value::Boolean(b) => Node::Bool(b),
        toml::Value::Datetime(_) => Node::Other("datetime"),
        toml::Value::Array(a) => Node::Arr(a.into_iter().map(from_toml).collect()),
        toml::Value::Table(t) => Node::Obj(t.into_iter().map(|(k, v)| (k, from_toml(v))).collect()),
    }
}

fn from_json(v: serde_json::Value) -> Node {
    match v {
        serde_json::Value::String(s) => Node::Str(s),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Node::Int(i),
            None => match n.as_f64() {
                Some(f) if n.is_f64() => Node::Float(f),
                _ => Node::Other("large integer"),
            },
        },
        serde_json::Value::Bool(b) => Node::Bool(b),
        serde_json::Value::Null => Node::Other("null"),
        serde_json::Value::Array(a) => Node::Arr(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            Node::Obj(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_syntax_errors_have_line_and_column() {
        let d = parse("name = \"a\"\nvcpus = = 2\n", Format::Toml).unwrap_err();
        assert_eq!(d.code, ErrorCode::SpecSyntax);
        assert_eq!(d.line, Some(2));
        assert!(d.column.unwrap() > 1);
    }

    #[test]
    fn json_syntax_errors_have_line_and_column() {
        let d = parse("{\n  \"name\": ,\n}", Format::Json).unwrap_err();
        assert_eq!((d.line, d.column.is_some()), (Some(2), true));
    }

    #[test]
    fn format_detection() {
        assert_eq!(Format::detect(Some("a.TOML"), "").unwrap(), Format::Toml);
        assert_eq!(Format::detect(Some("a.json"), "").unwrap(), Format::Json);
        assert_eq!(Format::detect(None, "  {}").unwrap(), Format::Json);
        assert_eq!(Format::detect(None, "name = 1").unwrap(), Format::Toml);
        assert_eq!(
            Format::detect(Some("a.yaml"), "").unwrap_err().code,
            ErrorCode::SpecFormat
        );
    }
}

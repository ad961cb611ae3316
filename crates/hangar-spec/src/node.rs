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
        let ext = file_name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            None => {
                Ok(if text.trim_start().starts_with('{') { Format::Json } else { Format::Toml })
            }
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
            let JsonNode(node) = serde_json::from_str(text).map_err(|e| json_error(&e))?;
            Ok(node)
        }
    }
}

/// A JSON syntax error, or a duplicate key, as a diagnostic with its position.
fn json_error(e: &serde_json::Error) -> Diagnostic {
    let message = e.to_string();
    let mut d = match message.strip_prefix(DUPLICATE) {
        Some(rest) => {
            let key = rest.split(" at line").next().unwrap_or(rest);
            Diagnostic::new(
                ErrorCode::SpecDuplicateKey,
                "",
                format!("the key {key} appears twice in one object"),
            )
            .hint("keep one of them: JSON names must be unique (RFC 8785, I-JSON)")
        }
        None => Diagnostic::new(ErrorCode::SpecSyntax, "", format!("invalid JSON: {e}")),
    };
    d.line = Some(e.line());
    d.column = Some(e.column());
    d
}

const DUPLICATE: &str = "duplicate key ";

/// Checks that `text` is JSON with no object holding a key twice (what `serde_json::Value`
/// silently resolves to the last one). A syntax error is reported too.
pub fn check_json(text: &str) -> Result<(), Diagnostic> {
    serde_json::from_str::<JsonNode>(text).map(|_| ()).map_err(|e| json_error(&e))
}

/// A JSON document read straight into a [`Node`], refusing duplicate keys.
struct JsonNode(Node);

impl<'de> serde::Deserialize<'de> for JsonNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonNode, D::Error> {
        d.deserialize_any(JsonVisitor).map(JsonNode)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::Other("large integer"), Node::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Other("null"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonNode(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Arr(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut obj = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let JsonNode(value) = map.next_value()?;
            if obj.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{key:?}")));
            }
            obj.insert(key, value);
        }
        Ok(Node::Obj(obj))
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
    fn json_duplicate_keys_are_refused_at_any_depth() {
        for doc in [
            r#"{"name": "a", "name": "b"}"#,
            "{\"machine\": {\"vcpus\": 1,\n \"vcpus\": 2}}",
            r#"{"disk": [{"name": "a", "format": "raw", "format": "qcow2"}]}"#,
        ] {
            let d = parse(doc, Format::Json).unwrap_err();
            assert_eq!(d.code, ErrorCode::SpecDuplicateKey, "{doc}");
            assert!(d.line.is_some() && d.message.contains("appears twice"), "{d:?}");
        }
        assert!(parse(r#"{"a": {"x": 1}, "b": {"x": 1}}"#, Format::Json).is_ok());
        assert_eq!(
            parse(r#"{"n": 18446744073709551615, "f": 1.5}"#, Format::Json).unwrap(),
            Node::Obj(
                [
                    ("f".to_string(), Node::Float(1.5)),
                    ("n".to_string(), Node::Other("large integer"))
                ]
                .into()
            )
        );
    }

    #[test]
    fn format_detection() {
        assert_eq!(Format::detect(Some("a.TOML"), "").unwrap(), Format::Toml);
        assert_eq!(Format::detect(Some("a.json"), "").unwrap(), Format::Json);
        assert_eq!(Format::detect(None, "  {}").unwrap(), Format::Json);
        assert_eq!(Format::detect(None, "name = 1").unwrap(), Format::Toml);
        assert_eq!(Format::detect(Some("a.yaml"), "").unwrap_err().code, ErrorCode::SpecFormat);
    }
}

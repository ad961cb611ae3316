//! Entries, their exact line form and their hashes.

use hangar_core::clock::Timestamp;
use hangar_core::error::ErrorCode;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::defect::{Defect, MAX_LINE_BYTES};

/// The `prev` of the first entry: `sha256:` followed by 64 zeros.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The field names of a line, in their fixed order (`detail` is omitted when absent).
pub(crate) const FIELDS: [&str; 8] =
    ["seq", "at", "who", "what", "target", "result", "detail", "prev"];

/// `sha256:<lowercase hex>` of `line` (the line's exact bytes, without the newline).
pub fn hash_line(line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The end of the chain: the last entry's `seq` and the hash of its line.
///
/// An empty log's head is `seq` 0 with hash [`GENESIS`]. Keeping a copy of the head somewhere
/// the log's writer cannot rewrite (another store, a remote system) is what makes deletion or
/// rewriting of the *last* entries detectable; see [`crate::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Head {
    /// The last entry's sequence number (0 for an empty log).
    pub seq: u64,
    /// `sha256:<hex>` of the last entry's line ([`GENESIS`] for an empty log).
    pub hash: String,
}

impl Head {
    /// The head of an empty log.
    pub fn genesis() -> Head {
        Head { seq: 0, hash: GENESIS.to_owned() }
    }
}

/// One audit record as stored: what [`crate::AuditLog::append`] wrote and returned.
///
/// Its line form is exactly `serde_json::to_string(&entry)`: fields in the order `seq`, `at`,
/// `who`, `what`, `target`, `result`, `detail` (omitted when `None`), `prev`; no whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Position in the log: 1, 2, 3, … without holes.
    pub seq: u64,
    /// When the action happened, milliseconds since the Unix epoch (as given by the caller; not
    /// required to be monotonic, since clocks step).
    pub at: Timestamp,
    /// The principal, e.g. `token:abc123` or `local:root`.
    pub who: String,
    /// The action, e.g. `vm.start`.
    pub what: String,
    /// The object acted on, e.g. `vm/hello`.
    pub target: String,
    /// `ok` or an error code such as `E_VM_NOT_FOUND`.
    pub result: String,
    /// Free-form context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `sha256:<hex>` of the previous entry's line, or [`GENESIS`] for the first entry.
    pub prev: String,
}

impl Entry {
    /// The entry's exact line, without the trailing newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an entry (strings and integers) always serialises")
    }

    /// Parses one line (without its newline) as [`crate::verify`] does: valid JSON, every field
    /// present with its type and a valid value, and byte-for-byte the entry's serialisation.
    /// Does not check the chain (`seq` continuity, `prev`), which needs the neighbours.
    pub fn from_line(line: &[u8]) -> Result<Entry, Defect> {
        parse_line(line)
    }

    /// `sha256:<hex>` of [`Entry::to_line`]: the `prev` of the next entry.
    pub fn hash(&self) -> String {
        hash_line(self.to_line().as_bytes())
    }
}

/// An entry to append: everything but `seq` and `prev`, which the log assigns.
///
/// `who`, `what` and `target` must be non-empty; `result` must be `requested` (written before
/// the action, which is refused if the entry cannot be written), `accepted` (an operation was
/// started; its end follows in its own entry), `ok`, or an error-code-shaped string (`E_`
/// followed by upper-case letters, digits and underscores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// When the action happened (from the caller's `Clock`).
    pub at: Timestamp,
    /// The principal, e.g. `token:abc123` or `local:root`.
    pub who: String,
    /// The action, e.g. `vm.start`.
    pub what: String,
    /// The object acted on, e.g. `vm/hello`.
    pub target: String,
    /// `ok` or an error code string.
    pub result: String,
    /// Free-form context.
    pub detail: Option<String>,
}

impl NewEntry {
    /// A successful action.
    pub fn ok(
        at: Timestamp, who: impl Into<String>, what: impl Into<String>, target: impl Into<String>,
    ) -> NewEntry {
        NewEntry {
            at,
            who: who.into(),
            what: what.into(),
            target: target.into(),
            result: "ok".to_owned(),
            detail: None,
        }
    }

    /// A failed action, recorded with its error code.
    pub fn failed(
        at: Timestamp, who: impl Into<String>, what: impl Into<String>, target: impl Into<String>,
        code: ErrorCode,
    ) -> NewEntry {
        NewEntry { result: code.as_str().to_owned(), ..NewEntry::ok(at, who, what, target) }
    }

    /// Adds free-form context.
    pub fn with_detail(mut self, detail: impl Into<String>) -> NewEntry {
        self.detail = Some(detail.into());
        self
    }

    /// Checks the fields `append` would write; the reason names the field.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (field, value) in [("who", &self.who), ("what", &self.what), ("target", &self.target)] {
            check_text(field, value)?;
        }
        check_result(&self.result)
    }

    /// The stored entry at `head`'s successor position.
    pub(crate) fn chain(self, head: &Head) -> Entry {
        Entry {
            seq: head.seq + 1,
            at: self.at,
            who: self.who,
            what: self.what,
            target: self.target,
            result: self.result,
            detail: self.detail,
            prev: head.hash.clone(),
        }
    }
}

fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("field `{field}` must be a non-empty string"));
    }
    Ok(())
}

fn check_result(result: &str) -> Result<(), String> {
    let code_shaped = result.strip_prefix("E_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    });
    if matches!(result, "ok" | "accepted" | "requested") || code_shaped {
        Ok(())
    } else {
        Err(format!(
            "field `result` must be `requested`, `accepted`, `ok` or an error code like `E_VM_NOT_FOUND`, not {result:?}"
        ))
    }
}

fn is_hash(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Parses one line (without its newline) into an entry, checking JSON validity, field presence,
/// types and values, and that the line is byte-for-byte the entry's serialisation. Does not check
/// `seq` continuity or `prev` (that needs the neighbours).
pub(crate) fn parse_line(line: &[u8]) -> Result<Entry, Defect> {
    if line.len() > MAX_LINE_BYTES {
        return Err(Defect::TooLong { len: line.len() });
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| Defect::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(Defect::NotObject);
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Defect::UnknownField(unknown.clone()));
    }
    let entry = Entry {
        seq: integer(&map, "seq")?,
        at: Timestamp(integer(&map, "at")?),
        who: text(&map, "who")?,
        what: text(&map, "what")?,
        target: text(&map, "target")?,
        result: text(&map, "result")?,
        detail: match map.get("detail") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Defect::WrongType { field: "detail", expected: "a string" }),
        },
        prev: text(&map, "prev")?,
    };
    if entry.seq == 0 {
        return Err(Defect::InvalidValue {
            field: "seq",
            reason: "sequence numbers start at 1".to_owned(),
        });
    }
    check_result(&entry.result)
        .map_err(|reason| Defect::InvalidValue { field: "result", reason })?;
    if !is_hash(&entry.prev) {
        return Err(Defect::InvalidValue {
            field: "prev",
            reason: "must be `sha256:` followed by 64 lower-case hex digits".to_owned(),
        });
    }
    if entry.to_line().as_bytes() != line {
        return Err(Defect::NotCanonical);
    }
    Ok(entry)
}

fn get<'a>(map: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, Defect> {
    map.get(field).ok_or(Defect::MissingField(field))
}

fn integer(map: &Map<String, Value>, field: &'static str) -> Result<u64, Defect> {
    get(map, field)?.as_u64().ok_or(Defect::WrongType { field, expected: "a non-negative integer" })
}

fn text(map: &Map<String, Value>, field: &'static str) -> Result<String, Defect> {
    match get(map, field)? {
        Value::String(s) if s.is_empty() => {
            Err(Defect::InvalidValue { field, reason: "must not be empty".to_owned() })
        }
        Value::String(s) => Ok(s.clone()),
        _ => Err(Defect::WrongType { field, expected: "a string" }),
    }
}

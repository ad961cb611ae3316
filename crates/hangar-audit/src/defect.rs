//! What can be wrong with one line of the log ([`Defect`]): shared by the line parser and
//! the whole-log verifier.

use std::fmt;

/// The longest line (without its newline) an entry may serialise to: 64 KiB. `append` rejects
/// longer entries and `verify` reports longer lines, so a reader never buffers more than this.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What is wrong with a line. Its `Display` is one specific sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defect {
    /// The file ends without a newline after this line: a write was torn (crash mid-append) or the
    /// file was truncated.
    Incomplete,
    /// The line is longer than [`MAX_LINE_BYTES`].
    TooLong {
        /// The line's length in bytes (a lower bound when the line was not read to its end).
        len: usize,
    },
    /// The line is not valid JSON (includes invalid UTF-8 and empty lines).
    NotJson(String),
    /// The line is JSON but not an object.
    NotObject,
    /// A required field is absent.
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    WrongType {
        /// The field.
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
    },
    /// A field with a name the format does not define.
    UnknownField(String),
    /// A field has the right type but a value the format forbids.
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Why the value is invalid.
        reason: String,
    },
    /// The line parses to a valid entry but is not byte-for-byte that entry's serialisation
    /// (whitespace, field order, escapes or number forms differ, or a key is duplicated).
    NotCanonical,
    /// `seq` is not the previous line's `seq` + 1.
    Seq {
        /// The line's `seq`.
        found: u64,
        /// The `seq` the line's position requires.
        expected: u64,
    },
    /// Line 1's `prev` is not [`crate::GENESIS`].
    PrevNotGenesis,
    /// `prev` is not the hash of the previous line: that line was edited, or a line was
    /// inserted, deleted or moved here.
    PrevMismatch {
        /// The 1-based number of the previous line.
        previous_line: u64,
    },
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::Incomplete => {
                f.write_str("incomplete line (no trailing newline): torn write or truncation")
            }
            Defect::TooLong { len } => {
                write!(f, "line is {len} bytes, longer than the {MAX_LINE_BYTES}-byte limit")
            }
            Defect::NotJson(e) => write!(f, "not valid JSON ({e})"),
            Defect::NotObject => f.write_str("not a JSON object"),
            Defect::MissingField(field) => write!(f, "field `{field}` is missing"),
            Defect::WrongType { field, expected } => {
                write!(f, "field `{field}` must be {expected}")
            }
            Defect::UnknownField(field) => write!(f, "unknown field `{field}`"),
            Defect::InvalidValue { field, reason } => write!(f, "field `{field}`: {reason}"),
            Defect::NotCanonical => f.write_str(
                "not in canonical form (bytes differ from the entry's serialisation: field order, \
                 whitespace, escapes or number form)",
            ),
            Defect::Seq { found, expected } => {
                write!(f, "seq {found} where {expected} was expected")
            }
            Defect::PrevNotGenesis => {
                f.write_str("prev of the first entry is not the genesis hash")
            }
            Defect::PrevMismatch { previous_line } => {
                write!(f, "prev hash does not match line {previous_line}")
            }
        }
    }
}

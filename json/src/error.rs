//! The crate's one error type.
//!
//! [`JsonError`] carries a [`JsonErrorKind`]; every kind but
//! [`JsonErrorKind::TooDeepToWrite`] blames the input text, that one blames
//! the caller (it handed the writer a value nested deeper than it writes),
//! so [`JsonError::is_input_fault`] tells "reject the document" apart from
//! "fix the caller".

use core::fmt;

/// What is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonErrorKind {
    /// The bytes are not UTF-8.
    InvalidUtf8,
    /// The text starts with a UTF-8 byte-order mark (Python's `json.loads` refuses it too).
    ByteOrderMark,
    /// The text ends inside a value.
    UnexpectedEnd,
    /// A character that cannot start or continue a value here.
    UnexpectedChar,
    /// An object member does not start with a string key.
    ExpectedKey,
    /// An object key is not followed by `:`.
    ExpectedColon,
    /// An unescaped control character (below U+0020) inside a string.
    ControlCharacter,
    /// An unknown escape or a malformed `\uXXXX`.
    BadEscape,
    /// A malformed number.
    BadNumber,
    /// An integer literal longer than Python's 4300-digit limit.
    IntegerTooLong,
    /// Arrays/objects nested deeper than the parser's limit.
    TooDeep,
    /// Something other than whitespace after the document.
    TrailingData,
    /// A value handed to the writer nests deeper than [`crate::MAX_DEPTH`]
    /// (caller fault: the parser never produces one).
    TooDeepToWrite,
}

impl JsonErrorKind {
    fn describe(self) -> &'static str {
        match self {
            JsonErrorKind::InvalidUtf8 => "invalid UTF-8",
            JsonErrorKind::ByteOrderMark => "unexpected UTF-8 byte-order mark",
            JsonErrorKind::UnexpectedEnd => "unexpected end of input",
            JsonErrorKind::UnexpectedChar => "unexpected character",
            JsonErrorKind::ExpectedKey => "expected a string key",
            JsonErrorKind::ExpectedColon => "expected ':' after an object key",
            JsonErrorKind::ControlCharacter => "unescaped control character in a string",
            JsonErrorKind::BadEscape => "invalid escape in a string",
            JsonErrorKind::BadNumber => "malformed number",
            JsonErrorKind::IntegerTooLong => "integer literal longer than 4300 digits",
            JsonErrorKind::TooDeep => "nesting deeper than the limit",
            JsonErrorKind::TrailingData => "extra data after the JSON document",
            JsonErrorKind::TooDeepToWrite => "value nests deeper than 512 levels",
        }
    }
}

/// A JSON error and, for syntax errors, the byte offset where it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// What is wrong.
    pub kind: JsonErrorKind,
    /// Byte offset into the input (0 for [`JsonErrorKind::TooDeepToWrite`],
    /// which has no input).
    pub offset: usize,
}

impl JsonError {
    pub(crate) fn new(kind: JsonErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// True when the parsed text is at fault, false when the caller is
    /// (a value too deep to write).
    pub fn is_input_fault(&self) -> bool {
        self.kind != JsonErrorKind::TooDeepToWrite
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == JsonErrorKind::TooDeepToWrite {
            return f.write_str(self.kind.describe());
        }
        write!(
            f,
            "invalid JSON: {} at byte {}",
            self.kind.describe(),
            self.offset
        )
    }
}

impl std::error::Error for JsonError {}

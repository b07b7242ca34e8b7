//! The crate's one error type (spec/impl/handshake.md, AVP-HS-14).
//!
//! Kinds are grouped by who is at fault: the input (a peer's hello, a config
//! or tokenizer file: [`Error::Json`], [`Error::Field`], [`Error::Tokenizer`],
//! [`Error::Safetensors`]), the caller ([`Error::TooDeepToWrite`],
//! [`Error::DuplicateSession`]), or I/O in the optional `fs` module.

use core::fmt;

pub use avp_json::{JsonError, JsonErrorKind};

/// Every error of this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Input is not JSON as Python's `json.loads` reads it (input fault).
    Json(JsonError),
    /// A JSON field has the wrong type or an unusable value (input fault).
    Field {
        /// Dotted path of the field, e.g. `identity.hidden_dim`.
        field: String,
        /// What was expected.
        expected: &'static str,
        /// What was found (a JSON type name or a short description).
        found: String,
    },
    /// A `tokenizer.json` we cannot read a vocabulary from (input fault).
    Tokenizer(String),
    /// A malformed safetensors header or layout (input fault).
    Safetensors(String),
    /// The same tensor name appears twice across a model's files (input fault).
    DuplicateTensor(String),
    /// A value handed to the writer nests deeper than the limit (caller fault).
    TooDeepToWrite,
    /// A session id already in use was passed to `SessionManager::create` (caller fault).
    DuplicateSession(String),
    /// Reading a file failed (only from the `fs` module).
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's message.
        message: String,
    },
}

impl Error {
    pub(crate) fn field(
        field: impl Into<String>,
        expected: &'static str,
        found: impl Into<String>,
    ) -> Self {
        Error::Field {
            field: field.into(),
            expected,
            found: found.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Json(e) => fmt::Display::fmt(e, f),
            Error::Field {
                field,
                expected,
                found,
            } => {
                write!(f, "field `{field}`: expected {expected}, found {found}")
            }
            Error::Tokenizer(msg) => write!(f, "unusable tokenizer.json: {msg}"),
            Error::Safetensors(msg) => write!(f, "invalid safetensors file: {msg}"),
            Error::DuplicateTensor(name) => {
                write!(f, "tensor `{name}` appears in more than one file")
            }
            Error::TooDeepToWrite => f.write_str("value nests deeper than 512 levels"),
            Error::DuplicateSession(id) => write!(f, "session id `{id}` is already in use"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<JsonError> for Error {
    /// A value too deep to write is the caller's fault, not the input's:
    /// it keeps its own kind.
    fn from(e: JsonError) -> Self {
        if e.is_input_fault() {
            Error::Json(e)
        } else {
            Error::TooDeepToWrite
        }
    }
}

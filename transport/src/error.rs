//! The transport crate's one error type.
//!
//! Kinds are kept apart the way callers need them: a peer that answered with an
//! error status, a connection that never carried the request (the only thing the
//! client retries, AVP-HTTP-40), a timeout, local I/O, and API misuse.

use std::fmt;
use std::io;

/// Everything that can go wrong in the HTTP binding.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// API misuse: the URL given to the client cannot be used.
    InvalidUrl(String),
    /// The connection could not be established (refused, unreachable, reset
    /// before the request was sent). Retried with backoff by the client.
    Connect(String),
    /// The connection broke after the request started; not retried because
    /// the peer may have acted on it.
    Connection(String),
    /// No answer within the configured timeout.
    Timeout,
    /// The peer answered with an error status; `kind` and `message` come from
    /// its JSON error body when it had one (AVP-HTTP-20).
    Status {
        /// The HTTP status code.
        status: u16,
        /// The machine-readable error kind, when the body carried one.
        kind: Option<String>,
        /// The human-readable message (or the raw body).
        message: String,
    },
    /// The peer answered 2xx with a body that is not the expected JSON.
    BadResponse(String),
    /// Local I/O (reading the file to send, binding a socket, the store).
    Io(io::Error),
    /// TLS configuration: unreadable or unusable certificates and keys.
    Tls(String),
    /// The handshake answer is not what AVP-HTTP-30 describes.
    BadHandshake(String),
    /// A chunked context cannot go to this peer: it did not announce
    /// `kv_chunked` and the context does not fit one message (AVP-HTTP-80);
    /// found before anything was sent.
    ChunkingUnsupported(String),
    /// The file to send is not what it claims (a chunked file whose chunks
    /// do not belong together, a message the codec refuses): found locally.
    BadInput(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(url) => write!(f, "invalid URL {url:?}: need http://host:port[/path]"),
            Self::Connect(why) => write!(f, "cannot connect: {why}"),
            Self::Connection(why) => write!(f, "connection failed during the request: {why}"),
            Self::Timeout => f.write_str("timed out waiting for the peer"),
            Self::Status {
                status,
                kind,
                message,
            } => match kind {
                Some(kind) => write!(f, "peer answered {status} ({kind}): {message}"),
                None => write!(f, "peer answered {status}: {message}"),
            },
            Self::BadResponse(why) => write!(f, "peer sent an unreadable answer: {why}"),
            Self::Io(err) => write!(f, "I/O error: {err}"),
            Self::Tls(why) => write!(f, "TLS configuration: {why}"),
            Self::BadHandshake(why) => write!(f, "the handshake answer is unusable: {why}"),
            Self::ChunkingUnsupported(why) => write!(f, "cannot send in chunks: {why}"),
            Self::BadInput(why) => write!(f, "cannot send this file: {why}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

impl TransportError {
    /// A short stable name for the kind, used in the CLI's JSON error output.
    pub fn kind_name(&self) -> &str {
        match self {
            Self::InvalidUrl(_) => "invalid_url",
            Self::Connect(_) => "connect",
            Self::Connection(_) => "connection",
            Self::Timeout => "timeout",
            Self::Status {
                kind: Some(kind), ..
            } => kind,
            Self::Status { .. } => "status",
            Self::BadResponse(_) => "bad_response",
            Self::Io(_) => "io",
            Self::Tls(_) => "tls",
            Self::BadHandshake(_) => "bad_handshake",
            Self::ChunkingUnsupported(_) => "chunking_unsupported",
            Self::BadInput(_) => "bad_input",
        }
    }
}

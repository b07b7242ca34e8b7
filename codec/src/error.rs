//! The codec's one error type (spec/protocol/errors.md).
//!
//! Every failure carries an [`ErrorKind`] whose [`ErrorKind::as_str`] is the
//! exact string the CLI and the conformance suite use (AVP-ERR-1). Peer
//! faults (the bytes are bad), API misuse (the caller asked for something
//! impossible) and our own bugs are different kinds, so a router can tell
//! "reject the message" apart from "fix the caller".

use std::fmt;

/// What went wrong, as a closed vocabulary (AVP-ERR-1).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The first two bytes are not `0x41 0x56` (AVP-WIRE-2).
    BadMagic,
    /// The version byte is not 1 (AVP-WIRE-3).
    UnsupportedVersion,
    /// The input ends before a length it declares (AVP-WIRE-6, AVP-WIRE-7).
    Truncated,
    /// The Metadata protobuf is not valid proto3 for the AVP schema (AVP-WIRE-10).
    MalformedMetadata,
    /// A dtype, payload type, mode or KV dtype value outside the accepted set (AVP-WIRE-13).
    UnknownEnum,
    /// The CRC-32 of the tensor bytes differs from `payload_checksum` (AVP-WIRE-15).
    ChecksumMismatch,
    /// The zstd payload could not be decompressed (AVP-WIRE-17).
    Decompression,
    /// A decoder limit (spec/protocol/limits.md) would be exceeded.
    LimitExceeded,
    /// A strict-mode rejection: trailing bytes, unknown flag bits, flag/metadata
    /// conflict, shape/size mismatch (AVP-WIRE-20).
    Inconsistent,
    /// The message's keyed MAC is missing, malformed or wrong (AVP-MAC-5);
    /// only reported when the caller asked for verification.
    BadMac,
    // --- KV extensions (spec/protocol/kv-quant.md, kv-delta.md) ---
    /// A quantized KV payload's group size is 0, out of range for its scheme,
    /// or does not divide the axis it groups (AVP-KVQ-4).
    BadGroupSize,
    /// A quantized KV payload declares another number of scales per tensor
    /// than its shape and group size give (AVP-KVQ-4).
    ScaleCountMismatch,
    /// A delta's prefix address differs from the base's (AVP-KVD-4).
    PrefixMismatch,
    /// A delta does not fit its base: layers, heads, head size or dtype
    /// differ, or the base is shorter than the delta's start (AVP-KVD-4).
    DeltaMismatch,
    /// The receiver holds no context with the delta's prefix (AVP-KVD-5);
    /// the sender falls back to a full transfer.
    MissingPrefix,
    // --- chunked contexts (spec/protocol/chunked.md) ---
    /// A chunk's `avp.chunk` descriptor is malformed or contradicts itself
    /// or its KV header (AVP-CHK-2, AVP-CHK-3).
    BadChunk,
    /// A chunk contradicts the chunks of its assembly: another context,
    /// other dimensions, overlapping layers, a gap, or a different chunk
    /// under an index already received (AVP-CHK-4).
    ChunkConflict,
    /// The assembly was finished with chunks missing (AVP-CHK-5).
    IncompleteContext,
    /// The assembled layer bytes do not hash to the declared context
    /// digest (AVP-CHK-5).
    ContextDigestMismatch,
    // --- end KV extensions ---
    /// API misuse (AVP-ERR-2): the caller asked for something the format cannot express
    /// (for example a message over 4 GiB). Never caused by received bytes.
    InvalidArgument,
    /// API misuse (AVP-API-3): metadata handed to the encoder contradicts the
    /// tensor or the encode options (a wrong `payload_checksum`, AVP-API-2; a
    /// `compression` the options do not produce, AVP-API-1). Never caused by
    /// received bytes.
    MetadataMismatch,
    /// A bug in this crate (an invariant did not hold). Please report it.
    Internal,
}

impl ErrorKind {
    /// The exact kind string (AVP-ERR-1), e.g. `"bad_magic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadMagic => "bad_magic",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::Truncated => "truncated",
            ErrorKind::MalformedMetadata => "malformed_metadata",
            ErrorKind::UnknownEnum => "unknown_enum",
            ErrorKind::ChecksumMismatch => "checksum_mismatch",
            ErrorKind::Decompression => "decompression",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::Inconsistent => "inconsistent",
            ErrorKind::BadMac => "bad_mac",
            ErrorKind::BadGroupSize => "bad_group_size",
            ErrorKind::ScaleCountMismatch => "scale_count_mismatch",
            ErrorKind::PrefixMismatch => "prefix_mismatch",
            ErrorKind::DeltaMismatch => "delta_mismatch",
            ErrorKind::MissingPrefix => "missing_prefix",
            ErrorKind::BadChunk => "bad_chunk",
            ErrorKind::ChunkConflict => "chunk_conflict",
            ErrorKind::IncompleteContext => "incomplete_context",
            ErrorKind::ContextDigestMismatch => "context_digest_mismatch",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::MetadataMismatch => "metadata_mismatch",
            ErrorKind::Internal => "internal",
        }
    }

    /// True when the received bytes are at fault (as opposed to the caller or us).
    pub fn is_peer_fault(self) -> bool {
        !matches!(
            self,
            ErrorKind::InvalidArgument | ErrorKind::MetadataMismatch | ErrorKind::Internal
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A codec failure: a typed kind plus a human-readable explanation.
///
/// One pointer wide, so every `Result` the parser passes around fits in
/// registers; the allocation is paid only when something fails.
#[derive(Clone, PartialEq, Eq)]
pub struct Error(Box<Inner>);

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// Builds an error. Errors are rare, so the message is simply owned.
    #[cold]
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Inner {
            kind,
            message: message.into(),
        }))
    }

    /// The kind, whose [`ErrorKind::as_str`] is the stable machine-readable name.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The explanation (for humans; not stable: AVP-ERR-5).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    #[cold]
    pub(crate) fn truncated(what: &str, need: u64, have: u64) -> Self {
        Error::new(
            ErrorKind::Truncated,
            format!("{what}: need {need} bytes, have {have}"),
        )
    }

    #[cold]
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::MalformedMetadata, what)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.kind.as_str(), self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("message", &self.0.message)
            .finish()
    }
}

impl std::error::Error for Error {}

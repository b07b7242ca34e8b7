//! What compatible mode accepts and strict mode rejects (AVP-WIRE-20).
//!
//! Its own module because every decoding step reports warnings (the
//! decoder, decompression, the KV inner format, streams): none of them
//! should have to import another step to do so.

use std::fmt;

use crate::error::{Error, ErrorKind};

/// Something compatible mode accepted that strict mode rejects (AVP-WIRE-20).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// Bytes after the declared end of the message (AVP-WIRE-20a).
    TrailingBytes {
        /// How many.
        count: u64,
    },
    /// Flag bits v1 does not define (AVP-WIRE-20b).
    UnknownFlagBits {
        /// The unknown bits.
        bits: u8,
    },
    /// A header flag disagrees with the metadata (AVP-WIRE-20c).
    FlagConflict {
        /// `compressed`, `has_map` or `kv_cache`.
        flag: &'static str,
        /// Whether the header bit is set.
        flag_set: bool,
        /// What the metadata says.
        detail: String,
    },
    /// `tensor_shape` times the element size is not the tensor byte count (AVP-WIRE-20d).
    ShapeSizeMismatch {
        /// Bytes `tensor_shape` and `dtype` imply (saturating).
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Bytes after the first zstd frame, which the SDK ignores (AVP-WIRE-20e).
    TrailingCompressedBytes {
        /// How many.
        count: u64,
    },
    /// The KV inner header disagrees with the payload or the metadata (AVP-KV-4, AVP-KV-5).
    KvInconsistent {
        /// What disagrees.
        detail: String,
    },
}

impl Warning {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Warning::TrailingBytes { .. } => "trailing_bytes",
            Warning::UnknownFlagBits { .. } => "unknown_flag_bits",
            Warning::FlagConflict { .. } => "flag_conflict",
            Warning::ShapeSizeMismatch { .. } => "shape_size_mismatch",
            Warning::TrailingCompressedBytes { .. } => "trailing_compressed_bytes",
            Warning::KvInconsistent { .. } => "kv_inconsistent",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::TrailingBytes { count } => {
                write!(f, "{count} trailing bytes after the message")
            }
            Warning::UnknownFlagBits { bits } => write!(f, "unknown flag bits 0x{bits:02x}"),
            Warning::FlagConflict {
                flag,
                flag_set,
                detail,
            } => {
                let state = if *flag_set { "set" } else { "clear" };
                write!(f, "flag {flag} is {state} but {detail}")
            }
            Warning::ShapeSizeMismatch { expected, actual } => write!(
                f,
                "tensor_shape implies {expected} tensor bytes, message has {actual}"
            ),
            Warning::TrailingCompressedBytes { count } => {
                write!(f, "{count} bytes after the zstd frame ignored")
            }
            Warning::KvInconsistent { detail } => write!(f, "KV cache: {detail}"),
        }
    }
}

/// Collects warnings, or turns the first into an error in strict mode.
pub(crate) struct Warnings {
    strict: bool,
    pub(crate) list: Vec<Warning>,
}

impl Warnings {
    pub(crate) fn new(strict: bool) -> Self {
        Warnings {
            strict,
            list: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, w: Warning) -> Result<(), Error> {
        if self.strict {
            return Err(Error::new(
                ErrorKind::Inconsistent,
                format!("strict mode: {w}"),
            ));
        }
        self.list.push(w);
        Ok(())
    }
}

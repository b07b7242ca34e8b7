//! `bytes::Bytes` payloads (feature `bytes`): a decoded message that owns
//! its metadata and shares the input buffer for the tensor bytes.

use bytes::Bytes;

use crate::decode::{DecodeOptions, decode_with};
use crate::error::Error;
use crate::header::Header;
use crate::metadata::Metadata;
use crate::warning::Warning;

/// A decoded message whose payload is a `Bytes` (a slice of the input
/// unless it was decompressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// The header.
    pub header: Header,
    /// The metadata, owning its strings.
    pub metadata: Metadata<'static>,
    /// The tensor bytes.
    pub payload: Bytes,
    /// What compatible mode accepted.
    pub warnings: Vec<Warning>,
}

/// Decodes `input`, sharing it for the payload (zero-copy when uncompressed).
pub fn decode_bytes(input: &Bytes, opts: &DecodeOptions) -> Result<OwnedMessage, Error> {
    let msg = decode_with(input, opts)?;
    let payload = match msg.payload {
        std::borrow::Cow::Borrowed(slice) => input.slice_ref(slice),
        std::borrow::Cow::Owned(v) => Bytes::from(v),
    };
    Ok(OwnedMessage {
        header: msg.header,
        metadata: msg.metadata.into_owned(),
        payload,
        warnings: msg.warnings,
    })
}

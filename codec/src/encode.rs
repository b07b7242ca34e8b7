//! `encode` (AVP-WIRE-22): byte-identical to the SDK's `encode()`.
//!
//! The exact output length is computed first and the output allocated once.
//! As in the SDK, the encoder derives `compression`, `payload_checksum` and
//! the flags itself: whatever the caller put in those metadata fields is
//! ignored (AVP-WIRE-15, AVP-WIRE-16, AVP-WIRE-4).

use crate::compress::Compression;
use crate::error::{Error, ErrorKind};
use crate::header::{Flags, HEADER_LEN, Header, VERSION};
use crate::metadata::{Metadata, PayloadType, metadata_len, write_metadata};

/// The flags an encoder writes for `metadata` (AVP-WIRE-4).
pub fn flags_for(metadata: &Metadata<'_>, compression: Compression) -> Flags {
    let mut f = 0;
    if compression != Compression::None {
        f |= Flags::COMPRESSED;
    }
    if !metadata.avp_map_id.is_empty() {
        f |= Flags::HAS_MAP;
    }
    if metadata.payload_type == PayloadType::KvCache {
        f |= Flags::KV_CACHE;
    }
    Flags(f)
}

fn compression_field(c: Compression) -> Option<&'static str> {
    (c != Compression::None).then_some("zstd")
}

/// Exact length of the uncompressed encoding of `metadata` with `tensor`
/// (the checksum's varint width depends on the bytes, so they are needed),
/// or `invalid_argument` when it does not fit the u32 `payload_length`
/// (AVP-WIRE-5). Equals `encode(metadata, tensor, Compression::None)?.len()`.
pub fn encoded_len(metadata: &Metadata<'_>, tensor: &[u8]) -> Result<usize, Error> {
    let meta = metadata_len(metadata, None, Some(crc32fast::hash(tensor)));
    payload_length(meta, tensor.len())?;
    Ok(HEADER_LEN.saturating_add(meta).saturating_add(tensor.len()))
}

fn payload_length(meta_len: usize, tensor_len: usize) -> Result<u32, Error> {
    meta_len
        .checked_add(tensor_len)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("metadata ({meta_len} bytes) plus tensor ({tensor_len} bytes) exceed the u32 payload_length"),
            )
        })
}

/// Encodes a message as the SDK does.
pub fn encode(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    compression: Compression,
) -> Result<Vec<u8>, Error> {
    let checksum = crc32fast::hash(tensor);
    let comp = compression_field(compression);
    let meta_len = metadata_len(metadata, comp, Some(checksum));
    let meta_len_u32 = u32::try_from(meta_len)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "metadata longer than 4 GiB"))?;
    let flags = flags_for(metadata, compression);
    let mut header = Header {
        version: VERSION,
        flags,
        payload_length: 0,
        metadata_length: meta_len_u32,
    };
    match compression.level() {
        None => {
            header.payload_length = payload_length(meta_len, tensor.len())?;
            let total = HEADER_LEN
                .saturating_add(meta_len)
                .saturating_add(tensor.len());
            let mut out = Vec::with_capacity(total);
            out.extend_from_slice(&header.to_bytes());
            write_metadata(metadata, comp, Some(checksum), &mut out);
            out.extend_from_slice(tensor);
            if out.len() != total {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "encoded length differs from the computed length",
                ));
            }
            Ok(out)
        }
        Some(level) => compressed(metadata, tensor, level, header, comp, checksum),
    }
}

#[cfg(feature = "zstd")]
fn compressed(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    level: i32,
    mut header: Header,
    comp: Option<&str>,
    checksum: u32,
) -> Result<Vec<u8>, Error> {
    let meta_len = header.metadata_length as usize;
    let cap = HEADER_LEN
        .saturating_add(meta_len)
        .saturating_add(crate::compress::compress_bound(tensor.len()));
    let mut out = Vec::with_capacity(cap);
    out.extend_from_slice(&header.to_bytes());
    write_metadata(metadata, comp, Some(checksum), &mut out);
    crate::compress::compress_into(tensor, level, &mut out)?;
    let stored = out
        .len()
        .saturating_sub(HEADER_LEN.saturating_add(meta_len));
    header.payload_length = payload_length(meta_len, stored)?;
    let bytes = header.to_bytes();
    if let Some(h) = out.get_mut(..HEADER_LEN) {
        h.copy_from_slice(&bytes);
    }
    Ok(out)
}

#[cfg(not(feature = "zstd"))]
fn compressed(
    _metadata: &Metadata<'_>,
    _tensor: &[u8],
    _level: i32,
    _header: Header,
    _comp: Option<&str>,
    _checksum: u32,
) -> Result<Vec<u8>, Error> {
    Err(Error::new(
        ErrorKind::InvalidArgument,
        "compression requested, but this build has no zstd support (feature `zstd`)",
    ))
}

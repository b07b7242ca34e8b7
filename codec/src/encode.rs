//! `encode` (AVP-WIRE-22): byte-identical to the SDK's `encode()`.
//!
//! The exact output length is computed first and the output allocated once.
//! As in the SDK, the encoder derives `compression`, `payload_checksum` and
//! the flags itself (AVP-WIRE-15, AVP-WIRE-16, AVP-WIRE-4). Unlike the SDK it
//! drops nothing silently: a `compression` or `payload_checksum` the caller
//! set must agree with the options and the tensor, or encoding is refused
//! with `metadata_mismatch` (AVP-API-1, AVP-API-2). Everything runs on the
//! caller's thread unless [`EncodeOptions::threads`] says otherwise (AVP-API-4).

use crate::compress::Compression;
use crate::error::{Error, ErrorKind};
use crate::header::{Flags, HEADER_LEN, Header, VERSION};
use crate::metadata::{Metadata, metadata_len, write_metadata};

/// The flags an encoder writes for `metadata` (AVP-WIRE-4).
pub fn flags_for(metadata: &Metadata<'_>, compression: Compression) -> Flags {
    let mut f = 0;
    if compression != Compression::None {
        f |= Flags::COMPRESSED;
    }
    if !metadata.avp_map_id.is_empty() {
        f |= Flags::HAS_MAP;
    }
    if metadata.payload_type.is_kv_cache() {
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
    let checksum = crate::crc32(tensor);
    check_given_fields(metadata, Compression::None, checksum)?;
    let meta = metadata_len(metadata, None, Some(checksum));
    payload_length(meta, tensor.len())?;
    Ok(HEADER_LEN.saturating_add(meta).saturating_add(tensor.len()))
}

/// AVP-API-1, AVP-API-2: the fields the encoder derives itself may be given,
/// but only with the values it would derive.
fn check_given_fields(
    metadata: &Metadata<'_>,
    compression: Compression,
    checksum: u32,
) -> Result<(), Error> {
    if let Some(given) = metadata.payload_checksum {
        if given != checksum {
            return Err(Error::new(
                ErrorKind::MetadataMismatch,
                format!(
                    "metadata payload_checksum is 0x{given:08x}, the tensor's CRC-32 is 0x{checksum:08x} (AVP-API-2)"
                ),
            ));
        }
    }
    match (
        metadata.compression.as_deref(),
        compression_field(compression),
    ) {
        (None, _) => Ok(()),
        (Some(given), Some(derived)) if given == derived => Ok(()),
        (Some(given), derived) => Err(Error::new(
            ErrorKind::MetadataMismatch,
            format!(
                "metadata compression is {given:?} but the encode options give {} (AVP-API-1)",
                derived.map_or_else(|| "none".to_owned(), |d| format!("{d:?}"))
            ),
        )),
    }
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

/// How to encode.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Tensor compression (AVP-WIRE-18).
    pub compression: Compression,
    /// Threads for the checksum and the tensor copy of tensors of 8 MiB or
    /// more: 1 (the default) keeps all work on the caller's thread; 0 picks
    /// the available parallelism (at most 8); more is an explicit count
    /// (AVP-API-4).
    pub threads: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl EncodeOptions {
    /// No compression, the caller's thread only.
    pub const DEFAULT: EncodeOptions = EncodeOptions {
        compression: Compression::None,
        threads: 1,
    };

    /// Sets the compression.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Sets [`EncodeOptions::threads`].
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
}

/// Encodes a message as the SDK does, into one exactly-sized allocation.
pub fn encode(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    compression: Compression,
) -> Result<Vec<u8>, Error> {
    encode_with(
        metadata,
        tensor,
        &EncodeOptions::DEFAULT.with_compression(compression),
    )
}

/// [`encode`] with options.
pub fn encode_with(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    opts: &EncodeOptions,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_into_with(metadata, tensor, opts, &mut out)?;
    Ok(out)
}

/// [`encode`] into `out`, reusing its allocation when it is large enough: a
/// sender that reuses one buffer pays no allocation and no page faults per
/// message. On success `out` is exactly the message; on error it is empty.
pub fn encode_into(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    encode_into_with(
        metadata,
        tensor,
        &EncodeOptions::DEFAULT.with_compression(compression),
        out,
    )
}

/// [`encode_into`] with options.
pub fn encode_into_with(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let result = encode_into_unchecked(metadata, tensor, opts, out);
    if result.is_err() {
        out.clear();
    }
    result
}

fn encode_into_unchecked(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    opts: &EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let compression = opts.compression;
    let checksum = crate::checksum::crc32_with_threads(tensor, opts.threads);
    check_given_fields(metadata, compression, checksum)?;
    let comp = compression_field(compression);
    let (header, meta_len) = header_for(metadata, tensor.len(), compression, checksum)?;
    let Some(level) = compression.level() else {
        let prefix_len = HEADER_LEN.saturating_add(meta_len);
        let total = prefix_len.saturating_add(tensor.len());
        if tensor.len() < crate::checksum::PARALLEL_MIN_LEN || opts.threads == 1 {
            out.clear();
            out.reserve_exact(total);
            out.extend_from_slice(&header.to_bytes());
            write_metadata(metadata, comp, Some(checksum), out);
            out.extend_from_slice(tensor);
        } else {
            // A large tensor is copied by several threads into an already
            // sized buffer: a reused one is only truncated (no memset), a new
            // one comes zeroed from the allocator untouched, so the threads
            // take its first-touch page faults in parallel.
            size_for_overwrite(out, total);
            let mut prefix = Vec::with_capacity(prefix_len);
            prefix.extend_from_slice(&header.to_bytes());
            write_metadata(metadata, comp, Some(checksum), &mut prefix);
            let (head, body) = out.split_at_mut(prefix_len.min(total));
            if prefix.len() != head.len() {
                return Err(length_bug());
            }
            head.copy_from_slice(&prefix);
            crate::checksum::copy_with_threads(body, tensor, opts.threads);
        }
        if out.len() != total {
            return Err(length_bug());
        }
        return Ok(());
    };
    out.clear();
    compressed(metadata, tensor, level, header, comp, checksum, out)
}

/// Makes `out` exactly `len` bytes long, contents unspecified, touching as
/// little memory as possible.
fn size_for_overwrite(out: &mut Vec<u8>, len: usize) {
    if out.len() >= len {
        out.truncate(len);
    } else if out.capacity() >= len {
        out.resize(len, 0);
    } else {
        *out = vec![0u8; len];
    }
}

fn length_bug() -> Error {
    Error::new(
        ErrorKind::Internal,
        "encoded length differs from the computed length",
    )
}

/// The header and metadata of the uncompressed encoding of `metadata` with
/// `tensor`: the full message is this prefix followed by `tensor` itself, so
/// a transport can write both (vectored I/O) without copying the tensor.
pub fn encode_prefix(metadata: &Metadata<'_>, tensor: &[u8]) -> Result<Vec<u8>, Error> {
    let checksum = crate::crc32(tensor);
    check_given_fields(metadata, Compression::None, checksum)?;
    let (header, meta_len) = header_for(metadata, tensor.len(), Compression::None, checksum)?;
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(meta_len));
    out.extend_from_slice(&header.to_bytes());
    write_metadata(metadata, None, Some(checksum), &mut out);
    Ok(out)
}

/// The header (with `payload_length` for an uncompressed tensor) and the metadata length.
fn header_for(
    metadata: &Metadata<'_>,
    tensor_len: usize,
    compression: Compression,
    checksum: u32,
) -> Result<(Header, usize), Error> {
    let meta_len = metadata_len(metadata, compression_field(compression), Some(checksum));
    let metadata_length = u32::try_from(meta_len)
        .map_err(|_| Error::new(ErrorKind::InvalidArgument, "metadata longer than 4 GiB"))?;
    let payload_length = match compression {
        Compression::None => payload_length(meta_len, tensor_len)?,
        _ => 0, // set once the compressed size is known
    };
    let flags = flags_for(metadata, compression);
    Ok((
        Header {
            version: VERSION,
            flags,
            payload_length,
            metadata_length,
        },
        meta_len,
    ))
}

#[cfg(feature = "zstd")]
fn compressed(
    metadata: &Metadata<'_>,
    tensor: &[u8],
    level: i32,
    mut header: Header,
    comp: Option<&str>,
    checksum: u32,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let meta_len = header.metadata_length as usize;
    let cap = HEADER_LEN
        .saturating_add(meta_len)
        .saturating_add(crate::compress::compress_bound(tensor.len()));
    out.reserve_exact(cap);
    out.extend_from_slice(&header.to_bytes());
    write_metadata(metadata, comp, Some(checksum), out);
    crate::compress::compress_into(tensor, level, out)?;
    let stored = out
        .len()
        .saturating_sub(HEADER_LEN.saturating_add(meta_len));
    header.payload_length = payload_length(meta_len, stored)?;
    let bytes = header.to_bytes();
    if let Some(h) = out.get_mut(..HEADER_LEN) {
        h.copy_from_slice(&bytes);
    }
    Ok(())
}

#[cfg(not(feature = "zstd"))]
fn compressed(
    _metadata: &Metadata<'_>,
    _tensor: &[u8],
    _level: i32,
    _header: Header,
    _comp: Option<&str>,
    _checksum: u32,
    _out: &mut Vec<u8>,
) -> Result<(), Error> {
    Err(Error::new(
        ErrorKind::InvalidArgument,
        "compression requested, but this build has no zstd support (feature `zstd`)",
    ))
}

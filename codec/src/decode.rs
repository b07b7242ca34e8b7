//! `peek` and `decode` (AVP-WIRE-5 .. AVP-WIRE-21).
//!
//! Checks run in a fixed order, the same for one-shot and incremental
//! decoding: header (magic, version), limits, `metadata_length` against
//! `payload_length`, metadata presence, metadata parse, tensor presence,
//! then the compatible/strict checks, decompression and the checksum.

use std::borrow::Cow;

use crate::error::{Error, ErrorKind};
use crate::header::{Flags, HEADER_LEN, Header};
use crate::limits::Limits;
use crate::metadata::{Metadata, ParsedFields};
use crate::warning::{Warning, Warnings};

/// How to decode.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Reject what compatible mode only warns about (AVP-WIRE-20).
    pub strict: bool,
    /// Verify `payload_checksum` when present (AVP-WIRE-15). On by default;
    /// turning it off is for benchmarks and forensic tools only.
    pub verify_checksum: bool,
    /// Decoder limits (spec/protocol/limits.md).
    pub limits: Limits,
    /// Threads for verifying the checksum of tensors of 8 MiB or more:
    /// 1 (the default) keeps all work on the caller's thread, so an embedder
    /// gets no threads it did not ask for; 0 picks the available parallelism
    /// (at most 8); more is an explicit count (AVP-API-4).
    pub checksum_threads: usize,
}

impl DecodeOptions {
    /// Compatible mode, checksum verified, default limits.
    pub const DEFAULT: DecodeOptions = DecodeOptions {
        strict: false,
        verify_checksum: true,
        limits: Limits::DEFAULT,
        checksum_threads: 1,
    };

    /// Strict mode with default limits.
    pub fn strict() -> Self {
        DecodeOptions {
            strict: true,
            ..Self::DEFAULT
        }
    }

    /// Sets strict mode.
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`DecodeOptions::checksum_threads`].
    pub fn with_checksum_threads(mut self, threads: usize) -> Self {
        self.checksum_threads = threads;
        self
    }

    /// Sets checksum verification.
    pub fn with_verify_checksum(mut self, verify: bool) -> Self {
        self.verify_checksum = verify;
        self
    }
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Header and metadata of a message, read without touching the tensor bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The header.
    pub header: Header,
    /// The metadata (strings borrow from the input).
    pub metadata: Metadata<'a>,
}

impl Peeked<'_> {
    /// Bytes the whole message occupies: 12 + `payload_length`.
    pub fn message_len(&self) -> u64 {
        self.header.message_len()
    }
}

/// A decoded message (AVP-WIRE-19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The header as received.
    pub header: Header,
    /// The metadata as received.
    pub metadata: Metadata<'a>,
    /// The (decompressed) tensor bytes: a slice of the input unless the
    /// message was compressed.
    pub payload: Cow<'a, [u8]>,
    /// What compatible mode accepted (always empty in strict mode).
    pub warnings: Vec<Warning>,
}

impl Message<'_> {
    /// Whether the tensor bytes were zstd-compressed on the wire (the header
    /// bit decides, as in the SDK: AVP-WIRE-16).
    pub fn was_compressed(&self) -> bool {
        self.header.flags.compressed()
    }

    /// A copy that owns everything.
    pub fn into_owned(self) -> Message<'static> {
        Message {
            header: self.header,
            metadata: self.metadata.into_owned(),
            payload: Cow::Owned(self.payload.into_owned()),
            warnings: self.warnings,
        }
    }
}

/// Largest tensor checksummed ahead of the metadata parse: the work wasted
/// when the metadata then fails is bounded by this.
const EARLY_CRC_MAX_LEN: usize = 64 << 10;

/// Header checks that need only the 12 header bytes (AVP-WIRE-2/3/7,
/// AVP-LIM-1/2): magic, version, `metadata_length` and `payload_length`
/// against `limits`, and `metadata_length <= payload_length`. A transport can
/// call this on the first 12 bytes of a body to refuse it before buffering.
#[inline(always)]
pub fn check_header(input: &[u8], limits: &Limits) -> Result<Header, Error> {
    let header = Header::parse(input)?;
    if header.metadata_length > limits.max_metadata_len {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "metadata_length {} exceeds the limit of {}",
                header.metadata_length, limits.max_metadata_len
            ),
        ));
    }
    if header.payload_length > limits.max_payload_len {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "payload_length {} exceeds the limit of {}",
                header.payload_length, limits.max_payload_len
            ),
        ));
    }
    if header.metadata_length > header.payload_length {
        return Err(Error::new(
            ErrorKind::Truncated,
            format!(
                "metadata_length {} exceeds payload_length {}: the metadata runs past the payload",
                header.metadata_length, header.payload_length
            ),
        ));
    }
    Ok(header)
}

/// The metadata bytes, once the header is checked.
fn metadata_bytes<'a>(input: &'a [u8], header: &Header) -> Result<&'a [u8], Error> {
    let end = header.metadata_end();
    input
        .get(HEADER_LEN..end)
        .ok_or_else(|| Error::truncated("metadata", end as u64, input.len() as u64))
}

/// Reads header and metadata only (AVP-WIRE-21). Needs just the first
/// `12 + metadata_length` bytes; its cost does not depend on the tensor size.
pub fn peek(input: &[u8]) -> Result<Peeked<'_>, Error> {
    peek_with(input, &DecodeOptions::DEFAULT)
}

/// [`peek`] with options (limits apply; strict mode is not consulted because
/// its checks need the whole message).
#[inline]
pub fn peek_with<'a>(input: &'a [u8], opts: &DecodeOptions) -> Result<Peeked<'a>, Error> {
    let header = check_header(input, &opts.limits)?;
    let metadata = Metadata::parse(metadata_bytes(input, &header)?, &opts.limits)?;
    Ok(Peeked { header, metadata })
}

/// Decodes a whole message in compatible mode with the default limits.
pub fn decode(input: &[u8]) -> Result<Message<'_>, Error> {
    decode_with(input, &DecodeOptions::DEFAULT)
}

/// Decodes a whole message, checking in the order of AVP-WIRE-24 (which
/// decides the error when several apply, AVP-ERR-4).
pub fn decode_with<'a>(input: &'a [u8], opts: &DecodeOptions) -> Result<Message<'a>, Error> {
    // peek_with's two steps, spelled out so the metadata is built in place
    // rather than moved through a `Peeked`.
    let header = check_header(input, &opts.limits)?;
    // A small uncompressed tensor is checksummed before the metadata is
    // parsed: the CRC's serial tail then overlaps the parse in the CPU's
    // out-of-order window (~15 ns off a 3.6 KiB decode). The result is
    // only compared at the usual step, so the error order is unchanged.
    let early_crc = if opts.verify_checksum && !header.flags.compressed() {
        input
            .get(header.metadata_end()..header.message_len() as usize)
            .filter(|t| t.len() <= EARLY_CRC_MAX_LEN)
            .map(crc32fast::hash)
    } else {
        None
    };
    // The checks run on the parsed fields before the `Metadata` is built, so
    // the message is built once, straight into the result (holding it across
    // the checks cost a ~300-byte copy at the end of every decode).
    let (metadata, (payload, warnings)) =
        Metadata::parse_then(metadata_bytes(input, &header)?, &opts.limits, |fields| {
            check_message(input, &header, fields, opts, early_crc)
        })?;
    Ok(Message {
        header,
        metadata,
        payload,
        warnings,
    })
}

/// The checks [`decode_with`] makes after the metadata parse (AVP-WIRE-24:
/// tensor presence, trailing bytes, flags, checksum, shape), for a caller
/// that streamed an uncompressed tensor through its own window instead of
/// holding the message: `input_len` is the length of the whole input
/// (trailing bytes included) and `tensor_crc32` the CRC-32 of the tensor
/// bytes. Gives exactly the warnings, or the error, that [`decode_with`]
/// gives for that input. A compressed tensor has to be decompressed to be
/// checked, so it is `invalid_argument` here: decode it with [`decode_with`].
pub fn check_streamed(
    peeked: &Peeked<'_>,
    input_len: u64,
    tensor_crc32: u32,
    opts: &DecodeOptions,
) -> Result<Vec<Warning>, Error> {
    let header = &peeked.header;
    let m = &peeked.metadata;
    let end = header.message_len();
    if input_len < end {
        return Err(Error::truncated("message", end, input_len));
    }
    let fields = ParsedFields {
        payload_type: m.payload_type,
        dtype: m.dtype,
        tensor_shape: m.tensor_shape.as_slice(),
        compression: m.compression.as_deref(),
        avp_map_id: &m.avp_map_id,
        payload_checksum: m.payload_checksum,
    };
    let mut warnings = Warnings::new(opts.strict);
    let trailing = input_len.saturating_sub(end);
    if trailing > 0 {
        warnings.push(Warning::TrailingBytes { count: trailing })?;
    }
    check_flags(header.flags, &fields, &mut warnings)?;
    if header.flags.compressed() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "check_streamed needs the decompressed tensor: decode a compressed message with decode_with",
        ));
    }
    if opts.verify_checksum {
        if let Some(expected) = fields.payload_checksum {
            if tensor_crc32 != expected {
                return Err(Error::new(
                    ErrorKind::ChecksumMismatch,
                    format!(
                        "payload checksum 0x{expected:08x} in metadata, tensor bytes give 0x{tensor_crc32:08x}"
                    ),
                ));
            }
        }
    }
    let tensor_len = end.saturating_sub(header.metadata_end() as u64);
    check_shape(
        &fields,
        usize::try_from(tensor_len).unwrap_or(usize::MAX),
        &mut warnings,
    )?;
    Ok(warnings.list)
}

/// Everything after the metadata parse, in the order of AVP-WIRE-24: tensor
/// presence, trailing bytes, flags, decompression, checksum, shape.
#[inline(always)]
fn check_message<'a>(
    input: &'a [u8],
    header: &Header,
    metadata: &ParsedFields<'_, '_>,
    opts: &DecodeOptions,
    early_crc: Option<u32>,
) -> Result<(Cow<'a, [u8]>, Vec<Warning>), Error> {
    let end = header.message_len();
    if (input.len() as u64) < end {
        return Err(Error::truncated("message", end, input.len() as u64));
    }
    let mut warnings = Warnings::new(opts.strict);
    let trailing = (input.len() as u64).saturating_sub(end);
    if trailing > 0 {
        warnings.push(Warning::TrailingBytes { count: trailing })?;
    }
    check_flags(header.flags, metadata, &mut warnings)?;
    let stored = input
        .get(header.metadata_end()..end as usize)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "tensor range out of bounds after length checks",
            )
        })?;
    let payload: Cow<'a, [u8]> = if header.flags.compressed() {
        Cow::Owned(crate::compress::decompress(
            stored,
            &opts.limits,
            &mut warnings,
        )?)
    } else {
        Cow::Borrowed(stored)
    };
    if opts.verify_checksum {
        if let Some(expected) = metadata.payload_checksum {
            let actual = match early_crc {
                Some(crc) => crc,
                None => crate::checksum::crc32_with_threads(&payload, opts.checksum_threads),
            };
            if actual != expected {
                return Err(Error::new(
                    ErrorKind::ChecksumMismatch,
                    format!(
                        "payload checksum 0x{expected:08x} in metadata, tensor bytes give 0x{actual:08x}"
                    ),
                ));
            }
        }
    }
    check_shape(metadata, payload.len(), &mut warnings)?;
    Ok((payload, warnings.list))
}

/// AVP-WIRE-20b/c: unknown bits and flag/metadata agreement.
#[inline(always)]
fn check_flags(flags: Flags, m: &ParsedFields<'_, '_>, w: &mut Warnings) -> Result<(), Error> {
    if flags.unknown_bits() != 0 {
        w.push(Warning::UnknownFlagBits {
            bits: flags.unknown_bits(),
        })?;
    }
    let compression = m.compression;
    let agrees = matches!(
        (flags.compressed(), compression),
        (true, Some("zstd")) | (false, None)
    );
    if !agrees {
        let detail = match compression {
            Some(c) => format!("metadata compression is {c:?}"),
            None => "metadata has no compression".to_owned(),
        };
        w.push(Warning::FlagConflict {
            flag: "compressed",
            flag_set: flags.compressed(),
            detail,
        })?;
    }
    if flags.has_map() == m.avp_map_id.is_empty() {
        let detail = if m.avp_map_id.is_empty() {
            "avp_map_id is empty"
        } else {
            "avp_map_id is set"
        };
        w.push(Warning::FlagConflict {
            flag: "has_map",
            flag_set: flags.has_map(),
            detail: detail.to_owned(),
        })?;
    }
    if flags.kv_cache() != m.payload_type.is_kv_cache() {
        w.push(Warning::FlagConflict {
            flag: "kv_cache",
            flag_set: flags.kv_cache(),
            detail: format!("payload_type is {}", m.payload_type.name()),
        })?;
    }
    Ok(())
}

/// AVP-WIRE-20d: a non-empty `tensor_shape` must account for every tensor byte.
#[inline(always)]
fn check_shape(m: &ParsedFields<'_, '_>, actual: usize, w: &mut Warnings) -> Result<(), Error> {
    if m.tensor_shape.is_empty() {
        return Ok(());
    }
    let elements = m
        .tensor_shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)));
    let expected = elements.and_then(|e| e.checked_mul(m.dtype.element_size() as u64));
    if expected != Some(actual as u64) {
        w.push(Warning::ShapeSizeMismatch {
            expected: expected.unwrap_or(u64::MAX),
            actual: actual as u64,
        })?;
    }
    Ok(())
}

//! zstd payload compression (AVP-WIRE-16 .. AVP-WIRE-18), behind the `zstd` feature.
//!
//! Decompression is bounded before it starts: the frame must declare its
//! content size (the SDK requires it too) and that size is checked against
//! [`Limits::max_decompressed_len`] and against the ratio limit
//! ([`Limits::decompressed_cap`]) before one byte of output is allocated,
//! and the output buffer is never allowed to grow beyond it, so a
//! decompression bomb costs at most the limit (a 6 KB bomb declaring 200 MB
//! is refused having produced nothing).

use crate::error::{Error, ErrorKind};
use crate::limits::Limits;
use crate::warning::Warnings;

/// Compression choices, with the SDK's zstd levels (AVP-WIRE-18).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Tensor bytes stored as they are.
    #[default]
    None,
    /// zstd level 1 (SDK `CompressionLevel.FAST`).
    Fast,
    /// zstd level 3 (SDK `CompressionLevel.BALANCED`).
    Balanced,
    /// zstd level 19 (SDK `CompressionLevel.MAX`).
    Max,
}

impl Compression {
    /// The zstd level, or `None` for no compression.
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Fast => Some(1),
            Compression::Balanced => Some(3),
            Compression::Max => Some(19),
        }
    }

    /// `none`, `fast`, `balanced`, `max`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Fast => "fast",
            Compression::Balanced => "balanced",
            Compression::Max => "max",
        }
    }

    /// Parses [`Compression::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Compression::None),
            "fast" => Some(Compression::Fast),
            "balanced" => Some(Compression::Balanced),
            "max" => Some(Compression::Max),
            _ => None,
        }
    }
}

#[cfg(feature = "zstd")]
pub(crate) fn decompress(
    stored: &[u8],
    limits: &Limits,
    warnings: &mut Warnings,
) -> Result<Vec<u8>, Error> {
    use crate::warning::Warning;
    use zstd::zstd_safe;

    let content_size = match zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(Error::new(
                ErrorKind::Decompression,
                "zstd frame does not declare its content size",
            ));
        }
        Err(_) => {
            return Err(Error::new(ErrorKind::Decompression, "not a zstd frame"));
        }
    };
    // AVP-LIM-3 and AVP-LIM-10: the declared size is checked against the
    // absolute limit and the ratio to the stored size before any output is
    // allocated; the output buffer then has exactly that capacity, so a frame
    // that lies about its size cannot produce more.
    let cap = limits.decompressed_cap(stored.len());
    if content_size > cap {
        let why = if content_size > limits.max_decompressed_len {
            format!("the limit of {} (AVP-LIM-3)", limits.max_decompressed_len)
        } else {
            format!(
                "{cap}, the most {} stored bytes may expand to (ratio {}, AVP-LIM-10)",
                stored.len(),
                limits.max_decompression_ratio
            )
        };
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("zstd frame declares {content_size} bytes, over {why}"),
        ));
    }
    let frame_len = zstd_safe::find_frame_compressed_size(stored).map_err(|code| {
        Error::new(
            ErrorKind::Decompression,
            format!("zstd: {}", zstd_safe::get_error_name(code)),
        )
    })?;
    let (frame, rest) = stored.split_at_checked(frame_len).ok_or_else(|| {
        Error::new(
            ErrorKind::Decompression,
            "zstd frame longer than the payload",
        )
    })?;
    if !rest.is_empty() {
        warnings.push(Warning::TrailingCompressedBytes {
            count: rest.len() as u64,
        })?;
    }
    let capacity = usize::try_from(content_size).map_err(|_| {
        Error::new(
            ErrorKind::LimitExceeded,
            "decompressed size does not fit in memory",
        )
    })?;
    let mut out = Vec::new();
    out.try_reserve_exact(capacity).map_err(|_| {
        Error::new(
            ErrorKind::LimitExceeded,
            format!("cannot allocate {capacity} bytes"),
        )
    })?;
    let mut dctx = zstd_safe::DCtx::create();
    // The output can never exceed `capacity` (the Vec's spare room), whatever the frame claims.
    let written = dctx.decompress(&mut out, frame).map_err(|code| {
        Error::new(
            ErrorKind::Decompression,
            format!("zstd: {}", zstd_safe::get_error_name(code)),
        )
    })?;
    if written as u64 != content_size {
        return Err(Error::new(
            ErrorKind::Decompression,
            format!("zstd frame declared {content_size} bytes but produced {written}"),
        ));
    }
    Ok(out)
}

#[cfg(not(feature = "zstd"))]
pub(crate) fn decompress(
    _stored: &[u8],
    _limits: &Limits,
    _warnings: &mut Warnings,
) -> Result<Vec<u8>, Error> {
    Err(Error::new(
        ErrorKind::Decompression,
        "compressed payload, but this build has no zstd support (feature `zstd`)",
    ))
}

/// Appends the zstd compression of `input` at `level` to `out`, which must
/// already have room for `zstd_safe::compress_bound(input.len())` more bytes.
#[cfg(feature = "zstd")]
pub(crate) fn compress_into(input: &[u8], level: i32, out: &mut Vec<u8>) -> Result<(), Error> {
    use zstd::zstd_safe;
    let start = out.len();
    let bound = zstd_safe::compress_bound(input.len());
    out.resize(start.saturating_add(bound), 0);
    let dst = out
        .get_mut(start..)
        .ok_or_else(|| Error::new(ErrorKind::Internal, "compression buffer"))?;
    let mut cctx = zstd_safe::CCtx::create();
    let written = cctx.compress(dst, input, level).map_err(|code| {
        Error::new(
            ErrorKind::Internal,
            format!("zstd: {}", zstd_safe::get_error_name(code)),
        )
    })?;
    out.truncate(start.saturating_add(written));
    Ok(())
}

/// Upper bound of the compressed size.
#[cfg(feature = "zstd")]
pub(crate) fn compress_bound(n: usize) -> usize {
    zstd::zstd_safe::compress_bound(n)
}

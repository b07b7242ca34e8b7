//! The KV-cache inner format v1 (spec/protocol/kv-cache.md, AVP-KV-*).
//!
//! A 17-byte header `<IIIIB` (num_layers, num_kv_heads, head_dim, seq_len,
//! dtype byte), then for each layer its K tensor and its V tensor, each
//! `[num_kv_heads, seq_len, head_dim]` little-endian, contiguous.

use crate::error::{Error, ErrorKind};
use crate::limits::Limits;
use crate::metadata::DataType;
use crate::tensor::{ElementType, TensorView};
use crate::warning::{Warning, Warnings};

/// Size of the inner header (AVP-KV-1).
pub const KV_HEADER_LEN: usize = 17;

/// The inner dtype byte (AVP-KV-2). Only the three float types exist.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// Byte 0.
    Float32,
    /// Byte 1.
    Float16,
    /// Byte 2.
    Bfloat16,
}

impl KvDtype {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            KvDtype::Float32 => 0,
            KvDtype::Float16 => 1,
            KvDtype::Bfloat16 => 2,
        }
    }

    /// The dtype for `byte`; `None` for anything else (AVP-KV-2).
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(KvDtype::Float32),
            1 => Some(KvDtype::Float16),
            2 => Some(KvDtype::Bfloat16),
            _ => None,
        }
    }

    /// `float32`, `float16` or `bfloat16` (the SDK's names).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::Float32 => "float32",
            KvDtype::Float16 => "float16",
            KvDtype::Bfloat16 => "bfloat16",
        }
    }

    /// The element type.
    pub fn element_type(self) -> ElementType {
        match self {
            KvDtype::Float32 => ElementType::F32,
            KvDtype::Float16 => ElementType::F16,
            KvDtype::Bfloat16 => ElementType::Bf16,
        }
    }

    /// The metadata dtype that names the same element type.
    pub fn data_type(self) -> DataType {
        match self {
            KvDtype::Float32 => DataType::Float32,
            KvDtype::Float16 => DataType::Float16,
            KvDtype::Bfloat16 => DataType::Bfloat16,
        }
    }
}

/// The inner header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvHeader {
    /// Number of layers.
    pub num_layers: u32,
    /// KV heads per layer.
    pub num_kv_heads: u32,
    /// Per-head dimension.
    pub head_dim: u32,
    /// Sequence length.
    pub seq_len: u32,
    /// Element type.
    pub dtype: KvDtype,
}

impl KvHeader {
    /// Parses the 17 header bytes (AVP-KV-1, AVP-KV-2).
    pub fn parse(payload: &[u8]) -> Result<KvHeader, Error> {
        let Some(
            &[
                a0,
                a1,
                a2,
                a3,
                b0,
                b1,
                b2,
                b3,
                c0,
                c1,
                c2,
                c3,
                d0,
                d1,
                d2,
                d3,
                dt,
            ],
        ) = payload.first_chunk::<KV_HEADER_LEN>()
        else {
            return Err(Error::truncated(
                "KV-cache header",
                KV_HEADER_LEN as u64,
                payload.len() as u64,
            ));
        };
        let dtype = KvDtype::from_byte(dt).ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownEnum,
                format!("unknown KV-cache dtype byte {dt}"),
            )
        })?;
        Ok(KvHeader {
            num_layers: u32::from_le_bytes([a0, a1, a2, a3]),
            num_kv_heads: u32::from_le_bytes([b0, b1, b2, b3]),
            head_dim: u32::from_le_bytes([c0, c1, c2, c3]),
            seq_len: u32::from_le_bytes([d0, d1, d2, d3]),
            dtype,
        })
    }

    /// The 17 header bytes.
    pub fn to_bytes(&self) -> [u8; KV_HEADER_LEN] {
        let mut out = [0u8; KV_HEADER_LEN];
        let fields = [
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            self.seq_len,
        ];
        for (dst, v) in out.chunks_exact_mut(4).zip(fields) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        if let Some(last) = out.last_mut() {
            *last = self.dtype.byte();
        }
        out
    }

    /// Bytes of one K (or V) tensor, or `None` on overflow.
    pub fn tensor_bytes(&self) -> Option<u64> {
        u64::from(self.num_kv_heads)
            .checked_mul(u64::from(self.seq_len))?
            .checked_mul(u64::from(self.head_dim))?
            .checked_mul(self.dtype.element_type().size() as u64)
    }

    /// What [`KvCache::parse_with_limits`] checks, from the payload's first
    /// bytes and its length alone, for a caller that streams the payload
    /// instead of holding it: `head` is the payload's first
    /// `min(17, payload_len)` bytes. Same errors and warnings as the parse.
    pub fn check_payload(
        head: &[u8],
        payload_len: u64,
        strict: bool,
        limits: &Limits,
    ) -> Result<(KvHeader, Vec<Warning>), Error> {
        let header = KvHeader::parse(head)?;
        let total = header.total_bytes().ok_or_else(|| {
            Error::new(ErrorKind::Truncated, "KV-cache dimensions overflow 64 bits")
        })?;
        if payload_len < total {
            return Err(Error::truncated("KV-cache tensors", total, payload_len));
        }
        // After the size check, so a payload too short for its header stays
        // `truncated`; what is left are layers of zero-sized tensors.
        if header.num_layers > limits.max_kv_layers {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "KV cache declares {} layers, over the limit of {} (AVP-LIM-12)",
                    header.num_layers, limits.max_kv_layers
                ),
            ));
        }
        let mut warnings = Warnings::new(strict);
        let trailing = payload_len.saturating_sub(total);
        if trailing > 0 {
            warnings.push(Warning::KvInconsistent {
                detail: format!("{trailing} bytes after the last layer"),
            })?;
        }
        Ok((header, warnings.list))
    }

    /// AVP-KV-5: the inner dtype against the metadata's; a mismatch is a
    /// warning, or `inconsistent` when `strict`.
    pub fn check_metadata_dtype(
        &self,
        dtype: DataType,
        strict: bool,
    ) -> Result<Option<Warning>, Error> {
        if self.dtype.data_type() == dtype {
            return Ok(None);
        }
        let mut ws = Warnings::new(strict);
        ws.push(Warning::KvInconsistent {
            detail: format!(
                "inner dtype {} but metadata dtype {}",
                self.dtype.name(),
                dtype.name()
            ),
        })?;
        Ok(ws.list.pop())
    }

    /// Bytes of the whole inner payload, header included, or `None` on overflow (AVP-KV-3).
    pub fn total_bytes(&self) -> Option<u64> {
        self.tensor_bytes()?
            .checked_mul(2)?
            .checked_mul(u64::from(self.num_layers))?
            .checked_add(KV_HEADER_LEN as u64)
    }
}

/// A parsed KV cache borrowing the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCache<'a> {
    /// The inner header.
    pub header: KvHeader,
    data: &'a [u8],
    tensor_len: usize,
    /// What compatible parsing accepted (AVP-KV-4).
    pub warnings: Vec<Warning>,
}

/// One layer's K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayer<'a> {
    /// Layer index.
    pub index: usize,
    /// K, `[num_kv_heads, seq_len, head_dim]`.
    pub key: TensorView<'a>,
    /// V, same shape.
    pub value: TensorView<'a>,
}

impl<'a> KvCache<'a> {
    /// Parses a KV-cache payload (compatible mode: trailing bytes are a warning).
    pub fn parse(payload: &'a [u8]) -> Result<KvCache<'a>, Error> {
        Self::parse_with(payload, false)
    }

    /// Parses a KV-cache payload; `strict` rejects trailing bytes (AVP-KV-4).
    /// Default limits apply.
    pub fn parse_with(payload: &'a [u8], strict: bool) -> Result<KvCache<'a>, Error> {
        Self::parse_with_limits(payload, strict, &Limits::DEFAULT)
    }

    /// [`KvCache::parse_with`] under `limits`: `num_layers` is bounded
    /// (AVP-LIM-12) because layers of zero-sized tensors cost nothing on the
    /// wire but one step each to walk.
    pub fn parse_with_limits(
        payload: &'a [u8],
        strict: bool,
        limits: &Limits,
    ) -> Result<KvCache<'a>, Error> {
        let (header, warnings) =
            KvHeader::check_payload(payload, payload.len() as u64, strict, limits)?;
        // Both fit in usize: the check proved them at most payload.len().
        let tensor_len = header.tensor_bytes().unwrap_or(0) as usize;
        let total = header.total_bytes().unwrap_or(0) as usize;
        let data = payload.get(KV_HEADER_LEN..total).unwrap_or_default();
        Ok(KvCache {
            header,
            data,
            tensor_len,
            warnings,
        })
    }

    /// Checks the inner dtype against the metadata's (AVP-KV-5); a mismatch
    /// is a warning, or `inconsistent` when `strict`.
    pub fn check_metadata_dtype(&mut self, dtype: DataType, strict: bool) -> Result<(), Error> {
        self.warnings
            .extend(self.header.check_metadata_dtype(dtype, strict)?);
        Ok(())
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.header.num_layers as usize
    }

    /// Shape of each K or V tensor.
    pub fn tensor_shape(&self) -> [usize; 3] {
        [
            self.header.num_kv_heads as usize,
            self.header.seq_len as usize,
            self.header.head_dim as usize,
        ]
    }

    /// Layer `i`.
    pub fn layer(&self, i: usize) -> Option<KvLayer<'a>> {
        let n = self.tensor_len;
        let k_start = i.checked_mul(n)?.checked_mul(2)?;
        let v_start = k_start.checked_add(n)?;
        let key = self.data.get(k_start..v_start)?;
        let value = self.data.get(v_start..v_start.checked_add(n)?)?;
        let el = self.header.dtype.element_type();
        Some(KvLayer {
            index: i,
            key: TensorView::new(key, el),
            value: TensorView::new(value, el),
        })
    }

    /// All layers in order.
    pub fn layers(&self) -> impl Iterator<Item = KvLayer<'a>> + '_ {
        (0..self.num_layers()).map_while(move |i| self.layer(i))
    }
}

/// Writes a KV cache: header, then K0 V0 K1 V1 … (AVP-KV-3). Each tensor must
/// be exactly `header.tensor_bytes()` long and there must be `num_layers` pairs.
pub fn write_kv_cache<'t>(
    header: &KvHeader,
    layers: impl IntoIterator<Item = (&'t [u8], &'t [u8])>,
) -> Result<Vec<u8>, Error> {
    let misuse = |m: String| Error::new(ErrorKind::InvalidArgument, m);
    let total = header
        .total_bytes()
        .ok_or_else(|| misuse("KV-cache dimensions overflow".into()))?;
    let total = usize::try_from(total).map_err(|_| misuse("KV cache larger than memory".into()))?;
    let per = header.tensor_bytes().unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.to_bytes());
    let mut count = 0u64;
    for (k, v) in layers {
        if k.len() != per || v.len() != per {
            return Err(misuse(format!(
                "layer {count}: K/V must be {per} bytes, got {}/{}",
                k.len(),
                v.len()
            )));
        }
        out.extend_from_slice(k);
        out.extend_from_slice(v);
        count = count.saturating_add(1);
    }
    if count != u64::from(header.num_layers) {
        return Err(misuse(format!(
            "header says {} layers, got {count}",
            header.num_layers
        )));
    }
    Ok(out)
}

//! The extended KV inner format (spec/protocol/kv-quant.md, AVP-KVQ-*):
//! quantized (int8, int4) and/or delta KV caches.
//!
//! A message with `payload_type = KV_CACHE_EXT` carries this format. A
//! 40-byte header (magic `AVKX`, format version, scheme, dtype, scale dtype,
//! shape, delta start, group size, residual, scale count), a 32-byte prefix
//! address when the payload is a delta (`seq_start > 0`), then per layer a K
//! section and a V section whose layout the scheme fixes. Every declared
//! count is checked against the others and against the payload's length
//! before anything is sliced; parsing borrows, dequantizing writes into a
//! caller buffer. Delta assembly is in [`crate::kv_delta`].

use crate::error::{Error, ErrorKind};
use crate::kv::{KV_HEADER_LEN, KvCache, KvDtype, KvHeader};
use crate::limits::Limits;
use crate::tensor::{bf16_to_f32, f16_to_f32};

/// The payload's first four bytes (AVP-KVQ-2).
pub const KVX_MAGIC: [u8; 4] = *b"AVKX";
/// The only format version (AVP-KVQ-2).
pub const KVX_FORMAT_VERSION: u8 = 1;
/// Size of the fixed header (AVP-KVQ-2).
pub const KVX_HEADER_LEN: usize = 40;
/// Size of a prefix address (AVP-KVD-1).
pub const PREFIX_ADDRESS_LEN: usize = 32;
/// The largest int8 group (AVP-KVQ-5).
pub const MAX_INT8_GROUP: u32 = 64;

/// How the tensors are stored (AVP-KVQ-2 byte 5).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvScheme {
    /// 0: unquantized, in the header's dtype (a plain delta).
    None,
    /// 1: symmetric int8, per token and head, groups along `head_dim` (AVP-KVQ-5).
    Int8,
    /// 2: asymmetric int4, KIVI-style (AVP-KVQ-6).
    Int4,
}

impl KvScheme {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            KvScheme::None => 0,
            KvScheme::Int8 => 1,
            KvScheme::Int4 => 2,
        }
    }

    /// The scheme for `byte`; `None` for an unassigned byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(KvScheme::None),
            1 => Some(KvScheme::Int8),
            2 => Some(KvScheme::Int4),
            _ => None,
        }
    }

    /// `none`, `int8` or `int4` (CLI and conformance names).
    pub fn name(self) -> &'static str {
        match self {
            KvScheme::None => "none",
            KvScheme::Int8 => "int8",
            KvScheme::Int4 => "int4",
        }
    }

    /// Parses [`Self::name`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        [KvScheme::None, KvScheme::Int8, KvScheme::Int4]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Element type of scales and minimums (AVP-KVQ-2 byte 7).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleDtype {
    /// 0: IEEE binary32.
    F32,
    /// 1: IEEE binary16.
    F16,
}

impl ScaleDtype {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            ScaleDtype::F32 => 0,
            ScaleDtype::F16 => 1,
        }
    }

    /// The scale dtype for `byte`.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(ScaleDtype::F32),
            1 => Some(ScaleDtype::F16),
            _ => None,
        }
    }

    /// Bytes per scale.
    pub fn size(self) -> usize {
        match self {
            ScaleDtype::F32 => 4,
            ScaleDtype::F16 => 2,
        }
    }

    /// `x` rounded to this dtype (round half to even) and widened back.
    fn round(self, x: f32) -> f32 {
        match self {
            ScaleDtype::F32 => x,
            ScaleDtype::F16 => f16_to_f32(f32_to_f16(x)),
        }
    }

    fn write(self, x: f32, out: &mut Vec<u8>) {
        match self {
            ScaleDtype::F32 => out.extend_from_slice(&x.to_le_bytes()),
            ScaleDtype::F16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
        }
    }

    fn read_all(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            ScaleDtype::F32 => bytes
                .chunks_exact(4)
                .filter_map(|c| c.first_chunk::<4>().map(|b| f32::from_le_bytes(*b)))
                .collect(),
            ScaleDtype::F16 => bytes
                .chunks_exact(2)
                .filter_map(|c| {
                    c.first_chunk::<2>()
                        .map(|b| f16_to_f32(u16::from_le_bytes(*b)))
                })
                .collect(),
        }
    }
}

/// A content address of a KV prefix: BLAKE3 over its canonical bytes and
/// the model hash (AVP-KVD-1; computed by `kv_delta::prefix_address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixAddress(pub [u8; PREFIX_ADDRESS_LEN]);

impl PrefixAddress {
    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// How to quantize (the CLI's `--kv-quant`): scheme and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantParams {
    /// The scheme.
    pub scheme: KvScheme,
    /// Values per group (int8: 1..=64 dividing `head_dim`; int4: 32 or 64).
    pub group_size: u32,
    /// Element type of scales and minimums.
    pub scale_dtype: ScaleDtype,
    /// int4 only: the most recent tokens kept unquantized.
    pub residual: u32,
}

impl QuantParams {
    /// No quantization (a plain delta).
    pub const NONE: QuantParams = QuantParams {
        scheme: KvScheme::None,
        group_size: 0,
        scale_dtype: ScaleDtype::F32,
        residual: 0,
    };

    /// int8, groups of 64, f32 scales: 8.5 bits a value.
    pub const INT8: QuantParams = QuantParams {
        scheme: KvScheme::Int8,
        group_size: 64,
        scale_dtype: ScaleDtype::F32,
        residual: 0,
    };

    /// int4, groups of 32, f16 scales and minimums, no residual: 5 bits a value.
    pub const INT4: QuantParams = QuantParams {
        scheme: KvScheme::Int4,
        group_size: 32,
        scale_dtype: ScaleDtype::F16,
        residual: 0,
    };

    /// The defaults for `scheme`.
    pub fn for_scheme(scheme: KvScheme) -> QuantParams {
        match scheme {
            KvScheme::None => Self::NONE,
            KvScheme::Int8 => Self::INT8,
            KvScheme::Int4 => Self::INT4,
        }
    }
}

/// The fixed header (AVP-KVQ-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvExtHeader {
    /// Storage scheme.
    pub scheme: KvScheme,
    /// The dtype of the context (what dequantizing yields; unquantized parts are stored in it).
    pub dtype: KvDtype,
    /// Element type of scales and minimums.
    pub scale_dtype: ScaleDtype,
    /// Layers.
    pub num_layers: u32,
    /// KV heads per layer.
    pub num_kv_heads: u32,
    /// Per-head dimension.
    pub head_dim: u32,
    /// First position carried; > 0 makes the payload a delta (AVP-KVD-2).
    pub seq_start: u32,
    /// Length of the whole context (positions `[seq_start, seq_len)` are carried).
    pub seq_len: u32,
    /// Values per group (0 for scheme none).
    pub group_size: u32,
    /// int4: most recent tokens stored unquantized (0 otherwise).
    pub residual: u32,
    /// Declared groups per K (or V) tensor, checked against the shape.
    pub scales_per_tensor: u32,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at.saturating_add(4))
        .and_then(|b| b.first_chunk::<4>())
        .map_or(0, |b| u32::from_le_bytes(*b))
}

impl KvExtHeader {
    /// Positions carried: `seq_len - seq_start` (0 if inconsistent; parse rejects that).
    pub fn stored_tokens(&self) -> u32 {
        self.seq_len.saturating_sub(self.seq_start)
    }

    /// Tokens quantized (all but the residual).
    pub fn quantized_tokens(&self) -> u32 {
        self.stored_tokens().saturating_sub(self.residual)
    }

    /// The group count per tensor that the shape implies, or `None` on overflow.
    pub fn expected_scales(&self) -> Option<u64> {
        let (h, d) = (u64::from(self.num_kv_heads), u64::from(self.head_dim));
        let g = u64::from(self.group_size);
        match self.scheme {
            KvScheme::None => Some(0),
            KvScheme::Int8 => h
                .checked_mul(u64::from(self.stored_tokens()))?
                .checked_mul(d.checked_div(g)?),
            // Keys: H x (tq/g) x D groups; values: H x tq x (D/g): equal when g divides both.
            KvScheme::Int4 => h
                .checked_mul(u64::from(self.quantized_tokens()))?
                .checked_mul(d)?
                .checked_div(g),
        }
    }

    /// Bytes of one K (or V) section, or `None` on overflow (AVP-KVQ-3).
    pub fn section_bytes(&self) -> Option<u64> {
        let es = self.dtype.element_type().size() as u64;
        let ss = self.scale_dtype.size() as u64;
        let row = u64::from(self.num_kv_heads).checked_mul(u64::from(self.head_dim))?;
        let g = u64::from(self.scales_per_tensor);
        match self.scheme {
            KvScheme::None => row
                .checked_mul(u64::from(self.stored_tokens()))?
                .checked_mul(es),
            KvScheme::Int8 => g
                .checked_mul(ss)?
                .checked_add(row.checked_mul(u64::from(self.stored_tokens()))?),
            KvScheme::Int4 => g
                .checked_mul(ss)?
                .checked_mul(2)?
                .checked_add(row.checked_mul(u64::from(self.quantized_tokens()))? / 2)?
                .checked_add(row.checked_mul(u64::from(self.residual))?.checked_mul(es)?),
        }
    }

    /// Bytes before the first section: header and, for a delta, the address.
    pub fn preamble_len(&self) -> usize {
        if self.seq_start > 0 {
            KVX_HEADER_LEN.saturating_add(PREFIX_ADDRESS_LEN)
        } else {
            KVX_HEADER_LEN
        }
    }

    /// Bytes of the whole payload, or `None` on overflow (AVP-KVQ-3).
    pub fn total_bytes(&self) -> Option<u64> {
        self.section_bytes()?
            .checked_mul(2)?
            .checked_mul(u64::from(self.num_layers))?
            .checked_add(self.preamble_len() as u64)
    }

    /// The 40 header bytes.
    pub fn to_bytes(&self) -> [u8; KVX_HEADER_LEN] {
        let mut out = [0u8; KVX_HEADER_LEN];
        let bytes = [
            self.scheme.byte(),
            self.dtype.byte(),
            self.scale_dtype.byte(),
        ];
        let words = [
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            self.seq_start,
            self.seq_len,
            self.group_size,
            self.residual,
            self.scales_per_tensor,
        ];
        let (head, rest) = out.split_at_mut(8);
        head.copy_from_slice(&[
            KVX_MAGIC[0],
            KVX_MAGIC[1],
            KVX_MAGIC[2],
            KVX_MAGIC[3],
            KVX_FORMAT_VERSION,
            bytes[0],
            bytes[1],
            bytes[2],
        ]);
        for (dst, w) in rest.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses and checks the header alone, in the order of AVP-KVQ-3 steps 1-6.
    pub fn parse(payload: &[u8]) -> Result<KvExtHeader, Error> {
        let Some(head) = payload.first_chunk::<KVX_HEADER_LEN>() else {
            return Err(Error::truncated(
                "KV extended header",
                KVX_HEADER_LEN as u64,
                payload.len() as u64,
            ));
        };
        let [m0, m1, m2, m3, version, scheme, dtype, scale_dtype, ..] = *head;
        if [m0, m1, m2, m3] != KVX_MAGIC {
            return Err(err(
                ErrorKind::Inconsistent,
                "KV_CACHE_EXT payload does not start with \"AVKX\"",
            ));
        }
        if version != KVX_FORMAT_VERSION {
            return Err(err(
                ErrorKind::UnsupportedVersion,
                format!("KV extended format version {version}"),
            ));
        }
        let scheme = KvScheme::from_byte(scheme).ok_or_else(|| {
            err(
                ErrorKind::UnknownEnum,
                format!("unknown KV scheme {scheme}"),
            )
        })?;
        let dtype = KvDtype::from_byte(dtype).ok_or_else(|| {
            err(
                ErrorKind::UnknownEnum,
                format!("unknown KV-cache dtype byte {dtype}"),
            )
        })?;
        let scale_dtype = ScaleDtype::from_byte(scale_dtype).ok_or_else(|| {
            err(
                ErrorKind::UnknownEnum,
                format!("unknown scale dtype byte {scale_dtype}"),
            )
        })?;
        let h = KvExtHeader {
            scheme,
            dtype,
            scale_dtype,
            num_layers: le_u32(head, 8),
            num_kv_heads: le_u32(head, 12),
            head_dim: le_u32(head, 16),
            seq_start: le_u32(head, 20),
            seq_len: le_u32(head, 24),
            group_size: le_u32(head, 28),
            residual: le_u32(head, 32),
            scales_per_tensor: le_u32(head, 36),
        };
        h.check_params()?;
        Ok(h)
    }

    /// AVP-KVQ-3 steps 4-6: positions, scheme parameters, scale count.
    fn check_params(&self) -> Result<(), Error> {
        if self.seq_start > self.seq_len {
            return Err(err(
                ErrorKind::Inconsistent,
                format!(
                    "seq_start {} is after seq_len {}",
                    self.seq_start, self.seq_len
                ),
            ));
        }
        let bad_group = |why: &str| {
            err(
                ErrorKind::BadGroupSize,
                format!("group size {} {why}", self.group_size),
            )
        };
        let (g, d) = (self.group_size, self.head_dim);
        match self.scheme {
            KvScheme::None => {
                if g != 0 || self.residual != 0 || self.scale_dtype != ScaleDtype::F32 {
                    return Err(err(
                        ErrorKind::Inconsistent,
                        "scheme none needs group size 0, residual 0 and scale dtype 0",
                    ));
                }
            }
            KvScheme::Int8 => {
                if g == 0 || g > MAX_INT8_GROUP {
                    return Err(bad_group("is outside 1..=64 (int8)"));
                }
                if d.checked_rem(g) != Some(0) {
                    return Err(bad_group(&format!("does not divide head_dim {d}")));
                }
                if self.residual != 0 {
                    return Err(err(ErrorKind::Inconsistent, "int8 has no residual"));
                }
            }
            KvScheme::Int4 => {
                if g != 32 && g != 64 {
                    return Err(bad_group("is not 32 or 64 (int4)"));
                }
                if self.residual > self.stored_tokens() {
                    return Err(err(
                        ErrorKind::Inconsistent,
                        format!(
                            "residual {} exceeds the {} tokens carried",
                            self.residual,
                            self.stored_tokens()
                        ),
                    ));
                }
                if d.checked_rem(g) != Some(0) {
                    return Err(bad_group(&format!("does not divide head_dim {d}")));
                }
                if self.quantized_tokens().checked_rem(g) != Some(0) {
                    return Err(bad_group(&format!(
                        "does not divide the {} quantized tokens",
                        self.quantized_tokens()
                    )));
                }
            }
        }
        let expected = self
            .expected_scales()
            .ok_or_else(|| err(ErrorKind::Truncated, "KV dimensions overflow 64 bits"))?;
        if expected != u64::from(self.scales_per_tensor) {
            return Err(err(
                ErrorKind::ScaleCountMismatch,
                format!(
                    "header declares {} scales per tensor, the shape gives {expected}",
                    self.scales_per_tensor
                ),
            ));
        }
        Ok(())
    }
}

/// A parsed extended KV payload borrowing its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvExt<'a> {
    /// The header.
    pub header: KvExtHeader,
    /// The prefix address of a delta (`seq_start > 0`).
    pub prefix: Option<PrefixAddress>,
    body: &'a [u8],
    section_len: usize,
}

/// Which tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPart {
    /// The keys.
    Key,
    /// The values.
    Value,
}

impl<'a> KvExt<'a> {
    /// Parses under the default limits (AVP-KVQ-3).
    pub fn parse(payload: &'a [u8]) -> Result<KvExt<'a>, Error> {
        Self::parse_with_limits(payload, &Limits::DEFAULT)
    }

    /// Parses and checks everything but the scale values (AVP-KVQ-3): the
    /// payload's length must equal what the header declares (short:
    /// `truncated`; long: `inconsistent`); `num_layers` is bounded by
    /// `limits.max_kv_layers` (AVP-LIM-12).
    pub fn parse_with_limits(payload: &'a [u8], limits: &Limits) -> Result<KvExt<'a>, Error> {
        let header = KvExtHeader::parse(payload)?;
        let total = header
            .total_bytes()
            .ok_or_else(|| err(ErrorKind::Truncated, "KV dimensions overflow 64 bits"))?;
        let have = payload.len() as u64;
        if have < total {
            return Err(Error::truncated("KV extended payload", total, have));
        }
        if have > total {
            return Err(err(
                ErrorKind::Inconsistent,
                format!("{} bytes after the last layer", have.saturating_sub(total)),
            ));
        }
        if header.num_layers > limits.max_kv_layers {
            return Err(err(
                ErrorKind::LimitExceeded,
                format!(
                    "KV cache declares {} layers, over the limit of {} (AVP-LIM-12)",
                    header.num_layers, limits.max_kv_layers
                ),
            ));
        }
        let prefix = if header.seq_start > 0 {
            payload
                .get(KVX_HEADER_LEN..)
                .and_then(|b| b.first_chunk::<PREFIX_ADDRESS_LEN>())
                .map(|a| PrefixAddress(*a))
        } else {
            None
        };
        // Both fit in usize: the length check proved them at most payload.len().
        let section_len = header.section_bytes().unwrap_or(0) as usize;
        let body = payload.get(header.preamble_len()..).unwrap_or_default();
        Ok(KvExt {
            header,
            prefix,
            body,
            section_len,
        })
    }

    /// The stored bytes of one layer's K or V section.
    pub fn section(&self, layer: usize, part: KvPart) -> Option<&'a [u8]> {
        let index = layer
            .checked_mul(2)?
            .checked_add(usize::from(part == KvPart::Value))?;
        let start = index.checked_mul(self.section_len)?;
        self.body.get(start..start.checked_add(self.section_len)?)
    }

    /// Bytes of one dequantized K (or V) tensor, `[heads, stored tokens, head_dim]`.
    pub fn tensor_bytes(&self) -> u64 {
        let h = &self.header;
        u64::from(h.num_kv_heads)
            .saturating_mul(u64::from(h.stored_tokens()))
            .saturating_mul(u64::from(h.head_dim))
            .saturating_mul(h.dtype.element_type().size() as u64)
    }

    /// The KV v1 header of the dequantized positions (`seq_len` = stored tokens).
    pub fn dequantized_header(&self) -> KvHeader {
        KvHeader {
            num_layers: self.header.num_layers,
            num_kv_heads: self.header.num_kv_heads,
            head_dim: self.header.head_dim,
            seq_len: self.header.stored_tokens(),
            dtype: self.header.dtype,
        }
    }

    /// Length of [`Self::dequantize_into`]'s output.
    pub fn dequantized_len(&self) -> u64 {
        self.tensor_bytes()
            .saturating_mul(2)
            .saturating_mul(u64::from(self.header.num_layers))
            .saturating_add(KV_HEADER_LEN as u64)
    }

    /// Dequantizes one tensor into `dst` (exactly [`Self::tensor_bytes`]
    /// long), bit-exactly as AVP-KVQ-5/6 say. A scale or minimum that is not
    /// finite, or a negative scale, is `inconsistent`.
    pub fn dequantize_tensor(
        &self,
        layer: usize,
        part: KvPart,
        dst: &mut [u8],
    ) -> Result<(), Error> {
        if dst.len() as u64 != self.tensor_bytes() {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "tensor buffer is {} bytes, need {}",
                    dst.len(),
                    self.tensor_bytes()
                ),
            ));
        }
        let section = self.section(layer, part).ok_or_else(|| {
            err(
                ErrorKind::InvalidArgument,
                format!(
                    "no layer {layer} in a {}-layer cache",
                    self.header.num_layers
                ),
            )
        })?;
        let h = &self.header;
        let store = Store::new(h.dtype);
        let ss = h.scale_dtype.size();
        let groups = h.scales_per_tensor as usize;
        let g = h.group_size as usize;
        match h.scheme {
            KvScheme::None => {
                dst.copy_from_slice(section);
                Ok(())
            }
            KvScheme::Int8 => {
                let (scale_bytes, q) = section.split_at(groups.saturating_mul(ss));
                let scales = h.scale_dtype.read_all(scale_bytes);
                check_scales(&scales, None)?;
                // One loop per dtype, so the element conversion is inlined.
                match store.dtype {
                    KvDtype::Float16 => {
                        dequant_int8(&scales, q, g, dst, |x| f32_to_f16(x).to_le_bytes())
                    }
                    KvDtype::Bfloat16 => {
                        dequant_int8(&scales, q, g, dst, |x| f32_to_bf16(x).to_le_bytes())
                    }
                    _ => dequant_int8(&scales, q, g, dst, f32::to_le_bytes),
                }
                Ok(())
            }
            KvScheme::Int4 => self.dequantize_int4(section, part, &store, dst),
        }
    }

    fn dequantize_int4(
        &self,
        section: &[u8],
        part: KvPart,
        store: &Store,
        dst: &mut [u8],
    ) -> Result<(), Error> {
        let h = &self.header;
        let ss = h.scale_dtype.size();
        let groups = h.scales_per_tensor as usize;
        let g = h.group_size as usize;
        let d = h.head_dim as usize;
        let tq = h.quantized_tokens() as usize;
        let t = h.stored_tokens() as usize;
        let es = store.size;
        let scale_len = groups.saturating_mul(ss);
        let (scale_bytes, rest) = section.split_at(scale_len.min(section.len()));
        let (min_bytes, rest) = rest.split_at(scale_len.min(rest.len()));
        let packed_len = (h.num_kv_heads as usize)
            .saturating_mul(tq)
            .saturating_mul(d)
            / 2;
        let (packed, residual) = rest.split_at(packed_len.min(rest.len()));
        let scales = h.scale_dtype.read_all(scale_bytes);
        let mins = h.scale_dtype.read_all(min_bytes);
        check_scales(&scales, Some(&mins))?;
        let head_out = t.saturating_mul(d).saturating_mul(es);
        let head_packed = tq.saturating_mul(d) / 2;
        let head_residual = (h.residual as usize).saturating_mul(d).saturating_mul(es);
        let row_out = d.saturating_mul(es);
        // Per head: rows [0, tq) dequantized, rows [tq, t) copied from the residual.
        let heads = dst
            .chunks_exact_mut(head_out.max(1))
            .zip(
                packed
                    .chunks(head_packed.max(1))
                    .chain(std::iter::repeat(&[][..])),
            )
            .zip(
                residual
                    .chunks(head_residual.max(1))
                    .chain(std::iter::repeat(&[][..])),
            )
            .enumerate();
        for (hi, ((out, qh), rh)) in heads {
            let (qout, rout) = out.split_at_mut(tq.saturating_mul(row_out).min(out.len()));
            rout.copy_from_slice(rh.get(..rout.len()).unwrap_or_default());
            for (s, (orow, qrow)) in qout
                .chunks_exact_mut(row_out.max(1))
                .zip(qh.chunks_exact((d / 2).max(1)))
                .enumerate()
            {
                // Group of element (s, c): keys per channel over g tokens,
                // values per token over g channels (AVP-KVQ-6).
                let row_groups = match part {
                    KvPart::Key => hi
                        .saturating_mul(tq.checked_div(g).unwrap_or(0))
                        .saturating_add(s.checked_div(g).unwrap_or(0))
                        .saturating_mul(d),
                    KvPart::Value => hi
                        .saturating_mul(tq)
                        .saturating_add(s)
                        .saturating_mul(d.checked_div(g).unwrap_or(0)),
                };
                let row_len = match part {
                    KvPart::Key => d,
                    KvPart::Value => d.checked_div(g).unwrap_or(0),
                };
                let end = row_groups.saturating_add(row_len);
                let srow = scales.get(row_groups..end).unwrap_or_default();
                let mrow = mins.get(row_groups..end).unwrap_or_default();
                // One loop per dtype, so the element conversion is inlined.
                match store.dtype {
                    KvDtype::Float16 => int4_row(part, g, orow, qrow, srow, mrow, |x| {
                        f32_to_f16(x).to_le_bytes()
                    }),
                    KvDtype::Bfloat16 => int4_row(part, g, orow, qrow, srow, mrow, |x| {
                        f32_to_bf16(x).to_le_bytes()
                    }),
                    _ => int4_row(part, g, orow, qrow, srow, mrow, f32::to_le_bytes),
                }
            }
        }
        Ok(())
    }

    /// Writes the dequantized positions as a KV v1 payload (AVP-KV-1..3,
    /// `seq_len` = stored tokens) into `out`, exactly [`Self::dequantized_len`] long.
    pub fn dequantize_into(&self, out: &mut [u8]) -> Result<(), Error> {
        if out.len() as u64 != self.dequantized_len() {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "output is {} bytes, need {}",
                    out.len(),
                    self.dequantized_len()
                ),
            ));
        }
        let (head, tensors) = out.split_at_mut(KV_HEADER_LEN);
        head.copy_from_slice(&self.dequantized_header().to_bytes());
        let n = self.tensor_bytes() as usize;
        for (i, chunk) in tensors.chunks_exact_mut(n.max(1)).enumerate() {
            let part = if i % 2 == 0 {
                KvPart::Key
            } else {
                KvPart::Value
            };
            self.dequantize_tensor(i / 2, part, chunk)?;
        }
        Ok(())
    }

    /// [`Self::dequantize_into`] into a new buffer. Its size is bounded by
    /// the payload's (at most 8 times plus the header: int4 to float32).
    pub fn dequantize(&self) -> Result<Vec<u8>, Error> {
        let len = usize::try_from(self.dequantized_len())
            .map_err(|_| err(ErrorKind::InvalidArgument, "KV cache larger than memory"))?;
        let mut out = vec![0u8; len];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }
}

/// `x^ = q * s` per group of `g` signed bytes, written by `enc` (AVP-KVQ-5).
#[inline(always)]
fn dequant_int8<const N: usize>(
    scales: &[f32],
    q: &[u8],
    g: usize,
    dst: &mut [u8],
    enc: impl Fn(f32) -> [u8; N],
) {
    for ((s, qg), out) in scales
        .iter()
        .zip(q.chunks_exact(g.max(1)))
        .zip(dst.chunks_exact_mut(g.saturating_mul(N).max(1)))
    {
        for (&qv, o) in qg.iter().zip(out.chunks_exact_mut(N)) {
            o.copy_from_slice(&enc(f32::from(qv as i8) * s));
        }
    }
}

/// One row of `D` int4 values, `x^ = (q * s) + m` (AVP-KVQ-6): keys take a
/// scale and minimum per channel (`srow`, `mrow` of length `D`), values one
/// per run of `g` channels (length `D / g`). Lengths are the parser's.
#[inline(always)]
fn int4_row<const N: usize>(
    part: KvPart,
    g: usize,
    orow: &mut [u8],
    qrow: &[u8],
    srow: &[f32],
    mrow: &[f32],
    enc: impl Fn(f32) -> [u8; N],
) {
    let put = |o: &mut [u8], q: u8, s: f32, m: f32| o.copy_from_slice(&enc(f32::from(q) * s + m));
    match part {
        KvPart::Key => {
            for ((o, &byte), (s2, m2)) in orow
                .chunks_exact_mut(N.saturating_mul(2))
                .zip(qrow)
                .zip(srow.chunks_exact(2).zip(mrow.chunks_exact(2)))
            {
                if let (&[s0, s1], &[m0, m1]) = (s2, m2) {
                    let (lo, hi) = o.split_at_mut(N);
                    put(lo, byte & 0x0f, s0, m0);
                    put(hi, byte >> 4, s1, m1);
                }
            }
        }
        KvPart::Value => {
            for ((og, qg), (&s, &m)) in orow
                .chunks_exact_mut(g.saturating_mul(N).max(1))
                .zip(qrow.chunks_exact((g / 2).max(1)))
                .zip(srow.iter().zip(mrow))
            {
                for (o, &byte) in og.chunks_exact_mut(N.saturating_mul(2)).zip(qg) {
                    let (lo, hi) = o.split_at_mut(N);
                    put(lo, byte & 0x0f, s, m);
                    put(hi, byte >> 4, s, m);
                }
            }
        }
    }
}

fn check_scales(scales: &[f32], mins: Option<&[f32]>) -> Result<(), Error> {
    if let Some(bad) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
        return Err(err(
            ErrorKind::Inconsistent,
            format!("scale {bad} is not a finite non-negative number"),
        ));
    }
    if let Some(bad) = mins.unwrap_or_default().iter().find(|m| !m.is_finite()) {
        return Err(err(
            ErrorKind::Inconsistent,
            format!("minimum {bad} is not finite"),
        ));
    }
    Ok(())
}

/// Reads and writes one element of a float dtype.
struct Store {
    size: usize,
    dtype: KvDtype,
}

impl Store {
    fn new(dtype: KvDtype) -> Store {
        Store {
            size: dtype.element_type().size(),
            dtype,
        }
    }

    #[inline(always)]
    fn put(&self, x: f32, out: &mut [u8]) {
        match self.dtype {
            KvDtype::Float16 => out.copy_from_slice(&f32_to_f16(x).to_le_bytes()),
            KvDtype::Bfloat16 => out.copy_from_slice(&f32_to_bf16(x).to_le_bytes()),
            _ => out.copy_from_slice(&x.to_le_bytes()),
        }
    }

    #[inline(always)]
    fn get(&self, b: &[u8]) -> f32 {
        match (self.dtype, b) {
            (KvDtype::Float16, &[a, c]) => f16_to_f32(u16::from_le_bytes([a, c])),
            (KvDtype::Bfloat16, &[a, c]) => bf16_to_f32(u16::from_le_bytes([a, c])),
            (_, &[a, c, e, f]) => f32::from_le_bytes([a, c, e, f]),
            _ => 0.0,
        }
    }
}

/// Narrows to IEEE binary16, round half to even; overflow gives infinity,
/// NaN gives the quiet NaN 0x7e00 (sign kept). Branch-light (F. Giesen's
/// `float_to_half_fast3_rtne`): subnormal results are rounded by one binary32
/// addition, normal ones by integer arithmetic on the bits.
#[allow(clippy::arithmetic_side_effects)] // bit fields of a u32: bounded by construction
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    const F32_INFINITY: u32 = 255 << 23;
    const F16_OVERFLOW: u32 = (127 + 16) << 23;
    const DENORM_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23;
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let abs = bits & 0x7fff_ffff;
    let out = if abs >= F16_OVERFLOW {
        if abs > F32_INFINITY { 0x7e00 } else { 0x7c00 }
    } else if abs < (113 << 23) {
        // Below the smallest normal half: the addition rounds to a multiple of 2^-24.
        let r = f32::from_bits(abs) + f32::from_bits(DENORM_MAGIC);
        r.to_bits().wrapping_sub(DENORM_MAGIC)
    } else {
        let mant_odd = (abs >> 13) & 1;
        let rebased = abs
            .wrapping_sub((127 - 15) << 23)
            .wrapping_add(0xfff)
            .wrapping_add(mant_odd);
        rebased >> 13
    };
    sign | out as u16
}

/// Narrows to bfloat16, round half to even; NaN stays NaN (quiet).
#[allow(clippy::arithmetic_side_effects)] // u32 bit arithmetic that cannot overflow
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

/// Quantizes positions `[start, seq_len)` of `kv` with `params` into an
/// extended payload (AVP-KVQ-2..6). `start > 0` makes a delta and needs the
/// prefix address of positions `[0, start)` (AVP-KVD-2; see
/// `kv_delta::prefix_address`). Caller errors (`invalid_argument`): bad
/// parameters for this shape, a non-finite value, a scale that overflows
/// the scale dtype, `start > seq_len`, a delta without an address.
pub fn encode_ext(
    kv: &KvCache<'_>,
    params: &QuantParams,
    start: u32,
    prefix: Option<&PrefixAddress>,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    encode_ext_into(kv, params, start, prefix, &mut out)?;
    Ok(out)
}

/// [`encode_ext`] into `out` (cleared first), so a sender that quantizes
/// one context after another reuses one buffer instead of paying fresh
/// pages for each.
pub fn encode_ext_into(
    kv: &KvCache<'_>,
    params: &QuantParams,
    start: u32,
    prefix: Option<&PrefixAddress>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let misuse = |m: String| err(ErrorKind::InvalidArgument, m);
    let src = kv.header;
    if start > src.seq_len {
        return Err(misuse(format!(
            "delta start {start} is after seq_len {}",
            src.seq_len
        )));
    }
    if (start > 0) != prefix.is_some() {
        return Err(misuse(
            "a delta (start > 0) needs a prefix address, a full payload none".into(),
        ));
    }
    let mut header = KvExtHeader {
        scheme: params.scheme,
        dtype: src.dtype,
        scale_dtype: params.scale_dtype,
        num_layers: src.num_layers,
        num_kv_heads: src.num_kv_heads,
        head_dim: src.head_dim,
        seq_start: start,
        seq_len: src.seq_len,
        group_size: params.group_size,
        residual: params.residual,
        scales_per_tensor: 0,
    };
    header.scales_per_tensor = header
        .expected_scales()
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(u32::MAX);
    header
        .check_params()
        .map_err(|e| misuse(format!("cannot quantize: {}", e.message())))?;
    let total = header
        .total_bytes()
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| misuse("KV cache larger than memory".into()))?;
    out.clear();
    out.reserve(total);
    out.extend_from_slice(&header.to_bytes());
    if let Some(p) = prefix {
        out.extend_from_slice(&p.0);
    }
    let q = Quantizer::new(&header);
    let mut scratch = Vec::new();
    for layer in kv.layers() {
        for (part, tensor) in [(KvPart::Key, layer.key), (KvPart::Value, layer.value)] {
            scratch.clear();
            q.rows(tensor.bytes(), &mut scratch);
            q.tensor(&scratch, part, out)?;
        }
    }
    if out.len() != total {
        return Err(err(
            ErrorKind::Internal,
            format!("wrote {} bytes, header says {total}", out.len()),
        ));
    }
    Ok(())
}

/// Quantizes the stored rows of one tensor.
struct Quantizer {
    header: KvExtHeader,
    store: Store,
    src_seq: usize,
}

impl Quantizer {
    fn new(header: &KvExtHeader) -> Quantizer {
        Quantizer {
            header: *header,
            store: Store::new(header.dtype),
            src_seq: header.seq_len as usize,
        }
    }

    /// Rows `[start, seq_len)` of each head, widened to f32 (`[H, t, D]`).
    fn rows(&self, tensor: &[u8], out: &mut Vec<f32>) {
        let h = &self.header;
        let es = self.store.size;
        let row = (h.head_dim as usize).saturating_mul(es);
        let head = row.saturating_mul(self.src_seq);
        let skip = row.saturating_mul(h.seq_start as usize);
        for hb in tensor.chunks_exact(head.max(1)) {
            let stored = hb.get(skip..).unwrap_or_default();
            // Sized first, then a plain zip: `extend` over a `filter_map`
            // pushed one element at a time (a third of the quantizer's time).
            let start = out.len();
            out.resize(
                start.saturating_add(stored.len().checked_div(es).unwrap_or(0)),
                0.0,
            );
            let dst = out.get_mut(start..).unwrap_or_default();
            match self.store.dtype {
                KvDtype::Float16 => {
                    for (o, b) in dst.iter_mut().zip(stored.chunks_exact(2)) {
                        if let &[lo, hi] = b {
                            *o = f16_to_f32(u16::from_le_bytes([lo, hi]));
                        }
                    }
                }
                KvDtype::Bfloat16 => {
                    for (o, b) in dst.iter_mut().zip(stored.chunks_exact(2)) {
                        if let &[lo, hi] = b {
                            *o = bf16_to_f32(u16::from_le_bytes([lo, hi]));
                        }
                    }
                }
                _ => {
                    for (o, b) in dst.iter_mut().zip(stored.chunks_exact(4)) {
                        if let &[a, b1, c, d] = b {
                            *o = f32::from_le_bytes([a, b1, c, d]);
                        }
                    }
                }
            }
        }
    }

    fn tensor(&self, x: &[f32], part: KvPart, out: &mut Vec<u8>) -> Result<(), Error> {
        let h = &self.header;
        if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("cannot quantize the non-finite value {bad}"),
            ));
        }
        let g = h.group_size as usize;
        let sd = h.scale_dtype;
        match h.scheme {
            KvScheme::None => {
                let es = self.store.size;
                let start = out.len();
                out.resize(start.saturating_add(x.len().saturating_mul(es)), 0);
                let dst = out.get_mut(start..).unwrap_or_default();
                for (v, o) in x.iter().zip(dst.chunks_exact_mut(es)) {
                    self.store.put(*v, o);
                }
                Ok(())
            }
            KvScheme::Int8 => {
                let mut scales = Vec::with_capacity(x.len().checked_div(g).unwrap_or(0));
                for grp in x.chunks_exact(g.max(1)) {
                    let amax = grp.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    scales.push(stored_scale(sd, amax / 127.0)?);
                }
                for s in &scales {
                    sd.write(*s, out);
                }
                // Sized first, then one branch-free loop per group, which
                // the compiler can vectorise.
                let start = out.len();
                out.resize(start.saturating_add(x.len()), 0);
                let dst = out.get_mut(start..).unwrap_or_default();
                for ((grp, &s), o) in x
                    .chunks_exact(g.max(1))
                    .zip(&scales)
                    .zip(dst.chunks_exact_mut(g.max(1)))
                {
                    if s == 0.0 {
                        continue; // q = 0, already written
                    }
                    for (q, &v) in o.iter_mut().zip(grp) {
                        *q = quant(v, 0.0, s, -127.0, 127.0) as i8 as u8;
                    }
                }
                Ok(())
            }
            KvScheme::Int4 => self.int4(x, part, out),
        }
    }

    fn int4(&self, x: &[f32], part: KvPart, out: &mut Vec<u8>) -> Result<(), Error> {
        let h = &self.header;
        let g = h.group_size as usize;
        let d = h.head_dim as usize;
        let t = h.stored_tokens() as usize;
        let tq = h.quantized_tokens() as usize;
        let sd = h.scale_dtype;
        let groups = h.scales_per_tensor as usize;
        let (mut scales, mut mins) = (Vec::with_capacity(groups), Vec::with_capacity(groups));
        let head_len = t.saturating_mul(d);
        let heads = || x.chunks_exact(head_len.max(1));
        // Group statistics in the order of the scales (AVP-KVQ-6).
        for hx in heads() {
            let quantized = hx.get(..tq.saturating_mul(d)).unwrap_or_default();
            match part {
                KvPart::Key => {
                    for block in quantized.chunks_exact(g.saturating_mul(d).max(1)) {
                        for c in 0..d {
                            let vals = block.iter().skip(c).step_by(d.max(1));
                            let (lo, hi) = min_max(vals);
                            push_group(sd, lo, hi, &mut scales, &mut mins)?;
                        }
                    }
                }
                KvPart::Value => {
                    for grp in quantized.chunks_exact(g.max(1)) {
                        let (lo, hi) = min_max(grp.iter());
                        push_group(sd, lo, hi, &mut scales, &mut mins)?;
                    }
                }
            }
        }
        for s in &scales {
            sd.write(*s, out);
        }
        for m in &mins {
            sd.write(*m, out);
        }
        for (hi, hx) in heads().enumerate() {
            let quantized = hx.get(..tq.saturating_mul(d)).unwrap_or_default();
            for (s, row) in quantized.chunks_exact(d.max(1)).enumerate() {
                let base = match part {
                    KvPart::Key => hi
                        .saturating_mul(tq.checked_div(g).unwrap_or(0))
                        .saturating_add(s.checked_div(g).unwrap_or(0))
                        .saturating_mul(d),
                    KvPart::Value => hi
                        .saturating_mul(tq)
                        .saturating_add(s)
                        .saturating_mul(d.checked_div(g).unwrap_or(0)),
                };
                for (pair_index, pair) in row.chunks_exact(2).enumerate() {
                    let mut byte = 0u8;
                    for (k, v) in pair.iter().enumerate() {
                        let c = pair_index.saturating_mul(2).saturating_add(k);
                        let gi = match part {
                            KvPart::Key => base.saturating_add(c),
                            KvPart::Value => base.saturating_add(c.checked_div(g).unwrap_or(0)),
                        };
                        let sc = scales.get(gi).copied().unwrap_or(0.0);
                        let mn = mins.get(gi).copied().unwrap_or(0.0);
                        let q = quant(*v, mn, sc, 0.0, 15.0) as u8;
                        byte |= if k == 0 { q } else { q << 4 };
                    }
                    out.push(byte);
                }
            }
        }
        let es = self.store.size;
        for hx in heads() {
            let residual = hx.get(tq.saturating_mul(d)..).unwrap_or_default();
            for v in residual {
                let mut b = [0u8; 4];
                let slot = b.get_mut(..es).unwrap_or_default();
                self.store.put(*v, slot);
                out.extend_from_slice(slot);
            }
        }
        Ok(())
    }
}

fn min_max<'v>(vals: impl Iterator<Item = &'v f32>) -> (f32, f32) {
    vals.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    })
}

fn push_group(
    sd: ScaleDtype,
    lo: f32,
    hi: f32,
    scales: &mut Vec<f32>,
    mins: &mut Vec<f32>,
) -> Result<(), Error> {
    let m = sd.round(lo);
    if !m.is_finite() {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("minimum {lo} overflows the scale dtype"),
        ));
    }
    scales.push(stored_scale(sd, (hi - lo) / 15.0)?);
    mins.push(m);
    Ok(())
}

/// The scale as stored (rounded to the scale dtype), refused if it overflows.
fn stored_scale(sd: ScaleDtype, s: f32) -> Result<f32, Error> {
    let stored = sd.round(s);
    if stored.is_finite() {
        Ok(stored)
    } else {
        Err(err(
            ErrorKind::InvalidArgument,
            format!("scale {s} overflows the scale dtype"),
        ))
    }
}

/// `clamp(round_half_even((x - m) / s), lo, hi)` in binary32; 0 when `s` is 0 (AVP-KVQ-5/6).
#[inline(always)]
fn quant(x: f32, m: f32, s: f32, lo: f32, hi: f32) -> f32 {
    if s == 0.0 {
        return if lo < 0.0 { 0.0 } else { lo };
    }
    // Clamping to integer bounds before rounding gives the same result, and
    // for |v| <= 2^22 adding and subtracting 1.5 * 2^23 rounds half to even
    // exactly (no SSE4.1 `roundps` in the baseline x86-64 target: this keeps
    // the loop free of libm calls).
    const MAGIC: f32 = 12_582_912.0;
    let v = ((x - m) / s).clamp(lo, hi);
    (v + MAGIC) - MAGIC
}

/// Per-layer relative reconstruction error of K and V (`||x^ - x|| / ||x||`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerError {
    /// Keys.
    pub key: f64,
    /// Values.
    pub value: f64,
}

/// `||x^ - x|| / ||x||` per layer for K and V, over the positions `quantized`
/// carries, against `original` (same shape and dtype, `seq_len` equal to the
/// context length). 0 when both are zero; infinite when only `x` is.
pub fn relative_errors(
    quantized: &KvExt<'_>,
    original: &KvCache<'_>,
) -> Result<Vec<LayerError>, Error> {
    let q = &quantized.header;
    let o = original.header;
    if (q.num_layers, q.num_kv_heads, q.head_dim, q.seq_len, q.dtype)
        != (o.num_layers, o.num_kv_heads, o.head_dim, o.seq_len, o.dtype)
    {
        return Err(err(
            ErrorKind::InvalidArgument,
            "the original has another shape or dtype than the quantized payload",
        ));
    }
    let len = usize::try_from(quantized.tensor_bytes())
        .map_err(|_| err(ErrorKind::InvalidArgument, "tensor larger than memory"))?;
    let mut buf = vec![0u8; len];
    let quantizer = Quantizer::new(q);
    let mut orig = Vec::new();
    let store = Store::new(q.dtype);
    let mut errors = Vec::with_capacity(q.num_layers as usize);
    for layer in original.layers() {
        let mut pair = [0.0f64; 2];
        for (slot, (part, tensor)) in pair
            .iter_mut()
            .zip([(KvPart::Key, layer.key), (KvPart::Value, layer.value)])
        {
            quantized.dequantize_tensor(layer.index, part, &mut buf)?;
            orig.clear();
            quantizer.rows(tensor.bytes(), &mut orig);
            let (mut diff, mut norm) = (0.0f64, 0.0f64);
            for (x, b) in orig.iter().zip(buf.chunks_exact(store.size)) {
                let x = f64::from(*x);
                let e = f64::from(store.get(b)) - x;
                diff += e * e;
                norm += x * x;
            }
            *slot = if norm > 0.0 {
                (diff / norm).sqrt()
            } else if diff > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
        }
        errors.push(LayerError {
            key: pair[0],
            value: pair[1],
        });
    }
    Ok(errors)
}

/// Re-encodes a KV v1 payload in another float dtype (the CLI's
/// `--kv-dtype`): every element widened to binary32 and narrowed by
/// AVP-KVQ-7 (round half to even; binary16 overflow becomes infinity).
/// Same shape; the result is a KV v1 payload (AVP-KV-1..3).
pub fn convert_dtype(kv: &KvCache<'_>, dtype: KvDtype) -> Result<Vec<u8>, Error> {
    let header = KvHeader { dtype, ..kv.header };
    let total = header
        .total_bytes()
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| err(ErrorKind::InvalidArgument, "KV cache larger than memory"))?;
    let mut out = vec![0u8; total];
    let (head, tensors) = out.split_at_mut(KV_HEADER_LEN.min(total));
    head.copy_from_slice(&header.to_bytes());
    let store = Store::new(dtype);
    let sources = kv.layers().flat_map(|l| [l.key, l.value]);
    let per = usize::try_from(header.tensor_bytes().unwrap_or(0)).unwrap_or(0);
    for (dst, src) in tensors.chunks_exact_mut(per.max(1)).zip(sources) {
        for (o, x) in dst.chunks_exact_mut(store.size).zip(src.iter_f32()) {
            store.put(x, o);
        }
    }
    Ok(out)
}

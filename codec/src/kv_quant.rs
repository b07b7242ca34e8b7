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
use crate::f16::{bf16_to_f32, f16_to_f32, finite_f16_to_f32};
pub use crate::f16::{f32_to_bf16, f32_to_f16};
use crate::kv::{KV_HEADER_LEN, KvCache, KvDtype, KvHeader};
use crate::limits::Limits;

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
    /// 3: symmetric int8 in the KIVI grouping: keys per channel over `g`
    /// tokens, values per token over `g` channels, a residual kept in the
    /// context's dtype (AVP-KVQ-30..32). An outlier key channel then sets
    /// only its own scales, not those of every channel beside it.
    Int8Channel,
}

impl KvScheme {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            KvScheme::None => 0,
            KvScheme::Int8 => 1,
            KvScheme::Int4 => 2,
            KvScheme::Int8Channel => 3,
        }
    }

    /// The scheme for `byte`; `None` for an unassigned byte.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(KvScheme::None),
            1 => Some(KvScheme::Int8),
            2 => Some(KvScheme::Int4),
            3 => Some(KvScheme::Int8Channel),
            _ => None,
        }
    }

    /// `none`, `int8`, `int4` or `int8-channel` (CLI and conformance names).
    pub fn name(self) -> &'static str {
        match self {
            KvScheme::None => "none",
            KvScheme::Int8 => "int8",
            KvScheme::Int4 => "int4",
            KvScheme::Int8Channel => "int8-channel",
        }
    }

    /// Parses [`Self::name`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            KvScheme::None,
            KvScheme::Int8,
            KvScheme::Int4,
            KvScheme::Int8Channel,
        ]
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

    /// Writes `x` into `slot` (exactly [`Self::size`] bytes).
    fn put(self, x: f32, slot: &mut [u8]) {
        match self {
            ScaleDtype::F32 => slot.copy_from_slice(&x.to_le_bytes()),
            ScaleDtype::F16 => slot.copy_from_slice(&f32_to_f16(x).to_le_bytes()),
        }
    }

    /// Reads every scale of `bytes` into `out` (cleared first), reusing its memory.
    fn read_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        out.clear();
        out.resize(bytes.len().checked_div(self.size()).unwrap_or(0), 0.0);
        match self {
            ScaleDtype::F32 => {
                widen_with(bytes, out, u32::from_le_bytes, f32::from_bits, |b| b);
            }
            ScaleDtype::F16 => {
                widen_with(bytes, out, u16::from_le_bytes, f16_to_f32, |b| b);
            }
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
    /// Values per group (int8, int8-channel: 1..=64 dividing `head_dim`; int4: 32 or 64).
    pub group_size: u32,
    /// Element type of scales and minimums.
    pub scale_dtype: ScaleDtype,
    /// int4, int8-channel: the most recent tokens kept unquantized.
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

    /// int8, groups of 64, f16 scales: 8.25 bits a value (0.516× of
    /// float16; f32 scales would be 8.5 bits, 0.531×, over issue 17's 0.53×).
    pub const INT8: QuantParams = QuantParams {
        scheme: KvScheme::Int8,
        group_size: 64,
        scale_dtype: ScaleDtype::F16,
        residual: 0,
    };

    /// int4, groups of 32, f16 scales and minimums, no residual: 5 bits a value.
    pub const INT4: QuantParams = QuantParams {
        scheme: KvScheme::Int4,
        group_size: 32,
        scale_dtype: ScaleDtype::F16,
        residual: 0,
    };

    /// int8 in the KIVI grouping, groups of 64, f16 scales, no residual:
    /// 8.25 bits a value (AVP-KVQ-30), at any context length (the last key
    /// group of a channel takes the tokens left over, AVP-KVQ-31).
    pub const INT8_CHANNEL: QuantParams = QuantParams {
        scheme: KvScheme::Int8Channel,
        group_size: 64,
        scale_dtype: ScaleDtype::F16,
        residual: 0,
    };

    /// The defaults for `scheme`.
    pub fn for_scheme(scheme: KvScheme) -> QuantParams {
        match scheme {
            KvScheme::None => Self::NONE,
            KvScheme::Int8 => Self::INT8,
            KvScheme::Int4 => Self::INT4,
            KvScheme::Int8Channel => Self::INT8_CHANNEL,
        }
    }

    /// int8-channel parameters for a head size of `head_dim` (AVP-KVQ-30,
    /// the sender's choice): binary16 scales, no residual, the largest
    /// divisor of `head_dim` up to 64 as group (the fewest scales of both
    /// sections at every length, since the last key group may be shorter).
    pub fn int8_channel_for(head_dim: u32) -> QuantParams {
        let group = (1..=MAX_INT8_GROUP)
            .rev()
            .find(|&g| head_dim.checked_rem(g) == Some(0))
            .unwrap_or(1);
        QuantParams {
            group_size: group,
            ..QuantParams::INT8_CHANNEL
        }
    }

    /// These parameters with the residual grown by the tokens of `tokens`
    /// carried positions that do not fill a last key group (AVP-KVQ-4), for
    /// int4; the other schemes (int8-channel's last key group may be
    /// shorter, AVP-KVQ-31) are returned unchanged. A residual over `tokens`
    /// is kept (quantizing refuses it).
    pub fn with_leftover_residual(self, tokens: u32) -> QuantParams {
        if self.scheme != KvScheme::Int4 || self.residual > tokens {
            return self;
        }
        let leftover = tokens
            .saturating_sub(self.residual)
            .checked_rem(self.group_size)
            .unwrap_or(0);
        QuantParams {
            residual: self.residual.saturating_add(leftover),
            ..self
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
    /// int4, int8-channel: most recent tokens stored unquantized (0 otherwise).
    pub residual: u32,
    /// Declared groups per K (or V) tensor, checked against the shape
    /// (int8-channel: of the K tensor; see [`KvExtHeader::part_scales`]).
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

    /// The group count per tensor that the shape implies (int8-channel: of
    /// the K tensor, AVP-KVQ-31), or `None` on overflow.
    pub fn expected_scales(&self) -> Option<u64> {
        self.part_scales(KvPart::Key)
    }

    /// The scales of one K or V section that the shape implies, or `None`
    /// on overflow. Only int8-channel's differ: its keys have
    /// `H x ceil(tq/g) x D` (a shorter last group per channel), its values
    /// `H x tq x D/g` (AVP-KVQ-31).
    pub fn part_scales(&self, part: KvPart) -> Option<u64> {
        let (h, d) = (u64::from(self.num_kv_heads), u64::from(self.head_dim));
        let g = u64::from(self.group_size);
        let tq = u64::from(self.quantized_tokens());
        match self.scheme {
            KvScheme::None => Some(0),
            KvScheme::Int8 => h
                .checked_mul(u64::from(self.stored_tokens()))?
                .checked_mul(d.checked_div(g)?),
            // Keys: H x (tq/g) x D groups; values: H x tq x (D/g): equal when g divides both.
            KvScheme::Int4 => h.checked_mul(tq)?.checked_mul(d)?.checked_div(g),
            KvScheme::Int8Channel => match part {
                // ceil(tq / g) groups a channel, the last one shorter (AVP-KVQ-31).
                KvPart::Key => h
                    .checked_mul(
                        tq.checked_div(g)?
                            .checked_add(u64::from(tq.checked_rem(g)? != 0))?,
                    )?
                    .checked_mul(d),
                KvPart::Value => h.checked_mul(tq)?.checked_mul(d.checked_div(g)?),
            },
        }
    }

    /// Bytes of one K or V section, or `None` on overflow (AVP-KVQ-2,
    /// AVP-KVQ-31; the two differ for int8-channel alone).
    pub fn section_bytes(&self, part: KvPart) -> Option<u64> {
        let es = self.dtype.element_type().size() as u64;
        let ss = self.scale_dtype.size() as u64;
        let row = u64::from(self.num_kv_heads).checked_mul(u64::from(self.head_dim))?;
        let g = self.part_scales(part)?;
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
            // AVP-KVQ-31: scales, one byte a quantized value, the residual in dtype.
            KvScheme::Int8Channel => g
                .checked_mul(ss)?
                .checked_add(row.checked_mul(u64::from(self.quantized_tokens()))?)?
                .checked_add(row.checked_mul(u64::from(self.residual))?.checked_mul(es)?),
        }
    }

    /// Bytes of one layer's K and V sections, or `None` on overflow.
    pub fn layer_bytes(&self) -> Option<u64> {
        self.section_bytes(KvPart::Key)?
            .checked_add(self.section_bytes(KvPart::Value)?)
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
        self.layer_bytes()?
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
            KvScheme::Int4 | KvScheme::Int8Channel => {
                if self.scheme == KvScheme::Int4 && g != 32 && g != 64 {
                    return Err(bad_group("is not 32 or 64 (int4)"));
                }
                // AVP-KVQ-30: int8-channel takes int8's range of group sizes.
                if self.scheme == KvScheme::Int8Channel && (g == 0 || g > MAX_INT8_GROUP) {
                    return Err(bad_group("is outside 1..=64 (int8-channel)"));
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
                // AVP-KVQ-30: int8-channel's last key group may be shorter.
                if self.scheme == KvScheme::Int4
                    && self.quantized_tokens().checked_rem(g) != Some(0)
                {
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
    key_len: usize,
    value_len: usize,
}

/// Which tensor of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPart {
    /// The keys.
    Key,
    /// The values.
    Value,
}

/// Index of the first int4 group that row `s` of head `hi` uses: keys are
/// grouped per channel over `g` tokens, values per token over `g` channels
/// (AVP-KVQ-6). Shared by the quantizer and the dequantizer so they cannot
/// disagree on the layout.
fn int4_row_group_base(part: KvPart, hi: usize, s: usize, tq: usize, d: usize, g: usize) -> usize {
    match part {
        KvPart::Key => hi
            .saturating_mul(tq.checked_div(g).unwrap_or(0))
            .saturating_add(s.checked_div(g).unwrap_or(0))
            .saturating_mul(d),
        KvPart::Value => hi
            .saturating_mul(tq)
            .saturating_add(s)
            .saturating_mul(d.checked_div(g).unwrap_or(0)),
    }
}

/// Index of the first int8-channel group that row `s` of head `hi` uses
/// (AVP-KVQ-31): keys per channel over `g` tokens, `ceil(tq/g)` groups a
/// channel (the last one shorter), values per token over `g` channels.
/// Shared by the quantizer and the dequantizer.
fn int8_channel_row_group_base(
    part: KvPart,
    hi: usize,
    s: usize,
    tq: usize,
    d: usize,
    g: usize,
) -> usize {
    match part {
        KvPart::Key => hi
            .saturating_mul(tq.div_ceil(g.max(1)))
            .saturating_add(s.checked_div(g).unwrap_or(0))
            .saturating_mul(d),
        KvPart::Value => hi
            .saturating_mul(tq)
            .saturating_add(s)
            .saturating_mul(d.checked_div(g).unwrap_or(0)),
    }
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
        let key_len = header.section_bytes(KvPart::Key).unwrap_or(0) as usize;
        let value_len = header.section_bytes(KvPart::Value).unwrap_or(0) as usize;
        let body = payload.get(header.preamble_len()..).unwrap_or_default();
        Ok(KvExt {
            header,
            prefix,
            body,
            key_len,
            value_len,
        })
    }

    /// The stored bytes of one layer's K or V section.
    pub fn section(&self, layer: usize, part: KvPart) -> Option<&'a [u8]> {
        let layer_start = layer.checked_mul(self.key_len.checked_add(self.value_len)?)?;
        let (start, len) = match part {
            KvPart::Key => (layer_start, self.key_len),
            KvPart::Value => (layer_start.checked_add(self.key_len)?, self.value_len),
        };
        self.body.get(start..start.checked_add(len)?)
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
        self.dequantize_tensor_with(layer, part, dst, &mut Dequantizer::default())
    }

    /// [`Self::dequantize_tensor`] with buffers kept from one tensor to the
    /// next (scales of a 256 MiB context are 256 KiB a tensor: fresh ones
    /// cost a page fault per 4 KiB).
    fn dequantize_tensor_with(
        &self,
        layer: usize,
        part: KvPart,
        dst: &mut [u8],
        buf: &mut Dequantizer,
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
                h.scale_dtype.read_into(scale_bytes, &mut buf.scales);
                let scales = &buf.scales;
                check_scales(scales, None)?;
                // One loop per dtype, so the element conversion is inlined.
                match store.dtype {
                    KvDtype::Float16 => {
                        dequant_int8(scales, q, g, dst, |x| f32_to_f16(x).to_le_bytes())
                    }
                    KvDtype::Bfloat16 => {
                        dequant_int8(scales, q, g, dst, |x| f32_to_bf16(x).to_le_bytes())
                    }
                    _ => dequant_int8(scales, q, g, dst, f32::to_le_bytes),
                }
                Ok(())
            }
            KvScheme::Int4 => self.dequantize_int4(section, part, &store, dst, buf),
            KvScheme::Int8Channel => self.dequantize_int8_channel(section, part, &store, dst, buf),
        }
    }

    /// AVP-KVQ-31/32: rows `[0, tq)` of each head are `q x s'` with the
    /// scale of the element's group (keys per channel over `g` tokens, the
    /// last group shorter; values per token over `g` channels), rows
    /// `[tq, t)` are copied from the residual.
    fn dequantize_int8_channel(
        &self,
        section: &[u8],
        part: KvPart,
        store: &Store,
        dst: &mut [u8],
        buf: &mut Dequantizer,
    ) -> Result<(), Error> {
        let h = &self.header;
        let ss = h.scale_dtype.size();
        let groups = h.part_scales(part).unwrap_or(0) as usize;
        let g = (h.group_size as usize).max(1);
        let d = h.head_dim as usize;
        let tq = h.quantized_tokens() as usize;
        let t = h.stored_tokens() as usize;
        let es = store.size;
        let (scale_bytes, rest) = section.split_at(groups.saturating_mul(ss).min(section.len()));
        let code_len = (h.num_kv_heads as usize)
            .saturating_mul(tq)
            .saturating_mul(d);
        let (codes, residual) = rest.split_at(code_len.min(rest.len()));
        h.scale_dtype.read_into(scale_bytes, &mut buf.scales);
        let Dequantizer { scales, values, .. } = buf;
        check_scales(scales, None)?;
        let head_out = t.saturating_mul(d).saturating_mul(es);
        let head_codes = tq.saturating_mul(d);
        let head_residual = (h.residual as usize).saturating_mul(d).saturating_mul(es);
        let row_out = d.saturating_mul(es);
        let heads = dst
            .chunks_exact_mut(head_out.max(1))
            .zip(
                codes
                    .chunks(head_codes.max(1))
                    .chain(std::iter::repeat(&[][..])),
            )
            .zip(
                residual
                    .chunks(head_residual.max(1))
                    .chain(std::iter::repeat(&[][..])),
            )
            .enumerate();
        values.resize(d, 0.0);
        for (hi, ((out, qh), rh)) in heads {
            let (qout, rout) = out.split_at_mut(tq.saturating_mul(row_out).min(out.len()));
            rout.copy_from_slice(
                rh.get(..rout.len())
                    .ok_or_else(|| internal("int8-channel residual rows"))?,
            );
            for (s, (orow, qrow)) in qout
                .chunks_exact_mut(row_out.max(1))
                .zip(qh.chunks_exact(d.max(1)))
                .enumerate()
            {
                let base = int8_channel_row_group_base(part, hi, s, tq, d, g);
                match part {
                    KvPart::Key => {
                        let srow = scales.get(base..base.saturating_add(d)).unwrap_or_default();
                        for ((x, &q), &sc) in values.iter_mut().zip(qrow).zip(srow) {
                            *x = f32::from(q as i8) * sc;
                        }
                    }
                    KvPart::Value => {
                        let srow = scales
                            .get(base..base.saturating_add(d.checked_div(g).unwrap_or(0)))
                            .unwrap_or_default();
                        for ((xg, qg), &sc) in values
                            .chunks_exact_mut(g)
                            .zip(qrow.chunks_exact(g))
                            .zip(srow)
                        {
                            for (x, &q) in xg.iter_mut().zip(qg) {
                                *x = f32::from(q as i8) * sc;
                            }
                        }
                    }
                }
                narrow(store.dtype, values, orow);
            }
        }
        Ok(())
    }

    fn dequantize_int4(
        &self,
        section: &[u8],
        part: KvPart,
        store: &Store,
        dst: &mut [u8],
        buf: &mut Dequantizer,
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
        h.scale_dtype.read_into(scale_bytes, &mut buf.scales);
        h.scale_dtype.read_into(min_bytes, &mut buf.mins);
        let Dequantizer {
            scales,
            mins,
            codes,
            values,
        } = buf;
        check_scales(scales, Some(mins))?;
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
        codes.resize(d, 0);
        values.resize(d, 0.0);
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
                let row_groups = int4_row_group_base(part, hi, s, tq, d, g);
                let row_len = match part {
                    KvPart::Key => d,
                    KvPart::Value => d.checked_div(g).unwrap_or(0),
                };
                let end = row_groups.saturating_add(row_len);
                let srow = scales.get(row_groups..end).unwrap_or_default();
                let mrow = mins.get(row_groups..end).unwrap_or_default();
                unpack_nibbles(qrow, codes);
                match part {
                    KvPart::Key => {
                        for (((x, &q), &s), &m) in
                            values.iter_mut().zip(codes.iter()).zip(srow).zip(mrow)
                        {
                            *x = f32::from(q) * s + m;
                        }
                    }
                    KvPart::Value => {
                        for (((xg, qg), &s), &m) in values
                            .chunks_exact_mut(g.max(1))
                            .zip(codes.chunks_exact(g.max(1)))
                            .zip(srow)
                            .zip(mrow)
                        {
                            for (x, &q) in xg.iter_mut().zip(qg) {
                                *x = f32::from(q) * s + m;
                            }
                        }
                    }
                }
                narrow(store.dtype, values, orow);
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
        let mut buf = Dequantizer::default();
        for (i, chunk) in tensors.chunks_exact_mut(n.max(1)).enumerate() {
            let part = if i % 2 == 0 {
                KvPart::Key
            } else {
                KvPart::Value
            };
            self.dequantize_tensor_with(i / 2, part, chunk, &mut buf)?;
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

/// Buffers of the dequantizer, reused from one tensor to the next.
#[derive(Default)]
struct Dequantizer {
    scales: Vec<f32>,
    mins: Vec<f32>,
    /// int4: the codes of one row, unpacked.
    codes: Vec<u8>,
    /// int4: one row dequantized, before narrowing.
    values: Vec<f32>,
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

/// Splits packed int4 codes, the low nibble first (AVP-KVQ-2); four
/// bytes at a time in a u64, the inverse of `pack_nibbles`.
#[allow(clippy::arithmetic_side_effects)] // shifts of a u64 by constants
fn unpack_nibbles(packed: &[u8], codes: &mut [u8]) {
    const LOW: u64 = 0x000f_000f_000f_000f;
    let runs = packed.chunks_exact(4);
    let tail = runs.remainder();
    let mut outs = codes.chunks_exact_mut(8);
    for (o, p) in (&mut outs).zip(runs) {
        if let Some(p) = p.first_chunk::<4>() {
            // Packed byte i moves to byte 2i, then its high nibble to byte 2i+1.
            let x = u64::from(u32::from_le_bytes(*p));
            let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
            let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
            let w = (x & LOW) | (((x >> 4) & LOW) << 8);
            o.copy_from_slice(&w.to_le_bytes());
        }
    }
    let rest = outs.into_remainder();
    for (pair, &b) in rest.chunks_exact_mut(2).zip(tail) {
        if let [lo, hi] = pair {
            *lo = b & 0x0f;
            *hi = b >> 4;
        }
    }
}

/// Narrows f32 values to little-endian elements of `dtype` (AVP-KVQ-7).
fn narrow(dtype: KvDtype, src: &[f32], dst: &mut [u8]) {
    // One loop per dtype, so the conversion is inlined and vectorised.
    match dtype {
        KvDtype::Float16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_f16(x).to_le_bytes());
            }
        }
        KvDtype::Bfloat16 => {
            for (o, &x) in dst.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
            }
        }
        _ => {
            for (o, &x) in dst.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&x.to_le_bytes());
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
    // A reused buffer keeps its length: only growth is zero-filled (a
    // `clear` first would zero all of it, a pass as long as the quantizing);
    // every byte is then written below.
    out.truncate(total);
    out.resize(total, 0);
    let written = quantize_all(kv, &header, prefix, out);
    if written.is_err() {
        out.clear(); // nothing half-written is left for the caller to send
    }
    written
}

/// Writes the whole payload into `out` (exactly `header.total_bytes()` long).
fn quantize_all(
    kv: &KvCache<'_>,
    header: &KvExtHeader,
    prefix: Option<&PrefixAddress>,
    out: &mut [u8],
) -> Result<(), Error> {
    let (head, rest) = out.split_at_mut(KVX_HEADER_LEN.min(out.len()));
    head.copy_from_slice(&header.to_bytes());
    let body = match prefix {
        Some(p) => {
            let (address, body) = rest.split_at_mut(PREFIX_ADDRESS_LEN.min(rest.len()));
            address.copy_from_slice(&p.0);
            body
        }
        None => rest,
    };
    let q = Quantizer::new(header);
    let mut scratch = Scratch::default();
    let sources = kv
        .layers()
        .flat_map(|l| [(KvPart::Key, l.key), (KvPart::Value, l.value)]);
    let mut rest = body;
    for (part, tensor) in sources {
        // int8-channel's K and V sections differ in size (AVP-KVQ-31).
        let len = header.section_bytes(part).unwrap_or(0) as usize;
        let dst = take(&mut rest, len)
            .ok_or_else(|| err(ErrorKind::Internal, "fewer sections than layers"))?;
        q.tensor(tensor.bytes(), part, dst, &mut scratch)?;
    }
    Ok(())
}

/// Per-call buffers of the quantizer, sized once per tensor shape (never per group).
#[derive(Default)]
struct Scratch {
    /// Widened values of one row (int8) or one block of `g` rows (int4 of float32).
    values: Vec<f32>,
    /// int4 keys: per-channel minimum and maximum of a block, then stored minimum and scale.
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// int4, binary16/bfloat16: the bit patterns of one block, and the
    /// order keys ([`half_key`]) of each group's minimum and maximum.
    bits: Vec<u16>,
    lo_keys: Vec<i16>,
    hi_keys: Vec<i16>,
    /// Quantized values of one row, before int4 packing.
    codes: Vec<u8>,
    /// int4, binary16/bfloat16: a block as little-endian pairs of elements.
    words: Vec<u32>,
    /// int4 keys, binary16/bfloat16: the channels' divisors and minimums.
    pairs: PairParams,
    /// int8-channel keys: per-channel largest `|x|` bits of a block.
    maxima: ChannelMaxima,
    /// int8-channel keys: the channels of a block whose stored scale is 0.
    zero_channels: Vec<usize>,
}

fn internal(what: &str) -> Error {
    err(
        ErrorKind::Internal,
        format!("{what} do not match the header"),
    )
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

    /// Bytes of one row of `head_dim` elements.
    fn row_bytes(&self) -> usize {
        (self.header.head_dim as usize).saturating_mul(self.store.size)
    }

    /// The stored rows `[seq_start, seq_len)` of each head of a source tensor.
    fn heads<'t>(&self, tensor: &'t [u8]) -> impl Iterator<Item = &'t [u8]> + use<'t> {
        let row = self.row_bytes();
        let head = row.saturating_mul(self.src_seq);
        let skip = row.saturating_mul(self.header.seq_start as usize);
        tensor
            .chunks_exact(head.max(1))
            .map(move |hb| hb.get(skip..).unwrap_or_default())
    }

    /// Rows `[start, seq_len)` of each head, widened to f32 (`[H, t, D]`).
    fn rows(&self, tensor: &[u8], out: &mut Vec<f32>) {
        for stored in self.heads(tensor) {
            let start = out.len();
            let n = stored.len().checked_div(self.store.size).unwrap_or(0);
            out.resize(start.saturating_add(n), 0.0);
            widen(
                self.store.dtype,
                stored,
                out.get_mut(start..).unwrap_or_default(),
            );
        }
    }

    /// Writes one tensor's section (`dst`, exactly `section_bytes(part)` long).
    fn tensor(
        &self,
        tensor: &[u8],
        part: KvPart,
        dst: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        if self.header.stored_tokens() == 0 {
            // A delta of `p = n` (AVP-KVD-2): empty sections, nothing to write.
            return Ok(());
        }
        match self.header.scheme {
            KvScheme::None => {
                // Widening then narrowing a finite value gives its bytes back.
                let mut out = dst.chunks_exact_mut(self.stored_head_bytes().max(1));
                for stored in self.heads(tensor) {
                    check_finite(self.store.dtype, stored)?;
                    out.next()
                        .filter(|o| o.len() == stored.len())
                        .ok_or_else(|| internal("tensor heads"))?
                        .copy_from_slice(stored);
                }
                Ok(())
            }
            KvScheme::Int8 => self.int8(tensor, dst, scratch),
            KvScheme::Int4 => self.int4(tensor, part, dst, scratch),
            KvScheme::Int8Channel => self.int8_channel(tensor, part, dst, scratch),
        }
    }

    /// AVP-KVQ-32: AVP-KVQ-5's arithmetic in the KIVI grouping of
    /// AVP-KVQ-31 (keys per channel over blocks of `g` tokens, the last
    /// block of a head shorter when `g` does not divide `tq`; values per
    /// token over `g` channels), codes written straight into the section,
    /// then the residual rows copied.
    fn int8_channel(
        &self,
        tensor: &[u8],
        part: KvPart,
        dst: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        let h = &self.header;
        let g = (h.group_size as usize).max(1);
        let d = h.head_dim as usize;
        let tq = h.quantized_tokens() as usize;
        let sd = h.scale_dtype;
        let ss = sd.size();
        let es = self.store.size;
        let row = self.row_bytes();
        let scale_len = (h.part_scales(part).unwrap_or(0) as usize).saturating_mul(ss);
        let code_len = (h.num_kv_heads as usize)
            .saturating_mul(tq)
            .saturating_mul(d);
        let (mut scale_out, rest) = dst.split_at_mut(scale_len.min(dst.len()));
        let (mut code_out, residual_out) = rest.split_at_mut(code_len.min(rest.len()));
        let residual_head = row.saturating_mul(h.residual as usize);
        let mut residual_heads = residual_out.chunks_exact_mut(residual_head.max(1));
        scratch.values.resize(g.saturating_mul(d), 0.0);
        for stored in self.heads(tensor) {
            let (quantized, residual) = stored.split_at(tq.saturating_mul(row).min(stored.len()));
            match part {
                KvPart::Key => {
                    for block in quantized.chunks(g.saturating_mul(row).max(1)) {
                        let n = block.len().checked_div(es).unwrap_or(0);
                        let values = scratch
                            .values
                            .get_mut(..n)
                            .ok_or_else(|| internal("int8-channel blocks"))?;
                        // Per channel over the block's rows: amax, which becomes
                        // the stored scale in `hi`.
                        widen_channel_abs_max(
                            self.store.dtype,
                            block,
                            values,
                            d,
                            &mut scratch.maxima,
                            &mut scratch.hi,
                        )?;
                        scratch.zero_channels.clear();
                        for (c, hs) in scratch.hi.iter_mut().enumerate() {
                            *hs = stored_scale(sd, *hs / 127.0)?;
                            if *hs == 0.0 {
                                scratch.zero_channels.push(c);
                            }
                        }
                        let slots = take(&mut scale_out, d.saturating_mul(ss))
                            .ok_or_else(|| internal("int8-channel groups"))?;
                        for (slot, &sc) in slots.chunks_exact_mut(ss).zip(&scratch.hi) {
                            sd.put(sc, slot);
                        }
                        let codes =
                            take(&mut code_out, n).ok_or_else(|| internal("int8-channel rows"))?;
                        for (out, x) in codes
                            .chunks_exact_mut(d.max(1))
                            .zip(values.chunks_exact(d.max(1)))
                        {
                            int8_channel_codes(x, &scratch.hi, &scratch.zero_channels, out);
                        }
                    }
                }
                KvPart::Value => {
                    // Per token over g channels: int8's loop (AVP-KVQ-5), the
                    // group's amax found while widening it.
                    let grp = scratch
                        .values
                        .get_mut(..g)
                        .ok_or_else(|| internal("int8-channel groups"))?;
                    for bytes in quantized.chunks_exact(g.saturating_mul(es).max(1)) {
                        let amax = widen_abs_max(self.store.dtype, bytes, grp)?;
                        let sc = stored_scale(sd, amax / 127.0)?;
                        let slot = take(&mut scale_out, ss)
                            .ok_or_else(|| internal("int8-channel groups"))?;
                        sd.put(sc, slot);
                        let codes =
                            take(&mut code_out, g).ok_or_else(|| internal("int8-channel rows"))?;
                        int8_codes(grp, sc, codes);
                    }
                }
            }
            if residual_head > 0 {
                check_finite(self.store.dtype, residual)?;
                residual_heads
                    .next()
                    .filter(|o| o.len() == residual.len())
                    .ok_or_else(|| internal("residual rows"))?
                    .copy_from_slice(residual);
            }
        }
        Ok(())
    }

    fn stored_head_bytes(&self) -> usize {
        self.row_bytes()
            .saturating_mul(self.header.stored_tokens() as usize)
    }

    /// AVP-KVQ-5, one row at a time: widen, then per group of `g` the
    /// scale and the codes, written straight into the section.
    fn int8(&self, tensor: &[u8], dst: &mut [u8], scratch: &mut Scratch) -> Result<(), Error> {
        let h = &self.header;
        let g = (h.group_size as usize).max(1);
        let d = h.head_dim as usize;
        let sd = h.scale_dtype;
        let scale_len = (h.scales_per_tensor as usize).saturating_mul(sd.size());
        let (scale_out, code_out) = dst.split_at_mut(scale_len.min(dst.len()));
        let mut scale_slots = scale_out.chunks_exact_mut(sd.size());
        let mut code_groups = code_out.chunks_exact_mut(g);
        scratch.values.resize(d, 0.0);
        if self.store.size == 2 {
            let groups = code_groups.zip(scale_slots);
            return match self.store.dtype {
                KvDtype::Bfloat16 => self.int8_half(tensor, groups, bf16_to_f32, scratch),
                // f16_pair's sign handling (one arithmetic shift and a mask)
                // gives finite_f16_to_f32's value for finite inputs and
                // measured 100 -> 72 ms for the quantize + encode_prefix.
                _ => self.int8_half(tensor, groups, |b| f16_pair(u32::from(b)).0, scratch),
            };
        }
        for stored in self.heads(tensor) {
            for row in stored.chunks_exact(self.row_bytes().max(1)) {
                let es = self.store.size;
                for (grp, bytes) in scratch
                    .values
                    .chunks_exact_mut(g)
                    .zip(row.chunks_exact(g.saturating_mul(es)))
                {
                    let amax = widen_abs_max(self.store.dtype, bytes, grp)?;
                    let grp = &*grp;
                    let s = stored_scale(sd, amax / 127.0)?;
                    let (Some(slot), Some(codes)) = (scale_slots.next(), code_groups.next()) else {
                        return Err(internal("int8 groups"));
                    };
                    sd.put(s, slot);
                    int8_codes(grp, s, codes);
                }
            }
        }
        Ok(())
    }

    /// [`Quantizer::int8`] of binary16/bfloat16: each group's largest
    /// magnitude is found on its 16-bit patterns and its codes widen the
    /// patterns as they read them, so no f32 copy of the group is written
    /// and read back. `to_f32` is exact for every finite element (the
    /// non-finite ones are refused before any code is computed).
    #[inline(always)]
    fn int8_half<'d>(
        &self,
        tensor: &[u8],
        mut groups: impl Iterator<Item = (&'d mut [u8], &'d mut [u8])>,
        to_f32: impl Fn(u16) -> f32,
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        let h = &self.header;
        let g = (h.group_size as usize).max(1);
        let sd = h.scale_dtype;
        let dtype = self.store.dtype;
        let mut bits = [0u16; MAX_INT8_GROUP as usize];
        for stored in self.heads(tensor) {
            for row in stored.chunks_exact(self.row_bytes().max(1)) {
                for bytes in row.chunks_exact(g.saturating_mul(2)) {
                    let bits = bits.get_mut(..g).ok_or_else(|| internal("int8 group"))?;
                    for (b, e) in bits.iter_mut().zip(bytes.chunks_exact(2)) {
                        *b = le16(e);
                    }
                    // Magnitudes (sign cleared) order like the values, NaNs
                    // above infinity; signed 16-bit max vectorises on SSE2.
                    let largest = bits.iter().fold(0i16, |m, &b| m.max((b & 0x7fff) as i16));
                    let amax = match dtype {
                        KvDtype::Bfloat16 => bf16_to_f32(largest as u16),
                        _ => f16_to_f32(largest as u16),
                    };
                    if !amax.is_finite() {
                        let wide = scratch.values.get_mut(..g).unwrap_or_default();
                        widen_abs_max(dtype, bytes, wide)?; // names the value
                        return Err(internal("int8 non-finite magnitude"));
                    }
                    let s = stored_scale(sd, amax / 127.0)?;
                    let (codes, slot) = groups.next().ok_or_else(|| internal("int8 groups"))?;
                    sd.put(s, slot);
                    if s == 0.0 {
                        codes.fill(0);
                        continue;
                    }
                    // Division is monotone, so every |x / s| is at most
                    // amax / s: below 127.5 every code rounds into
                    // [-127, 127] and the clamp changes nothing.
                    if amax / s < 127.5 {
                        for (q, &b) in codes.iter_mut().zip(&*bits) {
                            *q = (to_f32(b) / s + ROUNDER).to_bits() as u8;
                        }
                        continue;
                    }
                    for (q, &b) in codes.iter_mut().zip(&*bits) {
                        *q = ((to_f32(b) / s).clamp(-127.0, 127.0) + ROUNDER).to_bits() as u8;
                    }
                }
            }
        }
        Ok(())
    }

    /// AVP-KVQ-6: keys per channel over blocks of `g` tokens, values per
    /// token over `g` channels; codes packed two a byte, then the residual
    /// rows copied.
    fn int4(
        &self,
        tensor: &[u8],
        part: KvPart,
        dst: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<(), Error> {
        let h = &self.header;
        let g = (h.group_size as usize).max(1);
        let d = h.head_dim as usize;
        let tq = h.quantized_tokens() as usize;
        let sd = h.scale_dtype;
        let row = self.row_bytes();
        let scale_len = (h.scales_per_tensor as usize).saturating_mul(sd.size());
        let packed_len = (h.num_kv_heads as usize)
            .saturating_mul(tq)
            .saturating_mul(d)
            / 2;
        let (scale_out, rest) = dst.split_at_mut(scale_len.min(dst.len()));
        let (min_out, rest) = rest.split_at_mut(scale_len.min(rest.len()));
        let (packed_out, residual_out) = rest.split_at_mut(packed_len.min(rest.len()));
        let (mut scale_out, mut min_out) = (scale_out, min_out);
        let mut packed_rows = packed_out.chunks_exact_mut((d / 2).max(1));
        let residual_head = row.saturating_mul(h.residual as usize);
        let mut residual_heads = residual_out.chunks_exact_mut(residual_head.max(1));
        let ss = sd.size();
        scratch.codes.resize(d, 0);
        for stored in self.heads(tensor) {
            let (quantized, residual) = stored.split_at(tq.saturating_mul(row).min(stored.len()));
            match part {
                KvPart::Key => {
                    scratch.values.resize(g.saturating_mul(d), 0.0);
                    for block in quantized.chunks_exact(g.saturating_mul(row).max(1)) {
                        widen_min_max(self.store.dtype, block, Groups::Channels(d), scratch)?;
                        // lo/hi become the stored minimum/scale of each channel.
                        let (Some(ss_out), Some(ms_out)) = (
                            take(&mut scale_out, d.saturating_mul(ss)),
                            take(&mut min_out, d.saturating_mul(ss)),
                        ) else {
                            return Err(internal("int4 groups"));
                        };
                        group_params(sd, &mut scratch.lo, &mut scratch.hi, ss_out, ms_out)?;
                        for s in scratch.hi.iter_mut() {
                            *s = int4_divisor(*s);
                        }
                        if self.store.size == 2 {
                            let Scratch {
                                lo,
                                hi,
                                words,
                                pairs,
                                ..
                            } = &mut *scratch;
                            words_of(block, words);
                            pairs.split(hi, lo);
                            let rows = words.chunks_exact((d / 2).max(1));
                            for (row, out) in rows.zip(&mut packed_rows) {
                                match self.store.dtype {
                                    KvDtype::Bfloat16 => int4_pairs(row, bf16_pair, pairs, out),
                                    _ => int4_pairs(row, f16_pair, pairs, out),
                                }
                            }
                            continue;
                        }
                        for values in scratch.values.chunks_exact(d.max(1)) {
                            int4_codes(values, &scratch.hi, &scratch.lo, &mut scratch.codes);
                            let out = packed_rows.next().ok_or_else(|| internal("int4 rows"))?;
                            pack_nibbles(&scratch.codes, out);
                        }
                    }
                }
                KvPart::Value => {
                    // Blocks of g rows too, so the group parameters are
                    // computed over d groups at a time, not d / g.
                    scratch.values.resize(g.saturating_mul(d), 0.0);
                    let per_row = d.checked_div(g).unwrap_or(0).max(1);
                    for block in quantized.chunks_exact(g.saturating_mul(row).max(1)) {
                        widen_min_max(self.store.dtype, block, Groups::Runs(g), scratch)?;
                        let n = scratch.lo.len().saturating_mul(ss);
                        let (Some(ss_out), Some(ms_out)) =
                            (take(&mut scale_out, n), take(&mut min_out, n))
                        else {
                            return Err(internal("int4 groups"));
                        };
                        group_params(sd, &mut scratch.lo, &mut scratch.hi, ss_out, ms_out)?;
                        if self.store.size == 2 {
                            let Scratch { lo, hi, words, .. } = &mut *scratch;
                            words_of(block, words);
                            let params = hi.chunks_exact(per_row).zip(lo.chunks_exact(per_row));
                            let rows = words.chunks_exact((d / 2).max(1));
                            for ((row, out), (scales, mins)) in
                                rows.zip(&mut packed_rows).zip(params)
                            {
                                let half = (g / 2).max(1);
                                let groups = row.chunks_exact(half).zip(out.chunks_exact_mut(half));
                                for ((grp, out), (&s, &m)) in groups.zip(scales.iter().zip(mins)) {
                                    match self.store.dtype {
                                        KvDtype::Bfloat16 => {
                                            int4_pairs_one(grp, bf16_pair, s, m, out)
                                        }
                                        _ => int4_pairs_one(grp, f16_pair, s, m, out),
                                    }
                                }
                            }
                            continue;
                        }
                        for ((values, scales), mins) in scratch
                            .values
                            .chunks_exact(d.max(1))
                            .zip(scratch.hi.chunks_exact(per_row))
                            .zip(scratch.lo.chunks_exact(per_row))
                        {
                            for (((grp, codes), &s), &m) in values
                                .chunks_exact(g)
                                .zip(scratch.codes.chunks_exact_mut(g))
                                .zip(scales)
                                .zip(mins)
                            {
                                int4_codes_one(grp, s, m, codes);
                            }
                            let out = packed_rows.next().ok_or_else(|| internal("int4 rows"))?;
                            pack_nibbles(&scratch.codes, out);
                        }
                    }
                }
            }
            if residual_head > 0 {
                check_finite(self.store.dtype, residual)?;
                residual_heads
                    .next()
                    .filter(|o| o.len() == residual.len())
                    .ok_or_else(|| internal("residual rows"))?
                    .copy_from_slice(residual);
            }
        }
        Ok(())
    }
}

/// The int4 groups of a block of rows (AVP-KVQ-6): keys per channel over
/// the block's `g` tokens, values per token over runs of `g` channels.
#[derive(Clone, Copy)]
enum Groups {
    /// Keys: one group per channel of rows of `d` values.
    Channels(usize),
    /// Values: one group per run of `g` consecutive values.
    Runs(usize),
}

/// Puts each group's minimum and maximum of a block in `scratch.lo` /
/// `scratch.hi`, and the block's bit patterns in `scratch.bits` (binary16,
/// bfloat16: the codes widen pairs of elements as they read them, see
/// [`words_of`], so no f32 copy is written and read back) or the block
/// widened in `scratch.values` (float32); a non-finite value is refused
/// as [`widen_abs_max`] refuses it.
///
/// binary16 and bfloat16 compare as 16-bit order keys ([`half_key`]):
/// eight lanes an SSE2 instruction instead of four, and no second pass
/// over the widened values. Widening is exact and monotonic, so the
/// smallest and largest key are the smallest and largest value; only a
/// zero result is ambiguous (the key order puts -0 below +0, the f32
/// order has them equal), so such a group is redone by the f32 fold.
fn widen_min_max(
    dtype: KvDtype,
    block: &[u8],
    groups: Groups,
    scratch: &mut Scratch,
) -> Result<(), Error> {
    match dtype {
        KvDtype::Float16 => half_min_max(dtype, block, groups, scratch, finite_f16_to_f32, 0x7c00),
        KvDtype::Bfloat16 => half_min_max(dtype, block, groups, scratch, bf16_to_f32, 0x7f80),
        _ => {
            widen_abs_max(dtype, block, &mut scratch.values)?;
            match groups {
                Groups::Channels(d) => {
                    channel_min_max(&scratch.values, d, &mut scratch.lo, &mut scratch.hi);
                }
                Groups::Runs(g) => {
                    groups_min_max(&scratch.values, g, &mut scratch.lo, &mut scratch.hi);
                }
            }
            Ok(())
        }
    }
}

/// [`widen_min_max`] of a 16-bit dtype: widened by `to_f32` (exact for
/// finite values), `top` its exponent field (infinity's bits).
#[inline(always)]
fn half_min_max(
    dtype: KvDtype,
    block: &[u8],
    groups: Groups,
    scratch: &mut Scratch,
    to_f32: impl Fn(u16) -> f32,
    top: u16,
) -> Result<(), Error> {
    let Scratch {
        values,
        lo,
        hi,
        bits,
        lo_keys,
        hi_keys,
        ..
    } = scratch;
    bits.resize(values.len(), 0);
    for (b, e) in bits.iter_mut().zip(block.chunks_exact(2)) {
        if let Some(e) = e.first_chunk::<2>() {
            *b = u16::from_le_bytes(*e);
        }
    }
    lo_keys.clear();
    hi_keys.clear();
    match groups {
        // Minimums as `!max(!k)` (`!` reverses the order): the compiler
        // makes pmaxsw of both, where a min beside a max went lane by lane.
        Groups::Channels(d) => {
            lo_keys.resize(d, i16::MIN);
            hi_keys.resize(d, i16::MIN);
            for row in bits.chunks_exact(d.max(1)) {
                for ((l, h), &b) in lo_keys.iter_mut().zip(hi_keys.iter_mut()).zip(row) {
                    let k = half_key(b);
                    *l = (*l).max(!k);
                    *h = (*h).max(k);
                }
            }
            for l in lo_keys.iter_mut() {
                *l = !*l;
            }
        }
        Groups::Runs(g) => {
            for grp in bits.chunks_exact(g.max(1)) {
                let mut l8 = [i16::MIN; 8];
                let mut h8 = [i16::MIN; 8];
                let lanes = grp.chunks_exact(8);
                let rest = lanes.remainder();
                for run in lanes {
                    for ((l, h), &b) in l8.iter_mut().zip(h8.iter_mut()).zip(run) {
                        let k = half_key(b);
                        *l = (*l).max(!k);
                        *h = (*h).max(k);
                    }
                }
                let mut l = l8.into_iter().fold(i16::MIN, i16::max);
                let mut h = h8.into_iter().fold(i16::MIN, i16::max);
                for &b in rest {
                    l = l.max(!half_key(b));
                    h = h.max(half_key(b));
                }
                lo_keys.push(!l);
                hi_keys.push(h);
            }
        }
    }
    // Infinity and NaN have the largest magnitudes, so the extreme keys tell.
    let finite = lo_keys.iter().fold(i16::MAX, |a, &k| a.min(k)) > half_key(top | 0x8000)
        && hi_keys.iter().fold(i16::MIN, |a, &k| a.max(k)) < half_key(top);
    if !finite {
        return widen_abs_max(dtype, block, values).map(|_| ());
    }
    let from_key = |k: i16| to_f32(half_key(k as u16) as u16);
    lo.clear();
    hi.clear();
    lo.extend(lo_keys.iter().map(|&k| from_key(k)));
    hi.extend(hi_keys.iter().map(|&k| from_key(k)));
    // The keys of -0 and +0 are -1 and 0.
    let zero = |(&l, &h): (&i16, &i16)| l == 0 || l == -1 || h == 0 || h == -1;
    let extremes = lo.iter_mut().zip(hi.iter_mut());
    let key_pairs = lo_keys.iter().zip(hi_keys.iter());
    match groups {
        Groups::Channels(d) => {
            let rows = bits.chunks_exact(d.max(1));
            for (c, ((l, h), keys)) in extremes.zip(key_pairs).enumerate() {
                if zero(keys) {
                    let column = rows
                        .clone()
                        .filter_map(|row| row.get(c).map(|&b| to_f32(b)));
                    (*l, *h) = column.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                        (if v < l { v } else { l }, if v > h { v } else { h })
                    });
                }
            }
        }
        Groups::Runs(g) => {
            let runs = bits
                .chunks_exact(g.max(1))
                .zip(values.chunks_exact_mut(g.max(1)));
            for ((grp, wide), ((l, h), keys)) in runs.zip(extremes.zip(key_pairs)) {
                if zero(keys) {
                    for (v, &b) in wide.iter_mut().zip(grp) {
                        *v = to_f32(b);
                    }
                    (*l, *h) = min_max(wide);
                }
            }
        }
    }
    Ok(())
}

/// A key of a finite binary16 or bfloat16 bit pattern whose signed order
/// is the values' order: a negative value's magnitude bits are flipped
/// (so -0 is -1, just below +0 at 0). It is its own inverse.
#[inline(always)]
#[allow(clippy::arithmetic_side_effects)] // a shift and masks of 16 bits
fn half_key(bits: u16) -> i16 {
    let b = bits as i16;
    b ^ ((b >> 15) & 0x7fff)
}

/// Widens little-endian elements of `dtype` into `dst` (as many as fit).
fn widen(dtype: KvDtype, src: &[u8], dst: &mut [f32]) {
    // One loop per dtype, each free of branches, so each vectorises.
    match dtype {
        KvDtype::Float16 => {
            widen_with(src, dst, u16::from_le_bytes, f16_to_f32, |b| b);
        }
        KvDtype::Bfloat16 => {
            widen_with(src, dst, u16::from_le_bytes, bf16_to_f32, |b| b);
        }
        _ => {
            widen_with(src, dst, u32::from_le_bytes, f32::from_bits, |b| b);
        }
    }
}

/// [`widen`], also returning the largest `|x|`; a non-finite element is
/// refused (AVP-KVQ-5: a sender does not send one). The magnitude is the
/// largest bit pattern without the sign, which orders like the values
/// (NaNs above infinity), found on the narrow bits while they are loaded.
fn widen_abs_max(dtype: KvDtype, src: &[u8], dst: &mut [f32]) -> Result<f32, Error> {
    let amax = match dtype {
        // Non-finite halves are refused below, so the three-operation
        // widening (exact for every finite half) is enough here.
        // Magnitudes (sign bit cleared) compared as signed integers, whose
        // max SSE2 has for 16 bits (`pmaxsw`; the unsigned one it lacks).
        KvDtype::Float16 => {
            f16_to_f32(
                widen_with(src, dst, u16::from_le_bytes, finite_f16_to_f32, |b| {
                    (b & 0x7fff) as i16
                }) as u16,
            )
        }
        KvDtype::Bfloat16 => {
            bf16_to_f32(widen_with(src, dst, u16::from_le_bytes, bf16_to_f32, |b| {
                (b & 0x7fff) as i16
            }) as u16)
        }
        _ => f32::from_bits(widen_with(
            src,
            dst,
            u32::from_le_bytes,
            f32::from_bits,
            |b| b & 0x7fff_ffff,
        )),
    };
    if amax.is_finite() {
        return Ok(amax);
    }
    widen(dtype, src, dst); // exactly, to name the value
    let bad = dst.iter().find(|v| !v.is_finite()).copied().unwrap_or(amax);
    Err(err(
        ErrorKind::InvalidArgument,
        format!("cannot quantize the non-finite value {bad}"),
    ))
}

/// Runs of 64 elements: bytes to bit patterns first, then bits to f32. Two
/// simple loops vectorise; one loop doing both loaded byte by byte (measured
/// 0.6 against 2.4 G values/s). Returns the largest `magnitude` of the bits.
#[inline(always)]
fn widen_with<const N: usize, B: Copy + Default, M: Copy + Default + Ord>(
    src: &[u8],
    dst: &mut [f32],
    from_le: impl Fn([u8; N]) -> B,
    to_f32: impl Fn(B) -> f32,
    magnitude: impl Fn(B) -> M,
) -> M {
    const RUN: usize = 64;
    let mut bits = [B::default(); RUN];
    let mut largest = M::default();
    for (out, bytes) in dst.chunks_mut(RUN).zip(src.chunks(RUN.saturating_mul(N))) {
        let n = out.len();
        for (b, e) in bits.iter_mut().zip(bytes.chunks_exact(N)) {
            if let Some(e) = e.first_chunk::<N>() {
                *b = from_le(*e);
            }
        }
        for (o, &b) in out.iter_mut().zip(&bits) {
            *o = to_f32(b);
        }
        for &b in bits.iter().take(n) {
            largest = largest.max(magnitude(b));
        }
    }
    largest
}

/// Refuses a non-finite element in stored bytes of `dtype` (AVP-KVQ-5: a
/// sender does not send one). The exponent bits tell, no widening needed.
fn check_finite(dtype: KvDtype, bytes: &[u8]) -> Result<(), Error> {
    let all_ones = match dtype {
        KvDtype::Float16 => bytes
            .chunks_exact(2)
            .fold(false, |bad, b| bad | (le16(b) & 0x7c00 == 0x7c00)),
        KvDtype::Bfloat16 => bytes
            .chunks_exact(2)
            .fold(false, |bad, b| bad | (le16(b) & 0x7f80 == 0x7f80)),
        _ => bytes.chunks_exact(4).fold(false, |bad, b| {
            bad | (b.first_chunk::<4>().map_or(0, |w| u32::from_le_bytes(*w)) & 0x7f80_0000
                == 0x7f80_0000)
        }),
    };
    if !all_ones {
        return Ok(());
    }
    let mut values = vec![0.0f32; bytes.len().checked_div(Store::new(dtype).size).unwrap_or(0)];
    widen_abs_max(dtype, bytes, &mut values).map(|_| ())
}

fn le16(b: &[u8]) -> u16 {
    b.first_chunk::<2>().map_or(0, |w| u16::from_le_bytes(*w))
}

/// Smallest and largest of finite values (an empty group gives (inf, -inf)).
/// Eight running lanes, combined at the end: one chain of comparisons
/// would not vectorise. Of equal values the first met is kept, so a zero
/// minimum may be stored as -0; that changes no code and no dequantized value.
fn min_max(values: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    let lanes = values.chunks_exact(8);
    let rest = lanes.remainder();
    for run in lanes {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(run) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    let fold = |acc: (f32, f32), (l, h): (f32, f32)| {
        (
            if l < acc.0 { l } else { acc.0 },
            if h > acc.1 { h } else { acc.1 },
        )
    };
    let lanes = lo
        .into_iter()
        .zip(hi)
        .fold((f32::INFINITY, f32::NEG_INFINITY), fold);
    rest.iter().map(|&v| (v, v)).fold(lanes, fold)
}

/// [`min_max`] of each group of `g` values, its lanes reduced as a tree,
/// which vectorises where `min_max`'s in-order fold of the lanes does not.
/// The two differ only in which zero a group of equal zeros of both signs
/// yields, so a group whose minimum or maximum is zero is done again by
/// `min_max`, keeping its stored bytes.
fn groups_min_max(values: &[f32], g: usize, lo: &mut Vec<f32>, hi: &mut Vec<f32>) {
    lo.clear();
    hi.clear();
    for grp in values.chunks_exact(g.max(1)) {
        let (mut l, mut h) = min_max_tree(grp);
        if l == 0.0 || h == 0.0 {
            (l, h) = min_max(grp);
        }
        lo.push(l);
        hi.push(h);
    }
}

/// Smallest and largest of finite values: four running lanes (one SSE2
/// register), combined pairwise at the end. `f32::min`/`max`, because
/// the `if v < l` select of [`min_max`] compiled here to compares, lane
/// reversals and blends; on finite values they differ only for ±0.
#[inline(always)]
fn min_max_tree(values: &[f32]) -> (f32, f32) {
    let less = |a: f32, b: f32| a.min(b);
    let more = |a: f32, b: f32| a.max(b);
    let mut lo = [f32::INFINITY; 4];
    let mut hi = [f32::NEG_INFINITY; 4];
    let lanes = values.chunks_exact(4);
    let rest = lanes.remainder();
    for run in lanes {
        if let Some(v) = run.first_chunk::<4>() {
            lo = [
                less(v[0], lo[0]),
                less(v[1], lo[1]),
                less(v[2], lo[2]),
                less(v[3], lo[3]),
            ];
            hi = [
                more(v[0], hi[0]),
                more(v[1], hi[1]),
                more(v[2], hi[2]),
                more(v[3], hi[3]),
            ];
        }
    }
    let l = less(less(lo[0], lo[2]), less(lo[1], lo[3]));
    let h = more(more(hi[0], hi[2]), more(hi[1], hi[3]));
    rest.iter()
        .fold((l, h), |(l, h), &v| (less(v, l), more(v, h)))
}

/// Per-channel minimum and maximum over the rows (of `d` values) of a block.
fn channel_min_max(block: &[f32], d: usize, lo: &mut Vec<f32>, hi: &mut Vec<f32>) {
    lo.clear();
    lo.resize(d, f32::INFINITY);
    hi.clear();
    hi.resize(d, f32::NEG_INFINITY);
    for row in block.chunks_exact(d.max(1)) {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
}

/// int8-channel keys (AVP-KVQ-31): widens a block of rows of `d` values
/// into `dst` and sets `amax[c]` to channel `c`'s largest `|x|` over the
/// block, in one pass over the source (the bit patterns without the sign
/// compared: an integer maximum vectorises, a chain of `f32::max` does not);
/// a non-finite value is refused as [`widen_abs_max`] does.
fn widen_channel_abs_max(
    dtype: KvDtype,
    src: &[u8],
    dst: &mut [f32],
    d: usize,
    maxima: &mut ChannelMaxima,
    amax: &mut Vec<f32>,
) -> Result<(), Error> {
    amax.clear();
    // Each arm: the maxima, then whether one is infinite or NaN (refused
    // below), then the maxima widened (finite 16-bit patterns widen exactly).
    let finite = match dtype {
        KvDtype::Float16 => {
            let m = maxima.reset_half(d);
            widen_channel_max_with(src, dst, m, u16::from_le_bytes, finite_f16_to_f32, |b| {
                b & 0x7fff
            });
            amax.extend(m.iter().map(|&b| finite_f16_to_f32(b)));
            m.iter().all(|&b| b < 0x7c00)
        }
        KvDtype::Bfloat16 => {
            let m = maxima.reset_half(d);
            widen_channel_max_with(src, dst, m, u16::from_le_bytes, bf16_to_f32, |b| b & 0x7fff);
            amax.extend(m.iter().map(|&b| bf16_to_f32(b)));
            m.iter().all(|&b| b < 0x7f80)
        }
        _ => {
            let m = maxima.reset_word(d);
            widen_channel_max_with(src, dst, m, u32::from_le_bytes, f32::from_bits, |b| {
                b & 0x7fff_ffff
            });
            amax.extend(m.iter().map(|&b| f32::from_bits(b)));
            m.iter().all(|&b| b < 0x7f80_0000)
        }
    };
    if !finite {
        widen_abs_max(dtype, src, dst)?; // refuses, naming the value
        return Err(err(ErrorKind::Internal, "a non-finite key went unnamed"));
    }
    Ok(())
}

/// Per-channel largest magnitude bits of a key block, in the width of the
/// context's dtype (16-bit maxima: twice the lanes of 32-bit ones).
#[derive(Default)]
struct ChannelMaxima {
    half: Vec<u16>,
    word: Vec<u32>,
}

impl ChannelMaxima {
    fn reset_half(&mut self, d: usize) -> &mut [u16] {
        self.half.clear();
        self.half.resize(d, 0);
        &mut self.half
    }

    fn reset_word(&mut self, d: usize) -> &mut [u32] {
        self.word.clear();
        self.word.resize(d, 0);
        &mut self.word
    }
}

/// Rows of `chan.len()` elements: bytes to bit patterns, bits to f32, and
/// each channel's largest magnitude bits, in runs of 64 so each of the
/// three simple loops vectorises (as [`widen_with`]).
#[inline(always)]
fn widen_channel_max_with<const N: usize, B: Copy + Default + Ord>(
    src: &[u8],
    dst: &mut [f32],
    chan: &mut [B],
    from_le: impl Fn([u8; N]) -> B,
    to_f32: impl Fn(B) -> f32,
    magnitude: impl Fn(B) -> B,
) {
    const RUN: usize = 64;
    let d = chan.len().max(1);
    let mut bits = [B::default(); RUN];
    for (out, bytes) in dst
        .chunks_exact_mut(d)
        .zip(src.chunks_exact(d.saturating_mul(N)))
    {
        for ((o, e), m) in out
            .chunks_mut(RUN)
            .zip(bytes.chunks(RUN.saturating_mul(N)))
            .zip(chan.chunks_mut(RUN))
        {
            for (b, e) in bits.iter_mut().zip(e.chunks_exact(N)) {
                if let Some(e) = e.first_chunk::<N>() {
                    *b = from_le(*e);
                }
            }
            for (o, &b) in o.iter_mut().zip(&bits) {
                *o = to_f32(b);
            }
            for (m, &b) in m.iter_mut().zip(&bits) {
                *m = (*m).max(magnitude(b));
            }
        }
    }
}

/// int8-channel codes of one key row: channel `c` has the stored scale
/// `s[c]` (AVP-KVQ-5's arithmetic). The channels whose scale is 0 (listed
/// in `zero`, usually none) get 0 afterwards, so the loop has no select.
fn int8_channel_codes(values: &[f32], s: &[f32], zero: &[usize], codes: &mut [u8]) {
    for ((q, &x), &s) in codes.iter_mut().zip(values).zip(s) {
        // The low byte of the rounded sum's bits is the two's complement code.
        *q = ((x / s).clamp(-127.0, 127.0) + ROUNDER).to_bits() as u8;
    }
    for &c in zero {
        if let Some(q) = codes.get_mut(c) {
            *q = 0;
        }
    }
}

/// The first `n` bytes of `buf`, which keeps the rest.
fn take<'b>(buf: &mut &'b mut [u8], n: usize) -> Option<&'b mut [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, tail) = std::mem::take(buf).split_at_mut(n);
    *buf = tail;
    Some(head)
}

/// int4 group parameters of a run of groups (AVP-KVQ-6): `lo` becomes the
/// stored minimum `m'`, `hi` the stored scale `s' = round((hi - lo) / 15)`,
/// both written to the section. A run at a time so the rounding vectorises.
fn group_params(
    sd: ScaleDtype,
    lo: &mut [f32],
    hi: &mut [f32],
    scale_out: &mut [u8],
    min_out: &mut [u8],
) -> Result<(), Error> {
    // One loop per scale dtype, so that each vectorises; binary16 bytes
    // are written from the one narrowing (a refused payload is discarded),
    // and overflow is read from those bits, so the cheap finite widening serves.
    let (min_ok, scale_ok) = match sd {
        ScaleDtype::F32 => {
            for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
                *h = (*h - *l) / 15.0;
            }
            for (out, values) in [(scale_out, &*hi), (min_out, &*lo)] {
                for (slot, &x) in out.chunks_exact_mut(4).zip(values) {
                    slot.copy_from_slice(&x.to_le_bytes());
                }
            }
            let finite = |v: &[f32]| {
                v.iter().fold(0u32, |a, x| a.max(x.to_bits() & 0x7fff_ffff)) < 0x7f80_0000
            };
            (finite(lo), finite(hi))
        }
        ScaleDtype::F16 => {
            // Magnitude bits as i16 (below 0x8000), whose max SSE2 has.
            let (mut top_m, mut top_s) = (0i16, 0i16);
            let slots = min_out
                .chunks_exact_mut(2)
                .zip(scale_out.chunks_exact_mut(2));
            for ((l, h), (m_slot, s_slot)) in lo.iter_mut().zip(hi.iter_mut()).zip(slots) {
                let (m, s) = (f32_to_f16(*l), f32_to_f16((*h - *l) / 15.0));
                m_slot.copy_from_slice(&m.to_le_bytes());
                s_slot.copy_from_slice(&s.to_le_bytes());
                top_m = top_m.max((m & 0x7fff) as i16);
                top_s = top_s.max((s & 0x7fff) as i16);
                *l = finite_f16_to_f32(m);
                *h = finite_f16_to_f32(s);
            }
            (top_m < 0x7c00, top_s < 0x7c00)
        }
    };
    if !min_ok {
        return Err(err(
            ErrorKind::InvalidArgument,
            "a group minimum overflows the scale dtype",
        ));
    }
    if !scale_ok {
        return Err(err(
            ErrorKind::InvalidArgument,
            "a group scale overflows the scale dtype",
        ));
    }
    Ok(())
}

/// Adding and subtracting 1.5 * 2^23 rounds half to even exactly for
/// |v| <= 2^22; the sum's low mantissa bits are then the integer itself.
const ROUNDER: f32 = 12_582_912.0;

/// int8 codes of one group with stored scale `s` (AVP-KVQ-5): `clamp(rne(x/s), -127, 127)`, 0 when `s` is 0.
#[inline(always)]
fn int8_codes(values: &[f32], s: f32, codes: &mut [u8]) {
    if s == 0.0 {
        codes.fill(0);
        return;
    }
    for (q, &x) in codes.iter_mut().zip(values) {
        // The low byte of the rounded sum's bits is the two's complement code.
        *q = ((x / s).clamp(-127.0, 127.0) + ROUNDER).to_bits() as u8;
    }
}

/// int4 code of `x` with stored scale `s` and minimum `m` (AVP-KVQ-6).
#[inline(always)]
fn int4_code(x: f32, s: f32, m: f32) -> u8 {
    let code = (((x - m) / s).clamp(0.0, 15.0) + ROUNDER).to_bits() as u8;
    if s == 0.0 { 0 } else { code }
}

/// What [`int4_codes`] divides by for stored scale `s`: `s`, or infinity
/// for 0. `s' = 0` only when `hi - lo` is below 15 scale-dtype ulps of
/// zero, so `x - m'` (at most that plus half an ulp of `lo`) is finite and
/// `(x - m') / inf` is ±0: code 0, as AVP-KVQ-6 says for `s' = 0`,
/// without a select per value.
#[inline(always)]
fn int4_divisor(s: f32) -> f32 {
    if s == 0.0 { f32::INFINITY } else { s }
}

/// A 16-bit block as u32 words, each two elements (the even-indexed one
/// in the low half): the int4 codes of a pair are one byte, so each lane
/// of the code loop widens, quantizes and packs a pair without shuffles.
fn words_of(block: &[u8], words: &mut Vec<u32>) {
    words.resize(block.len() / 4, 0);
    for (w, b) in words.iter_mut().zip(block.chunks_exact(4)) {
        if let Some(b) = b.first_chunk::<4>() {
            *w = u32::from_le_bytes(*b);
        }
    }
}

/// Both binary16 halves of a word widened (finite values; exact): each
/// half moved so that its sign is bit 31 and its exponent and mantissa
/// sit where binary32's do (an arithmetic shift copies the sign over the
/// three bits between, then masked off), then rebiased by 2^112 as
/// [`finite_f16_to_f32`] does; the multiply keeps the sign.
#[inline(always)]
#[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)] // bit reinterpretation
fn f16_pair(w: u32) -> (f32, f32) {
    const REBIAS: f32 = 5.192_297e33; // 2^112
    const KEPT: u32 = 0x8fff_e000; // sign, exponent, mantissa
    let even = ((w << 16) as i32 >> 3) as u32 & KEPT;
    let odd = (w as i32 >> 3) as u32 & KEPT;
    (f32::from_bits(even) * REBIAS, f32::from_bits(odd) * REBIAS)
}

/// Both bfloat16 halves of a word widened.
#[inline(always)]
fn bf16_pair(w: u32) -> (f32, f32) {
    (f32::from_bits(w << 16), f32::from_bits(w & 0xffff_0000))
}

/// A key block's per-channel divisors and minimums split by channel
/// parity, so that the word of channels `2j, 2j+1` finds both at `j`.
#[derive(Default)]
struct PairParams {
    div_even: Vec<f32>,
    div_odd: Vec<f32>,
    min_even: Vec<f32>,
    min_odd: Vec<f32>,
}

impl PairParams {
    fn split(&mut self, div: &[f32], min: &[f32]) {
        for (half, all) in [(&mut self.div_even, div), (&mut self.min_even, min)] {
            half.clear();
            half.extend(all.iter().step_by(2));
        }
        for (half, all) in [(&mut self.div_odd, div), (&mut self.min_odd, min)] {
            half.clear();
            half.extend(all.iter().skip(1).step_by(2));
        }
    }
}

/// The int4 code of `x` (AVP-KVQ-6) in the low byte of the returned bits
/// (binary32 bits of the rounded code plus [`ROUNDER`]).
#[inline(always)]
fn int4_bits(x: f32, div: f32, m: f32) -> u32 {
    (((x - m) / div).clamp(0.0, 15.0) + ROUNDER).to_bits()
}

/// The byte of two codes given by [`int4_bits`], the even one in the low
/// nibble (AVP-KVQ-2): the low byte of each is its code, below 16.
#[inline(always)]
#[allow(clippy::arithmetic_side_effects)] // a shift by a constant
fn pack_pair(even: u32, odd: u32) -> u8 {
    (even | (odd << 4)) as u8
}

/// The packed int4 codes of one key row of 16-bit words: channel `c` has
/// minimum `m[c]` and divisor `div[c]` = [`int4_divisor`] of its scale.
#[inline(always)]
fn int4_pairs(words: &[u32], widen: impl Fn(u32) -> (f32, f32), p: &PairParams, out: &mut [u8]) {
    let div = p.div_even.iter().zip(&p.div_odd);
    let min = p.min_even.iter().zip(&p.min_odd);
    for ((o, &w), ((&de, &dd), (&me, &md))) in out.iter_mut().zip(words).zip(div.zip(min)) {
        let (even, odd) = widen(w);
        *o = pack_pair(int4_bits(even, de, me), int4_bits(odd, dd, md));
    }
}

/// The packed int4 codes of one value group of 16-bit words: stored scale
/// `s` and minimum `m`; all codes 0 where `s` is 0 (AVP-KVQ-6).
#[inline(always)]
fn int4_pairs_one(
    words: &[u32],
    widen: impl Fn(u32) -> (f32, f32),
    s: f32,
    m: f32,
    out: &mut [u8],
) {
    if s == 0.0 {
        out.fill(0);
        return;
    }
    for (o, &w) in out.iter_mut().zip(words) {
        let (even, odd) = widen(w);
        *o = pack_pair(int4_bits(even, s, m), int4_bits(odd, s, m));
    }
}

/// int4 codes of one key row: channel `c` has minimum `m[c]` and divisor
/// `div[c]` = [`int4_divisor`] of its scale.
fn int4_codes(values: &[f32], div: &[f32], m: &[f32], codes: &mut [u8]) {
    for (((q, &x), &div), &m) in codes.iter_mut().zip(values).zip(div).zip(m) {
        *q = (((x - m) / div).clamp(0.0, 15.0) + ROUNDER).to_bits() as u8;
    }
}

/// int4 codes of one value group: one scale and minimum.
fn int4_codes_one(values: &[f32], s: f32, m: f32, codes: &mut [u8]) {
    for (q, &x) in codes.iter_mut().zip(values) {
        *q = int4_code(x, s, m);
    }
}

/// Two codes a byte, the even-indexed one in the low nibble (AVP-KVQ-2).
/// Eight codes at a time in a u64 (pairs of byte loads did not vectorise).
#[allow(clippy::arithmetic_side_effects)] // shifts of a u64 by constants
fn pack_nibbles(codes: &[u8], out: &mut [u8]) {
    let runs = codes.chunks_exact(8);
    let tail = runs.remainder();
    let mut outs = out.chunks_exact_mut(4);
    for (o, c) in (&mut outs).zip(runs) {
        if let Some(c) = c.first_chunk::<8>() {
            // Byte 2i of `t` is code 2i | code 2i+1 << 4 (codes are < 16).
            let w = u64::from_le_bytes(*c);
            let t = w | (w >> 4);
            let packed = (t & 0xff)
                | ((t >> 8) & 0xff00)
                | ((t >> 16) & 0x00ff_0000)
                | ((t >> 24) & 0xff00_0000);
            o.copy_from_slice(&(packed as u32).to_le_bytes());
        }
    }
    let rest = outs.into_remainder();
    for (o, pair) in rest.iter_mut().zip(tail.chunks_exact(2)) {
        if let &[lo, hi] = pair {
            *o = lo | (hi << 4);
        }
    }
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

/// Quantizes a context given as f32 `ndarray` views, one `(keys, values)`
/// pair of `[heads, seq, head_dim]` per layer, any memory layout (feature
/// `ndarray`, AVP-KVQ-20): each value is first narrowed to `dtype` by
/// AVP-KVQ-7 (the context's float type on the wire), then quantized as
/// [`encode_ext`] does, so the result is byte-identical to quantizing the
/// KV v1 payload of those values. No layers, or shapes that differ, are
/// `invalid_argument`.
#[cfg(feature = "ndarray")]
pub fn encode_ext_ndarray<'v>(
    layers: impl IntoIterator<Item = (ndarray::ArrayView3<'v, f32>, ndarray::ArrayView3<'v, f32>)>,
    dtype: KvDtype,
    params: &QuantParams,
    start: u32,
    prefix: Option<&PrefixAddress>,
) -> Result<Vec<u8>, Error> {
    let misuse = |m: String| err(ErrorKind::InvalidArgument, m);
    let store = Store::new(dtype);
    let mut shape = None;
    let mut tensors = Vec::new();
    for (index, (k, v)) in layers.into_iter().enumerate() {
        for view in [&k, &v] {
            let dims = view.dim();
            if *shape.get_or_insert(dims) != dims {
                return Err(misuse(format!(
                    "layer {index} has shape {dims:?}, layer 0 {:?}",
                    shape.unwrap_or(dims)
                )));
            }
            let mut bytes = vec![0u8; view.len().saturating_mul(store.size)];
            // `iter` walks the logical C order whatever the strides.
            for (o, x) in bytes.chunks_exact_mut(store.size).zip(view.iter()) {
                store.put(*x, o);
            }
            tensors.push(bytes);
        }
    }
    let (heads, seq, dim) = shape.ok_or_else(|| misuse("no layers to quantize".into()))?;
    let u32_of = |n: usize, what: &str| {
        u32::try_from(n).map_err(|_| misuse(format!("{what} {n} does not fit the format's u32")))
    };
    let header = KvHeader {
        num_layers: u32_of(tensors.len() / 2, "layer count")?,
        num_kv_heads: u32_of(heads, "head count")?,
        head_dim: u32_of(dim, "head_dim")?,
        seq_len: u32_of(seq, "sequence length")?,
        dtype,
    };
    let payload = crate::kv::write_kv_cache(
        &header,
        tensors.chunks_exact(2).filter_map(|pair| match pair {
            [k, v] => Some((&k[..], &v[..])),
            _ => None,
        }),
    )?;
    encode_ext(&KvCache::parse(&payload)?, params, start, prefix)
}

#[cfg(feature = "ndarray")]
impl KvExt<'_> {
    /// Dequantizes one tensor into a caller's f32 view of shape
    /// `[heads, stored tokens, head_dim]`, any memory layout (feature
    /// `ndarray`, AVP-KVQ-20): the values a receiver yields (AVP-KVQ-8, in
    /// the context's dtype), widened exactly to f32. Another shape is
    /// `invalid_argument`.
    pub fn dequantize_tensor_f32_into(
        &self,
        layer: usize,
        part: KvPart,
        mut out: ndarray::ArrayViewMut3<'_, f32>,
    ) -> Result<(), Error> {
        let h = &self.header;
        let want = (
            h.num_kv_heads as usize,
            h.stored_tokens() as usize,
            h.head_dim as usize,
        );
        if out.dim() != want {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("view has shape {:?}, the tensor is {want:?}", out.dim()),
            ));
        }
        let len = usize::try_from(self.tensor_bytes())
            .map_err(|_| err(ErrorKind::InvalidArgument, "tensor larger than memory"))?;
        let mut bytes = vec![0u8; len];
        self.dequantize_tensor(layer, part, &mut bytes)?;
        let store = Store::new(h.dtype);
        match out.as_slice_mut() {
            Some(flat) => widen(h.dtype, &bytes, flat),
            None => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(store.size)) {
                    *o = store.get(b);
                }
            }
        }
        Ok(())
    }

    /// One layer's keys and values dequantized to owned f32 arrays
    /// `[heads, stored tokens, head_dim]` (see [`Self::dequantize_tensor_f32_into`]).
    pub fn dequantize_layer_f32(
        &self,
        layer: usize,
    ) -> Result<(ndarray::Array3<f32>, ndarray::Array3<f32>), Error> {
        let h = &self.header;
        let dims = (
            h.num_kv_heads as usize,
            h.stored_tokens() as usize,
            h.head_dim as usize,
        );
        let mut keys = ndarray::Array3::<f32>::zeros(dims);
        let mut values = ndarray::Array3::<f32>::zeros(dims);
        self.dequantize_tensor_f32_into(layer, KvPart::Key, keys.view_mut())?;
        self.dequantize_tensor_f32_into(layer, KvPart::Value, values.view_mut())?;
        Ok((keys, values))
    }
}

/// The rewritten int4 loops against the straightforward arithmetic they replace.
#[cfg(test)]
mod fast_path_tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )]
    use super::{
        Groups, KvDtype, Scratch, groups_min_max, min_max, widen, widen_abs_max, widen_min_max,
    };
    use proptest::prelude::*;

    /// 16-bit patterns that stress the order keys: zeros of both signs,
    /// the smallest subnormals, the largest finite values, ties, and now
    /// and then any pattern at all (infinity and NaN included).
    fn half_bits() -> impl Strategy<Value = u16> {
        prop_oneof![
            1 => any::<u16>(),
            8 => any::<u16>().prop_map(|b| b & 0xbfff), // exponent below all ones in both dtypes
            4 => proptest::sample::select(vec![
                0x0000u16, 0x8000, 0x0001, 0x8001, 0x7bff, 0xfbff, 0x7f7f, 0xff7f, 0x3c00,
                0xbc00, 0x3800,
            ]),
        ]
    }

    /// The straightforward computation the key path replaces: exact
    /// widening, non-finite refused, groups folded in order.
    fn reference(dtype: KvDtype, block: &[u8], groups: Groups) -> Option<Vec<(u32, u32)>> {
        let mut values = vec![0.0f32; block.len() / 2];
        widen_abs_max(dtype, block, &mut values).ok()?;
        widen(dtype, block, &mut values);
        let fold = |column: &mut dyn Iterator<Item = f32>| {
            column.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                (if v < l { v } else { l }, if v > h { v } else { h })
            })
        };
        let pairs: Vec<(f32, f32)> = match groups {
            Groups::Channels(d) => (0..d)
                .map(|c| fold(&mut values.chunks_exact(d).filter_map(|r| r.get(c).copied())))
                .collect(),
            Groups::Runs(g) => values.chunks_exact(g).map(min_max).collect(),
        };
        Some(
            pairs
                .iter()
                .map(|(l, h)| (l.to_bits(), h.to_bits()))
                .collect(),
        )
    }

    proptest! {
        /// binary16 and bfloat16 minimum and maximum by order keys equal
        /// the in-order f32 fold bit for bit (the stored minimum and
        /// scale bytes of AVP-KVQ-6), and refuse exactly what it refuses.
        #[test]
        fn key_min_max_equals_the_f32_fold_bit_for_bit(
            bits in proptest::collection::vec(half_bits(), 64..=256),
            bf16 in any::<bool>(),
            channels in any::<bool>(),
        ) {
            let dtype = if bf16 { KvDtype::Bfloat16 } else { KvDtype::Float16 };
            let n = bits.len() / 32 * 32;
            let block: Vec<u8> = bits[..n].iter().flat_map(|b| b.to_le_bytes()).collect();
            let groups = if channels { Groups::Channels(32) } else { Groups::Runs(32) };
            let mut scratch = Scratch::default();
            scratch.values.resize(n, 0.0);
            let got = widen_min_max(dtype, &block, groups, &mut scratch).ok().map(|()| {
                scratch.lo.iter().zip(&scratch.hi).map(|(l, h)| (l.to_bits(), h.to_bits())).collect::<Vec<_>>()
            });
            prop_assert_eq!(got, reference(dtype, &block, groups));
        }
    }

    /// Values where the lane order matters or arithmetic is delicate:
    /// zeros of both signs, subnormals, ties, the extremes of binary16.
    fn adversarial() -> impl Strategy<Value = f32> {
        prop_oneof![
            Just(0.0f32),
            Just(-0.0f32),
            Just(f32::from_bits(1)),
            Just(-f32::from_bits(1)),
            Just(5.960_464_5e-8), // smallest binary16 subnormal
            Just(65504.0f32),
            Just(-65504.0f32),
            Just(f32::MAX),
            Just(f32::MIN),
            (-16i32..16).prop_map(|k| k as f32 * 0.5),
            any::<f32>().prop_filter("finite", |x| x.is_finite()),
        ]
    }

    proptest! {
        /// The tree-reduced groups give the bit patterns of the in-order
        /// `min_max` (so the stored minimum and scale bytes of AVP-KVQ-6
        /// are unchanged), whichever zeros, in whichever lanes.
        #[test]
        fn groups_min_max_equals_min_max_bit_for_bit(
            values in proptest::collection::vec(adversarial(), 0..200),
            g in prop_oneof![Just(1usize), Just(3), Just(8), Just(32), Just(64)],
        ) {
            let (mut lo, mut hi) = (Vec::new(), Vec::new());
            groups_min_max(&values, g, &mut lo, &mut hi);
            let want: Vec<(u32, u32)> = values
                .chunks_exact(g)
                .map(min_max)
                .map(|(l, h)| (l.to_bits(), h.to_bits()))
                .collect();
            let got: Vec<(u32, u32)> =
                lo.iter().zip(&hi).map(|(l, h)| (l.to_bits(), h.to_bits())).collect();
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        /// Key codes by `int4_divisor` (infinity for a zero scale) equal
        /// AVP-KVQ-6's arithmetic with its `s' = 0` case, for values and
        /// minimums of binary16 range (any finite `x - m'`): ties, zeros
        /// of both signs, subnormals and the largest halves included.
        #[test]
        fn int4_codes_by_divisor_equal_the_spec_arithmetic(
            bits in proptest::collection::vec((half_bits(), half_bits(), half_bits()), 1..64),
        ) {
            use super::{finite_f16_to_f32, int4_code, int4_codes, int4_divisor};
            let finite = |b: u16| finite_f16_to_f32(b & 0xbfff); // exponent below all ones
            for (x, s, m) in bits {
                let (x, s, m) = (finite(x), finite(s).abs(), finite(m));
                for s in [s, 0.0, -0.0] {
                    let mut code = [0u8];
                    int4_codes(&[x], &[int4_divisor(s)], &[m], &mut code);
                    prop_assert_eq!(code[0], int4_code(x, s, m), "x {} s {} m {}", x, s, m);
                }
            }
        }
    }

    proptest! {
        /// int4 of binary16/bfloat16 (pairs of elements widened, coded
        /// and packed in one loop) writes the scales, minimums and codes
        /// that the float32 path writes for the same values, or refuses
        /// what it refuses: AVP-KVQ-6's arithmetic does not depend on
        /// the source dtype.
        #[test]
        fn int4_of_16_bit_elements_equals_int4_of_their_float32_widening(
            bits in proptest::collection::vec(half_bits(), 2 * 64 * 64), // K and V
            bf16 in any::<bool>(),
            g64 in any::<bool>(),
            f32_scales in any::<bool>(),
            raw in proptest::bool::weighted(0.1),
        ) {
            // Below 2 in magnitude (both dtypes) unless raw: mostly blocks
            // that quantize, now and then one that overflows or is not finite.
            let bits: Vec<u16> = bits.iter().map(|&b| if raw { b } else { b & 0xbfff }).collect();
            use crate::kv::{KvCache, KvHeader, write_kv_cache};
            use super::{QuantParams, ScaleDtype, encode_ext};
            let dtype = if bf16 { KvDtype::Bfloat16 } else { KvDtype::Float16 };
            let params = QuantParams {
                group_size: if g64 { 64 } else { 32 },
                scale_dtype: if f32_scales { ScaleDtype::F32 } else { ScaleDtype::F16 },
                ..QuantParams::INT4
            };
            let mut wide = vec![0.0f32; bits.len()];
            let half: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            widen(dtype, &half, &mut wide);
            let single: Vec<u8> = wide.iter().flat_map(|x| x.to_le_bytes()).collect();
            let quantize = |dtype: KvDtype, tensor: &[u8]| {
                let header = KvHeader { num_layers: 1, num_kv_heads: 1, head_dim: 64, seq_len: 64, dtype };
                let (k, v) = tensor.split_at(tensor.len() / 2);
                let payload = write_kv_cache(&header, [(k, v)]).unwrap();
                encode_ext(&KvCache::parse(&payload).unwrap(), &params, 0, None)
                    .map(|p| p[super::KVX_HEADER_LEN..].to_vec())
                    .map_err(|e| e.message().to_owned())
            };
            prop_assert_eq!(quantize(dtype, &half), quantize(KvDtype::Float32, &single));
        }
    }

    proptest! {
        /// int8 of binary16/bfloat16 (magnitudes found on the 16-bit
        /// patterns, codes widened as they are read, the clamp skipped
        /// where it cannot bite) writes the scales and codes that the
        /// float32 path writes for the same values, or refuses what it
        /// refuses: AVP-KVQ-5's arithmetic does not depend on the source dtype.
        #[test]
        fn int8_of_16_bit_elements_equals_int8_of_their_float32_widening(
            bits in proptest::collection::vec(half_bits(), 2 * 64 * 64), // K and V
            bf16 in any::<bool>(),
            group in prop::sample::select(vec![8u32, 16, 32, 64]),
            f32_scales in any::<bool>(),
            range in prop::sample::select(vec![0xbfffu16, 0x83ff, 0x807f]),
            raw in proptest::bool::weighted(0.1),
        ) {
            // Mostly finite blocks: below 2 in magnitude, or binary16
            // subnormals whose f16 scales round coarsely (the clamp bites);
            // now and then raw bits that overflow or are not finite.
            let bits: Vec<u16> = bits.iter().map(|&b| if raw { b } else { b & range }).collect();
            use crate::kv::{KvCache, KvHeader, write_kv_cache};
            use super::{QuantParams, ScaleDtype, encode_ext};
            let dtype = if bf16 { KvDtype::Bfloat16 } else { KvDtype::Float16 };
            let params = QuantParams {
                group_size: group,
                scale_dtype: if f32_scales { ScaleDtype::F32 } else { ScaleDtype::F16 },
                ..QuantParams::INT8
            };
            let mut wide = vec![0.0f32; bits.len()];
            let half: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            widen(dtype, &half, &mut wide);
            let single: Vec<u8> = wide.iter().flat_map(|x| x.to_le_bytes()).collect();
            let quantize = |dtype: KvDtype, tensor: &[u8]| {
                let header = KvHeader { num_layers: 1, num_kv_heads: 1, head_dim: 64, seq_len: 64, dtype };
                let (k, v) = tensor.split_at(tensor.len() / 2);
                let payload = write_kv_cache(&header, [(k, v)]).unwrap();
                encode_ext(&KvCache::parse(&payload).unwrap(), &params, 0, None)
                    .map(|p| p[super::KVX_HEADER_LEN..].to_vec())
                    .map_err(|e| e.message().to_owned())
            };
            prop_assert_eq!(quantize(dtype, &half), quantize(KvDtype::Float32, &single));
        }
    }

    #[test]
    fn int4_refuses_a_minimum_or_a_scale_that_overflows_binary16() {
        use crate::kv::{KvCache, KvHeader, write_kv_cache};
        let header = KvHeader {
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 32,
            seq_len: 32,
            dtype: KvDtype::Float32,
        };
        for (a, b, what) in [(-70000.0f32, 0.0, "minimum"), (-65504.0, 1.0e6, "scale")] {
            // A checkerboard, so that every key and every value group holds both.
            let tensor: Vec<u8> = (0..32 * 32usize)
                .flat_map(|i| if (i / 32 + i) % 2 == 0 { a } else { b }.to_le_bytes())
                .collect();
            let payload = write_kv_cache(&header, [(&tensor[..], &tensor[..])]).unwrap();
            let kv = KvCache::parse(&payload).unwrap();
            let e = super::encode_ext(&kv, &super::QuantParams::INT4, 0, None).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
            assert_eq!(
                e.message(),
                format!("a group {what} overflows the scale dtype")
            );
        }
    }

    #[test]
    fn int8_and_int4_refuse_a_non_finite_half_wherever_it_is() {
        use crate::kv::{KvCache, KvHeader, write_kv_cache};
        for (dtype, bad) in [
            (KvDtype::Float16, [0x7c00u16, 0xfc00, 0x7e00, 0xfc01]),
            (KvDtype::Bfloat16, [0x7f80, 0xff80, 0x7fc0, 0xff81]),
        ] {
            let header = KvHeader {
                num_layers: 1,
                num_kv_heads: 1,
                head_dim: 64,
                seq_len: 32,
                dtype,
            };
            for (i, b) in bad.into_iter().enumerate() {
                let mut tensor = vec![0x3c00u16.to_le_bytes(); 64 * 32]; // 1.0 in binary16
                tensor[(i * 517) % (64 * 32)] = b.to_le_bytes();
                let tensor: Vec<u8> = tensor.concat();
                let payload = write_kv_cache(&header, [(&tensor[..], &tensor[..])]).unwrap();
                let kv = KvCache::parse(&payload).unwrap();
                for params in [super::QuantParams::INT8, super::QuantParams::INT4] {
                    let e = super::encode_ext(&kv, &params, 0, None).unwrap_err();
                    assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
                    assert!(e.message().contains("non-finite"), "{}", e.message());
                }
            }
        }
    }

    #[test]
    fn a_zero_minimum_keeps_the_sign_the_in_order_fold_finds() {
        // Lane 0 meets -0 (element 8) before lane 1's +0 (element 1) is
        // folded in: min_max stores -0, and so must the fast path.
        let mut group = [1.0f32; 32];
        group[1] = 0.0;
        group[8] = -0.0;
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        groups_min_max(&group, 32, &mut lo, &mut hi);
        let stored: Vec<u32> = lo.iter().map(|l| l.to_bits()).collect();
        assert_eq!(min_max(&group).0.to_bits(), (-0.0f32).to_bits());
        assert_eq!(stored, [(-0.0f32).to_bits()]);
    }
}

//! Quantized contexts on the device (AVP-ENG-28..30, spec/protocol/kv-quant.md):
//! export quantizes the cache with tch ops where it lives and copies only
//! the integer bytes and scales to the host, in one copy; import uploads the
//! payload in one copy and dequantizes on the device.
//!
//! The arithmetic is the codec's (`avp_codec::kv_quant`, AVP-KVQ-5/6/32), one
//! IEEE binary32 operation per step and in the same order, so the bytes an
//! export writes are the bytes `encode_ext` writes from the same floats and
//! an import yields the floats `KvExt::dequantize` yields (the tests compare
//! both). Two libtorch details matter for that: a division by a host scalar
//! may become a multiplication by its reciprocal on CUDA, so the divisors 127
//! and 15 are device tensors; and `x · s + m` is two kernels, never a fused
//! multiply-add. Layout and validation are the codec's: the header is
//! checked by `KvExtHeader::parse`, the payload by `KvExt::parse`, before
//! anything is allocated on the device. Byte order: tensors are copied in
//! the host's order, little-endian on every platform libtorch supports.

use std::collections::BTreeMap;

use avp_codec::kv_quant::{
    KVX_HEADER_LEN, KvExt, KvExtHeader, KvPart, KvScheme, QuantParams, ScaleDtype,
};
use tch::{Device, Kind, Tensor};

use crate::cache::{KvCache, to_i64};
use crate::context::{LatentContext, check_kv_shape, decode_for_model, kind_of, wire_dtype};
use crate::decoder::Decoder;
use crate::error::{EngineError, Result};
use crate::wire::{PayloadKind, WireMeta, encode_message};

/// The largest int8 group (AVP-KVQ-5).
const MAX_INT8_GROUP: usize = 64;
/// The int4 group the engine uses (AVP-KVQ-6 allows 32 or 64).
const INT4_GROUP: usize = 32;

/// The engine's parameters for `scheme` on a cache of `head_dim` and
/// `seq_len` (AVP-ENG-30): int8 groups of the largest divisor of `head_dim`
/// up to 64 with binary16 scales; int4 groups of 32 with binary16 scales and
/// minimums, the `seq_len mod 32` most recent tokens kept as residual. An
/// int4 cache whose `head_dim` is not a multiple of 32 cannot be quantized
/// (values are grouped along it): `InvalidArgument`. int8-channel takes the
/// codec's `QuantParams::int8_channel_for` (the largest divisor of
/// `head_dim` up to 64, binary16 scales, no residual: the last key group of
/// a channel is shorter when the group does not divide `seq_len`).
pub fn params_for(scheme: KvScheme, head_dim: usize, seq_len: usize) -> Result<QuantParams> {
    match scheme {
        KvScheme::Int8 => {
            let group = (1..=MAX_INT8_GROUP.min(head_dim))
                .rev()
                .find(|g| head_dim % g == 0)
                .ok_or_else(|| {
                    EngineError::InvalidArgument("head_dim 0 cannot be quantized".into())
                })?;
            Ok(QuantParams {
                group_size: u32_of(group, "group size")?,
                ..QuantParams::INT8
            })
        }
        KvScheme::Int4 => {
            // Groups of 64 where they fit (4.5 bits a value), else 32 (AVP-ENG-30).
            let group = if head_dim % 64 == 0 { 64 } else { INT4_GROUP };
            if head_dim == 0 || head_dim % INT4_GROUP != 0 {
                return Err(EngineError::InvalidArgument(format!(
                    "int4 groups values along head_dim in runs of 32 or 64 (AVP-KVQ-4), \
                     and this model's head_dim is {head_dim}: use int8"
                )));
            }
            Ok(QuantParams {
                group_size: u32_of(group, "group size")?,
                residual: u32_of(seq_len % group, "residual")?,
                ..QuantParams::INT4
            })
        }
        KvScheme::Int8Channel => Ok(QuantParams::int8_channel_for(u32_of(head_dim, "head_dim")?)),
        _ => Ok(QuantParams::NONE),
    }
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| EngineError::InvalidArgument(format!("{what} {n} exceeds u32")))
}

fn usize_of(n: u32) -> usize {
    n as usize // lossless: usize has at least 32 bits on every target libtorch supports
}

/// The header of a full (`seq_start = 0`) payload of `cache` under `params`,
/// checked by the codec's parser; parameters that do not fit the shape are
/// `InvalidArgument`.
fn ext_header(cache: &KvCache, params: &QuantParams) -> Result<KvExtHeader> {
    let mut header = KvExtHeader {
        scheme: params.scheme,
        dtype: wire_dtype(cache.kind())?,
        scale_dtype: params.scale_dtype,
        num_layers: u32_of(cache.num_layers(), "num_layers")?,
        num_kv_heads: u32_of(cache.num_kv_heads(), "num_kv_heads")?,
        head_dim: u32_of(cache.head_dim(), "head_dim")?,
        seq_start: 0,
        seq_len: u32_of(cache.seq_len(), "seq_len")?,
        group_size: params.group_size,
        residual: params.residual,
        scales_per_tensor: 0,
    };
    header.scales_per_tensor = header
        .expected_scales()
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(u32::MAX);
    KvExtHeader::parse(&header.to_bytes())
        .map_err(|e| EngineError::InvalidArgument(format!("cannot quantize: {}", e.message())))
}

/// A device tensor filled with `v`, the divisor of an exact division.
fn divisor(like: &Tensor, v: f64) -> Result<Tensor> {
    Ok(like.f_full_like(v)?)
}

/// `s` rounded to the scale dtype and widened back (AVP-KVQ-7).
fn round_scale(s: &Tensor, sd: ScaleDtype) -> Result<Tensor> {
    Ok(match sd {
        ScaleDtype::F16 => s.f_to_kind(Kind::Half)?.f_to_kind(Kind::Float)?,
        _ => s.shallow_clone(),
    })
}

/// Scales (binary32 values) as the bytes of the scale dtype, flat.
fn scale_bytes(s: &Tensor, sd: ScaleDtype) -> Result<Tensor> {
    let kind = match sd {
        ScaleDtype::F16 => Kind::Half,
        _ => Kind::Float,
    };
    bytes_of(&s.f_to_kind(kind)?)
}

/// Any tensor's elements as flat bytes, C order.
fn bytes_of(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_flatten(0, -1)?
        .f_contiguous()?
        .f_view_dtype(Kind::Uint8)?)
}

/// `clamp(roundTiesToEven(num / s), lo, hi)`, 0 where `s` is 0 (AVP-KVQ-5/6).
fn quantize(num: &Tensor, s: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let q = num.f_div(s)?.f_clamp(lo, hi)?.f_round()?;
    Ok(q.f_where_scalarother(&s.f_ne(0.0)?, 0.0)?)
}

/// One K or V section (`x`: `[H, t, D]` in the cache's kind) appended to
/// `parts` as flat byte tensors; `ok` gets a flag that every value is finite
/// and every scale and minimum fits its dtype (AVP-KVQ-5: refused otherwise).
fn quantize_section(
    h: &KvExtHeader,
    part: KvPart,
    x: &Tensor,
    parts: &mut Vec<Tensor>,
    ok: &mut Vec<Tensor>,
) -> Result<()> {
    let f = x.f_to_kind(Kind::Float)?;
    ok.push(f.f_isfinite()?.f_all()?);
    let g = i64::from(h.group_size);
    let sd = h.scale_dtype;
    match h.scheme {
        KvScheme::Int8 => {
            let groups = f.f_reshape([-1, g])?;
            let amax = groups.f_abs()?.f_amax([1i64].as_slice(), true)?;
            let s = round_scale(&amax.f_div(&divisor(&amax, 127.0)?)?, sd)?;
            ok.push(s.f_isfinite()?.f_all()?);
            let q = quantize(&groups, &s, -127.0, 127.0)?;
            parts.push(scale_bytes(&s, sd)?);
            parts.push(bytes_of(&q.f_to_kind(Kind::Int8)?)?);
        }
        KvScheme::Int4 => {
            let (heads, d) = (i64::from(h.num_kv_heads), i64::from(h.head_dim));
            let tq = i64::from(h.quantized_tokens());
            if tq > 0 {
                let xq = f.f_narrow(1, 0, tq)?;
                // Keys per channel over g tokens, values per token over g channels.
                let (groups, dim) = match part {
                    KvPart::Key => (xq.f_reshape([heads, tq / g, g, d])?, 2i64),
                    KvPart::Value => (xq.f_reshape([heads, tq, d / g, g])?, 3i64),
                };
                let lo = groups.f_amin([dim].as_slice(), true)?;
                let hi = groups.f_amax([dim].as_slice(), true)?;
                let m = round_scale(&lo, sd)?;
                let range = hi.f_sub(&lo)?;
                let s = round_scale(&range.f_div(&divisor(&range, 15.0)?)?, sd)?;
                ok.push(s.f_isfinite()?.f_logical_and(&m.f_isfinite()?)?.f_all()?);
                let q = quantize(&groups.f_sub(&m)?, &s, 0.0, 15.0)?
                    .f_to_kind(Kind::Uint8)?
                    .f_reshape([-1, 2])?;
                // Even element in the low nibble (AVP-KVQ-2).
                let packed = q.f_select(1, 0)?.f_bitwise_or_tensor(
                    &q.f_select(1, 1)?.f_bitwise_left_shift_tensor_scalar(4)?,
                )?;
                parts.push(scale_bytes(&s, sd)?);
                parts.push(scale_bytes(&m, sd)?);
                parts.push(packed);
            }
            let r = i64::from(h.residual);
            parts.push(bytes_of(&x.f_narrow(1, tq, r)?)?);
        }
        KvScheme::Int8Channel => {
            let (heads, d) = (i64::from(h.num_kv_heads), i64::from(h.head_dim));
            let tq = i64::from(h.quantized_tokens());
            if tq > 0 {
                let xq = f.f_narrow(1, 0, tq)?;
                // AVP-KVQ-31: int4's grouping, AVP-KVQ-5's arithmetic; the last
                // key group of a channel is shorter: zero rows pad it to g
                // (|0| never raises amax) and their codes are dropped.
                let blocks = (tq + g - 1) / g;
                let (groups, dim) = match part {
                    KvPart::Key => {
                        let padded = if blocks * g == tq {
                            xq
                        } else {
                            let pad = xq.f_new_zeros(
                                [heads, blocks * g - tq, d],
                                (Kind::Float, xq.device()),
                            )?;
                            Tensor::f_cat(&[xq, pad], 1)?
                        };
                        (padded.f_reshape([heads, blocks, g, d])?, 2i64)
                    }
                    KvPart::Value => (xq.f_reshape([heads, tq, d / g, g])?, 3i64),
                };
                let amax = groups.f_abs()?.f_amax([dim].as_slice(), true)?;
                let s = round_scale(&amax.f_div(&divisor(&amax, 127.0)?)?, sd)?;
                ok.push(s.f_isfinite()?.f_all()?);
                let q = quantize(&groups, &s, -127.0, 127.0)?.f_to_kind(Kind::Int8)?;
                let q = match part {
                    KvPart::Key => q.f_reshape([heads, blocks * g, d])?.f_narrow(1, 0, tq)?,
                    KvPart::Value => q,
                };
                parts.push(scale_bytes(&s, sd)?);
                parts.push(bytes_of(&q)?);
            }
            let r = i64::from(h.residual);
            parts.push(bytes_of(&x.f_narrow(1, tq, r)?)?);
        }
        _ => parts.push(bytes_of(x)?),
    }
    Ok(())
}

/// The extended KV payload (AVP-KVQ-2) of `cache` under `params`, quantized
/// on the cache's device; the integer bytes, scales and a validity flag come
/// to the host in one copy (AVP-ENG-28). A non-finite value, or a scale or
/// minimum that overflows the scale dtype, is `InvalidArgument`, as the
/// codec's `encode_ext` refuses it.
pub fn quantized_payload(cache: &KvCache, params: &QuantParams) -> Result<Vec<u8>> {
    let _guard = tch::no_grad_guard();
    let header = ext_header(cache, params)?;
    let total = header
        .total_bytes()
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| EngineError::InvalidArgument("KV-cache too large".into()))?;
    let mut parts = Vec::with_capacity(cache.num_layers().saturating_mul(8).saturating_add(1));
    let mut ok = Vec::with_capacity(cache.num_layers().saturating_mul(4));
    for layer in 0..cache.num_layers() {
        let (k, v) = cache.layer(layer)?;
        quantize_section(
            &header,
            KvPart::Key,
            &k.f_squeeze_dim(0)?,
            &mut parts,
            &mut ok,
        )?;
        quantize_section(
            &header,
            KvPart::Value,
            &v.f_squeeze_dim(0)?,
            &mut parts,
            &mut ok,
        )?;
    }
    let flag = if ok.is_empty() {
        Tensor::f_ones([1], (Kind::Uint8, cache.device()))?
    } else {
        Tensor::f_stack(&ok, 0)?
            .f_all()?
            .f_to_kind(Kind::Uint8)?
            .f_reshape([1])?
    };
    parts.push(flag);
    let host = Tensor::f_cat(&parts, 0)?.f_to_device(Device::Cpu)?;
    let body = total.saturating_sub(KVX_HEADER_LEN);
    let numel = host.numel();
    if numel != body.saturating_add(1) {
        return Err(EngineError::Torch(tch::TchError::Shape(format!(
            "quantized {numel} bytes, the header declares {}",
            body.saturating_add(1)
        ))));
    }
    let mut out = vec![0u8; total.saturating_add(1)];
    out.get_mut(..KVX_HEADER_LEN)
        .unwrap_or_default()
        .copy_from_slice(&header.to_bytes());
    host.f_copy_data_u8(out.get_mut(KVX_HEADER_LEN..).unwrap_or_default(), numel)?;
    if out.pop() != Some(1) {
        return Err(EngineError::InvalidArgument(
            "the KV-cache holds a non-finite value or a scale beyond the scale dtype: \
             it cannot be quantized (AVP-KVQ-5)"
                .into(),
        ));
    }
    Ok(out)
}

impl LatentContext {
    /// The context as a KV_CACHE_EXT message (AVP-KVQ-1): [`Self::to_bytes`]'s
    /// metadata with the payload type KV_CACHE_EXT and the payload of
    /// [`quantized_payload`]. Send it only to a peer that announced the
    /// scheme's capability (`kv_quant_int8` / `kv_quant_int4` /
    /// `kv_quant_int8_channel`).
    pub fn to_bytes_quantized(&self, params: &QuantParams) -> Result<Vec<u8>> {
        let payload = quantized_payload(&self.cache, params)?;
        let extra: BTreeMap<String, String> = [
            ("model_hash".to_owned(), self.model_hash.clone()),
            ("model_family".to_owned(), self.model_family.clone()),
            ("num_steps".to_owned(), self.num_steps.to_string()),
        ]
        .into_iter()
        .collect();
        let meta = WireMeta {
            hidden_dim: u32_of(self.hidden_dim, "hidden_dim")?,
            num_layers: u32_of(self.num_layers, "num_layers")?,
            payload: PayloadKind::KvCacheExt,
            dtype: wire_dtype(self.cache.kind())?,
            tensor_shape: Vec::new(),
            avp_map_id: String::new(),
            extra,
        };
        encode_message(&meta, &payload)
    }
}

/// The first scale (or minimum) among `bytes` that AVP-KVQ-3 refuses:
/// not finite, or (`scales`) negative.
fn bad_scale(bytes: &[u8], sd: ScaleDtype, scales: bool) -> Option<f32> {
    let mut values: Box<dyn Iterator<Item = f32> + '_> = match sd {
        ScaleDtype::F16 => Box::new(
            bytes
                .chunks_exact(2)
                .filter_map(|b| b.first_chunk::<2>())
                .map(|b| avp_codec::tensor::f16_to_f32(u16::from_le_bytes(*b))),
        ),
        _ => Box::new(
            bytes
                .chunks_exact(4)
                .filter_map(|b| b.first_chunk::<4>())
                .map(|b| f32::from_le_bytes(*b)),
        ),
    };
    values.find(|v| !v.is_finite() || (scales && *v < 0.0))
}

/// Checks every scale and minimum of `ext` on the host, before anything is
/// uploaded (a few bytes per group; AVP-KVQ-3's value checks).
fn check_scales(ext: &KvExt<'_>) -> Result<()> {
    let h = &ext.header;
    for layer in 0..usize_of(h.num_layers) {
        for part in [KvPart::Key, KvPart::Value] {
            // int8-channel's K and V sections have different counts (AVP-KVQ-31).
            let count = usize::try_from(h.part_scales(part).unwrap_or(0)).unwrap_or(0);
            let len = count.saturating_mul(h.scale_dtype.size());
            let section = ext.section(layer, part).unwrap_or_default();
            let (scales, rest) = section.split_at(len.min(section.len()));
            let mins = match h.scheme {
                KvScheme::Int4 => rest.get(..len).unwrap_or_default(),
                _ => &[],
            };
            let bad = bad_scale(scales, h.scale_dtype, true)
                .or_else(|| bad_scale(mins, h.scale_dtype, false));
            if let Some(v) = bad {
                return Err(EngineError::InvalidContext(format!(
                    "layer {layer}: scale or minimum {v} is not a finite (non-negative) number (AVP-KVQ-3)"
                )));
            }
        }
    }
    Ok(())
}

/// `n` bytes of `body` from `at`, copied into a fresh tensor (so a wider
/// view is aligned) and read as `kind`.
fn read_as(body: &Tensor, at: i64, n: i64, kind: Kind) -> Result<Tensor> {
    Ok(body
        .f_narrow(0, at, n)?
        .f_detach_copy()?
        .f_view_dtype(kind)?)
}

/// Scales or minimums at `at` as binary32.
fn read_scales(body: &Tensor, at: i64, count: i64, sd: ScaleDtype) -> Result<Tensor> {
    let (kind, size) = match sd {
        ScaleDtype::F16 => (Kind::Half, 2),
        _ => (Kind::Float, 4),
    };
    read_as(body, at, count * size, kind)?
        .f_to_kind(Kind::Float)
        .map_err(Into::into)
}

/// Dequantizes the section at `at` of the uploaded `body` into `[1, H, t, D]`
/// in the context's dtype (AVP-KVQ-5/6/8).
fn dequantize_section(h: &KvExtHeader, part: KvPart, body: &Tensor, at: i64) -> Result<Tensor> {
    let kind = kind_of(h.dtype)?;
    let es = i64::try_from(h.dtype.element_type().size()).unwrap_or(4);
    let (heads, d) = (i64::from(h.num_kv_heads), i64::from(h.head_dim));
    let t = i64::from(h.stored_tokens());
    let g = i64::from(h.group_size);
    let groups = i64::try_from(h.part_scales(part).unwrap_or(0)).unwrap_or(0);
    let ss = i64::try_from(h.scale_dtype.size()).unwrap_or(4);
    let x = match h.scheme {
        KvScheme::Int8 => {
            let s = read_scales(body, at, groups, h.scale_dtype)?;
            let q = body
                .f_narrow(0, at + groups * ss, heads * t * d)?
                .f_view_dtype(Kind::Int8)?
                .f_to_kind(Kind::Float)?
                .f_reshape([groups, g])?;
            q.f_mul(&s.f_reshape([groups, 1])?)?
                .f_to_kind(kind)?
                .f_reshape([heads, t, d])?
        }
        KvScheme::Int4 => {
            let (tq, r) = (i64::from(h.quantized_tokens()), i64::from(h.residual));
            let mut pieces = Vec::with_capacity(2);
            let mut at = at;
            if tq > 0 {
                let s = read_scales(body, at, groups, h.scale_dtype)?;
                let m = read_scales(body, at + groups * ss, groups, h.scale_dtype)?;
                at += 2 * groups * ss;
                let packed = body.f_narrow(0, at, heads * tq * d / 2)?;
                at += heads * tq * d / 2;
                let q = Tensor::f_stack(
                    &[
                        packed.f_bitwise_and(15)?,
                        packed.f_bitwise_right_shift_tensor_scalar(4)?,
                    ],
                    1,
                )?
                .f_to_kind(Kind::Float)?;
                let (qshape, sshape) = match part {
                    KvPart::Key => ([heads, tq / g, g, d], [heads, tq / g, 1, d]),
                    KvPart::Value => ([heads, tq, d / g, g], [heads, tq, d / g, 1]),
                };
                // Two roundings, as AVP-KVQ-6 says: separate kernels never fuse.
                let x = q
                    .f_reshape(qshape)?
                    .f_mul(&s.f_reshape(sshape)?)?
                    .f_add(&m.f_reshape(sshape)?)?;
                pieces.push(x.f_to_kind(kind)?.f_reshape([heads, tq, d])?);
            }
            if r > 0 {
                pieces.push(read_as(body, at, heads * r * d * es, kind)?.f_reshape([heads, r, d])?);
            }
            match pieces.len() {
                1 => pieces.swap_remove(0),
                _ => Tensor::f_cat(&pieces, 1)?,
            }
        }
        KvScheme::Int8Channel => {
            let (tq, r) = (i64::from(h.quantized_tokens()), i64::from(h.residual));
            let mut pieces = Vec::with_capacity(2);
            let mut at = at;
            if tq > 0 {
                let s = read_scales(body, at, groups, h.scale_dtype)?;
                at += groups * ss;
                let q = body
                    .f_narrow(0, at, heads * tq * d)?
                    .f_view_dtype(Kind::Int8)?
                    .f_to_kind(Kind::Float)?;
                at += heads * tq * d;
                // Each element's scale laid out as `[H, tq, D]`: a key scale
                // repeated over its group's tokens (the last group shorter),
                // a value scale over its g channels.
                let per_element = match part {
                    KvPart::Key => {
                        let blocks = (tq + g - 1) / g;
                        s.f_reshape([heads, blocks, 1, d])?
                            .f_expand([heads, blocks, g, d], false)?
                            .f_reshape([heads, blocks * g, d])?
                            .f_narrow(1, 0, tq)?
                    }
                    KvPart::Value => s
                        .f_reshape([heads, tq, d / g, 1])?
                        .f_expand([heads, tq, d / g, g], false)?
                        .f_reshape([heads, tq, d])?,
                };
                let x = q.f_reshape([heads, tq, d])?.f_mul(&per_element)?;
                pieces.push(x.f_to_kind(kind)?);
            }
            if r > 0 {
                pieces.push(read_as(body, at, heads * r * d * es, kind)?.f_reshape([heads, r, d])?);
            }
            match pieces.len() {
                1 => pieces.swap_remove(0),
                _ => Tensor::f_cat(&pieces, 1)?,
            }
        }
        _ => read_as(body, at, heads * t * d * es, kind)?.f_reshape([heads, t, d])?,
    };
    Ok(x.f_unsqueeze(0)?)
}

/// Imports a KV_CACHE_EXT message onto `model`'s device (AVP-ENG-29): the
/// codec validates the payload (AVP-KVQ-3) and the engine checks identity
/// and shape as for KV_CACHE (AVP-ENG-11, AVP-ENG-27) and every scale, all
/// before allocating; the payload is uploaded in one copy and dequantized
/// there. A delta (`seq_start > 0`) needs its base and is `Unsupported`.
/// [`crate::Engine::import_message`] calls this.
pub fn import(
    model: &Decoder,
    model_hash: &str,
    bytes: &[u8],
    headroom: usize,
) -> Result<LatentContext> {
    let _guard = tch::no_grad_guard();
    let (msg, num_steps) = decode_for_model(bytes, PayloadKind::KvCacheExt, model_hash)?;
    let ext = KvExt::parse(&msg.tensor).map_err(EngineError::Wire)?;
    let h = ext.header;
    if h.seq_start > 0 {
        return Err(EngineError::Unsupported(format!(
            "a delta context (positions {}..{} on top of a prefix) needs its base: \
             assemble it first (avp convert DELTA --base BASE)",
            h.seq_start, h.seq_len
        )));
    }
    check_kv_shape(model, h.num_layers, h.num_kv_heads, h.head_dim)?;
    let cfg = model.config();
    let seq = usize_of(h.seq_len);
    if seq > cfg.max_position_embeddings {
        return Err(EngineError::CacheFull {
            capacity: cfg.max_position_embeddings,
            needed: seq,
        });
    }
    check_scales(&ext)?;
    let mut cache = model.new_cache(seq.saturating_add(headroom))?;
    let preamble = ext.header.preamble_len();
    let body_bytes = msg.tensor.get(preamble..).unwrap_or_default();
    let body = Tensor::f_from_slice(body_bytes)?.f_to_device(model.device())?;
    // int8-channel's K and V sections differ in size (AVP-KVQ-31).
    let bytes_of_part = |part| usize::try_from(h.section_bytes(part).unwrap_or(0)).unwrap_or(0);
    let key_section = to_i64(bytes_of_part(KvPart::Key))?;
    let value_section = to_i64(bytes_of_part(KvPart::Value))?;
    for layer in 0..cfg.num_layers {
        let at = to_i64(layer)? * (key_section + value_section);
        let k = dequantize_section(&h, KvPart::Key, &body, at)?;
        let v = dequantize_section(&h, KvPart::Value, &body, at + key_section)?;
        cache.load_layer(layer, &k, &v)?;
    }
    cache.set_seq_len(seq);
    Ok(LatentContext::received(
        cache, model_hash, &msg.meta, num_steps,
    ))
}

//! Delta (shared-prefix) KV transfer (spec/protocol/kv-delta.md, AVP-KVD-*).
//!
//! A context of `n` positions is sent as "positions `[p, n)` on top of the
//! prefix P", P named by its content address (AVP-KVD-1). This module
//! computes addresses (feature `kv-delta`, which brings BLAKE3), splits a
//! full KV v1 payload into an address and a delta payload, and assembles a
//! base context and a delta into the full KV v1 payload in a caller buffer
//! with one copy per layer, tensor and head (no per-element work unless
//! the delta is quantized).

use crate::error::{Error, ErrorKind};
use crate::kv::{KV_HEADER_LEN, KvCache, KvHeader};
use crate::kv_quant::{KvExt, KvPart, PrefixAddress};

/// The domain string that starts every hashed prefix (AVP-KVD-1).
pub const PREFIX_DOMAIN: &[u8] = b"avp-kv-prefix-v1\n";

fn err(kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg)
}

/// The error a receiver answers when it holds no context with `address`
/// (AVP-KVD-5): the sender falls back to a full transfer.
pub fn missing_prefix(address: &PrefixAddress) -> Error {
    err(
        ErrorKind::MissingPrefix,
        format!("no stored context has the prefix {}", address.to_hex()),
    )
}

/// The error a receiver answers when the context it found under a delta's
/// address holds that address for `held` positions, not the delta's `p`
/// (AVP-HTTP-120): the address a sender named is not of `[0, p)`.
pub fn indexed_length_mismatch(p: u32, held: u32) -> Error {
    err(
        ErrorKind::PrefixMismatch,
        format!(
            "the delta starts at {p} but its address is that of the first {held} positions of a stored context"
        ),
    )
}

/// The error when a delta starts at `p` but the base found for it holds
/// only `held` positions (AVP-KVD-4).
pub fn base_too_short(p: u32, held: u32) -> Error {
    err(
        ErrorKind::DeltaMismatch,
        format!("delta starts at {p} but the base holds {held} positions"),
    )
}

/// The content address of positions `[0, p)` of `kv` for the model
/// `model_hash` (AVP-KVD-1): BLAKE3 of the domain string, the model hash
/// (u32 length, UTF-8 bytes) and the KV v1 payload of those positions, in
/// `kv`'s dtype. `p > seq_len` is `invalid_argument`.
#[cfg(feature = "kv-delta")]
pub fn prefix_address(kv: &KvCache<'_>, p: u32, model_hash: &str) -> Result<PrefixAddress, Error> {
    let header = kv.header;
    if p > header.seq_len {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("prefix length {p} exceeds seq_len {}", header.seq_len),
        ));
    }
    let hash_len = u32::try_from(model_hash.len())
        .map_err(|_| err(ErrorKind::InvalidArgument, "model hash over 4 GiB"))?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(PREFIX_DOMAIN);
    hasher.update(&hash_len.to_le_bytes());
    hasher.update(model_hash.as_bytes());
    hasher.update(
        &KvHeader {
            seq_len: p,
            ..header
        }
        .to_bytes(),
    );
    let rows = Rows::new(&header);
    let keep = rows.row.saturating_mul(p as usize);
    for layer in kv.layers() {
        for tensor in [layer.key, layer.value] {
            for head in tensor.bytes().chunks_exact(rows.head(header.seq_len)) {
                hasher.update(head.get(..keep).unwrap_or_default());
            }
        }
    }
    Ok(PrefixAddress(*hasher.finalize().as_bytes()))
}

/// The longest common prefix of two contexts (AVP-KVD-30): the largest `p`
/// such that positions `[0, p)` of `a` and `b` hold the same bytes in every
/// layer's K and V. The two must agree in layers, heads, head size and
/// dtype (`delta_mismatch`). One `memcmp` per layer, tensor and head; no
/// hashing, so a sender finds `p` without trusting either file's length.
pub fn common_prefix_len(a: &KvCache<'_>, b: &KvCache<'_>) -> Result<u32, Error> {
    let (ha, hb) = (a.header, b.header);
    if (ha.num_layers, ha.num_kv_heads, ha.head_dim, ha.dtype)
        != (hb.num_layers, hb.num_kv_heads, hb.head_dim, hb.dtype)
    {
        return Err(err(
            ErrorKind::DeltaMismatch,
            format!(
                "the contexts differ in shape: {} layers x {} heads x {} in {} against {} x {} x {} in {}",
                ha.num_layers,
                ha.num_kv_heads,
                ha.head_dim,
                ha.dtype.name(),
                hb.num_layers,
                hb.num_kv_heads,
                hb.head_dim,
                hb.dtype.name()
            ),
        ));
    }
    let rows = Rows::new(&ha);
    let mut p = ha.seq_len.min(hb.seq_len);
    for (la, lb) in a.layers().zip(b.layers()) {
        for (ta, tb) in [(la.key, lb.key), (la.value, lb.value)] {
            let heads_a = ta.bytes().chunks_exact(rows.head(ha.seq_len));
            let heads_b = tb.bytes().chunks_exact(rows.head(hb.seq_len));
            for (x, y) in heads_a.zip(heads_b) {
                if p == 0 {
                    return Ok(0);
                }
                let keep = rows.row.saturating_mul(p as usize);
                let (x, y) = (x.get(..keep).unwrap_or(x), y.get(..keep).unwrap_or(y));
                if x != y {
                    let first = x
                        .iter()
                        .zip(y)
                        .position(|(u, v)| u != v)
                        .unwrap_or(x.len().min(y.len()));
                    let rows_equal = first.checked_div(rows.row).unwrap_or(0);
                    p = u32::try_from(rows_equal).unwrap_or(0);
                }
            }
        }
    }
    Ok(p)
}

/// Splits `full` into the address of positions `[0, p)` and a delta
/// payload carrying `[p, n)` with `params` (the CLI's `--delta-from`).
/// `p` must be in `1..=seq_len` (`invalid_argument`).
#[cfg(feature = "kv-delta")]
pub fn split_delta(
    full: &KvCache<'_>,
    p: u32,
    model_hash: &str,
    params: &crate::kv_quant::QuantParams,
) -> Result<(PrefixAddress, Vec<u8>), Error> {
    if p == 0 {
        return Err(err(
            ErrorKind::InvalidArgument,
            "a delta starts after at least one position",
        ));
    }
    let address = prefix_address(full, p, model_hash)?;
    let payload = crate::kv_quant::encode_ext(full, params, p, Some(&address))?;
    Ok((address, payload))
}

/// Verifies that `base` holds `delta`'s prefix and assembles into a new
/// buffer (the CLI's `--base`): [`prefix_address`] then [`assemble_into`].
#[cfg(feature = "kv-delta")]
pub fn assemble(base: &KvCache<'_>, model_hash: &str, delta: &KvExt<'_>) -> Result<Vec<u8>, Error> {
    check_fit(base, delta)?;
    let address = prefix_address(base, delta.header.seq_start, model_hash)?;
    let len = usize::try_from(assembled_len(delta))
        .map_err(|_| err(ErrorKind::InvalidArgument, "KV cache larger than memory"))?;
    let mut out = vec![0u8; len];
    assemble_into(base, &address, delta, &mut out)?;
    Ok(out)
}

/// Length of the assembled KV v1 payload: the whole context, `seq_len` positions.
pub fn assembled_len(delta: &KvExt<'_>) -> u64 {
    let h = &delta.header;
    u64::from(h.num_kv_heads)
        .saturating_mul(u64::from(h.seq_len))
        .saturating_mul(u64::from(h.head_dim))
        .saturating_mul(h.dtype.element_type().size() as u64)
        .saturating_mul(2)
        .saturating_mul(u64::from(h.num_layers))
        .saturating_add(KV_HEADER_LEN as u64)
}

/// One head's rows within a `[heads, seq, head_dim]` tensor.
struct Rows {
    row: usize,
}

impl Rows {
    fn new(h: &KvHeader) -> Rows {
        Rows {
            row: (h.head_dim as usize).saturating_mul(h.dtype.element_type().size()),
        }
    }

    /// Bytes of one head at `seq` positions; at least 1 so chunking never sees 0.
    fn head(&self, seq: u32) -> usize {
        self.row.saturating_mul(seq as usize).max(1)
    }
}

/// AVP-KVD-4 steps 1-2: shape, dtype and length of the base against the delta.
fn check_fit(base: &KvCache<'_>, delta: &KvExt<'_>) -> Result<(), Error> {
    let b = base.header;
    let d = &delta.header;
    if d.seq_start == 0 || delta.prefix.is_none() {
        return Err(err(
            ErrorKind::InvalidArgument,
            "the payload is not a delta (seq_start is 0)",
        ));
    }
    let dims = |n: u32, h: u32, e: u32| format!("{n} layers x {h} heads x {e}");
    if (b.num_layers, b.num_kv_heads, b.head_dim) != (d.num_layers, d.num_kv_heads, d.head_dim) {
        return Err(err(
            ErrorKind::DeltaMismatch,
            format!(
                "base is {}, delta is {}",
                dims(b.num_layers, b.num_kv_heads, b.head_dim),
                dims(d.num_layers, d.num_kv_heads, d.head_dim)
            ),
        ));
    }
    if b.dtype != d.dtype {
        return Err(err(
            ErrorKind::DeltaMismatch,
            format!(
                "base dtype {} but delta dtype {}",
                b.dtype.name(),
                d.dtype.name()
            ),
        ));
    }
    if b.seq_len < d.seq_start {
        return Err(err(
            ErrorKind::DeltaMismatch,
            format!(
                "delta starts at {} but the base holds {} positions",
                d.seq_start, b.seq_len
            ),
        ));
    }
    Ok(())
}

/// Assembles `base`'s positions `[0, p)` and `delta`'s `[p, n)` into the
/// full KV v1 payload in `out` (exactly [`assembled_len`] bytes), after the
/// checks of AVP-KVD-4. `base_address` is the address of `base`'s
/// positions `[0, p)` (from [`prefix_address`], or kept by a store with the
/// context it indexes); it must equal the delta's (`prefix_mismatch`).
/// `out` is written only after every check passed, except that a bad scale
/// in a quantized delta (`inconsistent`) is found while dequantizing.
pub fn assemble_into(
    base: &KvCache<'_>,
    base_address: &PrefixAddress,
    delta: &KvExt<'_>,
    out: &mut [u8],
) -> Result<(), Error> {
    check_fit(base, delta)?;
    if delta.prefix.as_ref() != Some(base_address) {
        return Err(err(
            ErrorKind::PrefixMismatch,
            format!(
                "delta names prefix {}, the base's is {}",
                delta.prefix.map(|a| a.to_hex()).unwrap_or_default(),
                base_address.to_hex()
            ),
        ));
    }
    if out.len() as u64 != assembled_len(delta) {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!(
                "output is {} bytes, need {}",
                out.len(),
                assembled_len(delta)
            ),
        ));
    }
    let d = &delta.header;
    let full = KvHeader {
        num_layers: d.num_layers,
        num_kv_heads: d.num_kv_heads,
        head_dim: d.head_dim,
        seq_len: d.seq_len,
        dtype: d.dtype,
    };
    let (head, tensors) = out.split_at_mut(KV_HEADER_LEN);
    head.copy_from_slice(&full.to_bytes());
    let rows = Rows::new(&full);
    let keep = rows.row.saturating_mul(d.seq_start as usize);
    let tensor_len = rows
        .head(d.seq_len)
        .saturating_mul(d.num_kv_heads as usize)
        .max(1);
    let quantized = !matches!(d.scheme, crate::kv_quant::KvScheme::None);
    let mut scratch = if quantized {
        vec![0u8; usize::try_from(delta.tensor_bytes()).unwrap_or(0)]
    } else {
        Vec::new()
    };
    for (i, dst) in tensors.chunks_exact_mut(tensor_len).enumerate() {
        let part = if i % 2 == 0 {
            KvPart::Key
        } else {
            KvPart::Value
        };
        let layer = base
            .layer(i / 2)
            .ok_or_else(|| err(ErrorKind::Internal, "base layer missing after the check"))?;
        let src_base = if part == KvPart::Key {
            layer.key
        } else {
            layer.value
        };
        let tail: &[u8] = if quantized {
            delta.dequantize_tensor(i / 2, part, &mut scratch)?;
            &scratch
        } else {
            delta
                .section(i / 2, part)
                .ok_or_else(|| err(ErrorKind::Internal, "delta section missing after parse"))?
        };
        let tail_head = rows.head(d.stored_tokens());
        for ((out_head, base_head), tail_rows) in dst
            .chunks_exact_mut(rows.head(d.seq_len))
            .zip(
                src_base
                    .bytes()
                    .chunks_exact(rows.head(base.header.seq_len)),
            )
            .zip(tail.chunks(tail_head).chain(std::iter::repeat(&[][..])))
        {
            let (prefix_rows, rest) = out_head.split_at_mut(keep.min(out_head.len()));
            let from_base = base_head.get(..prefix_rows.len());
            match from_base {
                Some(b) if rest.len() == tail_rows.len() => {
                    prefix_rows.copy_from_slice(b);
                    rest.copy_from_slice(tail_rows);
                }
                _ => {
                    return Err(err(
                        ErrorKind::Internal,
                        "row lengths disagree after the checks",
                    ));
                }
            }
        }
    }
    Ok(())
}

//! Synthetic KV contexts as message files, shared by the `convert` and
//! `inspect` tests: every value is a function of its coordinates, so a
//! context of `p` positions is exactly the start of one of `n > p`.
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses a subset

use avp_codec::kv::{KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_quant::{f32_to_bf16, f32_to_f16};
use avp_codec::{Compression, Metadata, PayloadType};

use super::common::Scratch;

pub(crate) const MODEL_HASH: &str = "c0ffee";

/// One value of a synthetic context, a function of its coordinates only, so
/// a context of `p` positions is exactly the start of one of `n > p`.
pub(crate) fn value(layer: u32, part: u32, head: u32, pos: u32, ch: u32) -> f32 {
    let mut s = layer
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(part.wrapping_mul(0x85eb_ca6b))
        .wrapping_add(head.wrapping_mul(0xc2b2_ae35))
        .wrapping_add(pos.wrapping_mul(0x27d4_eb2f))
        .wrapping_add(ch.wrapping_mul(0x1656_67b1));
    s ^= s >> 15;
    s = s.wrapping_mul(0x2c1b_3c6d);
    s ^= s >> 12;
    (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
}

/// The KV v1 payload of positions `[0, seq)` of the synthetic context.
pub(crate) fn kv_payload(layers: u32, heads: u32, dim: u32, seq: u32, dtype: KvDtype) -> Vec<u8> {
    let header = KvHeader {
        num_layers: layers,
        num_kv_heads: heads,
        head_dim: dim,
        seq_len: seq,
        dtype,
    };
    let tensor = |layer: u32, part: u32| {
        let mut out = Vec::new();
        for h in 0..heads {
            for s in 0..seq {
                for c in 0..dim {
                    let x = value(layer, part, h, s, c);
                    match dtype {
                        KvDtype::Float16 => out.extend_from_slice(&f32_to_f16(x).to_le_bytes()),
                        KvDtype::Bfloat16 => out.extend_from_slice(&f32_to_bf16(x).to_le_bytes()),
                        _ => out.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
        }
        out
    };
    let tensors: Vec<(Vec<u8>, Vec<u8>)> =
        (0..layers).map(|l| (tensor(l, 0), tensor(l, 1))).collect();
    write_kv_cache(&header, tensors.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap()
}

/// A KV_CACHE message as `avp think` writes one (extra `model_hash`).
pub(crate) fn kv_message(payload: &[u8], dtype: KvDtype) -> Vec<u8> {
    let metadata = Metadata::new()
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(dtype.data_type())
        .with_model_id("synthetic")
        .with_session_id("s-1")
        .with_extra_entry("model_hash", MODEL_HASH);
    avp_codec::encode(&metadata, payload, Compression::None).unwrap()
}

/// Writes the synthetic context of `seq` positions as a message file.
pub(crate) fn context_file(
    dir: &Scratch,
    name: &str,
    seq: u32,
    dtype: KvDtype,
) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, kv_message(&kv_payload(2, 2, 64, seq, dtype), dtype)).unwrap();
    path
}

/// A KV_CACHE_EXT message around an extended payload (a corpus `.kvx` file, say).
pub(crate) fn ext_message(payload: &[u8], dtype: KvDtype) -> Vec<u8> {
    let metadata = Metadata::new()
        .with_payload_type(PayloadType::KvCacheExt)
        .with_dtype(dtype.data_type())
        .with_model_id("synthetic")
        .with_extra_entry("model_hash", MODEL_HASH);
    avp_codec::encode(&metadata, payload, Compression::None).unwrap()
}

//! Codec benchmarks (BENCHMARKS.md `## Codec`): `peek` on small and 256 MiB
//! messages, small-message decode, 256 MiB KV decode+verify, and encode.
//!
//! Run: `cargo bench -p avp-codec --bench codec`. `AVP_BENCH_KV_MIB` changes
//! the large message size (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::hint::black_box;

use avp_codec::kv::{KvDtype, KvHeader, write_kv_cache};
use avp_codec::{
    Compression, DataType, DecodeOptions, EncodeOptions, Metadata, PayloadType, decode,
    decode_with, encode, encode_into_with, encode_prefix, encode_with, peek,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn small_message() -> Vec<u8> {
    let mut m = Metadata::new()
        .with_session_id(Cow::Borrowed("sess-0123456789"))
        .with_source_agent_id(Cow::Borrowed("agent-a"))
        .with_target_agent_id(Cow::Borrowed("agent-b"))
        .with_model_id(Cow::Borrowed("Qwen/Qwen2.5-0.5B-Instruct"))
        .with_hidden_dim(896)
        .with_num_layers(24)
        .with_dtype(DataType::Float32)
        .with_tensor_shape(vec![1, 896]);
    m.extra.insert(Cow::Borrowed("k"), Cow::Borrowed("v"));
    let tensor: Vec<u8> = (0..896u32)
        .flat_map(|i| (i as f32 * 0.001).to_le_bytes())
        .collect();
    encode(&m, &tensor, Compression::None).unwrap()
}

/// A KV cache of about `mib` MiB (f16, 8 heads, head_dim 64, 24 layers).
pub fn kv_message(mib: usize) -> (Metadata<'static>, Vec<u8>) {
    let per_token = 24 * 2 * 8 * 64 * 2;
    let seq_len = (mib << 20) / per_token;
    let h = KvHeader {
        num_layers: 24,
        num_kv_heads: 8,
        head_dim: 64,
        seq_len: seq_len as u32,
        dtype: KvDtype::Float16,
    };
    let per = h.tensor_bytes().unwrap() as usize;
    let tensor: Vec<u8> = (0..per).map(|i| (i * 31 % 251) as u8).collect();
    let kv = write_kv_cache(&h, (0..24).map(|_| (tensor.as_slice(), tensor.as_slice()))).unwrap();
    let m = Metadata::new()
        .with_model_id(Cow::Borrowed("bench"))
        .with_num_layers(24)
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(DataType::Float16);
    (m, kv)
}

fn benches(c: &mut Criterion) {
    let mib: usize = std::env::var("AVP_BENCH_KV_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let small = small_message();
    let (meta, kv) = kv_message(mib);
    let big = encode(&meta, &kv, Compression::None).unwrap();
    // BENCHMARKS.md measures the large cases with threads, which the codec
    // now uses only on request (AVP-API-4): opt in as the CLI does.
    let threaded_decode = DecodeOptions::DEFAULT.with_checksum_threads(0);
    let threaded_encode = EncodeOptions::DEFAULT.with_threads(0);

    let mut g = c.benchmark_group("peek");
    g.bench_function("small", |b| b.iter(|| peek(black_box(&small)).unwrap()));
    g.bench_function(format!("kv_{mib}MiB"), |b| {
        b.iter(|| peek(black_box(&big)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("small", |b| b.iter(|| decode(black_box(&small)).unwrap()));
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.sample_size(10);
    g.bench_function(format!("kv_{mib}MiB_verify"), |b| {
        b.iter(|| decode_with(black_box(&big), &threaded_decode).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.sample_size(10);
    g.bench_function(format!("kv_{mib}MiB"), |b| {
        b.iter(|| encode_with(black_box(&meta), black_box(&kv), &threaded_encode).unwrap())
    });
    let mut reused = Vec::new();
    g.bench_function(format!("kv_{mib}MiB_into_reused_buffer"), |b| {
        b.iter(|| {
            encode_into_with(
                black_box(&meta),
                black_box(&kv),
                &threaded_encode,
                &mut reused,
            )
            .unwrap()
        })
    });
    g.bench_function(format!("kv_{mib}MiB_prefix_only"), |b| {
        b.iter(|| encode_prefix(black_box(&meta), black_box(&kv)).unwrap())
    });
    g.finish();
}

criterion_group!(codec, benches);
criterion_main!(codec);

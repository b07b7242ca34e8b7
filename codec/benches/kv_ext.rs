//! Quantized and delta KV throughput on a 256 MiB float16 context (32 layers,
//! 8 KV heads, head_dim 128, 2048 tokens): quantize+encode and
//! decode+dequantize for int8, int4 and int8-channel (targets: 2 GB/s on one core), and
//! delta assembly of the second half onto the first (target: 5 GB/s).
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_delta::{assemble_into, assembled_len, prefix_address};
use avp_codec::kv_quant::{KvExt, QuantParams, encode_ext, encode_ext_into, f32_to_f16};
use avp_codec::{
    Compression, DataType, Metadata, PayloadType, decode, encode, encode_into, encode_prefix,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const LAYERS: u32 = 32;
const HEADS: u32 = 8;
const DIM: u32 = 128;
const SEQ: u32 = 2048;

fn context() -> Vec<u8> {
    let header = KvHeader {
        num_layers: LAYERS,
        num_kv_heads: HEADS,
        head_dim: DIM,
        seq_len: SEQ,
        dtype: KvDtype::Float16,
    };
    let n = (HEADS * DIM * SEQ) as usize;
    let tensor: Vec<u8> = (0..n)
        .flat_map(|i| f32_to_f16(((i * 7919) % 2003) as f32 / 500.0 - 2.0).to_le_bytes())
        .collect();
    write_kv_cache(&header, (0..LAYERS).map(|_| (&tensor[..], &tensor[..]))).unwrap()
}

fn metadata() -> Metadata<'static> {
    Metadata::new()
        .with_payload_type(PayloadType::KvCacheExt)
        .with_dtype(DataType::Float16)
}

fn bench(c: &mut Criterion) {
    let raw = context();
    let kv = KvCache::parse(&raw).unwrap();
    let mut g = c.benchmark_group("kv_ext_256MiB_f16");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(raw.len() as u64));
    for (name, params) in [
        ("int8", QuantParams::INT8),
        ("int4", QuantParams::INT4),
        ("int8-channel", QuantParams::INT8_CHANNEL),
    ] {
        // Steady state of a sender: both buffers reused (a fresh 100+ MiB
        // buffer costs a page fault per 4 KiB, measured separately below).
        let (mut q, mut msg) = (Vec::new(), Vec::new());
        g.bench_function(format!("{name}_quantize_encode"), |b| {
            b.iter(|| {
                encode_ext_into(&kv, &params, 0, None, &mut q).unwrap();
                encode_into(&metadata(), &q, Compression::None, &mut msg).unwrap();
                black_box(&msg);
            })
        });
        // A transport that writes header+metadata and the payload with
        // vectored I/O (encode_prefix) never copies the quantized payload.
        g.bench_function(format!("{name}_quantize_encode_prefix"), |b| {
            b.iter(|| {
                encode_ext_into(&kv, &params, 0, None, &mut q).unwrap();
                black_box(encode_prefix(&metadata(), &q).unwrap());
                black_box(&q);
            })
        });
        g.bench_function(format!("{name}_quantize_encode_fresh_buffers"), |b| {
            b.iter(|| {
                let q = encode_ext(&kv, &params, 0, None).unwrap();
                black_box(encode(&metadata(), &q, Compression::None).unwrap())
            })
        });
        let message = encode(
            &metadata(),
            &encode_ext(&kv, &params, 0, None).unwrap(),
            Compression::None,
        )
        .unwrap();
        let mut out = vec![0u8; raw.len()];
        g.bench_function(format!("{name}_decode_dequantize"), |b| {
            b.iter(|| {
                let m = decode(&message).unwrap();
                let ext = KvExt::parse(&m.payload).unwrap();
                ext.dequantize_into(&mut out).unwrap();
                black_box(&out);
            })
        });
    }
    let address = prefix_address(&kv, SEQ / 2, "bench").unwrap();
    let delta = encode_ext(&kv, &QuantParams::NONE, SEQ / 2, Some(&address)).unwrap();
    let ext = KvExt::parse(&delta).unwrap();
    let mut out = vec![0u8; assembled_len(&ext) as usize];
    g.bench_function("delta_assemble_into", |b| {
        b.iter(|| {
            assemble_into(&kv, &address, &ext, &mut out).unwrap();
            black_box(&out);
        })
    });
    // What this machine's memory does at all: the ceiling for assembly.
    let mut copy = vec![0u8; raw.len()];
    g.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            copy.copy_from_slice(&raw);
            black_box(&copy);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Prints the tables of BENCHMARKS.md's section "Compact contexts (issue 17)":
//! stored bytes against the float16 context (with and without zstd), the
//! relative reconstruction error per layer (K and V apart) on the engine
//! fixtures' KV and on synthetic KV with outlier key channels, and, with
//! `--speed`, the on-CPU throughput of the 256 MiB criterion workload
//! (thread CPU time from /proc/thread-self/schedstat, so a busy shared
//! machine does not deflate it; wall time printed beside it).
//!
//! Usage (from the repository root):
//! `cargo run --release -p avp-codec --features kv-delta,zstd --example kv_ext_tables [-- --speed]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::time::Instant;

use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_delta::{assemble_into, assembled_len, prefix_address};
use avp_codec::kv_quant::{
    KvExt, KvScheme, LayerError, QuantParams, ScaleDtype, encode_ext, encode_ext_into, f32_to_f16,
    relative_errors,
};
use avp_codec::{
    Compression, DataType, Metadata, PayloadType, decode, encode, encode_into, encode_prefix,
};

/// A deterministic normal sample stream (xorshift64* and Box-Muller).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Key channels that are `factor` times the others (real models have a few
/// per head; KIVI's reason to group keys per channel).
const OUTLIERS: [(usize, f32); 4] = [(7, 10.0), (33, 20.0), (70, 35.0), (101, 50.0)];

/// A float16 KV v1 payload: keys N(0,1) plus a per-channel offset, the
/// `outliers` channels scaled up; values N(0,1) times a per-token scale.
fn synthetic(layers: u32, heads: u32, dim: u32, seq: u32, outliers: &[(usize, f32)]) -> Vec<u8> {
    let header = KvHeader {
        num_layers: layers,
        num_kv_heads: heads,
        head_dim: dim,
        seq_len: seq,
        dtype: KvDtype::Float16,
    };
    let mut rng = Normal(0x9e37_79b9_7f4a_7c15);
    let d = dim as usize;
    let mut tensors = Vec::new();
    for _ in 0..layers {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for _ in 0..heads {
            let offset: Vec<f32> = (0..d).map(|_| rng.next() * 0.5).collect();
            let mut magnitude = vec![1.0f32; d];
            for &(c, f) in outliers {
                magnitude[c % d] = f;
            }
            for _ in 0..seq {
                let token_scale = 0.5 + rng.uniform() as f32;
                for c in 0..d {
                    let key = magnitude[c] * (rng.next() + offset[c]);
                    k.extend_from_slice(&f32_to_f16(key).to_le_bytes());
                    let value = token_scale * rng.next();
                    v.extend_from_slice(&f32_to_f16(value).to_le_bytes());
                }
            }
        }
        tensors.push((k, v));
    }
    write_kv_cache(&header, tensors.iter().map(|(k, v)| (&k[..], &v[..]))).unwrap()
}

/// The same context with each layer's keys also in the value slot: the V
/// error of int4 is then the error of keys grouped per token.
fn keys_as_values(kv: &KvCache<'_>) -> Vec<u8> {
    write_kv_cache(
        &kv.header,
        kv.layers().map(|l| (l.key.bytes(), l.key.bytes())),
    )
    .unwrap()
}

fn message(payload: &[u8], ext: bool, compression: Compression) -> usize {
    let kind = if ext {
        PayloadType::KvCacheExt
    } else {
        PayloadType::KvCache
    };
    let meta = Metadata::new()
        .with_payload_type(kind)
        .with_dtype(DataType::Float16);
    encode(&meta, payload, compression).unwrap().len()
}

fn int8(group: u32) -> QuantParams {
    QuantParams {
        group_size: group,
        ..QuantParams::INT8
    }
}

fn int4(group: u32, scale_dtype: ScaleDtype) -> QuantParams {
    QuantParams {
        group_size: group,
        scale_dtype,
        ..QuantParams::INT4
    }
}

fn int8ch(group: u32) -> QuantParams {
    QuantParams {
        group_size: group,
        ..QuantParams::INT8_CHANNEL
    }
}

fn label(p: &QuantParams) -> String {
    let sd = match p.scale_dtype {
        ScaleDtype::F32 => "f32",
        _ => "f16",
    };
    format!("{} g={} {sd} scales", p.scheme.name(), p.group_size)
}

fn sizes() {
    let raw = synthetic(4, 8, 128, 1024, &OUTLIERS);
    let kv = KvCache::parse(&raw).unwrap();
    println!("### Stored bytes against the float16 context");
    println!();
    println!("Synthetic float16 context: 4 layers x 8 KV heads x head_dim 128 x 1024 tokens");
    println!(
        "({} payload bytes). zstd: the message encoded with `Compression::Balanced`",
        raw.len()
    );
    println!("(level 3), against the uncompressed float16 message.");
    println!();
    println!("| storage | payload bytes | x float16 | message + zstd bytes | x float16 message |");
    println!("|---|---:|---:|---:|---:|");
    let base_msg = message(&raw, false, Compression::None);
    let zstd_f16 = message(&raw, false, Compression::Balanced);
    println!(
        "| float16 (KV v1) | {} | 1.000 | {zstd_f16} | {:.3} |",
        raw.len(),
        zstd_f16 as f64 / base_msg as f64
    );
    for p in [
        int8(64),
        int8(32),
        QuantParams {
            scale_dtype: ScaleDtype::F32,
            ..int8(64)
        },
        int4(32, ScaleDtype::F16),
        int4(64, ScaleDtype::F16),
        int4(32, ScaleDtype::F32),
        int8ch(64),
        int8ch(32),
    ] {
        let q = encode_ext(&kv, &p, 0, None).unwrap();
        let z = message(&q, true, Compression::Balanced);
        println!(
            "| {} | {} | {:.3} | {z} | {:.3} |",
            label(&p),
            q.len(),
            q.len() as f64 / raw.len() as f64,
            z as f64 / base_msg as f64
        );
    }
    println!();
}

/// int8-channel's size on a context of a real model's shape at lengths a
/// handoff meets: the last key group of a channel takes the tokens left
/// over (AVP-KVQ-31), against keeping them as a float16 residual.
fn realistic_sizes() {
    println!("### int8-channel on a realistic context: size at any length");
    println!();
    println!("Qwen2.5-0.5B's KV shape (24 layers x 2 KV heads x head_dim 64), float16, synthetic");
    println!("values as above. \"int8-channel\": `QuantParams::int8_channel_for(64)` (g = 64, no");
    println!(
        "residual; the last key group of a channel is shorter when 64 does not divide the length)."
    );
    println!(
        "\"leftover residual\": g = 64 with the `t mod 64` leftover tokens kept in float16 instead"
    );
    println!("(still valid, AVP-KVQ-30). Payload bytes against the float16 KV v1 payload.");
    println!();
    println!(
        "| tokens | int8 g=64 f16 | int8-channel | x float16 | leftover residual r | x float16 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for seq in [
        1, 64, 100, 128, 200, 256, 300, 320, 384, 450, 500, 512, 1000, 1024, 2048,
    ] {
        let raw = synthetic(24, 2, 64, seq, &OUTLIERS);
        let kv = KvCache::parse(&raw).unwrap();
        let ratio =
            |p: &QuantParams| encode_ext(&kv, p, 0, None).unwrap().len() as f64 / raw.len() as f64;
        let fitted = QuantParams::int8_channel_for(64);
        let leftover = QuantParams {
            residual: seq % 64,
            ..int8ch(64)
        };
        println!(
            "| {seq} | {:.3} | g {}, r {} | {:.3} | {} | {:.3} |",
            ratio(&int8(64)),
            fitted.group_size,
            fitted.residual,
            ratio(&fitted),
            leftover.residual,
            ratio(&leftover)
        );
    }
    println!();
}

fn errors(kv: &KvCache<'_>, p: &QuantParams) -> Vec<LayerError> {
    let q = encode_ext(kv, p, 0, None).unwrap();
    relative_errors(&KvExt::parse(&q).unwrap(), kv).unwrap()
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn synthetic_errors() {
    println!("### Reconstruction error, synthetic KV with outlier key channels");
    println!();
    println!(
        "`||x^ - x|| / ||x||` per layer. Same context as above: key channels 7, 33, 70 and 101"
    );
    println!("of every head are 10, 20, 35 and 50 times the others (plus a per-channel offset);");
    println!("values N(0,1) times a per-token scale. int8 groups along head_dim per token");
    println!("(AVP-KVQ-5); int4 and int8-channel (AVP-KVQ-30..32) group keys per channel over g");
    println!("tokens and values per token (KIVI). \"int4 keys per");
    println!(
        "token\" quantizes the keys the way int4 quantizes values (per token over g channels),"
    );
    println!("to show why the format groups keys per channel.");
    println!();
    let raw = synthetic(4, 8, 128, 1024, &OUTLIERS);
    let kv = KvCache::parse(&raw).unwrap();
    let swapped = keys_as_values(&kv);
    let kk = KvCache::parse(&swapped).unwrap();
    let plain_raw = synthetic(4, 8, 128, 1024, &[]);
    let plain = KvCache::parse(&plain_raw).unwrap();
    let plain_kk_raw = keys_as_values(&plain);
    let plain_kk = KvCache::parse(&plain_kk_raw).unwrap();
    let layers = kv.header.num_layers as usize;
    print!("| storage | tensor, grouping |");
    for l in 0..layers {
        print!(" layer {l} |");
    }
    println!(" no outliers, layer 0 |");
    println!("|---|---|{}---:|", "---:|".repeat(layers));
    let rows: [(QuantParams, &str, bool, bool); 14] = [
        (int8(64), "K, per token (64 channels)", false, false),
        (int8(32), "K, per token (32 channels)", false, false),
        (int8(16), "K, per token (16 channels)", false, false),
        (int8(64), "V, per token (64 channels)", true, false),
        (int8ch(64), "K, per channel (64 tokens)", false, false),
        (int8ch(32), "K, per channel (32 tokens)", false, false),
        (int8ch(64), "K, per token (64 channels)", true, true),
        (int8ch(64), "V, per token (64 channels)", true, false),
        (
            int4(32, ScaleDtype::F16),
            "K, per channel (32 tokens)",
            false,
            false,
        ),
        (
            int4(32, ScaleDtype::F16),
            "K, per token (32 channels)",
            true,
            true,
        ),
        (
            int4(32, ScaleDtype::F16),
            "V, per token (32 channels)",
            true,
            false,
        ),
        (
            int4(64, ScaleDtype::F16),
            "K, per channel (64 tokens)",
            false,
            false,
        ),
        (
            int4(64, ScaleDtype::F16),
            "K, per token (64 channels)",
            true,
            true,
        ),
        (
            int4(64, ScaleDtype::F16),
            "V, per token (64 channels)",
            true,
            false,
        ),
    ];
    for (p, what, value_column, keys_in_values) in rows {
        let (outlier, clean) = if keys_in_values {
            (&kk, &plain_kk)
        } else {
            (&kv, &plain)
        };
        let pick = |e: &LayerError| if value_column { e.value } else { e.key };
        print!("| {} | {what} |", label(&p));
        for e in errors(outlier, &p) {
            print!(" {} |", pct(pick(&e)));
        }
        println!(" {} |", pct(pick(&errors(clean, &p)[0])));
    }
    println!();
}

/// The engine fixtures' KV exports (float32, from the SDK): one per model.
const FIXTURES: [&str; 6] = [
    "engine/testdata/expected/trained/chain_a_3_refiner.avp",
    "engine/testdata/expected/qwen2/think_chain_ascii_s2_followup_s3.avp",
    "engine/testdata/expected/qwen3/think_unicode_s4.avp",
    "engine/testdata/expected/llama_untied/think_chain_ascii_s2_followup_s3.avp",
    "engine/testdata/expected/llama_tied/think_chain_ascii_s2_followup_s3.avp",
    "engine/testdata/expected/mistral/think_chain_ascii_s2_followup_s3.avp",
];

fn fixture_errors() {
    println!("### Reconstruction error, engine fixtures' KV");
    println!();
    println!(
        "KV-caches the SDK exported from the engine fixture models (engine/testdata/expected/,"
    );
    println!(
        "float32; tiny models, `trained` is the trained one). int8 with g = head_dim (<= 64, f32"
    );
    println!("scales). int4 needs g = 32 or 64 dividing head_dim (AVP-KVQ-4): these models have");
    println!("head_dim 8 to 16, so int4 does not apply to them. int8-channel with the fitted");
    println!("parameters (`QuantParams::int8_channel_for(head_dim)`: g = head_dim up to 64, no");
    println!("residual: every token is quantized).");
    println!();
    println!(
        "| fixture | layers x heads x head_dim x tokens | layer | int8 K | int8 V | int8-channel g, r | int8-channel K | int8-channel V |"
    );
    println!("|---|---|---:|---:|---:|---|---:|---:|");
    for path in FIXTURES {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("{path}: {e} (run from the repository root)"));
        let msg = decode(&bytes).unwrap();
        let kv = KvCache::parse(&msg.payload).unwrap();
        let h = kv.header;
        let p = int8(h.head_dim.min(64));
        let name = path.trim_start_matches("engine/testdata/expected/");
        let ch = QuantParams::int8_channel_for(h.head_dim);
        let ch_errors = errors(&kv, &ch);
        for (l, (e, c)) in errors(&kv, &p).iter().zip(&ch_errors).enumerate() {
            println!(
                "| {name} | {} x {} x {} x {} | {l} | {} | {} | {}, {} | {} | {} |",
                h.num_layers,
                h.num_kv_heads,
                h.head_dim,
                h.seq_len,
                pct(e.key),
                pct(e.value),
                ch.group_size,
                ch.residual,
                pct(c.key),
                pct(c.value)
            );
        }
    }
    println!();
}

/// Nanoseconds this thread has run (first field of schedstat).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Best CPU and wall seconds of one call over `runs` calls.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm: buffers sized, pages faulted in
    let (mut cpu, mut wall) = (f64::MAX, f64::MAX);
    for _ in 0..runs {
        let (c, w) = (cpu_ns(), Instant::now());
        f();
        wall = wall.min(w.elapsed().as_secs_f64());
        cpu = cpu.min((cpu_ns() - c) as f64 / 1e9);
    }
    (cpu, wall)
}

fn speed() {
    // The criterion workload (codec/benches/kv_ext.rs): 32 x 8 x 128 x 2048, float16.
    let raw = synthetic(32, 8, 128, 2048, &OUTLIERS);
    let kv = KvCache::parse(&raw).unwrap();
    let gb = raw.len() as f64 / 1e9;
    let meta = Metadata::new()
        .with_payload_type(PayloadType::KvCacheExt)
        .with_dtype(DataType::Float16);
    println!("### On-CPU speed, 256 MiB float16 context, one thread");
    println!();
    println!("| operation | CPU ms | GB/s (CPU time) | wall ms | GB/s (wall) |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, (cpu, wall): (f64, f64)| {
        println!(
            "| {name} | {:.1} | {:.2} | {:.1} | {:.2} |",
            cpu * 1e3,
            gb / cpu,
            wall * 1e3,
            gb / wall
        );
    };
    for p in [
        QuantParams::INT8,
        QuantParams::INT4,
        QuantParams::INT8_CHANNEL,
    ] {
        let (mut q, mut msg) = (Vec::new(), Vec::new());
        row(
            &format!("{} quantize + encode", p.scheme.name()),
            time(5, || {
                encode_ext_into(&kv, &p, 0, None, &mut q).unwrap();
                encode_into(&meta, &q, Compression::None, &mut msg).unwrap();
                black_box(&msg);
            }),
        );
        row(
            &format!(
                "{} quantize + encode_prefix (payload not copied)",
                p.scheme.name()
            ),
            time(5, || {
                encode_ext_into(&kv, &p, 0, None, &mut q).unwrap();
                black_box(encode_prefix(&meta, &q).unwrap());
            }),
        );
        let mut out = vec![0u8; raw.len()];
        row(
            &format!("{} decode + dequantize", p.scheme.name()),
            time(5, || {
                let m = decode(&msg).unwrap();
                KvExt::parse(&m.payload)
                    .unwrap()
                    .dequantize_into(&mut out)
                    .unwrap();
                black_box(&out);
            }),
        );
    }
    let address = prefix_address(&kv, 1024, "bench").unwrap();
    let delta = encode_ext(&kv, &QuantParams::NONE, 1024, Some(&address)).unwrap();
    let ext = KvExt::parse(&delta).unwrap();
    assert_eq!(ext.header.scheme, KvScheme::None);
    let mut out = vec![0u8; assembled_len(&ext) as usize];
    row(
        "delta assembly (1024 + 1024 tokens)",
        time(5, || {
            assemble_into(&kv, &address, &ext, &mut out).unwrap();
            black_box(&out);
        }),
    );
    let mut copy = vec![0u8; raw.len()];
    row(
        "memcpy of the context (ceiling)",
        time(5, || {
            copy.copy_from_slice(&raw);
            black_box(&copy);
        }),
    );
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--speed") {
        speed();
        return;
    }
    sizes();
    realistic_sizes();
    synthetic_errors();
    fixture_errors();
}

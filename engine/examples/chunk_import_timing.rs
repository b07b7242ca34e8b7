//! Time to the first imported layer versus time to the whole context, for a
//! context of any size sent as one message or as chunks (issue 18,
//! spec/impl/engine.md AVP-ENG-40..42). Prints one JSON line.
//!
//! The model is a random-weight Qwen3 built from the `qwen3` fixture's
//! tokenizer with a config of `LAYERS` layers, 8 KV heads of 128 (the KV shape
//! of an 8B-class model); the context is `SEQ` positions of synthetic float32
//! K/V (2·L·8·128·SEQ·4 bytes: 32 layers × 4096 positions = 1 GiB). Both
//! files are written once, then each import runs `REPEATS` times from the
//! page cache; best of the repeats.
//!
//! `cargo run --release -p avp-engine --example chunk_import_timing -- [LAYERS SEQ CHUNK_MIB REPEATS]`
//! (defaults 32 4096 64 3).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use avp_engine::chunked::write_chunks;
use avp_engine::wire::{KV_HEADER_LEN, KvDtype, KvHeader, PayloadKind, WireMeta, encode_message};
use avp_engine::{ChunkOptions, Engine, LoadOptions, WeightSource};

const KV_HEADS: u32 = 8;
const HEAD_DIM: u32 = 128;

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// A model directory: the qwen3 fixture's tokenizer, a config of `layers`
/// layers with the KV shape above (weights are random, AVP-ENG-19).
fn model_dir(root: &Path, layers: u32, seq: u32) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models/qwen3");
    let dir = root.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 256,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": KV_HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": seq + 1024,
        "vocab_size": 400,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "tie_word_embeddings": false,
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

/// The KV v1 payload of a synthetic context: small finite float32 values
/// from a xorshift generator (no NaN, so every byte pattern is a value).
fn synthetic_payload(layers: u32, seq: u32) -> Vec<u8> {
    let header = KvHeader {
        num_layers: layers,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        seq_len: seq,
        dtype: KvDtype::Float32,
    };
    let total = usize::try_from(header.total_bytes().unwrap()).unwrap();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.to_bytes());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
        out.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(out.len() - KV_HEADER_LEN, total - KV_HEADER_LEN);
    out
}

fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let layers = args.first().copied().unwrap_or(32);
    let seq = args.get(1).copied().unwrap_or(4096);
    let chunk_mib = u64::from(args.get(2).copied().unwrap_or(64));
    let repeats = args.get(3).copied().unwrap_or(3) as usize;
    let root = std::env::temp_dir().join(format!("avp-chunk-timing-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let dir = model_dir(&root, layers, seq);
    let opts = LoadOptions {
        weights: WeightSource::Random { seed: 0 },
        cache_dir: None,
        ..LoadOptions::default()
    };
    let engine = Engine::load(&dir, &opts).unwrap();

    // One plain message and one chunked file of the same context.
    let plain_path = root.join("plain.avp");
    let chunked_path = root.join("chunked.avp");
    let extra: BTreeMap<String, String> = [
        ("model_family", "qwen3"),
        ("model_hash", engine.model_hash()),
        ("num_steps", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let meta = WireMeta {
        hidden_dim: 256,
        num_layers: layers,
        payload: PayloadKind::KvCache,
        dtype: KvDtype::Float32,
        tensor_shape: Vec::new(),
        avp_map_id: String::new(),
        extra,
    };
    let message = encode_message(&meta, &synthetic_payload(layers, seq)).unwrap();
    let kv_bytes = message.len();
    std::fs::write(&plain_path, &message).unwrap();
    let ctx = engine.import_context(&message, 0).unwrap();
    drop(message);
    let t = Instant::now();
    let export_plain_len = ctx.to_bytes().unwrap().len();
    let export_plain_s = t.elapsed().as_secs_f64();
    assert_eq!(export_plain_len, kv_bytes);
    let t = Instant::now();
    let mut file = BufWriter::with_capacity(1 << 20, std::fs::File::create(&chunked_path).unwrap());
    let summary = write_chunks(
        &ctx,
        &ChunkOptions::new(chunk_mib << 20),
        &|_| {},
        &mut |parts| {
            for p in parts {
                file.write_all(p).unwrap();
            }
            Ok(())
        },
    )
    .unwrap();
    file.flush().unwrap();
    drop(file);
    let export_chunked_s = t.elapsed().as_secs_f64();
    drop(ctx);

    let (mut plain, mut first, mut whole, mut alloc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        // Part of both imports: allocating (zeroing) the whole cache.
        let t = Instant::now();
        drop(engine.model().new_cache(seq as usize).unwrap());
        alloc.push(t.elapsed().as_secs_f64());
        // One message: nothing is usable before all of it is read and checked.
        let t = Instant::now();
        let bytes = std::fs::read(&plain_path).unwrap();
        let ctx = engine.import_context(&bytes, 0).unwrap();
        plain.push(t.elapsed().as_secs_f64());
        drop((bytes, ctx));
        // Chunks: the first layers are on the device after the first chunk.
        let t = Instant::now();
        let mut first_at = None;
        let mut reader =
            BufReader::with_capacity(1 << 20, std::fs::File::open(&chunked_path).unwrap());
        let ctx = engine
            .import_chunk_stream(&mut reader, 0, &mut |p| {
                if first_at.is_none() && p.layers > 0 {
                    first_at = Some(t.elapsed().as_secs_f64());
                }
            })
            .unwrap();
        whole.push(t.elapsed().as_secs_f64());
        first.push(first_at.unwrap());
        assert_eq!(ctx.seq_len(), seq as usize);
        drop(ctx);
    }
    std::fs::remove_dir_all(&root).unwrap();
    println!(
        "{{\"layers\":{layers},\"seq_len\":{seq},\"kv_message_bytes\":{kv_bytes},\"chunks\":{},\"chunked_bytes\":{},\"chunk_mib\":{chunk_mib},\"export_plain_s\":{export_plain_s:.3},\"export_chunked_s\":{export_chunked_s:.3},\"cache_alloc_s\":{:.3},\"plain_import_s\":{:.3},\"chunked_first_layer_s\":{:.3},\"chunked_whole_s\":{:.3},\"repeats\":{repeats}}}",
        summary.count,
        summary.bytes,
        best(&alloc),
        best(&plain),
        best(&first),
        best(&whole)
    );
}

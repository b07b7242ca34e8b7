//! Time to the first imported layer versus time to the whole context, for a
//! context of any size sent as one message or as chunks (issue 18,
//! spec/impl/engine.md AVP-ENG-40..42). Prints one JSON line.
//!
//! The model is a random-weight Qwen3 built from the `qwen3` fixture's
//! tokenizer with a config of `LAYERS` layers, 8 KV heads of 128 (the KV shape
//! of an 8B-class model); the context is `SEQ` positions of synthetic float32
//! K/V (2·L·8·128·SEQ·4 bytes: 32 layers × 4096 positions = 1 GiB). Both
//! files are written once, then each import runs `REPEATS` times from the
//! page cache; best of the repeats. Each time comes with the process's CPU
//! time over the same span (user + system, from `/proc/self/stat`; `-1`
//! where that file is missing), so a loaded box can be told from slow code.
//! The chunked export runs into the file, then twice into a sink that drops
//! the bytes (`_nowrite`: the engine's work without the page cache's): from
//! the cache whose filled positions fill it (`seq_len == capacity`, every
//! chunk one contiguous slice) and from one imported with 1024 positions of
//! headroom (each head's run copied apart); all three give the same chunks. `export_chunked_peak_rss_mib` is how far
//! the export raised the peak RSS above the RSS it started with (Linux's
//! `clear_refs`; `-1` where unavailable): the chunk buffer, not the context.
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

/// CPU seconds (user + system) this process has used; -1 without procfs.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name's ')': field 3 (state) onwards; utime and
    // stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) as f64 / 100.0,
        _ => -1.0,
    }
}

/// `(VmRSS, VmHWM)` in MiB from `/proc/self/status`; `None` without procfs.
fn rss_mib() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// Writes `ctx` as a chunked file at `path`, or into a sink that drops
/// the bytes (the engine's work alone, without the page cache's) for
/// `None`; (wall s, CPU s, peak RSS growth in MiB or -1).
fn export_chunked(
    ctx: &avp_engine::LatentContext,
    path: Option<&Path>,
    chunk_mib: u64,
) -> (f64, f64, f64, avp_engine::ChunkSummary) {
    // "5" resets the peak RSS to the current RSS (Linux >= 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = rss_mib();
    let (t, cpu) = (Instant::now(), cpu_s());
    let mut file: Box<dyn Write> = match path {
        Some(path) => Box::new(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path).unwrap(),
        )),
        None => Box::new(std::io::sink()),
    };
    let summary = write_chunks(
        ctx,
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
    let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_s() - cpu);
    let peak = match (reset, rss_before, rss_mib()) {
        (true, Some((before, _)), Some((_, hwm))) => hwm - before,
        _ => -1.0,
    };
    (wall, cpu, peak, summary)
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
    let (t, cpu) = (Instant::now(), cpu_s());
    let export_plain_len = ctx.to_bytes().unwrap().len();
    let (export_plain_s, export_plain_cpu_s) = (t.elapsed().as_secs_f64(), cpu_s() - cpu);
    assert_eq!(export_plain_len, kv_bytes);
    let (export_chunked_s, export_chunked_cpu_s, export_peak_mib, summary) =
        export_chunked(&ctx, Some(&chunked_path), chunk_mib);
    let (export_engine_s, export_engine_cpu_s, _, again) = export_chunked(&ctx, None, chunk_mib);
    assert_eq!(again, summary);
    drop(ctx);
    // The same context in a cache with headroom: filled positions are no
    // longer one contiguous slice; the chunks (digest, sizes) must not change.
    let roomy = engine
        .import_context(&std::fs::read(&plain_path).unwrap(), 1024)
        .unwrap();
    assert!(roomy.cache.capacity() > roomy.seq_len());
    let (export_roomy_s, export_roomy_cpu_s, _, again) = export_chunked(&roomy, None, chunk_mib);
    assert_eq!(again, summary);
    drop(roomy);

    let (mut plain, mut first, mut whole, mut alloc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut plain_cpu, mut whole_cpu) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        // Part of both imports: allocating (zeroing) the whole cache.
        let t = Instant::now();
        drop(engine.model().new_cache(seq as usize).unwrap());
        alloc.push(t.elapsed().as_secs_f64());
        // One message: nothing is usable before all of it is read and checked.
        let (t, cpu) = (Instant::now(), cpu_s());
        let bytes = std::fs::read(&plain_path).unwrap();
        let ctx = engine.import_context(&bytes, 0).unwrap();
        plain.push(t.elapsed().as_secs_f64());
        plain_cpu.push(cpu_s() - cpu);
        drop((bytes, ctx));
        // Chunks: the first layers are on the device after the first chunk.
        let (t, cpu) = (Instant::now(), cpu_s());
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
        whole_cpu.push(cpu_s() - cpu);
        first.push(first_at.unwrap());
        assert_eq!(ctx.seq_len(), seq as usize);
        drop(ctx);
    }
    std::fs::remove_dir_all(&root).unwrap();
    println!(
        "{{\"layers\":{layers},\"seq_len\":{seq},\"kv_message_bytes\":{kv_bytes},\"chunks\":{},\"chunked_bytes\":{},\"chunk_mib\":{chunk_mib},\"export_plain_s\":{export_plain_s:.3},\"export_plain_cpu_s\":{export_plain_cpu_s:.2},\"export_chunked_s\":{export_chunked_s:.3},\"export_chunked_cpu_s\":{export_chunked_cpu_s:.2},\"export_chunked_peak_rss_mib\":{export_peak_mib:.0},\"export_chunked_nowrite_s\":{export_engine_s:.3},\"export_chunked_nowrite_cpu_s\":{export_engine_cpu_s:.2},\"export_chunked_headroom_nowrite_s\":{export_roomy_s:.3},\"export_chunked_headroom_nowrite_cpu_s\":{export_roomy_cpu_s:.2},\"cache_alloc_s\":{:.3},\"plain_import_s\":{:.3},\"plain_import_cpu_s\":{:.2},\"chunked_first_layer_s\":{:.3},\"chunked_whole_s\":{:.3},\"chunked_whole_cpu_s\":{:.2},\"repeats\":{repeats}}}",
        summary.count,
        summary.bytes,
        best(&alloc),
        best(&plain),
        best(&plain_cpu),
        best(&first),
        best(&whole),
        best(&whole_cpu)
    );
}

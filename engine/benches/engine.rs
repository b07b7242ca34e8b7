//! Engine benchmarks on a random-weights model of a real shape (Qwen2.5-0.5B:
//! 24 layers, hidden 896, GQA 14:2, vocab 151 936, tied), float32 on CPU:
//! latent think steps, KV export (to_bytes) and import.
//!
//! Run: `cargo bench -p avp-engine --bench engine` (results in BENCHMARKS.md).
//! The model directory is assembled in a temp dir from `benches/shapes/<name>/
//! config.json` plus a fixture tokenizer (token ids stay below the vocab size).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use avp_engine::{Device, Engine, Kind, LoadOptions, WeightSource};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn model_dir(shape: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("avp-bench-{shape}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root.join("benches/shapes").join(shape).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join("testdata/models/qwen2").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn bench_engine(c: &mut Criterion) {
    let shape = "qwen2.5-0.5b";
    let dir = model_dir(shape);
    let opts = LoadOptions {
        device: Device::Cpu,
        kind: Some(Kind::Float),
        weights: WeightSource::Random { seed: 0 },
        cache_dir: None,
        model_hash: None,
    };
    let engine = Engine::load(&dir, &opts).unwrap();
    let prompt = "What is 2+3? Answer briefly.";
    engine.projector().unwrap();

    let mut g = c.benchmark_group(format!("{shape}-f32-cpu"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(3));
    let steps = 20;
    g.throughput(Throughput::Elements(steps as u64));
    g.bench_function("think_20_steps", |b| {
        b.iter(|| engine.think(prompt, steps, None).unwrap())
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("think_0_steps_prefill", |b| {
        b.iter(|| engine.think(prompt, 0, None).unwrap())
    });

    let ctx = engine.think(prompt, steps, None).unwrap();
    let bytes = ctx.to_bytes().unwrap();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("kv_export_to_bytes", |b| b.iter(|| ctx.to_bytes().unwrap()));
    g.bench_function("kv_import", |b| {
        b.iter(|| engine.import_context(&bytes, 0).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_engine);
criterion_main!(benches);

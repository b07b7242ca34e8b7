//! Times think / KV export / KV import on one model directory and prints one
//! JSON line; engine/benches/side_by_side.py runs it next to the SDK.
//!
//! `cargo run --release -p avp-engine --example think_timing -- DIR STEPS REPEATS [cpu|cuda] [float32|bfloat16]`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::Instant;

use avp_engine::{Engine, LoadOptions, WeightSource, parse_device, parse_kind};

/// Best of the repeats: on a machine shared with other work the minimum is
/// the least disturbed measurement (the codec benchmarks do the same).
fn best(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(&args[1]);
    let steps: usize = args[2].parse().unwrap();
    let repeats: usize = args[3].parse().unwrap();
    let device = parse_device(args.get(4).map_or("cpu", String::as_str)).unwrap();
    let kind = parse_kind(args.get(5).map_or("float32", String::as_str)).unwrap();
    let t = Instant::now();
    let opts = LoadOptions {
        device,
        kind: Some(kind),
        weights: WeightSource::Checkpoint,
        cache_dir: None,
        model_hash: None,
    };
    let engine = Engine::load(&dir, &opts).unwrap();
    engine.projector().unwrap();
    let load_s = t.elapsed().as_secs_f64();
    let prompt = "What is 2+3? Answer briefly.";
    engine.think(prompt, steps, None).unwrap(); // warm-up
    let (mut think, mut export, mut import) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        let ctx = engine.think(prompt, steps, None).unwrap();
        think.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        bytes = ctx.to_bytes().unwrap();
        export.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        engine.import_context(&bytes, 0).unwrap();
        import.push(t.elapsed().as_secs_f64());
    }
    println!(
        "{{\"load_s\":{load_s},\"think_s\":{},\"export_s\":{},\"import_s\":{},\"kv_bytes\":{}}}",
        best(think),
        best(export),
        best(import),
        bytes.len()
    );
}

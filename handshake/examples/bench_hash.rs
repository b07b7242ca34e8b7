//! Timing helper for `scripts/bench_handshake_vs_sdk.py`: loads an input
//! once, then times only the hash, the way the script times the SDK's
//! `compute_*_hash` on an already-loaded object. Prints one JSON line.
//!
//! `bench_hash config FILE ITERS` / `bench_hash tokenizer FILE ITERS`
//!
//! Wall times are the fastest of ITERS runs; `*_cpu_s` is this thread's
//! CPU time per run, averaged over all ITERS (robust on a busy machine).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use avp_handshake::json;
use avp_handshake::{model_hash, tokenizer_hash, vocab_from_tokenizer_json};

/// The fastest sample: on a shared machine the least disturbed run (the
/// script takes the minimum on the SDK side too).
fn fastest(samples: Vec<Duration>) -> f64 {
    samples.into_iter().min().unwrap().as_secs_f64()
}

/// CPU time of this thread (Linux `/proc/thread-self/schedstat`, ns): on a
/// machine shared with other jobs it counts only the time we actually ran.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// (fastest wall time, mean thread-CPU time, last result).
fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let mut last = f();
    let mut wall = Vec::with_capacity(iters);
    let cpu_start = thread_cpu();
    for _ in 0..iters {
        let t = Instant::now();
        last = f();
        wall.push(t.elapsed());
    }
    let cpu = thread_cpu().saturating_sub(cpu_start).as_secs_f64() / iters as f64;
    (fastest(wall), cpu, last)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, file, iters) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let bytes = std::fs::read(file).unwrap();
    match what.as_str() {
        "config" => {
            let config = json::parse(&bytes).unwrap();
            let (hash_s, hash_cpu, hash) = time(iters, || model_hash(&config).unwrap());
            let (e2e_s, e2e_cpu, _) =
                time(iters, || model_hash(&json::parse(&bytes).unwrap()).unwrap());
            println!(
                r#"{{"hash":"{hash}","hash_only_s":{hash_s:e},"hash_only_cpu_s":{hash_cpu:e},"parse_and_hash_s":{e2e_s:e},"parse_and_hash_cpu_s":{e2e_cpu:e}}}"#
            );
        }
        "tokenizer" => {
            let doc = json::parse(&bytes).unwrap();
            let vocab = vocab_from_tokenizer_json(&doc).unwrap();
            let (hash_s, hash_cpu, hash) = time(iters, || tokenizer_hash(&vocab).unwrap());
            let (e2e_s, e2e_cpu, _) = time(iters, || {
                let doc = json::parse(&bytes).unwrap();
                tokenizer_hash(&vocab_from_tokenizer_json(&doc).unwrap()).unwrap()
            });
            println!(
                r#"{{"hash":"{hash}","vocab_size":{},"hash_only_s":{hash_s:e},"hash_only_cpu_s":{hash_cpu:e},"parse_and_hash_s":{e2e_s:e},"parse_and_hash_cpu_s":{e2e_cpu:e}}}"#,
                vocab.len()
            );
        }
        // For `perf record`: only the model hash, ITERS times.
        "config-hash-only" => {
            let config = json::parse(&bytes).unwrap();
            for _ in 0..iters {
                std::hint::black_box(model_hash(std::hint::black_box(&config)).unwrap());
            }
        }
        // For `perf stat`: only the hash, ITERS times.
        "tokenizer-hash-only" => {
            let vocab = vocab_from_tokenizer_json(&json::parse(&bytes).unwrap()).unwrap();
            for _ in 0..iters {
                std::hint::black_box(tokenizer_hash(&vocab).unwrap());
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

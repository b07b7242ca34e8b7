//! Timing helper for `scripts/bench_handshake_vs_sdk.py`: loads an input
//! once, then times only the hash, the way the script times the SDK's
//! `compute_*_hash` on an already-loaded object. Prints one JSON line.
//!
//! `bench_hash config FILE ITERS` / `bench_hash tokenizer FILE ITERS`
//!
//! Wall times are the fastest of ITERS runs; `*_cpu_s` is CPU time per
//! run, averaged over all ITERS (robust on a busy machine): this thread's,
//! except for `two_threads_*` (`tokenizer_hash_with_threads(.., 2)`),
//! which counts the whole process (both threads).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use avp_handshake::json;
use avp_handshake::{
    model_hash, tokenizer_hash, tokenizer_hash_with_threads, vocab_from_tokenizer_json,
};

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

/// CPU time of the whole process, every thread included, dead ones too
/// (`utime + stime` of `/proc/self/stat`, in 10 ms clock ticks: only for
/// runs long enough that a tick is a small error).
fn process_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line, 12 and 13 after the name.
    let after_name = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// (fastest wall time, mean CPU time by `cpu_clock`, last result).
fn time<T>(iters: usize, cpu_clock: fn() -> Duration, mut f: impl FnMut() -> T) -> (f64, f64, T) {
    let mut last = f();
    let mut wall = Vec::with_capacity(iters);
    let cpu_start = cpu_clock();
    for _ in 0..iters {
        let t = Instant::now();
        last = f();
        wall.push(t.elapsed());
    }
    let cpu = cpu_clock().saturating_sub(cpu_start).as_secs_f64() / iters as f64;
    (fastest(wall), cpu, last)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, file, iters) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let bytes = std::fs::read(file).unwrap();
    match what.as_str() {
        "config" => {
            let config = json::parse(&bytes).unwrap();
            let (hash_s, hash_cpu, hash) = time(iters, thread_cpu, || model_hash(&config).unwrap());
            let (e2e_s, e2e_cpu, _) = time(iters, thread_cpu, || {
                model_hash(&json::parse(&bytes).unwrap()).unwrap()
            });
            println!(
                r#"{{"hash":"{hash}","hash_only_s":{hash_s:e},"hash_only_cpu_s":{hash_cpu:e},"parse_and_hash_s":{e2e_s:e},"parse_and_hash_cpu_s":{e2e_cpu:e}}}"#
            );
        }
        "tokenizer" => {
            let doc = json::parse(&bytes).unwrap();
            let vocab = vocab_from_tokenizer_json(&doc).unwrap();
            let (hash_s, hash_cpu, hash) =
                time(iters, thread_cpu, || tokenizer_hash(&vocab).unwrap());
            let (two_s, two_cpu, two_hash) = time(iters, process_cpu, || {
                tokenizer_hash_with_threads(&vocab, 2).unwrap()
            });
            assert_eq!(two_hash, hash);
            let (e2e_s, e2e_cpu, _) = time(iters, thread_cpu, || {
                let doc = json::parse(&bytes).unwrap();
                tokenizer_hash(&vocab_from_tokenizer_json(&doc).unwrap()).unwrap()
            });
            println!(
                r#"{{"hash":"{hash}","vocab_size":{},"hash_only_s":{hash_s:e},"hash_only_cpu_s":{hash_cpu:e},"parse_and_hash_s":{e2e_s:e},"parse_and_hash_cpu_s":{e2e_cpu:e},"two_threads_s":{two_s:e},"two_threads_cpu_s":{two_cpu:e}}}"#,
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

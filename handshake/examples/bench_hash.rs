//! Timing helper for `scripts/bench_handshake_vs_sdk.py`: loads an input
//! once, then times only the hash, the way the script times the SDK's
//! `compute_*_hash` on an already-loaded object. Prints one JSON line.
//!
//! `bench_hash config FILE ITERS` / `bench_hash tokenizer FILE ITERS`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use avp_handshake::json;
use avp_handshake::{model_hash, tokenizer_hash, vocab_from_tokenizer_json};

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64()
}

fn time<T>(iters: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut last = f();
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        last = f();
        samples.push(t.elapsed());
    }
    (median(samples), last)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (what, file, iters) = (&args[1], &args[2], args[3].parse::<usize>().unwrap());
    let bytes = std::fs::read(file).unwrap();
    match what.as_str() {
        "config" => {
            let config = json::parse(&bytes).unwrap();
            let (hash_s, hash) = time(iters, || model_hash(&config).unwrap());
            let (e2e_s, _) = time(iters, || model_hash(&json::parse(&bytes).unwrap()).unwrap());
            println!(
                r#"{{"hash":"{hash}","hash_only_s":{hash_s:e},"parse_and_hash_s":{e2e_s:e}}}"#
            );
        }
        "tokenizer" => {
            let doc = json::parse(&bytes).unwrap();
            let vocab = vocab_from_tokenizer_json(&doc).unwrap();
            let (hash_s, hash) = time(iters, || tokenizer_hash(&vocab).unwrap());
            let (e2e_s, _) = time(iters, || {
                let doc = json::parse(&bytes).unwrap();
                tokenizer_hash(&vocab_from_tokenizer_json(&doc).unwrap()).unwrap()
            });
            println!(
                r#"{{"hash":"{hash}","vocab_size":{},"hash_only_s":{hash_s:e},"parse_and_hash_s":{e2e_s:e}}}"#,
                vocab.len()
            );
        }
        other => panic!("unknown mode {other}"),
    }
}

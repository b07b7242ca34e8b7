//! Timing driver for scripts/bench_codec_vs_sdk.py: times peek, decode and
//! encode on the message files the script wrote (with the SDK) and prints
//! one JSON line, so the SDK and this codec are measured in the same run.
//!
//! Usage: codec_timing BIG.avp SMALL.avp [REPEATS]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::hint::black_box;
use std::time::Instant;

use avp_codec::{Compression, decode, encode, encode_into, encode_prefix, peek};

/// Median seconds per call: `repeats` batches of `per_batch` calls.
fn median_secs(repeats: usize, per_batch: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let big = std::fs::read(&args[1]).expect("big message");
    let small = std::fs::read(&args[2]).expect("small message");
    let repeats: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(7);

    let peek_big = median_secs(repeats, 100_000, || {
        black_box(peek(black_box(&big)).unwrap());
    });
    let peek_small = median_secs(repeats, 100_000, || {
        black_box(peek(black_box(&small)).unwrap());
    });
    let decode_small = median_secs(repeats, 50_000, || {
        black_box(decode(black_box(&small)).unwrap());
    });
    let decode_big = median_secs(repeats, 1, || {
        black_box(decode(black_box(&big)).unwrap());
    });
    let msg = decode(&big).unwrap();
    let encode_big = median_secs(repeats, 1, || {
        black_box(encode(&msg.metadata, black_box(&msg.payload), Compression::None).unwrap());
    });
    let mut reused = Vec::new();
    let encode_into_big = median_secs(repeats, 1, || {
        encode_into(
            &msg.metadata,
            black_box(&msg.payload),
            Compression::None,
            &mut reused,
        )
        .unwrap();
    });
    let encode_prefix_big = median_secs(repeats, 1, || {
        black_box(encode_prefix(&msg.metadata, black_box(&msg.payload)).unwrap());
    });
    let decode_big_1t = median_secs(repeats, 1, || {
        let o = avp_codec::DecodeOptions::default().with_checksum_threads(1);
        black_box(avp_codec::decode_with(black_box(&big), &o).unwrap());
    });
    let again = encode(&msg.metadata, &msg.payload, Compression::None).unwrap();
    assert!(
        again == big,
        "re-encoding the SDK's message is not byte-identical"
    );
    println!(
        "{{\"peek_big_s\":{peek_big:e},\"peek_small_s\":{peek_small:e},\"decode_small_s\":{decode_small:e},\
         \"decode_big_s\":{decode_big:e},\"encode_big_s\":{encode_big:e},\
         \"encode_into_big_s\":{encode_into_big:e},\"encode_prefix_big_s\":{encode_prefix_big:e},\
         \"decode_big_1t_s\":{decode_big_1t:e},\"threads\":{},\"big_len\":{},\"small_len\":{}}}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        big.len(),
        small.len()
    );
}

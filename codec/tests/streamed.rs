//! `check_streamed` and `KvHeader::check_payload` (the pieces a caller uses
//! to decode a message it streams rather than holds, as `avp decode` does)
//! agree with the one-shot decoder on every wire vector, with and without
//! trailing bytes, in both modes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::path::PathBuf;

use avp_codec::kv::{KvCache, KvHeader};
use avp_codec::{DecodeOptions, Limits, check_streamed, decode_with, peek_with};

fn vectors() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/wire/bin");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn streamed_checks_equal_the_one_shot_decode() {
    let mut compared = 0;
    for (name, bytes) in vectors() {
        for extra in [0usize, 3] {
            let mut input = bytes.clone();
            input.extend(std::iter::repeat_n(0xa5u8, extra));
            for strict in [false, true] {
                let opts = DecodeOptions::default().with_strict(strict);
                let Ok(peeked) = peek_with(&input, &opts) else {
                    continue;
                };
                if peeked.header.flags.compressed() {
                    continue;
                }
                let start = peeked.header.metadata_end().min(input.len());
                let end = (peeked.header.message_len() as usize).min(input.len());
                let crc = avp_codec::crc32(&input[start..end]);
                let streamed = check_streamed(&peeked, input.len() as u64, crc, &opts);
                let one_shot = decode_with(&input, &opts);
                match (&streamed, &one_shot) {
                    (Ok(w), Ok(msg)) => assert_eq!(w, &msg.warnings, "{name} +{extra} {strict}"),
                    (Err(a), Err(b)) => {
                        assert_eq!(a.kind(), b.kind(), "{name} +{extra} {strict}");
                        assert_eq!(a.message(), b.message(), "{name} +{extra} {strict}");
                    }
                    _ => panic!("{name} +{extra} strict={strict}: {streamed:?} vs {one_shot:?}"),
                }
                compared += 1;
            }
        }
    }
    assert!(compared > 150, "{compared}");
}

#[test]
fn kv_check_payload_equals_the_parse() {
    let mut compared = 0;
    for (name, bytes) in vectors() {
        let Ok(msg) = decode_with(&bytes, &DecodeOptions::default()) else {
            continue;
        };
        let payload = &msg.payload;
        for strict in [false, true] {
            let head = &payload[..payload.len().min(17)];
            let checked =
                KvHeader::check_payload(head, payload.len() as u64, strict, &Limits::DEFAULT);
            let parsed = KvCache::parse_with(payload, strict);
            match (&checked, &parsed) {
                (Ok((h, w)), Ok(kv)) => {
                    assert_eq!((h, w), (&kv.header, &kv.warnings), "{name}");
                }
                (Err(a), Err(b)) => assert_eq!(a.message(), b.message(), "{name}"),
                _ => panic!("{name}: {checked:?} vs {parsed:?}"),
            }
            compared += 1;
        }
    }
    assert!(compared > 50, "{compared}");
}

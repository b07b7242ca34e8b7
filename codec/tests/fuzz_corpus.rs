//! Replays the fuzz corpus as ordinary tests (FUZZING.md): every committed
//! seed and crash regression under `tests/fuzz_seeds/<target>/` goes through
//! the same oracle its cargo-fuzz target runs (`avp_codec::fuzzing`), so CI
//! without cargo-fuzz still checks every input the fuzzer ever found.
//! With `AVP_FUZZ_LOCAL=1` the local `fuzz/corpus/<target>` and
//! `fuzz/artifacts/<target>` are replayed too.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::Path;

use avp_codec::fuzzing;

#[path = "../../test-support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::replay;

#[test]
fn fuzz_corpus_decode_both_modes() {
    replay("decode", |d| {
        fuzzing::check_decode_modes(d);
    });
}

#[test]
fn fuzz_corpus_peek() {
    replay("peek", fuzzing::check_peek);
}

#[test]
fn fuzz_corpus_stream_split() {
    replay("stream_split", fuzzing::check_incremental_chunks);
}

#[test]
fn fuzz_corpus_metadata() {
    replay("metadata", fuzzing::check_metadata);
}

#[test]
fn fuzz_corpus_kv() {
    replay("kv", fuzzing::check_kv);
}

#[test]
fn fuzz_corpus_json_fallback() {
    replay("json_fallback", fuzzing::check_json);
}

#[test]
fn fuzz_corpus_roundtrip() {
    replay("roundtrip", |d| {
        fuzzing::check_roundtrip(d);
    });
}

/// The oracles report acceptance, not just the absence of a panic: a golden
/// message must be accepted by both (so the replay is not vacuous).
#[test]
fn oracles_accept_the_golden_messages() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = std::fs::read(root.join("../conformance/vectors/wire/bin/kv-f32.avp")).unwrap();
    assert!(fuzzing::check_decode_modes(&ok), "kv-f32 decodes");
    assert!(fuzzing::check_roundtrip(&ok), "kv-f32 round-trips");
}

#[cfg(feature = "mac")]
#[test]
fn fuzz_corpus_mac() {
    replay("mac", fuzzing::check_mac);
}

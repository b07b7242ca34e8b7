//! Replays the handshake fuzz corpus as ordinary tests (FUZZING.md): every
//! committed seed and crash regression under `tests/fuzz_seeds/<target>/`
//! goes through the oracle its cargo-fuzz target runs
//! (`avp_handshake::fuzzing`). With `AVP_FUZZ_LOCAL=1` the local
//! `fuzz/corpus/<target>` and `fuzz/artifacts/<target>` are replayed too.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::Path;

use avp_handshake::fuzzing;

#[path = "../../test-support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::replay;

#[test]
fn fuzz_corpus_json_parse() {
    let mut parsed = 0usize;
    replay("json_parse", |d| {
        fuzzing::check_json_parse(d);
    });
    // Not vacuous: most seeds are JSON documents the parser accepts.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_seeds/json_parse");
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.path().is_file() && fuzzing::check_json_parse(&std::fs::read(e.path()).unwrap()) {
            parsed += 1;
        }
    }
    assert!(parsed > 100, "{parsed}");
}

#[test]
fn fuzz_corpus_canonical_json() {
    assert!(replay("canonical_json", fuzzing::check_canonical) > 100);
}

//! Oracles for the cargo-fuzz targets and the corpus-replay tests
//! (FUZZING.md). Not a stable API.
//!
//! These functions panic on purpose: a panic is how an oracle reports a
//! broken invariant to libFuzzer.
#![allow(clippy::panic)]

use crate::json::{Value, WriteOptions, parse, to_canonical, write_value};

/// The JSON parser oracle: any bytes either fail to parse or give a value
/// that every writer form (Python default, compact, canonical) writes as
/// text that parses back and re-writes identically. Returns whether `data`
/// parsed.
pub fn check_json_parse(data: &[u8]) -> bool {
    let Ok(value) = parse(data) else {
        return false;
    };
    for options in [
        WriteOptions::PYTHON_DEFAULT,
        WriteOptions::COMPACT,
        WriteOptions::CANONICAL,
    ] {
        let first = written(&value, options);
        let again = match parse(first.as_bytes()) {
            Ok(v) => v,
            Err(e) => panic!("our own JSON does not parse ({options:?}): {e}: {first}"),
        };
        assert_eq!(
            written(&again, options),
            first,
            "re-write differs ({options:?})"
        );
    }
    true
}

/// The canonical-JSON oracle (AVP-HASH-1): parse → canonical write → parse
/// → canonical write is stable, so a model hash computed from re-read
/// canonical text equals the one from the original document.
pub fn check_canonical(data: &[u8]) {
    let Ok(value) = parse(data) else {
        return;
    };
    let Ok(first) = to_canonical(&value) else {
        return;
    };
    let reread = match parse(first.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("canonical JSON does not parse: {e}: {first}"),
    };
    match to_canonical(&reread) {
        Ok(second) => assert_eq!(second, first, "canonical form is not stable"),
        Err(e) => panic!("canonical JSON of re-read value fails: {e}"),
    }
}

fn written(value: &Value, options: WriteOptions) -> String {
    let mut out = String::new();
    if let Err(e) = write_value(&mut out, value, options) {
        panic!("writing a parsed value failed: {e}");
    }
    out
}

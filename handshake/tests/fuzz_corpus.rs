//! Replays the handshake fuzz corpus as ordinary tests (FUZZING.md): every
//! committed seed and crash regression under `tests/fuzz_seeds/<target>/`
//! goes through the oracle its cargo-fuzz target runs
//! (`avp_handshake::fuzzing`). With `AVP_FUZZ_LOCAL=1` the local
//! `fuzz/corpus/<target>` and `fuzz/artifacts/<target>` are replayed too.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use avp_handshake::fuzzing;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("tests/fuzz_seeds").join(target), &mut files);
    assert!(!files.is_empty(), "no committed seeds for {target}");
    if std::env::var_os("AVP_FUZZ_LOCAL").is_some() {
        for d in ["corpus", "artifacts"] {
            files_under(&root.join("../fuzz").join(d).join(target), &mut files);
        }
    }
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failures.push(f.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs broke the oracle: {failures:#?}",
        failures.len(),
        files.len()
    );
    files.len()
}

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

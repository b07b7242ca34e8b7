//! Fuzz-corpus replay shared by the codec and handshake corpus tests
//! (FUZZING.md), included by each with `#[path]`: every committed seed and
//! crash regression under `<crate>/tests/fuzz_seeds/<target>/` goes through
//! the oracle its cargo-fuzz target runs. With `AVP_FUZZ_LOCAL=1` the local
//! `fuzz/corpus/<target>` and `fuzz/artifacts/<target>` are replayed too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

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

/// Runs `check` on every input of `target` (at least one must be
/// committed); fails naming each input that panics. Returns how many inputs ran.
pub(crate) fn replay(target: &str, check: fn(&[u8])) -> usize {
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

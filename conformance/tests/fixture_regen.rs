//! The runner's own test corpus (tests/fixtures/corpus) is exactly what its
//! committed generator makes with the pinned SDK: regenerate into a temporary
//! directory and compare every file byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn fixture_corpus_matches_its_generator() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let py = here.join("../.venv/bin/python");
    assert!(
        py.exists(),
        "the pinned venv is missing: run scripts/setup-venv.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("corpus");
    let status = std::process::Command::new(&py)
        .arg(here.join("tests/fixtures/gen_fixture.py"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = files(&out);
    let committed = files(&here.join("tests/fixtures/corpus"));
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (name, bytes) in &fresh {
        assert!(
            committed[name] == *bytes,
            "{name} differs from what gen_fixture.py makes"
        );
    }
}

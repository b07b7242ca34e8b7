//! No two modules of the sans-I/O crates import each other
//! (scripts/module_cycles.py, run on codec, handshake and json).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

#[test]
fn codec_handshake_and_json_have_no_module_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("scripts/module_cycles.py"))
        .args(["codec", "handshake", "json"].map(|c| root.join(c)))
        .output()
        .expect("python3 runs scripts/module_cycles.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "module cycles:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("no module cycles in 3 crates"), "{report}");
}

#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cycle-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "use crate::{a::A};\npub struct B;\n").unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("python3")
        .arg(root.join("scripts/module_cycles.py"))
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a <-> b"));
}

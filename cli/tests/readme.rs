//! AVP-CLI-11: the README's quick start, run verbatim: the shell block that follows the
//! line naming this file is extracted from README.md (so the two cannot
//! drift) and run by bash with the built `avp` and `avp-engine` first on
//! PATH, as `cargo install` would put them; the block itself moves to a
//! fresh temporary directory outside the repository.
#![cfg(feature = "engine")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

mod common;
use common::{Scratch, workspace};

/// The first ```sh block after the paragraph that names tests/readme.rs.
fn quick_start() -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let after = readme
        .split_once("`cli/tests/readme.rs`")
        .expect("README.md names cli/tests/readme.rs before its quick start")
        .1;
    let block = after.split_once("```sh\n").expect("a ```sh block").1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_owned()
}

#[test]
fn readme_quick_start_runs_verbatim() {
    let script = quick_start();
    assert!(script.contains("avp think") && script.contains("avp conformance run"));
    let scratch = Scratch::new("readme", "quickstart");
    let bin = Path::new(env!("CARGO_BIN_EXE_avp")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Output goes to files and the script runs in its own process group: when
    // bash exits (also early, on a failing line), the servers it started in
    // the background are ended with the group, so they can neither hold the
    // ports nor keep this test waiting on their open pipes.
    let (out_file, err_file) = (scratch.0.join("stdout.txt"), scratch.0.join("stderr.txt"));
    let mut child = Command::new("bash")
        // -e: every line must succeed, as a person pasting would see.
        .args(["-e", "-u", "-c", &script])
        .process_group(0)
        .current_dir(workspace())
        .env("PATH", path)
        .env("TMPDIR", &scratch.0)
        .env_remove("AVP_ENGINE")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let group = child.id();
    let status = child.wait().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status();
    let out = std::process::Output {
        status,
        stdout: std::fs::read(&out_file).unwrap(),
        stderr: std::fs::read(&err_file).unwrap(),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // What each step should have shown.
    assert!(stderr.contains("think: "), "{stderr}");
    assert!(stderr.contains("generate: "), "{stderr}");
    assert!(stdout.contains("kv cache: "), "inspect: {stdout}");
    assert!(stdout.contains("Result: conformant"), "{stdout}");
    assert!(stdout.contains("\"mode\""), "handshake answer: {stdout}");
    // The two-process handoff (AVP-PIPE-3): the mode each handshake resolved,
    // and each receiver's continuation (engine/testdata/expected/trained).
    assert!(stderr.contains("mode LATENT, rule hash_match"), "{stderr}");
    assert!(
        stderr.contains("mode LATENT, rule shared_tokenizer"),
        "{stderr}"
    );
    assert!(stdout.contains("four five six seven.\n"), "{stdout}");
    assert!(stdout.contains("seven six five.\n"), "{stdout}");
    // The router delivered the addressed message to agent-b's store.
    let work = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("inbox").is_dir())
        .expect("the quick start's scratch directory");
    assert!(!work.starts_with(workspace()), "ran outside the repository");
    // One message, with its metadata sidecar (AVP-HTTP-63).
    let stored: Vec<_> = std::fs::read_dir(work.join("inbox"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "avp"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}\n{stdout}");
}

//! AVP-CLI-14: `-o -` writes a command's output to stdout (as `think --out -`
//! does), its report line to stderr, and never a file named `-`; a closed
//! stdout ends it quietly with 141 (AVP-CLI-7).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

mod common;
use common::{Scratch, avp, workspace};

/// Runs `avp ARGS` in `dir` and returns its output; asserts success.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    let out = avp()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("avp runs");
    assert!(
        out.status.success(),
        "avp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The report line a command printed on stderr, as JSON.
fn report(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().last().expect("a report line on stderr");
    serde_json::from_str(line).expect("the report is JSON")
}

/// Nothing but `expected` is left in `dir`: no `-`, no temporary file.
fn only_files(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(names, want, "files left in {}", dir.display());
}

const SYNTH: [&str; 10] = [
    "--layers",
    "2",
    "--heads",
    "2",
    "--head-dim",
    "64",
    "--tokens",
    "64",
    "--dtype",
    "float16",
];

#[test]
fn cli_14_kv_synth_to_stdout_is_the_file_bytes() {
    let dir = Scratch::new("cli", "stdout-synth");
    let mut args = vec!["kv", "synth"];
    args.extend(SYNTH);
    let file = run_in(&dir.0, &[args.as_slice(), &["-o", "s.avp"]].concat());
    let piped = run_in(&dir.0, &[args.as_slice(), &["-o", "-"]].concat());
    assert_eq!(piped.stdout, std::fs::read(dir.path("s.avp")).unwrap());
    // The report moved to stderr and says where the bytes went.
    assert_eq!(report(&piped)["output"], "-");
    let to_file: serde_json::Value = serde_json::from_slice(&file.stdout).unwrap();
    assert_eq!(to_file["output"], "s.avp");
    only_files(&dir.0, &["s.avp"]);
}

#[test]
fn cli_14_convert_and_encode_and_address_to_stdout() {
    let dir = Scratch::new("cli", "stdout-convert");
    let mut synth = vec!["kv", "synth"];
    synth.extend(SYNTH);
    let made = run_in(&dir.0, &[synth.as_slice(), &["-o", "s.avp"]].concat());
    let made: serde_json::Value = serde_json::from_slice(&made.stdout).unwrap();

    let quant = ["convert", "s.avp", "--kv-quant", "int8"];
    run_in(&dir.0, &[quant.as_slice(), &["-o", "q.avp"]].concat());
    let piped = run_in(&dir.0, &[quant.as_slice(), &["-o", "-"]].concat());
    assert_eq!(piped.stdout, std::fs::read(dir.path("q.avp")).unwrap());
    assert_eq!(report(&piped)["scheme"], "int8");

    // The streamed path (split into chunks): a valid chunked context on stdout.
    let split = run_in(&dir.0, &["convert", "s.avp", "--chunk-mib", "1", "-o", "-"]);
    std::fs::write(dir.path("c.avp"), &split.stdout).unwrap();
    let verified = run_in(&dir.0, &["kv", "verify", "c.avp"]);
    let verified: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(verified["context_digest"], made["context_digest"]);

    let payload = workspace().join("conformance/vectors/wire/bin/kv-f16.avp");
    let addressed = ["address", payload.to_str().unwrap(), "--session", "s1"];
    run_in(&dir.0, &[addressed.as_slice(), &["-o", "a.avp"]].concat());
    let piped = run_in(&dir.0, &[addressed.as_slice(), &["-o", "-"]].concat());
    assert_eq!(piped.stdout, std::fs::read(dir.path("a.avp")).unwrap());

    std::fs::write(dir.path("p.bin"), b"payload bytes").unwrap();
    std::fs::write(dir.path("m.json"), br#"{"model_id": "m"}"#).unwrap();
    let encode = ["encode", "--metadata", "m.json", "--payload", "p.bin"];
    run_in(&dir.0, &[encode.as_slice(), &["-o", "e.avp"]].concat());
    let piped = run_in(&dir.0, &[encode.as_slice(), &["-o", "-"]].concat());
    assert_eq!(piped.stdout, std::fs::read(dir.path("e.avp")).unwrap());
    only_files(
        &dir.0,
        &[
            "s.avp", "q.avp", "c.avp", "a.avp", "p.bin", "m.json", "e.avp",
        ],
    );
}

/// Runs `avp ARGS` in `dir` with stdout a pipe whose read end is closed;
/// returns (status, stderr). Python makes the pipe, as in closed_pipe.rs.
fn into_closed_pipe(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    const PROBE: &str = "import os, subprocess, sys\n\
        r, w = os.pipe()\n\
        os.close(r)\n\
        p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE)\n\
        sys.stdout.write(str(p.returncode) + '\\n' + p.stderr.decode(errors='replace'))";
    let out = Command::new("python3")
        .current_dir(dir)
        .args(["-c", PROBE, env!("CARGO_BIN_EXE_avp")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, stderr) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (code.trim().parse().ok(), stderr.to_owned())
}

#[test]
fn cli_14_closed_stdout_is_quiet_141_and_leaves_no_file() {
    let dir = Scratch::new("cli", "stdout-closed");
    let mut synth = vec!["kv", "synth"];
    synth.extend(SYNTH);
    run_in(&dir.0, &[synth.as_slice(), &["-o", "s.avp"]].concat());
    for args in [
        [synth.as_slice(), &["-o", "-"]].concat(),
        [synth.as_slice(), &["--chunk-mib", "1", "-o", "-"]].concat(),
        vec!["convert", "s.avp", "--kv-quant", "int8", "-o", "-"],
        vec!["convert", "s.avp", "--chunk-mib", "1", "-o", "-"],
    ] {
        let (code, stderr) = into_closed_pipe(&dir.0, &args);
        assert!(!stderr.contains("panicked"), "avp {args:?}: {stderr}");
        assert_eq!(code, Some(141), "avp {args:?}: {stderr}");
        assert!(stderr.is_empty(), "avp {args:?} is not quiet: {stderr}");
    }
    only_files(&dir.0, &["s.avp"]);
}

//! AVP-CLI-7: every subcommand whose stdout is a closed pipe ends quietly
//! with status 141 (a shell's SIGPIPE status), never with a panic (101).
//!
//! The pipe's read end is closed before the child starts, so the first
//! write fails deterministically rather than racing the reader.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{Scratch, avp, workspace};

fn wire(name: &str) -> PathBuf {
    workspace().join("conformance/vectors/wire/bin").join(name)
}

fn config(name: &str) -> PathBuf {
    workspace()
        .join("conformance/vectors/handshake/configs")
        .join(name)
}

/// Runs `avp ARGS` with stdout a pipe nobody reads and returns (status, stderr).
/// Python makes the pipe (`std::io::pipe` is newer than our MSRV).
fn into_closed_pipe(args: &[&Path]) -> (Option<i32>, String) {
    const PROBE: &str = "import os, subprocess, sys\n\
        r, w = os.pipe()\n\
        os.close(r)\n\
        p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE)\n\
        sys.stdout.write(str(p.returncode) + '\\n' + p.stderr.decode(errors='replace'))";
    let out = Command::new("python3")
        .args(["-c", PROBE, env!("CARGO_BIN_EXE_avp")])
        .args(args)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, stderr) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (code.trim().parse().ok(), stderr.to_owned())
}

fn assert_quiet_141(args: &[&str]) {
    let paths: Vec<&Path> = args.iter().map(Path::new).collect();
    let (code, stderr) = into_closed_pipe(&paths);
    assert!(
        !stderr.contains("panicked"),
        "avp {args:?} panicked: {stderr}"
    );
    assert_eq!(code, Some(141), "avp {args:?}: stderr {stderr}");
    assert!(stderr.is_empty(), "avp {args:?} is not quiet: {stderr}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cli_7_codec_commands_into_a_closed_pipe() {
    let kv = wire("kv-f16.avp");
    let kv_zstd = wire("kv-f16-zstd.avp");
    let hidden = wire("hidden-f32.avp");
    for args in [
        vec!["decode", "--json", s(&kv)],
        vec!["decode", s(&kv)],
        vec!["decode", "--json", s(&kv_zstd)],
        vec!["inspect", s(&kv)],
        vec!["inspect", s(&hidden)],
        vec!["inspect", s(&kv_zstd)],
    ] {
        assert_quiet_141(&args);
    }
}

#[test]
fn cli_7_error_lines_into_a_closed_pipe_keep_their_status() {
    // An invalid message still says "invalid" (1) in its status even if the
    // error line cannot be written; nothing panics.
    let (code, stderr) = into_closed_pipe(&[
        Path::new("decode"),
        Path::new("--json"),
        &wire("bad-magic.avp"),
    ]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
}

#[test]
fn cli_7_encode_into_a_closed_pipe() {
    let dir = Scratch::new("closed-pipe", "encode");
    let meta = dir.path("meta.json");
    let payload = dir.path("payload.bin");
    let out = dir.path("out.avp");
    std::fs::write(
        &meta,
        r#"{"session_id":"s","source_agent_id":"a","target_agent_id":"b","model_id":"m",
            "hidden_dim":2,"num_layers":1,"payload_type":"HIDDEN_STATE","dtype":"FLOAT32",
            "tensor_shape":[2],"mode":"LATENT","avp_map_id":"","extra":{}}"#,
    )
    .unwrap();
    std::fs::write(&payload, [0u8; 8]).unwrap();
    assert_quiet_141(&[
        "encode",
        "--metadata",
        s(&meta),
        "--payload",
        s(&payload),
        "-o",
        s(&out),
    ]);
    // The message itself was written before the report line failed.
    assert!(avp_codec::decode(&std::fs::read(&out).unwrap()).is_ok());
    let addressed = dir.path("addressed.avp");
    assert_quiet_141(&["address", s(&out), "-o", s(&addressed), "--target", "b"]);
    let msg = std::fs::read(&addressed).unwrap();
    assert_eq!(
        avp_codec::decode(&msg).unwrap().metadata.target_agent_id,
        "b"
    );
}

#[test]
fn cli_7_handshake_and_hash_commands_into_a_closed_pipe() {
    let dir = Scratch::new("closed-pipe", "handshake");
    let gpt2 = config("gpt2.json");
    let qwen = config("qwen2-7b.json");
    for (cfg, name) in [(&gpt2, "a.json"), (&qwen, "b.json")] {
        let out = avp().arg("identity").arg(cfg).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::write(dir.path(name), out.stdout).unwrap();
    }
    let (a, b) = (dir.path("a.json"), dir.path("b.json"));
    for args in [
        vec!["version"],
        vec!["--help"],
        vec!["decode", "--help"],
        vec!["hash", "config", s(&gpt2)],
        vec!["identity", s(&gpt2)],
        vec!["handshake", "resolve", s(&a), s(&b)],
    ] {
        let paths: Vec<&Path> = args.iter().map(Path::new).collect();
        let (code, stderr) = into_closed_pipe(&paths);
        assert!(!stderr.contains("panicked"), "avp {args:?}: {stderr}");
        // clap writes --help itself and exits 0 whatever the write gave.
        let want = if args.contains(&"--help") { 0 } else { 141 };
        assert_eq!(code, Some(want), "avp {args:?}: {stderr}");
    }
}

#[test]
fn cli_7_conformance_into_a_closed_pipe() {
    let vectors = workspace().join("conformance/vectors");
    assert_quiet_141(&["conformance", "vectors", "verify", "--vectors", s(&vectors)]);
    let wire_only = [
        "conformance",
        "run",
        "--builtin",
        "strict",
        "--only",
        "wire/",
    ];
    let mut args: Vec<&str> = wire_only.to_vec();
    args.extend(["--vectors", s(&vectors)]);
    assert_quiet_141(&args);
}

/// The servers announce their address on stdout: a closed stdout ends them
/// quietly with 141 before they serve anything. `store ls` prints a listing.
#[test]
fn cli_7_servers_and_store_ls_into_a_closed_pipe() {
    assert_quiet_141(&["serve", "--listen", "127.0.0.1:0"]);
    assert_quiet_141(&[
        "route",
        "--listen",
        "127.0.0.1:0",
        "--route",
        "b=http://127.0.0.1:9",
    ]);
    let empty = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-closed-pipe-store-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    assert_quiet_141(&["store", "ls", s(&empty), "--json"]);
    std::fs::remove_dir_all(&empty).unwrap();
}

/// `avp send` whose peer is unreachable: the error line is lost to the closed
/// pipe, the status still says what failed (1), and nothing panics.
#[test]
fn cli_7_send_into_a_closed_pipe_keeps_its_status() {
    let kv = wire("kv-f32.avp");
    let args = [
        "send",
        s(&kv),
        "--to",
        "http://127.0.0.1:9",
        "--retries",
        "0",
    ];
    let paths: Vec<&Path> = args.iter().map(Path::new).collect();
    let (code, stderr) = into_closed_pipe(&paths);
    assert!(!stderr.contains("panicked"), "avp {args:?}: {stderr}");
    assert_eq!(code, Some(1), "avp {args:?}: {stderr}");
}

/// `generate` prints its text, `think --out -` its message: both to a closed pipe.
#[cfg(feature = "engine")]
#[test]
fn cli_7_engine_commands_into_a_closed_pipe() {
    let m = workspace().join("engine/testdata/models/qwen2");
    let m = s(&m);
    for args in [
        vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "hi",
            "--max-new-tokens",
            "2",
        ],
        vec![
            "think", "--model", m, "--prompt", "hi", "--steps", "1", "--out", "-",
        ],
    ] {
        let paths: Vec<&Path> = args.iter().map(Path::new).collect();
        let (code, stderr) = into_closed_pipe(&paths);
        assert!(!stderr.contains("panicked"), "avp {args:?}: {stderr}");
        assert_eq!(code, Some(141), "avp {args:?}: {stderr}");
    }
}

//! `avp hash`, `avp identity`, `avp handshake resolve` against the SDK's
//! golden vectors (conformance/vectors/handshake), and their error lines
//! (AVP-CLI-100..106).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use avp_handshake::json::{self, Value, WriteOptions};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/handshake")
}

fn avp(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_avp"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout_line(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        s.ends_with('\n') && s.matches('\n').count() == 1,
        "not one line: {s:?}"
    );
    s.trim_end().to_owned()
}

fn cases(file: &str) -> Vec<Value> {
    let doc = json::parse(&std::fs::read(vectors().join(file)).unwrap()).unwrap();
    match doc.as_object().unwrap().get("cases").unwrap() {
        Value::Array(c) => c.clone(),
        _ => panic!(),
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

fn text(v: &Value) -> String {
    v.as_json_str().unwrap().to_string_lossy()
}

/// A fresh scratch directory under the target dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn avp_cli_101_hash_config_matches_sdk() {
    let mut n = 0;
    for case in cases("model_hash.json") {
        let Some(file) = get(&case, &["input", "file"]) else {
            continue;
        };
        let out = avp(&["hash", "config", &text(file)], &vectors());
        assert_eq!(
            stdout_line(&out),
            text(get(&case, &["expect", "model_hash"]).unwrap())
        );
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn avp_cli_102_103_hash_tokenizer_and_vocab_match_sdk() {
    let mut n = 0;
    for case in cases("tokenizer_hash.json") {
        let Some(file) = get(&case, &["input", "file"]) else {
            continue;
        };
        let op = text(get(&case, &["op"]).unwrap());
        let sub = if op == "tokenizer_hash" {
            "tokenizer"
        } else {
            "vocab"
        };
        let out = avp(&["hash", sub, &text(file)], &vectors());
        assert_eq!(
            stdout_line(&out),
            text(get(&case, &["expect", "tokenizer_hash"]).unwrap()),
            "{op} {}",
            text(file)
        );
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn avp_cli_104_hash_weights_matches_vectors() {
    let mut n = 0;
    for case in cases("weights.json") {
        let dir = text(get(&case, &["input", "dir"]).unwrap());
        let out = avp(&["hash", "weights", &dir], &vectors());
        match get(&case, &["expect", "weights_digest"]) {
            Some(want) => assert_eq!(stdout_line(&out), text(want)),
            None => {
                assert_eq!(out.status.code(), Some(1), "{dir} accepted");
                let err = String::from_utf8(out.stderr).unwrap();
                assert!(
                    err.starts_with("avp: error: ")
                        && err.contains(&dir)
                        && err.matches('\n').count() == 1,
                    "{err}"
                );
            }
        }
        n += 1;
    }
    assert!(n >= 5);
    // One thread and many threads give the same digest.
    let one = stdout_line(&avp(
        &["hash", "weights", "weights/sharded", "--threads", "1"],
        &vectors(),
    ));
    let many = stdout_line(&avp(
        &["hash", "weights", "weights/sharded", "--threads", "7"],
        &vectors(),
    ));
    assert_eq!(one, many);
}

#[test]
fn avp_cli_105_identity_matches_sdk() {
    let mut n = 0;
    for case in cases("identity.json") {
        let path = match (
            get(&case, &["input", "model_dir"]),
            get(&case, &["input", "file"]),
        ) {
            (Some(d), _) => text(d),
            (None, Some(f)) => text(f),
            _ => continue,
        };
        let out = avp(&["identity", &path], &vectors());
        assert_eq!(
            stdout_line(&out),
            text(get(&case, &["expect", "json"]).unwrap()),
            "{path}"
        );
        n += 1;
    }
    assert!(n >= 8);
}

#[test]
fn avp_cli_105_identity_rejects_divergent_configs() {
    let dir = scratch("identity-divergent");
    let mut n = 0;
    for case in cases("identity.json") {
        if text(get(&case, &["expect", "result"]).unwrap()) != "invalid" {
            continue;
        }
        let mut body = String::new();
        json::write_value(
            &mut body,
            get(&case, &["input", "config"]).unwrap(),
            WriteOptions::COMPACT,
        )
        .unwrap();
        std::fs::write(dir.join("config.json"), body).unwrap();
        let out = avp(&["identity", "config.json"], &dir);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8(out.stderr)
                .unwrap()
                .starts_with("avp: error: config.json: field `")
        );
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn avp_cli_106_handshake_resolve_matches_table() {
    let root = scratch("resolve");
    let mut n = 0;
    for (i, case) in cases("resolve.json").into_iter().enumerate() {
        let dir = root.join(format!("{i}"));
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        let input = get(&case, &["input"]).unwrap();
        let write = |name: &str, v: &Value| {
            let mut s = String::new();
            json::write_value(&mut s, v, WriteOptions::PYTHON_DEFAULT).unwrap();
            std::fs::write(dir.join(name), s).unwrap();
        };
        // With weights digests the sides travel as hellos (capabilities.weights_digest).
        for side in ["local", "remote"] {
            let identity = get(input, &[side]).unwrap().clone();
            match get(input, &[&format!("{side}_weights_digest")]) {
                Some(d) => {
                    let mut caps = json::Object::new();
                    caps.insert("weights_digest", d.clone());
                    let mut hello = json::Object::new();
                    hello.insert("agent_id", Value::from(side));
                    hello.insert("capabilities", Value::Object(caps));
                    hello.insert("identity", identity);
                    write(&format!("{side}.json"), &Value::Object(hello));
                }
                None => write(&format!("{side}.json"), &identity),
            }
        }
        let mut args: Vec<String> = vec![
            "handshake".into(),
            "resolve".into(),
            "local.json".into(),
            "remote.json".into(),
        ];
        if let Some(Value::Array(maps)) = get(input, &["maps"]) {
            let mut any = false;
            for m in maps {
                let name = text(m);
                // Path-traversal names cannot be created here; they must not match anyway.
                if !name.contains('/') {
                    std::fs::write(dir.join("maps").join(name), b"").unwrap();
                }
                any = true;
            }
            if any {
                args.extend(["--maps".into(), "maps".into()]);
            }
        }
        if let (Some(a), Some(b)) = (get(input, &["local_vocab"]), get(input, &["remote_vocab"])) {
            write("local_vocab.json", a);
            write("remote_vocab.json", b);
            args.extend(["--local-tokenizer".into(), "local_vocab.json".into()]);
            args.extend(["--remote-tokenizer".into(), "remote_vocab.json".into()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = stdout_line(&avp(&argv, &dir));
        let expect = get(&case, &["expect"]).unwrap();
        let mut want = json::Object::new();
        for key in ["mode", "resolution_path", "avp_map_id"] {
            want.insert(key, get(expect, &[key]).unwrap().clone());
        }
        let mut want_line = String::new();
        json::write_value(&mut want_line, &Value::Object(want), WriteOptions::COMPACT).unwrap();
        assert_eq!(line, want_line, "{}", text(get(&case, &["id"]).unwrap()));
        n += 1;
    }
    assert!(n >= 30);
}

#[test]
fn avp_cli_106_resolve_with_real_tokenizer_files() {
    // Two model directories sharing one tokenizer.json: their identities
    // carry equal tokenizer hashes, so different configs resolve to shared_tokenizer.
    let dir = scratch("resolve-real");
    for model in ["llama3-8b-bpe", "qwen2-7b-bpe"] {
        let out = avp(&["identity", &format!("models/{model}")], &vectors());
        std::fs::write(dir.join(format!("{model}.json")), stdout_line(&out)).unwrap();
    }
    let line = stdout_line(&avp(
        &[
            "handshake",
            "resolve",
            "llama3-8b-bpe.json",
            "qwen2-7b-bpe.json",
        ],
        &dir,
    ));
    assert!(
        line.starts_with(
            r#"{"mode":"LATENT","resolution_path":"shared_tokenizer","avp_map_id":"vocab:"#
        ),
        "{line}"
    );
    // With tokenizer files given, overlap is counted from real vocabularies (404 shared tokens).
    let tok = vectors().join("tokenizers/bytelevel-bpe.json");
    let wp = vectors().join("tokenizers/wordpiece.json");
    std::fs::write(dir.join("a.json"), r#"{"model_hash": "x"}"#).unwrap();
    std::fs::write(dir.join("b.json"), r#"{"model_hash": "y"}"#).unwrap();
    let same = stdout_line(&avp(
        &[
            "handshake",
            "resolve",
            "a.json",
            "b.json",
            "--local-tokenizer",
            tok.to_str().unwrap(),
            "--remote-tokenizer",
            tok.to_str().unwrap(),
        ],
        &dir,
    ));
    assert_eq!(
        same,
        r#"{"mode":"LATENT","resolution_path":"vocab_overlap","avp_map_id":"vocab_overlap:404"}"#
    );
    let disjoint = stdout_line(&avp(
        &[
            "handshake",
            "resolve",
            "a.json",
            "b.json",
            "--local-tokenizer",
            tok.to_str().unwrap(),
            "--remote-tokenizer",
            wp.to_str().unwrap(),
        ],
        &dir,
    ));
    assert_eq!(
        disjoint,
        r#"{"mode":"JSON","resolution_path":"json_fallback","avp_map_id":""}"#
    );
}

/// Every error: exit status 1 and exactly one line naming the file.
fn error_line(args: &[&str], cwd: &Path) -> String {
    let out = avp(args, cwd);
    assert_eq!(out.status.code(), Some(1), "{args:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches('\n').count(), 1, "{err:?}");
    err
}

#[test]
fn avp_cli_100_error_lines() {
    let dir = scratch("errors");
    std::fs::write(dir.join("truncated.json"), "{\"a\": [1, 2").unwrap();
    std::fs::write(dir.join("bad-identity.json"), r#"{"hidden_dim": "4096"}"#).unwrap();
    std::fs::write(dir.join("ok.json"), r#"{"model_hash": "h"}"#).unwrap();
    std::fs::write(dir.join("list.json"), "[1, 2]").unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"version": "1.0", "model": {"type": "Mystery", "vocab": {}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-digest.json"),
        r#"{"identity": {}, "capabilities": {"weights_digest": "xyz"}}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("empty-model")).unwrap();
    let lines = [
        error_line(&["hash", "config", "missing.json"], &dir),
        error_line(&["hash", "config", "truncated.json"], &dir),
        error_line(&["hash", "vocab", "list.json"], &dir),
        error_line(&["hash", "tokenizer", "tokenizer.json"], &dir),
        error_line(&["hash", "weights", "empty-model"], &dir),
        error_line(&["hash", "weights", "ok.json"], &dir),
        error_line(&["identity", "list.json"], &dir),
        error_line(&["identity", "empty-model"], &dir),
        error_line(
            &["handshake", "resolve", "bad-identity.json", "ok.json"],
            &dir,
        ),
        error_line(
            &["handshake", "resolve", "ok.json", "bad-digest.json"],
            &dir,
        ),
        error_line(
            &[
                "handshake",
                "resolve",
                "ok.json",
                "ok.json",
                "--maps",
                "nowhere",
            ],
            &dir,
        ),
    ];
    insta::assert_snapshot!(lines.concat());
}

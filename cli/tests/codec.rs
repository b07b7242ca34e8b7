//! `avp decode`, `avp encode`, `avp inspect` against the golden wire vectors
//! (spec/impl/cli.md). Runs the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::avp;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/wire")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors().join("cases.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["op"] == "decode")
        .cloned()
        .collect()
}

fn file_of(case: &Value) -> PathBuf {
    vectors().join(case["input"]["file"].as_str().unwrap())
}

fn run(cmd: &mut Command) -> (i32, Value, Output) {
    let out = cmd.output().unwrap();
    let code = out
        .status
        .code()
        .expect("avp was killed by a signal (panic/abort?)");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (code, v, out)
}

fn decode_json(path: &Path, strict: bool) -> (i32, Value) {
    let mut c = avp();
    c.arg("decode").arg("--json");
    if strict {
        c.arg("--strict");
    }
    let (code, v, _) = run(c.arg(path));
    (code, v)
}

/// Our output minus what the SDK view does not have.
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    o.remove("warnings");
    o.remove("kv");
    v
}

/// AVP-CLI-1/2/3 over every golden decode case.
#[test]
fn cli_1_decode_json_matches_every_golden_case() {
    for case in cases() {
        let id = case["id"].as_str().unwrap();
        let path = file_of(&case);
        let expect = &case["expect"];
        let (code, out) = decode_json(&path, false);
        let (strict_code, strict_out) = decode_json(&path, true);
        let mut sdk_view = expect["decoded"].clone();
        match expect["result"].as_str().unwrap() {
            "valid" => {
                assert_eq!(code, 0, "{id}: {out}");
                let sdk_kv = sdk_view
                    .as_object_mut()
                    .unwrap()
                    .remove("kv")
                    .unwrap_or(Value::Null);
                assert_eq!(comparable(out.clone()), sdk_view, "{id}");
                if expect
                    .get("kv")
                    .map(|k| k["result"] == "valid")
                    .unwrap_or(true)
                {
                    assert_eq!(out["kv"], sdk_kv, "{id}: kv");
                }
                if expect.get("kv").is_none() {
                    assert_eq!(out["warnings"], Value::Array(vec![]), "{id}");
                    assert_eq!(strict_code, 0, "{id}");
                }
            }
            "invalid" => {
                assert_eq!(code, 1, "{id}");
                assert_eq!(out["error"]["kind"], expect["error_kind"], "{id}");
                assert!(
                    out["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{id}"
                );
                assert_eq!(strict_code, 1, "{id}");
            }
            "non_strict" => {
                assert_eq!(code, 0, "{id}");
                // Message-level warnings only; a KV-typed vector may add kv_* ones (AVP-KV-4).
                let codes: Vec<Value> = out["warnings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w["code"].clone())
                    .filter(|c| !c.as_str().unwrap().starts_with("kv_"))
                    .collect();
                assert_eq!(Value::Array(codes), expect["warnings"], "{id}");
                sdk_view.as_object_mut().unwrap().remove("kv");
                assert_eq!(comparable(out), sdk_view, "{id}");
                assert_eq!(strict_code, 1, "{id}");
                assert_eq!(strict_out["error"]["kind"], "inconsistent", "{id}");
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn cli_1_decode_reads_stdin() {
    let path = vectors().join("bin/kv-f32.avp");
    let mut child = avp()
        .args(["decode", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&path).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let from_stdin: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(from_stdin, decode_json(&path, false).1);
}

/// AVP-CLI-5: encoding the decoded metadata and tensor reproduces the SDK's bytes.
#[test]
fn cli_5_encode_reproduces_sdk_vectors() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cli-encode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.get("encode").is_some()) {
        let id = case["id"].as_str().unwrap();
        let bytes = std::fs::read(file_of(case)).unwrap();
        let msg = avp_codec::decode(&bytes).unwrap();
        let (_, decoded) = decode_json(&file_of(case), false);
        let meta = dir.join("meta.json");
        let payload = dir.join("payload.bin");
        let out = dir.join("out.avp");
        std::fs::write(&meta, decoded["metadata"].to_string()).unwrap();
        std::fs::write(&payload, &msg.payload).unwrap();
        let mut c = avp();
        c.arg("encode")
            .arg("--metadata")
            .arg(&meta)
            .arg("--payload")
            .arg(&payload)
            .arg("-o")
            .arg(&out);
        let level = case["encode"]["compression"].as_str().unwrap();
        if level != "none" {
            c.args(["--compress", level]);
        }
        let (code, report, _) = run(&mut c);
        assert_eq!(code, 0, "{id}: {report}");
        assert_eq!(report["length"], bytes.len(), "{id}");
        assert!(
            std::fs::read(&out).unwrap() == bytes,
            "{id}: not byte-identical"
        );
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_5_encode_rejects_bad_metadata_without_writing() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cli-badmeta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let meta = dir.join("meta.json");
    let payload = dir.join("payload.bin");
    let out = dir.join("out.avp");
    std::fs::write(&payload, b"1234").unwrap();
    for bad in [
        r#"{"dtype": "FLOAT64"}"#,
        r#"{"sesion_id": "typo"}"#,
        r#"{"hidden_dim": -1}"#,
        "not json",
    ] {
        std::fs::write(&meta, bad).unwrap();
        let (code, v, _) = run(avp()
            .arg("encode")
            .arg("--metadata")
            .arg(&meta)
            .arg("--payload")
            .arg(&payload)
            .arg("-o")
            .arg(&out));
        assert_eq!(code, 1, "{bad}");
        assert_eq!(v["error"]["kind"], "invalid_argument", "{bad}");
        assert!(!out.exists(), "{bad}: output written");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A CLI that panics is a bug: a prefix of every vector exits 0 or 1 with JSON.
/// Each vector is cut at one of three points in turn (a third, a half, all but
/// the last byte), so every vector and every cut kind is exercised without
/// 570 process starts (an `--all-features` binary loads libtorch at start-up);
/// the codec's own truncation sweep covers every prefix in-process.
#[test]
fn cli_2_never_panics_on_any_vector_or_prefix() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cli-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let bytes = std::fs::read(file_of(&case)).unwrap();
        let cuts = [
            bytes.len() / 3,
            bytes.len() / 2,
            bytes.len().saturating_sub(1),
        ];
        let p = dir.join("cut.avp");
        std::fs::write(&p, &bytes[..cuts[i % 3]]).unwrap();
        for sub in ["decode", "inspect"] {
            let out = avp().arg(sub).arg(&p).output().unwrap();
            let code = out.status.code().expect("signal");
            assert!(code == 0 || code == 1, "{sub} exit {code}");
            if code == 1 {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                assert!(v["error"]["kind"].is_string());
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn inspect(name: &str) -> String {
    let out = avp()
        .arg("inspect")
        .arg(vectors().join("bin").join(name))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{name}");
    String::from_utf8(out.stdout).unwrap()
}

/// AVP-CLI-6 snapshots.
#[test]
fn cli_6_inspect_snapshots() {
    insta::assert_snapshot!("inspect_kv_f16", inspect("kv-f16.avp"));
    insta::assert_snapshot!("inspect_kv_f16_zstd", inspect("kv-f16-zstd.avp"));
    insta::assert_snapshot!("inspect_hidden_bf16", inspect("hidden-bf16.avp"));
    insta::assert_snapshot!("inspect_hidden_int8", inspect("hidden-int8.avp"));
    insta::assert_snapshot!("inspect_unicode", inspect("unicode-strings.avp"));
    insta::assert_snapshot!("inspect_two_warnings", inspect("two-problems.avp"));
}

/// AVP-CLI-1/3 snapshots of the JSON text itself (member order included).
#[test]
fn cli_1_decode_snapshots() {
    let text = |name: &str, strict: bool| {
        let mut c = avp();
        c.args(["decode", "--json"]);
        if strict {
            c.arg("--strict");
        }
        String::from_utf8(
            c.arg(vectors().join("bin").join(name))
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    insta::assert_snapshot!("decode_kv_f32", text("kv-f32.avp", false));
    insta::assert_snapshot!("decode_zstd_fast", text("zstd-fast.avp", false));
    insta::assert_snapshot!(
        "decode_trailing_compatible",
        text("trailing-bytes.avp", false)
    );
    insta::assert_snapshot!("decode_trailing_strict", text("trailing-bytes.avp", true));
    insta::assert_snapshot!("decode_bad_magic", text("bad-magic.avp", false));
}

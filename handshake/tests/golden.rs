//! Golden agreement with the SDK: every case in
//! `conformance/vectors/handshake/*.json` (made by
//! `conformance/gen/gen_handshake.py`) must come out exactly as recorded.
//! The case files are read with our own JSON parser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use avp_handshake::json::{self, JsonString, Object, Value, WriteOptions};
use avp_handshake::weights::{WeightsDigest, digest_safetensors_bytes};
use avp_handshake::{
    HelloMessage, ModelIdentity, ResolveOptions, identity_from_config, model_hash, resolve,
    tokenizer_hash, vocab_from_document, vocab_from_tokenizer_json,
};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/handshake")
}

fn load(name: &str) -> Vec<Value> {
    let bytes = std::fs::read(vectors().join(name)).unwrap();
    let doc = json::parse(&bytes).unwrap();
    match doc.as_object().unwrap().get("cases").unwrap() {
        Value::Array(cases) => cases.clone(),
        _ => panic!("cases is not a list"),
    }
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_object()
        .unwrap()
        .get(key)
        .unwrap_or_else(|| panic!("missing {key}"))
}

fn opt<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().unwrap().get(key)
}

fn text(v: &Value) -> String {
    v.as_json_str().unwrap().to_string_lossy()
}

fn wtf8(v: &Value) -> Vec<u8> {
    v.as_json_str().unwrap().as_wtf8().to_vec()
}

fn expect_valid(case: &Value) -> bool {
    text(field(field(case, "expect"), "result")) == "valid"
}

fn write(v: &Value, options: WriteOptions) -> String {
    let mut s = String::new();
    json::write_value(&mut s, v, options).unwrap();
    s
}

/// A short view of where two long strings first differ.
fn first_difference(ours: &str, want: &str) -> String {
    let at = ours
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(want.len()));
    let from = at.saturating_sub(40);
    let clip = |s: &str| s.get(from..(at + 40).min(s.len())).unwrap_or(s).to_owned();
    format!(
        "at byte {at}\n ours …{}…\n want …{}…",
        clip(ours),
        clip(want)
    )
}

/// Runs `check` on every case, collects failures, and fails with all of them.
fn run(file: &str, op: &str, check: impl Fn(&Value) -> Result<(), String>) {
    let cases = load(file);
    let mut failures = Vec::new();
    let mut n = 0;
    for case in &cases {
        if text(field(case, "op")) != op {
            continue;
        }
        n += 1;
        if let Err(msg) = check(case) {
            failures.push(format!("{}: {msg}", text(field(case, "id"))));
        }
    }
    assert!(n > 0, "no {op} cases in {file}");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn input_bytes(input: &Value) -> Vec<u8> {
    match opt(input, "file") {
        Some(f) => std::fs::read(vectors().join(text(f))).unwrap(),
        None => wtf8(field(input, "text")),
    }
}

#[test]
fn avp_hash_1_model_hash_golden() {
    run("model_hash.json", "model_hash", |case| {
        let input = field(case, "input");
        let parsed = json::parse(&input_bytes(input));
        match (expect_valid(case), parsed) {
            (false, Ok(_)) => Err("parsed, the SDK rejects it".into()),
            (false, Err(_)) => Ok(()),
            (true, Err(e)) => Err(format!("rejected: {e}")),
            (true, Ok(v)) => {
                let expect = field(case, "expect");
                let canonical = json::to_canonical(&v).unwrap();
                if canonical != text(field(expect, "canonical")) {
                    return Err(format!(
                        "canonical differs: {}",
                        first_difference(&canonical, &text(field(expect, "canonical")))
                    ));
                }
                let hash = model_hash(&v).unwrap();
                if hash != text(field(expect, "model_hash")) {
                    return Err(format!("hash {hash}"));
                }
                Ok(())
            }
        }
    });
}

#[test]
fn avp_hash_6_canonical_json_agrees_with_python() {
    run("canonical_json.json", "canonical_json", |case| {
        let expect = field(case, "expect");
        let v =
            json::parse(&wtf8(field(field(case, "input"), "text"))).map_err(|e| e.to_string())?;
        let forms = [
            ("canonical", WriteOptions::CANONICAL),
            ("compact", WriteOptions::COMPACT),
            ("python_default", WriteOptions::PYTHON_DEFAULT),
        ];
        for (key, options) in forms {
            if let Some(want) = opt(expect, key) {
                let ours = write(&v, options);
                let want = text(want);
                if ours != want {
                    return Err(format!("{key} differs: {}", first_difference(&ours, &want)));
                }
            }
        }
        Ok(())
    });
}

#[test]
fn avp_hash_10_tokenizer_hash_of_tokenizer_json() {
    run("tokenizer_hash.json", "tokenizer_hash", |case| {
        let expect = field(case, "expect");
        let doc = json::parse(&input_bytes(field(case, "input"))).unwrap();
        let vocab = vocab_from_tokenizer_json(&doc).map_err(|e| e.to_string())?;
        let want_size = match field(expect, "vocab_size") {
            Value::Int(i) => i.as_u64().unwrap() as usize,
            _ => panic!(),
        };
        if vocab.len() != want_size {
            return Err(format!("vocab size {} != {want_size}", vocab.len()));
        }
        for (token, id) in field(expect, "vocab_sample").as_object().unwrap().iter() {
            let ours = vocab.iter().find(|(k, _)| *k == token).map(|(_, v)| v);
            if ours != Some(id) {
                return Err(format!("id of {token:?}: ours {ours:?}, want {id:?}"));
            }
        }
        let hash = tokenizer_hash(&vocab).unwrap();
        if hash != text(field(expect, "tokenizer_hash")) {
            return Err(format!("hash {hash}"));
        }
        Ok(())
    });
}

#[test]
fn avp_hash_10_tokenizer_hash_of_vocab_maps() {
    run("tokenizer_hash.json", "vocab_hash", |case| {
        let input = field(case, "input");
        let vocab: Object = match opt(input, "vocab") {
            Some(v) => v.as_object().unwrap().clone(),
            None => {
                let doc = json::parse(&input_bytes(input)).unwrap();
                vocab_from_document(&doc).unwrap()
            }
        };
        let hash = tokenizer_hash(&vocab).unwrap();
        let want = text(field(field(case, "expect"), "tokenizer_hash"));
        if hash != want {
            Err(format!("hash {hash}"))
        } else {
            Ok(())
        }
    });
}

fn identity_for(input: &Value) -> Result<ModelIdentity, String> {
    let (config, tokenizer) = if let Some(dir) = opt(input, "model_dir") {
        let dir = vectors().join(text(dir));
        let config = json::parse(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let tok = json::parse(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
        (config, Some(tok))
    } else if let Some(file) = opt(input, "file") {
        (
            json::parse(&std::fs::read(vectors().join(text(file))).unwrap()).unwrap(),
            None,
        )
    } else {
        (field(input, "config").clone(), None)
    };
    let tokenizer_hash = match tokenizer {
        Some(doc) => {
            let vocab = vocab_from_tokenizer_json(&doc).map_err(|e| e.to_string())?;
            JsonString::from(tokenizer_hash(&vocab).unwrap())
        }
        None => JsonString::default(),
    };
    identity_from_config(&config, tokenizer_hash).map_err(|e| e.to_string())
}

#[test]
fn avp_hs_2_identity_from_config_golden() {
    run("identity.json", "identity", |case| {
        let result = identity_for(field(case, "input"));
        match (expect_valid(case), result) {
            (false, Ok(id)) => Err(format!("accepted, we must reject: {id:?}")),
            (false, Err(_)) => Ok(()),
            (true, Err(e)) => Err(e),
            (true, Ok(id)) => {
                let expect = field(case, "expect");
                let ours = write(&id.to_value(), WriteOptions::PYTHON_DEFAULT);
                if ours != text(field(expect, "json")) {
                    return Err(format!("json differs: {ours}"));
                }
                // from_value(to_value) is the identity.
                let back = ModelIdentity::from_value(&id.to_value(), "").unwrap();
                if back != id {
                    return Err("to_value/from_value roundtrip differs".into());
                }
                Ok(())
            }
        }
    });
}

/// AVP-HS-4 over the hello vectors; AVP-EXT-1: capabilities this side does
/// not know (`kv`, `n`) are accepted and kept as received.
#[test]
fn avp_hs_4_hello_from_dict_to_dict_golden() {
    run("hello.json", "hello_parse", |case| {
        let parsed =
            json::parse(&wtf8(field(field(case, "input"), "text"))).map_err(|e| e.to_string())?;
        let hello = HelloMessage::from_value(&parsed).and_then(|h| h.weights_digest().map(|_| h));
        match (expect_valid(case), hello) {
            (false, Ok(_)) => Err("accepted, we must reject".into()),
            (false, Err(_)) => Ok(()),
            (true, Err(e)) => Err(e.to_string()),
            (true, Ok(h)) => {
                let wire = String::from_utf8(h.to_wire().unwrap()).unwrap();
                let want = text(field(field(case, "expect"), "wire"));
                if wire != want {
                    Err(format!("wire differs: {wire}"))
                } else {
                    Ok(())
                }
            }
        }
    });
}

/// The resolution table over the resolve vectors; AVP-EXT-1: a capability
/// only one hello carries (`weights_digest`) leaves resolution unchanged.
#[test]
fn avp_hs_5_to_10_and_22_resolution_table() {
    const SUFFIXES: [&str; 2] = [".pt", ".avpmap.safetensors"];
    run("resolve.json", "resolve", |case| {
        let input = field(case, "input");
        let expect = field(case, "expect");
        let local = ModelIdentity::from_value(field(input, "local"), "local").unwrap();
        let remote = ModelIdentity::from_value(field(input, "remote"), "remote").unwrap();
        let maps: Vec<String> = match field(input, "maps") {
            Value::Array(items) => items.iter().map(text).collect(),
            _ => panic!(),
        };
        let lookup = |id: &str| SUFFIXES.iter().any(|s| maps.contains(&format!("{id}{s}")));
        let local_vocab = opt(input, "local_vocab").map(|v| v.as_object().unwrap().clone());
        let remote_vocab = opt(input, "remote_vocab").map(|v| v.as_object().unwrap().clone());
        let digest =
            |key: &str| opt(input, key).map(|v| WeightsDigest::from_hex(&text(v)).unwrap());
        let options = ResolveOptions {
            maps: Some(&lookup),
            vocabularies: local_vocab.as_ref().zip(remote_vocab.as_ref()),
            local_weights: digest("local_weights_digest"),
            remote_weights: digest("remote_weights_digest"),
        };
        let r = resolve(&local, &remote, &options);
        let got = (
            r.mode.name(),
            r.resolution_path.as_str(),
            r.avp_map_id.as_str(),
        );
        let want = (
            text(field(expect, "mode")),
            text(field(expect, "resolution_path")),
            text(field(expect, "avp_map_id")),
        );
        if (got.0, got.1, got.2) != (want.0.as_str(), want.1.as_str(), want.2.as_str()) {
            return Err(format!("got {got:?}, want {want:?}"));
        }
        if let Some(Value::Bool(m)) = opt(expect, "weights_mismatch") {
            if *m != r.weights_mismatch {
                return Err(format!("weights_mismatch {}", r.weights_mismatch));
            }
        }
        Ok(())
    });
}

#[test]
fn avp_hs_21_weights_digest_golden() {
    run("weights.json", "weights_digest", |case| {
        let dir = vectors().join(text(field(field(case, "input"), "dir")));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        let blobs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let slices: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
        match (expect_valid(case), digest_safetensors_bytes(&slices)) {
            (false, Ok(d)) => Err(format!("accepted: {}", d.to_hex())),
            (false, Err(_)) => Ok(()),
            (true, Err(e)) => Err(e.to_string()),
            (true, Ok(d)) => {
                let want = text(field(field(case, "expect"), "weights_digest"));
                if d.to_hex() != want {
                    Err(format!("digest {}", d.to_hex()))
                } else {
                    Ok(())
                }
            }
        }
    });
}

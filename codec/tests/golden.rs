//! Golden agreement with the SDK over conformance/vectors/wire/cases.json
//! (made by conformance/gen/gen_wire.py), plus the truncation sweep and the
//! incremental-equals-one-shot check over every vector.
#![cfg(feature = "zstd")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::path::PathBuf;

use avp_codec::json::{JsonMessage, to_python_json};
use avp_codec::kv::KvCache;
use avp_codec::{
    Compression, DecodeOptions, ErrorKind, Message, PayloadType, decode_with, encode, fuzzing,
};
use serde_json::{Value, json};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/wire")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors().join("cases.json")).expect("cases.json");
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn input(case: &Value) -> Vec<u8> {
    std::fs::read(vectors().join(case["input"]["file"].as_str().unwrap())).unwrap()
}

/// Our decoded message in the SDK view's shape (see gen_wire.py `sdk_view`).
fn view(msg: &Message<'_>) -> Value {
    let m = &msg.metadata;
    let extra: serde_json::Map<String, Value> = m
        .extra
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({
        "header": {
            "version": msg.header.version,
            "flags": msg.header.flags.0,
            "payload_length": msg.header.payload_length,
            "metadata_length": msg.header.metadata_length,
        },
        "metadata": {
            "session_id": m.session_id, "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id, "model_id": m.model_id,
            "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
            "payload_type": m.payload_type.name(), "dtype": m.dtype.name(),
            "tensor_shape": m.tensor_shape.as_slice(), "mode": m.mode.name(),
            "compression": if msg.was_compressed() { Some("zstd") } else { None },
            "avp_map_id": m.avp_map_id, "extra": extra,
            "payload_checksum": m.payload_checksum,
        },
        "payload": {
            "length": msg.payload.len(),
            "crc32": crc32fast::hash(&msg.payload),
            "blake3": blake3::hash(&msg.payload).to_hex().to_string(),
        },
    })
}

fn strip_kv(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("kv");
    v
}

fn warning_codes(msg: &Message<'_>) -> Vec<String> {
    msg.warnings.iter().map(|w| w.code().to_owned()).collect()
}

/// AVP-KV-*: our expectation for the inner payload, and agreement with the SDK's KV view.
fn check_kv(id: &str, msg: &Message<'_>, expect: &Value, sdk_kv: &Value) {
    // The inner dtype is compared with the metadata's too (AVP-KV-5).
    let dtype = msg.metadata.dtype;
    let compat = KvCache::parse(&msg.payload)
        .and_then(|mut kv| kv.check_metadata_dtype(dtype, false).map(|()| kv));
    let strict = KvCache::parse_with(&msg.payload, true)
        .and_then(|mut kv| kv.check_metadata_dtype(dtype, true).map(|()| kv));
    match expect["result"].as_str().unwrap() {
        "valid" => {
            let kv = compat.unwrap_or_else(|e| panic!("{id}: KV rejected: {e}"));
            assert!(kv.warnings.is_empty(), "{id}");
            assert!(strict.is_ok(), "{id}");
            let h = kv.header;
            let ours = json!({"num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads,
                "head_dim": h.head_dim, "seq_len": h.seq_len, "dtype": h.dtype.name()});
            assert_eq!(&ours, sdk_kv, "{id}: KV header differs from the SDK");
            assert_eq!(kv.layers().count(), h.num_layers as usize, "{id}");
        }
        "invalid" => {
            let want = expect["error_kind"].as_str().unwrap();
            assert_eq!(compat.unwrap_err().kind().as_str(), want, "{id}");
        }
        "non_strict" => {
            let kv = compat.unwrap();
            let codes: Vec<_> = kv.warnings.iter().map(|w| w.code()).collect();
            assert_eq!(json!(codes), expect["warnings"], "{id}");
            assert_eq!(strict.unwrap_err().kind(), ErrorKind::Inconsistent, "{id}");
        }
        other => panic!("{id}: unknown kv result {other}"),
    }
}

/// Every wire vector decodes as the SDK decodes it, and every valid one
/// re-encodes to the SDK's bytes, compressed ones included (AVP-WIRE-26: the
/// same libzstd). Unknown `extra` keys pass through uninterpreted
/// (AVP-EXT-2), and values v1 does not know are rejected, never read as
/// known ones (AVP-EXT-3).
#[test]
fn conf_wire_decode_agrees_with_the_sdk_on_every_case() {
    let compat = DecodeOptions::default();
    let strict = DecodeOptions::strict();
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["op"] == "decode") {
        let id = case["id"].as_str().unwrap();
        let data = input(case);
        let expect = &case["expect"];
        let got = decode_with(&data, &compat);
        let got_strict = decode_with(&data, &strict);
        match expect["result"].as_str().unwrap() {
            "valid" => {
                let msg = got.unwrap_or_else(|e| panic!("{id}: rejected: {e}"));
                assert_eq!(view(&msg), strip_kv(expect["decoded"].clone()), "{id}");
                assert!(msg.warnings.is_empty(), "{id}: {:?}", msg.warnings);
                assert_eq!(got_strict.as_ref().ok(), Some(&msg), "{id}: strict differs");
                if let Some(kv_expect) = expect.get("kv") {
                    assert_eq!(msg.metadata.payload_type, PayloadType::KvCache);
                    check_kv(id, &msg, kv_expect, &expect["decoded"]["kv"]);
                }
                if let Some(enc) = case.get("encode") {
                    let c = Compression::from_name(enc["compression"].as_str().unwrap()).unwrap();
                    let again = encode(&msg.metadata, &msg.payload, c).unwrap();
                    assert!(
                        again == data,
                        "{id}: re-encoding is not byte-identical to the SDK's encode()"
                    );
                }
            }
            "invalid" => {
                let e = got.expect_err(id);
                assert_eq!(
                    e.kind().as_str(),
                    expect["error_kind"].as_str().unwrap(),
                    "{id}: {e}"
                );
                assert_eq!(
                    got_strict.unwrap_err().kind(),
                    e.kind(),
                    "{id}: strict differs"
                );
            }
            "non_strict" => {
                let msg = got.unwrap_or_else(|e| panic!("{id}: rejected: {e}"));
                assert_eq!(view(&msg), strip_kv(expect["decoded"].clone()), "{id}");
                assert_eq!(json!(warning_codes(&msg)), expect["warnings"], "{id}");
                let e = got_strict.expect_err(id);
                assert_eq!(
                    e.kind().as_str(),
                    expect["strict_error_kind"].as_str().unwrap(),
                    "{id}"
                );
            }
            other => panic!("{id}: unknown result {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 90, "only {checked} decode cases");
}

#[test]
fn json_1_fallback_messages_agree_with_the_sdk() {
    let mut checked = 0;
    for case in cases().iter().filter(|c| c["op"] == "json_decode") {
        let id = case["id"].as_str().unwrap();
        let text = case["input"]["text"].as_str().unwrap();
        let expect = &case["expect"];
        match expect["result"].as_str().unwrap() {
            "valid" => {
                let m = JsonMessage::from_json(text).unwrap_or_else(|e| panic!("{id}: {e}"));
                let want = &expect["message"];
                for (k, v) in [
                    ("avp_version", &m.avp_version),
                    ("session_id", &m.session_id),
                    ("source_agent_id", &m.source_agent_id),
                    ("target_agent_id", &m.target_agent_id),
                    ("content", &m.content),
                ] {
                    assert_eq!(want[k].as_str().unwrap(), v, "{id}: {k}");
                }
                let extra = avp_codec::json::Value::Object(m.extra.clone());
                let want_extra = want.get("extra").cloned().unwrap_or(json!({}));
                let ours: Value = serde_json::from_str(&to_python_json(&extra)).unwrap();
                assert_eq!(ours, want_extra, "{id}: extra");
                assert_eq!(
                    m.to_json(),
                    expect["to_json"].as_str().unwrap(),
                    "{id}: to_json bytes"
                );
            }
            "invalid" => {
                let e = JsonMessage::from_json(text).expect_err(id);
                assert_eq!(
                    e.kind().as_str(),
                    expect["error_kind"].as_str().unwrap(),
                    "{id}"
                );
            }
            other => panic!("{id}: unknown result {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 5);
}

/// AVP-WIRE-6: every strict prefix of every valid vector is `truncated`; a
/// prefix of an invalid or non-strict vector is `truncated` or already
/// fails with the vector's own error. Nothing panics.
#[test]
fn wire_6_truncation_sweep_over_every_vector() {
    let opts = DecodeOptions::default();
    let mut prefixes = 0u64;
    for case in cases().iter().filter(|c| c["op"] == "decode") {
        let id = case["id"].as_str().unwrap();
        let data = input(case);
        let full = decode_with(&data, &opts).err().map(|e| e.kind());
        let declared_end = if data.len() >= 12 {
            12 + u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize
        } else {
            usize::MAX
        };
        // Past the declared end a prefix is a whole message with fewer trailing bytes.
        for n in 0..data.len().min(declared_end) {
            let got = decode_with(&data[..n], &opts).err().map(|e| e.kind());
            let ok = got == Some(ErrorKind::Truncated) || (full.is_some() && got == full);
            assert!(ok, "{id}: prefix {n}: {got:?} (full: {full:?})");
            prefixes += 1;
        }
    }
    assert!(prefixes > 10_000, "{prefixes}");
}

/// AVP-WIRE-23: the stream decoder, fed each vector split at every point,
/// ends exactly as the one-shot decoder does.
#[test]
fn wire_23_incremental_at_every_split_equals_one_shot() {
    for case in cases().iter().filter(|c| c["op"] == "decode") {
        let data = input(case);
        let step = (data.len() / 512).max(1);
        for split in (0..=data.len()).step_by(step) {
            fuzzing::check_incremental(&data, split);
        }
    }
}

/// The round-trip oracle holds for every vector that decodes.
#[test]
fn wire_22_roundtrip_oracle_over_every_vector() {
    let mut decoded = 0;
    for case in cases().iter().filter(|c| c["op"] == "decode") {
        if fuzzing::check_roundtrip(&input(case)) {
            decoded += 1;
        }
    }
    assert!(decoded >= 40, "{decoded}");
}

/// Adversarial rewrites of every length field: each header length set to
/// 0, ±1 and extremes, and every metadata byte (tags, varints, field
/// lengths, map entry lengths) replaced by boundary values. Nothing panics,
/// a message that decodes never claims bytes it does not have, and the
/// oracles (round trip, incremental = one-shot) hold for every mutant.
#[test]
fn wire_6_length_and_metadata_rewrites_never_break_the_oracles() {
    let mut mutants = 0u64;
    for case in cases().iter().filter(|c| c["op"] == "decode") {
        let data = input(case);
        if data.len() < 12 || data.len() > 4096 {
            continue;
        }
        let pl = u32::from_le_bytes(data[4..8].try_into().unwrap());
        let ml = u32::from_le_bytes(data[8..12].try_into().unwrap());
        let mut check = |m: &[u8]| {
            if let Ok(msg) = decode_with(m, &DecodeOptions::default()) {
                assert!(msg.header.message_len() <= m.len() as u64);
            }
            fuzzing::check_roundtrip(m);
            fuzzing::check_incremental(m, m.len() / 2);
            mutants += 1;
        };
        for (off, orig) in [(4usize, pl), (8, ml)] {
            for v in [
                0,
                1,
                orig.wrapping_sub(1),
                orig.wrapping_add(1),
                pl,
                ml,
                u32::MAX,
                u32::MAX / 2,
                1 << 31,
            ] {
                let mut m = data.clone();
                m[off..off + 4].copy_from_slice(&v.to_le_bytes());
                check(&m);
            }
        }
        let meta_end = (12 + ml as usize).min(data.len());
        for i in 12..meta_end {
            for v in [
                0x00,
                0x01,
                0x7f,
                0x80,
                0xff,
                data[i].wrapping_add(1),
                data[i].wrapping_sub(1),
            ] {
                let mut m = data.clone();
                m[i] = v;
                check(&m);
            }
        }
    }
    assert!(mutants > 20_000, "{mutants}");
}

/// AVP-KV-4: every strict prefix of every valid KV payload is `truncated`.
#[test]
fn kv_4_truncation_sweep_over_kv_payloads() {
    let mut swept = 0;
    for case in cases()
        .iter()
        .filter(|c| c["op"] == "decode" && c["expect"]["kv"]["result"] == "valid")
    {
        let data = input(case);
        let msg = avp_codec::decode(&data).unwrap();
        let kv = KvCache::parse(&msg.payload).unwrap();
        let total = kv.header.total_bytes().unwrap() as usize;
        for n in 0..total {
            let e = KvCache::parse(&msg.payload[..n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Truncated, "{}: prefix {n}", case["id"]);
        }
        swept += 1;
    }
    assert!(swept >= 5, "{swept}");
}

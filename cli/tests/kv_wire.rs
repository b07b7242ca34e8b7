//! Compact contexts over HTTP (issue 17): `avp send --kv-quant` and
//! `--delta-from` against `avp serve` and the Python SDK's `create_app`, on
//! loopback. Rule IDs: AVP-HTTP-100/81 (spec/protocol/http.md), AVP-HTTP-102..84
//! (spec/impl/transport.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
use avp_codec::kv_quant::{QuantParams, encode_ext};
use avp_codec::{Compression, DataType, DecodeOptions, Metadata, PayloadType, decode_with, encode};
use serde_json::Value;

mod common;
use common::{Running, Scratch, avp, start, workspace};

const LAYERS: u32 = 2;
const HEADS: u32 = 2;
const DIM: u32 = 64;

/// A float32 KV context of `seq` positions whose value at a position does
/// not depend on `seq`: a longer context continues a shorter one.
fn kv_payload(seq: u32) -> Vec<u8> {
    let header = KvHeader {
        num_layers: LAYERS,
        num_kv_heads: HEADS,
        head_dim: DIM,
        seq_len: seq,
        dtype: KvDtype::Float32,
    };
    let tensor = |layer: u32, part: u32| -> Vec<u8> {
        let mut out = Vec::new();
        for h in 0..HEADS {
            for s in 0..seq {
                for c in 0..DIM {
                    let i = ((layer * 7 + part * 3 + h) * 131 + s * 17 + c * 5) % 211;
                    out.extend_from_slice(&(i as f32 / 40.0 - 2.5).to_le_bytes());
                }
            }
        }
        out
    };
    let tensors: Vec<(Vec<u8>, Vec<u8>)> =
        (0..LAYERS).map(|l| (tensor(l, 0), tensor(l, 1))).collect();
    write_kv_cache(
        &header,
        tensors.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    )
    .expect("kv payload")
}

fn metadata(payload_type: PayloadType) -> Metadata<'static> {
    Metadata::new()
        .with_payload_type(payload_type)
        .with_dtype(DataType::Float32)
        .with_model_id("fixture")
        .with_session_id("s")
        .with_source_agent_id("a")
        .with_target_agent_id("b")
        .with_extra_entry("model_hash", "mh")
}

/// A KV_CACHE message of `seq` positions written to `path`.
fn kv_file(path: &Path, seq: u32) -> Vec<u8> {
    let message = encode(
        &metadata(PayloadType::KvCache),
        &kv_payload(seq),
        Compression::None,
    )
    .expect("encode");
    std::fs::write(path, &message).expect("write");
    message
}

fn serve(extra: &[&str]) -> Running {
    let mut command = avp();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
        .args(extra)
        .stderr(Stdio::null());
    start(command)
}

fn send(file: &Path, url: &str, extra: &[&str]) -> Output {
    avp()
        .arg("send")
        .arg(file)
        .args(["--to", url, "--retries", "0"])
        .args(extra)
        .output()
        .expect("run avp send")
}

fn answer(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("answer JSON")
}

fn stored(dir: &Path, id: &Value) -> Vec<u8> {
    let id = id.as_str().expect("request_id");
    std::fs::read(dir.join(format!("{id}.avp"))).expect("stored message")
}

fn stored_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "avp"))
            })
            .count()
        })
        .unwrap_or(0)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// AVP-HTTP-100, AVP-HTTP-103: the peer announced int8 and int4, so the
/// context travels quantized and is stored dequantized as a plain KV v1
/// message whose values are within the scheme's error of the original.
#[test]
fn http_100_103_quantized_send_is_negotiated_and_stored_dequantized() {
    let scratch = Scratch::new("kvwire", "quant");
    let store = scratch.path("store");
    let server = serve(&["--store", s(&store)]);
    let file = scratch.path("ctx.avp");
    let original = kv_file(&file, 64);
    for (scheme, tolerance) in [("int8", 0.02f32), ("int4", 0.2)] {
        let out = send(&file, &server.url, &["--kv-quant", scheme]);
        let answer = answer(&out);
        assert_eq!(answer["kv_ext"]["scheme"], scheme, "{answer}");
        let received = answer["kv_ext"]["received_bytes"].as_u64().expect("bytes");
        assert!(
            received * 100 < original.len() as u64 * 40,
            "{scheme}: {received} of {} bytes sent",
            original.len()
        );
        assert!(stderr(&out).contains(&format!("{scheme} context [0, 64)")));
        let bytes = stored(&store, &answer["request_id"]);
        let message = decode_with(&bytes, &DecodeOptions::strict()).expect("plain AVP v1");
        assert_eq!(message.metadata.payload_type, PayloadType::KvCache);
        assert_eq!(message.metadata.extra.get("model_hash"), Some("mh"));
        let want = kv_payload(64);
        assert_eq!(message.payload.len(), want.len());
        let got = KvCache::parse(&message.payload).expect("KV v1");
        let (a, b) = (floats(&want[17..]), floats(&got_bytes(&got)));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "{scheme}: worst error {worst}");
    }
}

fn got_bytes(kv: &KvCache<'_>) -> Vec<u8> {
    kv.layers()
        .flat_map(|l| [l.key.bytes().to_vec(), l.value.bytes().to_vec()])
        .flatten()
        .collect()
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// AVP-HTTP-103: a peer that did not announce the scheme gets nothing (exit
/// 3, a message naming the capability) unless `--kv-quant-fallback full`,
/// which sends the file unchanged; an already quantized file is never sent
/// to it. AVP-HTTP-100: the server itself refuses what it did not announce.
#[test]
fn http_100_103_unannounced_schemes_are_refused_on_both_sides() {
    let scratch = Scratch::new("kvwire", "refused");
    let store = scratch.path("store");
    let server = serve(&["--store", s(&store), "--kv-capabilities", "int8"]);
    let file = scratch.path("ctx.avp");
    let original = kv_file(&file, 64);

    let out = send(&file, &server.url, &["--kv-quant", "int4"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("kv_quant_int4"), "{}", stderr(&out));
    assert_eq!(stored_count(&store), 0, "nothing sent");

    let out = send(
        &file,
        &server.url,
        &["--kv-quant", "int4", "--kv-quant-fallback", "full"],
    );
    let answer = answer(&out);
    assert!(answer.get("kv_ext").is_none(), "{answer}");
    assert_eq!(stored(&store, &answer["request_id"]), original, "as sent");

    // An int4 file: refused by avp send before anything is sent ...
    let payload = kv_payload(64);
    let int4 = encode_ext(
        &KvCache::parse(&payload).expect("kv"),
        &QuantParams::INT4,
        0,
        None,
    )
    .expect("int4");
    let ext = encode(&metadata(PayloadType::KvCacheExt), &int4, Compression::None).expect("ext");
    let ext_file = scratch.path("int4.avp");
    std::fs::write(&ext_file, &ext).expect("write");
    let out = send(&ext_file, &server.url, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("kv_quant_int4"), "{}", stderr(&out));
    assert_eq!(stored_count(&store), 1);
    // ... and by the server when posted directly.
    let (status, body) = post_raw(&server.url, &ext_file);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["kind"], "capability_not_announced", "{body}");
    assert_eq!(stored_count(&store), 1, "nothing stored");
}

/// POSTs a file to /avp/v2/transmit with Python's urllib (no client-side
/// negotiation): the status and the JSON body.
fn post_raw(url: &str, file: &Path) -> (u16, Value) {
    let script = r#"
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1] + "/avp/v2/transmit", data=open(sys.argv[2], "rb").read(),
                             headers={"Content-Type": "application/avp+binary", "AVP-Version": "0.4"})
try:
    r = urllib.request.urlopen(req); print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"#;
    let out = Command::new(python())
        .args(["-c", script, url])
        .arg(file)
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("python said: {text}{}", stderr(&out)));
    let body = serde_json::from_str(lines.next().unwrap_or("null")).expect("JSON body");
    (status, body)
}

fn python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

/// AVP-HTTP-101, AVP-HTTP-102, AVP-HTTP-104: turn 2 continues turn 1; sent as
/// a delta on top of turn 1 (found by its prefix address), it is stored as
/// the full context, byte for byte what the file holds. Quantized deltas
/// are assembled the same way.
#[test]
fn http_101_102_104_delta_is_assembled_byte_for_byte() {
    let scratch = Scratch::new("kvwire", "delta");
    let store = scratch.path("store");
    let server = serve(&["--store", s(&store)]);
    let (turn1, turn2) = (scratch.path("turn1.avp"), scratch.path("turn2.avp"));
    kv_file(&turn1, 24);
    let full = kv_file(&turn2, 40);
    answer(&send(&turn1, &server.url, &[]));

    let out = send(&turn2, &server.url, &["--delta-from", s(&turn1)]);
    let got = answer(&out);
    assert_eq!(got["kv_ext"]["seq_start"], 24, "{got}");
    assert_eq!(got["kv_ext"]["seq_len"], 40);
    let received = got["kv_ext"]["received_bytes"].as_u64().expect("bytes");
    assert!(
        received < full.len() as u64 / 2,
        "{received} of {} bytes",
        full.len()
    );
    assert!(stderr(&out).contains("delta [24, 40)"), "{}", stderr(&out));
    assert_eq!(stored(&store, &got["request_id"]), full, "byte for byte");

    // A quantized delta on top of the assembled turn 2 (indexed in its turn).
    let turn3 = scratch.path("turn3.avp");
    kv_file(&turn3, 72);
    let out = send(
        &turn3,
        &server.url,
        &["--delta-from", s(&turn2), "--kv-quant", "int8"],
    );
    let got = answer(&out);
    assert_eq!(
        (
            got["kv_ext"]["scheme"].as_str(),
            got["kv_ext"]["seq_start"].as_u64()
        ),
        (Some("int8"), Some(40)),
        "{got}"
    );
    let bytes = stored(&store, &got["request_id"]);
    let message = decode_with(&bytes, &DecodeOptions::strict()).expect("plain v1");
    let want = kv_payload(72);
    let kv = KvCache::parse(&message.payload).expect("kv");
    assert_eq!(kv.header.seq_len, 72);
    // The first 40 positions come from the base exactly; the rest within int8's error.
    let wanted = KvCache::parse(&want).expect("kv");
    let row = (DIM * 4) as usize;
    for (g, w) in kv.layers().zip(wanted.layers()) {
        for (gt, wt) in [(g.key, w.key), (g.value, w.value)] {
            for (gh, wh) in gt
                .bytes()
                .chunks_exact(row * 72)
                .zip(wt.bytes().chunks_exact(row * 72))
            {
                assert_eq!(gh[..row * 40], wh[..row * 40], "prefix copied exactly");
                let worst = floats(&gh[row * 40..])
                    .iter()
                    .zip(floats(&wh[row * 40..]))
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 0.02, "int8 tail error {worst}");
            }
        }
    }
}

/// AVP-HTTP-101, AVP-HTTP-104: a peer without the base answers 409
/// `missing_prefix`; `avp send` says so and sends the full context once,
/// which is stored as it is. A base the context does not continue is a
/// local error (exit 2) and sends nothing.
#[test]
fn http_101_104_missing_prefix_falls_back_to_the_full_context() {
    let scratch = Scratch::new("kvwire", "missing");
    let store = scratch.path("store");
    let server = serve(&["--store", s(&store)]);
    let (turn1, turn2) = (scratch.path("turn1.avp"), scratch.path("turn2.avp"));
    kv_file(&turn1, 24);
    let full = kv_file(&turn2, 40);
    let out = send(&turn2, &server.url, &["--delta-from", s(&turn1)]);
    let got = answer(&out);
    let err = stderr(&out);
    assert!(
        err.contains("missing_prefix") && err.contains("sending the full context once"),
        "{err}"
    );
    assert!(got.get("kv_ext").is_none(), "{got}");
    assert_eq!(stored(&store, &got["request_id"]), full);
    assert_eq!(stored_count(&store), 1, "the refused delta stored nothing");

    // The raw 409: a delta posted for a base the server does not hold.
    let other = scratch.path("other.avp");
    let kv = kv_payload(40);
    let delta = avp_codec::kv_delta::split_delta(
        &KvCache::parse(&kv).expect("kv"),
        8,
        "another model",
        &QuantParams::NONE,
    )
    .expect("delta")
    .1;
    std::fs::write(
        &other,
        encode(
            &metadata(PayloadType::KvCacheExt),
            &delta,
            Compression::None,
        )
        .expect("encode"),
    )
    .expect("write");
    let (status, body) = post_raw(&server.url, &other);
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("missing_prefix")),
        "{body}"
    );

    // A base that shares only [0, 23) with turn 2 (a fork the server never
    // saw): the delta names it in its hint, the server holds nothing under
    // either name, answers missing_prefix, and the full context follows.
    let stranger = scratch.path("stranger.avp");
    let mut shifted = kv_payload(24);
    let last = shifted.len() - 1;
    shifted[last] ^= 0x40;
    std::fs::write(
        &stranger,
        encode(&metadata(PayloadType::KvCache), &shifted, Compression::None).expect("encode"),
    )
    .expect("write");
    let out = send(&turn2, &server.url, &["--delta-from", s(&stranger)]);
    let got = answer(&out);
    let err = stderr(&out);
    assert!(
        err.contains("delta [23, 40)") || err.contains("missing_prefix"),
        "{err}"
    );
    assert!(err.contains("missing_prefix"), "{err}");
    assert_eq!(stored(&store, &got["request_id"]), full);
    // A base that shares no position: said so, and the full context sent.
    let mut foreign = kv_payload(24);
    foreign[17] ^= 0x40;
    std::fs::write(
        &stranger,
        encode(&metadata(PayloadType::KvCache), &foreign, Compression::None).expect("encode"),
    )
    .expect("write");
    let out = send(&turn2, &server.url, &["--delta-from", s(&stranger)]);
    let got = answer(&out);
    assert!(
        stderr(&out).contains("shares no position"),
        "{}",
        stderr(&out)
    );
    assert!(got.get("kv_ext").is_none(), "{got}");
    assert_eq!(stored_count(&store), 3);
}

/// A context of `seq` positions equal to [`kv_payload`]'s before `at` and
/// different from position `at` on (a fork sharing `[0, at)`).
fn fork_file(path: &Path, seq: u32, at: u32) -> Vec<u8> {
    let mut payload = kv_payload(seq);
    let row = (DIM * 4) as usize;
    for pos in at..seq {
        payload[17 + pos as usize * row + 1] ^= 0x08;
    }
    let message =
        encode(&metadata(PayloadType::KvCache), &payload, Compression::None).expect("encode");
    std::fs::write(path, &message).expect("write");
    message
}

fn hex_address(file: &Path, p: Option<u32>) -> String {
    let bytes = std::fs::read(file).expect("read");
    let message = decode_with(&bytes, &DecodeOptions::DEFAULT).expect("decode");
    let kv = KvCache::parse(&message.payload).expect("kv");
    let p = p.unwrap_or(kv.header.seq_len);
    avp_codec::kv_delta::prefix_address(&kv, p, "mh")
        .expect("address")
        .to_hex()
}

/// AVP-HTTP-122, AVP-KVD-30, AVP-KVD-31, AVP-KVD-32: the server holds 40 positions; the sender's
/// new context shares only their first 24. `avp send --delta-from` the
/// 40-position context sends [24, 56) with the base named in the hint, and
/// the server hashes [0, 24) of what it holds and assembles. A hint naming
/// a held context that does not start with the delta's prefix is 409
/// `prefix_mismatch`.
#[test]
fn http_122_a_base_inside_a_longer_stored_context_is_found_by_the_hint() {
    let scratch = Scratch::new("kvwire", "hint");
    let store = scratch.path("store");
    let server = serve(&["--store", s(&store)]);
    let (held, fork) = (scratch.path("held.avp"), scratch.path("fork.avp"));
    kv_file(&held, 40);
    let full = fork_file(&fork, 56, 24);
    answer(&send(&held, &server.url, &[]));
    let out = send(&fork, &server.url, &["--delta-from", s(&held)]);
    let got = answer(&out);
    assert_eq!(
        (
            got["kv_ext"]["seq_start"].as_u64(),
            got["kv_ext"]["seq_len"].as_u64()
        ),
        (Some(24), Some(56)),
        "{got} {}",
        stderr(&out)
    );
    assert!(
        stored(&store, &got["request_id"]) == full,
        "byte for byte, the hint not kept"
    );

    // A forged hint: it names the held context, but the delta's prefix is another's.
    let other = scratch.path("other.avp");
    let mut foreign = kv_payload(40);
    foreign[17] ^= 0x40;
    let (_, delta) = avp_codec::kv_delta::split_delta(
        &KvCache::parse(&foreign).expect("kv"),
        8,
        "mh",
        &QuantParams::NONE,
    )
    .expect("delta");
    let hinted = metadata(PayloadType::KvCacheExt)
        .with_extra_entry("avp.delta_base", hex_address(&held, None));
    std::fs::write(
        &other,
        encode(&hinted, &delta, Compression::None).expect("encode"),
    )
    .expect("write");
    let (status, body) = post_raw(&server.url, &other);
    assert_eq!(
        (status, body["error"]["kind"].as_str()),
        (409, Some("prefix_mismatch")),
        "{body}"
    );
    assert_eq!(stored_count(&store), 2, "nothing stored for the refusal");
}

/// AVP-HTTP-120 (a delta's boundary is indexed with the context assembled
/// from it, and found after a restart without the base it came from) and
/// AVP-HTTP-121 (the index is bounded: with room for one entry, an older
/// base is forgotten and the sender falls back to the full context).
#[test]
fn http_120_121_boundaries_are_indexed_bounded_and_survive_a_restart() {
    let scratch = Scratch::new("kvwire", "boundary");
    let store = scratch.path("store");
    let (turn1, turn2, turn3) = (
        scratch.path("turn1.avp"),
        scratch.path("turn2.avp"),
        scratch.path("turn3.avp"),
    );
    kv_file(&turn1, 24);
    kv_file(&turn2, 40);
    let full3 = fork_file(&turn3, 48, 24);
    let first_id = {
        let server = serve(&["--store", s(&store)]);
        let first = answer(&send(&turn1, &server.url, &[]));
        let got = answer(&send(&turn2, &server.url, &["--delta-from", s(&turn1)]));
        assert_eq!(got["kv_ext"]["seq_start"], 24, "{got}");
        first["request_id"].as_str().expect("id").to_owned()
    };
    // Turn 1 is gone from the store; turn 2 still starts with it.
    for ext in ["avp", "meta"] {
        std::fs::remove_file(store.join(format!("{first_id}.{ext}"))).expect("remove");
    }
    let server = serve(&["--store", s(&store)]);
    let out = send(&turn3, &server.url, &["--delta-from", s(&turn1)]);
    let got = answer(&out);
    assert_eq!(
        got["kv_ext"]["seq_start"].as_u64(),
        Some(24),
        "found under turn 2's boundary: {got} {}",
        stderr(&out)
    );
    assert!(stored(&store, &got["request_id"]) == full3, "byte for byte");
    drop(server);

    let small = scratch.path("small");
    let server = serve(&["--store", s(&small), "--prefix-index-capacity", "1"]);
    answer(&send(&turn1, &server.url, &[]));
    let unrelated = scratch.path("unrelated.avp");
    fork_file(&unrelated, 30, 0);
    answer(&send(&unrelated, &server.url, &[]));
    let out = send(&turn2, &server.url, &["--delta-from", s(&turn1)]);
    let got = answer(&out);
    assert!(stderr(&out).contains("missing_prefix"), "{}", stderr(&out));
    assert!(got.get("kv_ext").is_none(), "the full context: {got}");
    assert_eq!(hex_address(&turn1, None), hex_address(&turn2, Some(24)));
}

/// AVP-HTTP-103: the SDK 0.6.2 announces none of the capabilities, so it
/// never receives a KV_CACHE_EXT message: `--kv-quant` stops (exit 3) or
/// falls back to the plain context, `--delta-from` sends the full context,
/// and a quantized file is refused before sending.
#[test]
fn http_103_the_sdk_peer_never_receives_kv_cache_ext() {
    if !python().exists() {
        eprintln!("skipped: no .venv/bin/python");
        return;
    }
    let scratch = Scratch::new("kvwire", "sdk");
    let record = scratch.path("record.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transport_py/sdk_peer.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args(["server", s(&record)])
        .stderr(Stdio::null());
    let server = start(command);
    let (turn1, turn2) = (scratch.path("turn1.avp"), scratch.path("turn2.avp"));
    kv_file(&turn1, 24);
    kv_file(&turn2, 64);
    let records = || -> Vec<Value> {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    };

    let out = send(&turn2, &server.url, &["--kv-quant", "int8"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("kv_quant_int8"), "{}", stderr(&out));
    assert!(records().is_empty());

    let out = send(
        &turn2,
        &server.url,
        &["--kv-quant", "int8", "--kv-quant-fallback", "full"],
    );
    answer(&out);
    let out = send(&turn2, &server.url, &["--delta-from", s(&turn1)]);
    answer(&out);
    assert!(
        stderr(&out).contains("did not announce kv_delta"),
        "{}",
        stderr(&out)
    );
    let got = records();
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert_eq!(
            r["payload_len"],
            kv_payload(64).len(),
            "the plain context: {r}"
        );
    }

    let payload = kv_payload(64);
    let int8 = encode_ext(
        &KvCache::parse(&payload).expect("kv"),
        &QuantParams::INT8,
        0,
        None,
    )
    .expect("int8");
    let ext_file = scratch.path("int8.avp");
    std::fs::write(
        &ext_file,
        encode(&metadata(PayloadType::KvCacheExt), &int8, Compression::None).expect("ext"),
    )
    .expect("write");
    let out = send(&ext_file, &server.url, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(records().len(), 2, "nothing more reached the SDK");

    // AVP-CHK-9: a chunked file goes to the SDK joined into one plain message.
    let chunked = scratch.path("chunked.avp");
    let split = avp()
        .args(["convert", s(&turn2), "-o", s(&chunked), "--chunk-mib", "1"])
        .output()
        .expect("avp convert");
    assert!(split.status.success(), "{}", stderr(&split));
    let out = send(&chunked, &server.url, &[]);
    answer(&out);
    let got = records();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["payload_len"], kv_payload(64).len(), "{}", got[2]);
}

/// AVP-HTTP-104, the multi-turn path: `avp think --context TURN1 --to URL`
/// sends only the positions after TURN1 to a peer that announced
/// `kv_delta`, and the peer stores the same KV as the full turn 2; a peer
/// without `kv_delta` gets the full context.
#[cfg(feature = "engine")]
#[test]
fn http_104_think_continuing_a_context_sends_a_delta() {
    let scratch = Scratch::new("kvwire", "think");
    let model = workspace().join("engine/testdata/models/qwen2");
    for (caps, delta) in [("int8,int4,delta", true), ("int8,int4", false)] {
        let store = scratch.path(&format!("store-{delta}"));
        let server = serve(&[
            "--store",
            s(&store),
            "--model",
            s(&model),
            "--kv-capabilities",
            caps,
        ]);
        let (turn1, turn2) = (
            scratch.path(&format!("t1-{delta}.avp")),
            scratch.path(&format!("t2-{delta}.avp")),
        );
        let think = |prompt: &str, out: &Path, context: Option<&Path>| -> Output {
            let mut command = avp();
            command.args(["think", "--model", s(&model), "--prompt", prompt]);
            command.args(["--steps", "2", "--to", &server.url, "--out", s(out)]);
            if let Some(context) = context {
                command.args(["--context", s(context)]);
            }
            command.output().expect("run avp think")
        };
        answer(&think(
            "The first turn, somewhat longer than the second.",
            &turn1,
            None,
        ));
        let out = think("Second turn.", &turn2, Some(&turn1));
        let got = answer(&out);
        let first = decode_file(&std::fs::read(&turn1).expect("turn 1"));
        let positions = KvCache::parse(&first).expect("kv").header.seq_len;
        if delta {
            assert_eq!(got["kv_ext"]["seq_start"], positions, "{got}");
            assert!(stderr(&out).contains("delta: "), "{}", stderr(&out));
        } else {
            assert!(got.get("kv_ext").is_none(), "{got}");
        }
        let want = decode_file(&std::fs::read(&turn2).expect("turn 2"));
        let stored = decode_file(&stored(&store, &got["request_id"]));
        assert_eq!(stored, want, "the stored turn 2 is the full context");
    }
}

/// The tensor bytes of an encoded message.
#[cfg(feature = "engine")]
fn decode_file(bytes: &[u8]) -> Vec<u8> {
    decode_with(bytes, &DecodeOptions::strict())
        .expect("message")
        .payload
        .into_owned()
}

/// AVP-CLI-110, AVP-HTTP-100/103: `avp send --kv-quant int8-channel` goes
/// quantized only to a peer that announced `kv_quant_int8_channel` (`avp
/// serve --kv-capabilities int8-channel`); to one that announced only int8
/// nothing is sent (exit 3, naming the capability). The stored context is
/// within int8's error; every token is quantized (no residual: the last key
/// group of a channel is shorter, AVP-KVQ-31).
#[test]
fn cli_110_int8_channel_send_needs_its_capability() {
    let scratch = Scratch::new("kvwire", "int8ch");
    let file = scratch.path("ctx.avp");
    kv_file(&file, 70);
    let only_int8 = serve(&[
        "--store",
        s(&scratch.path("a")),
        "--kv-capabilities",
        "int8",
    ]);
    let out = send(&file, &only_int8.url, &["--kv-quant", "int8-channel"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kv_quant_int8_channel"),
        "{}",
        stderr(&out)
    );

    let store = scratch.path("b");
    let server = serve(&["--store", s(&store), "--kv-capabilities", "int8-channel"]);
    let out = send(&file, &server.url, &["--kv-quant", "int8-channel"]);
    let answer = answer(&out);
    assert_eq!(answer["kv_ext"]["scheme"], "int8-channel", "{answer}");
    assert!(stderr(&out).contains("int8-channel context [0, 70)"));
    // Groups of 64 over 70 tokens: 2 key groups a channel, 70 value groups a head, one
    // byte a value (a float32 residual of the 6 leftover tokens would add 2 x 6 KiB).
    let (h, d, t) = (HEADS as u64, DIM as u64, 70u64);
    let key = 2 * (h * 2 * d) + h * t * d;
    let value = 2 * (h * t) + h * t * d;
    let payload = 40 + u64::from(LAYERS) * (key + value);
    let received = answer["kv_ext"]["received_bytes"].as_u64().expect("bytes");
    assert!(
        (payload..payload + 4096).contains(&received),
        "{received} bytes received, the payload is {payload}"
    );
    let bytes = stored(&store, &answer["request_id"]);
    let message = decode_with(&bytes, &DecodeOptions::strict()).expect("plain AVP v1");
    assert_eq!(message.metadata.payload_type, PayloadType::KvCache);
    let want = kv_payload(70);
    let got = KvCache::parse(&message.payload).expect("KV v1");
    let (a, b) = (floats(&want[17..]), floats(&got_bytes(&got)));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 0.02, "worst error {worst}");
}

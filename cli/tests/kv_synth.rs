//! `avp kv synth|split|join|verify` (spec/impl/cli.md AVP-CLI-13) and the
//! chunked context files of spec/protocol/chunked.md: deterministic
//! synthesis, one message or chunks, refusal of a context over one message
//! without chunks (AVP-CHK-9), split/join round trips, typed errors for
//! broken files, never a half-written output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Output;

use avp_codec::chunk::{AssemblyLimits, assemble_messages, context_digest, descriptor_of};
use avp_codec::kv::{KvCache, KvDtype};
use avp_codec::{DecodeOptions, decode_with, peek};
use serde_json::Value;

mod common;
use common::{Scratch, avp};

fn run(args: &[&str], out: &Path) -> Output {
    avp()
        .arg("kv")
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn json_line(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn synth(out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "synth",
        "--layers",
        "6",
        "--heads",
        "2",
        "--head-dim",
        "64",
        "--tokens",
        "1000",
    ];
    args.extend_from_slice(extra);
    let o = run(&args, out);
    assert!(o.status.success(), "{o:?}");
    json_line(&o)
}

/// The messages of a file of messages back to back.
fn messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = peek(rest).unwrap().message_len() as usize;
        let (m, r) = rest.split_at(len);
        out.push(m);
        rest = r;
    }
    out
}

#[test]
fn synth_one_message_is_deterministic_and_a_valid_kv_cache() {
    let s = Scratch::new("kv", "single");
    let a = s.path("a.avp");
    let summary = synth(&a, &["--seed", "7"]);
    assert_eq!(summary["messages"], 1);
    let bytes = std::fs::read(&a).unwrap();
    let msg = decode_with(&bytes, &DecodeOptions::strict()).unwrap();
    assert!(descriptor_of(&msg.metadata).unwrap().is_none());
    let kv = KvCache::parse_with(&msg.payload, true).unwrap();
    assert_eq!(
        (
            kv.header.num_layers,
            kv.header.num_kv_heads,
            kv.header.head_dim
        ),
        (6, 2, 64)
    );
    assert_eq!(
        (kv.header.seq_len, kv.header.dtype),
        (1000, KvDtype::Float16)
    );
    assert_eq!(summary["context_bytes"], msg.payload.len() as u64);
    let hex: String = context_digest(&msg.payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(summary["context_digest"], hex);
    // Every value finite and not all equal.
    let halves: Vec<u16> = msg.payload[17..]
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    assert!(halves.iter().all(|h| h & 0x7c00 != 0x7c00));
    assert!(halves.iter().any(|&h| h != halves[0]));
    // Same seed, same bytes; another seed, other bytes.
    let b = s.path("b.avp");
    synth(&b, &["--seed", "7"]);
    assert_eq!(std::fs::read(&b).unwrap(), bytes);
    synth(&b, &["--seed", "8"]);
    assert_ne!(std::fs::read(&b).unwrap(), bytes);
}

#[test]
fn avp_chk_1_synth_chunks_assemble_to_the_single_message_payload() {
    let s = Scratch::new("kv", "chunks");
    let one = s.path("one.avp");
    let chunked = s.path("chunked.avp");
    synth(&one, &[]);
    let summary = synth(&chunked, &["--chunk-mib", "1"]);
    let one_bytes = std::fs::read(&one).unwrap();
    let whole = decode_with(&one_bytes, &DecodeOptions::strict())
        .unwrap()
        .payload
        .into_owned();
    let bytes = std::fs::read(&chunked).unwrap();
    let msgs = messages(&bytes);
    assert_eq!(summary["messages"], msgs.len());
    assert_eq!(msgs.len(), 3, "3 MiB of layers in chunks of at most 1 MiB");
    for m in &msgs {
        let msg = decode_with(m, &DecodeOptions::strict()).unwrap();
        assert!(msg.payload.len() <= 1 << 20);
        assert!(descriptor_of(&msg.metadata).unwrap().is_some());
    }
    let assembled =
        assemble_messages(&msgs, &AssemblyLimits::DEFAULT, &DecodeOptions::strict()).unwrap();
    assert_eq!(assembled, whole);
    // verify reads it back; join gives the single message byte for byte.
    let v = avp().args(["kv", "verify"]).arg(&chunked).output().unwrap();
    assert!(v.status.success(), "{v:?}");
    assert_eq!(json_line(&v)["chunks"], 3);
    let joined = s.path("joined.avp");
    let j = avp()
        .args(["kv", "join"])
        .arg(&chunked)
        .arg("-o")
        .arg(&joined)
        .output()
        .unwrap();
    assert!(j.status.success(), "{j:?}");
    assert_eq!(std::fs::read(&joined).unwrap(), one_bytes);
    // split of the single message verifies and joins back too.
    let split = s.path("split.avp");
    let sp = avp()
        .args(["kv", "split"])
        .arg(&one)
        .args(["--chunk-mib", "2", "-o"])
        .arg(&split)
        .output()
        .unwrap();
    assert!(sp.status.success(), "{sp:?}");
    assert_eq!(json_line(&sp)["messages"], 2);
    let split_bytes = std::fs::read(&split).unwrap();
    let assembled = assemble_messages(
        &messages(&split_bytes),
        &AssemblyLimits::DEFAULT,
        &DecodeOptions::strict(),
    )
    .unwrap();
    assert_eq!(assembled, whole);
}

#[test]
fn avp_chk_9_a_context_over_one_message_is_refused_without_chunks() {
    // AVP-CHK-9: a sender that may not send chunks sends one message when
    // the context fits and refuses otherwise. 40 layers x 8 heads x 128 x
    // 130000 tokens of float16 is 21 GB: refused before a byte is written.
    let s = Scratch::new("kv", "refuse");
    let out = s.path("big.avp");
    let o = run(
        &[
            "synth",
            "--layers",
            "40",
            "--heads",
            "8",
            "--head-dim",
            "128",
            "--tokens",
            "130000",
        ],
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let e = json_line(&o);
    assert_eq!(e["error"]["kind"], "invalid_argument");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("--chunk-mib"), "{message}");
    assert_eq!(
        std::fs::read_dir(&s.0).unwrap().count(),
        0,
        "nothing written"
    );
    // 4 GiB + 17 bytes of payload: over one message by a few bytes.
    let o = run(
        &[
            "synth",
            "--layers",
            "1",
            "--heads",
            "1",
            "--head-dim",
            "1",
            "--tokens",
            "536870912",
            "--dtype",
            "float32",
        ],
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        std::fs::read_dir(&s.0).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn avp_chk_5_broken_chunked_files_get_typed_errors_and_no_output() {
    let s = Scratch::new("kv", "broken");
    let chunked = s.path("chunked.avp");
    synth(&chunked, &["--chunk-mib", "1", "--dtype", "bfloat16"]);
    let bytes = std::fs::read(&chunked).unwrap();
    let msgs = messages(&bytes);
    let check = |name: &str, data: Vec<u8>, kind: &str| {
        let input = s.path(name);
        std::fs::write(&input, data).unwrap();
        let out = s.path(&format!("{name}.joined"));
        let o = avp()
            .args(["kv", "join"])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{name}: {o:?}");
        assert_eq!(json_line(&o)["error"]["kind"], kind, "{name}");
        assert!(!out.exists(), "{name}: output written");
        let leftovers: Vec<_> = std::fs::read_dir(&s.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp-avp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };
    check("missing", [msgs[0], msgs[2]].concat(), "incomplete_context");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    check("flipped", flipped, "checksum_mismatch");
    check("truncated", bytes[..bytes.len() - 1].to_vec(), "truncated");
    // A plain message is not a chunked file.
    let one = s.path("one.avp");
    synth(&one, &[]);
    check("plain", std::fs::read(&one).unwrap(), "bad_chunk");
    // Out of order with a duplicate still joins.
    let shuffled = [msgs[2], msgs[0], msgs[2], msgs[1]].concat();
    let input = s.path("shuffled");
    std::fs::write(&input, shuffled).unwrap();
    let o = avp().args(["kv", "verify"]).arg(&input).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let v = json_line(&o);
    assert_eq!(
        (v["chunks"].as_u64(), v["messages"].as_u64()),
        (Some(3), Some(4))
    );
}

#[test]
fn synth_refuses_bad_arguments_with_invalid_argument() {
    let s = Scratch::new("kv", "args");
    let out = s.path("x.avp");
    let dims = |layers: &'static str| {
        vec![
            "synth",
            "--layers",
            layers,
            "--heads",
            "1",
            "--head-dim",
            "4",
            "--tokens",
            "3",
        ]
    };
    for (base, extra) in [
        (dims("2"), &["--dtype", "int8"][..]),
        (dims("2"), &["--chunk-mib", "0"][..]),
        (dims("0"), &["--chunk-mib", "1"][..]),
    ] {
        let mut args = base;
        args.extend_from_slice(extra);
        let o = run(&args, &out);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {o:?}");
        assert_eq!(json_line(&o)["error"]["kind"], "invalid_argument");
        assert!(!out.exists());
    }
}

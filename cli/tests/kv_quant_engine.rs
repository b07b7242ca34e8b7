//! `avp think --kv-quant` (issue 17, spec/impl/engine.md AVP-ENG-28..30):
//! the quantized context decodes as a KV_CACHE_EXT message, `avp generate
//! --context` continues from it exactly as from its dequantized floats, and
//! what cannot be quantized fails clearly without writing anything.
#![cfg(feature = "engine")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::process::Output;

use avp_codec::kv_quant::{KvExt, KvScheme};
use avp_codec::{Compression, PayloadType};
use common::{Scratch, avp, workspace};

fn model(name: &str) -> String {
    workspace()
        .join("engine/testdata/models")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn run(args: &[&str]) -> Output {
    avp().args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "avp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn think(out: &Path, quant: Option<&str>) -> Output {
    let m = model("trained_b");
    let out = out.to_str().unwrap();
    let mut args = vec![
        "think",
        "--model",
        &m,
        "--prompt",
        "Plan the route, then check it.",
        "--steps",
        "4",
        "--out",
        out,
    ];
    if let Some(q) = quant {
        args.extend(["--kv-quant", q]);
    }
    ok(&args)
}

/// `avp generate` on trained_b after `context`, greedy, 16 tokens: the text.
fn generate(context: &Path) -> String {
    let out = ok(&[
        "generate",
        "--model",
        &model("trained_b"),
        "--context",
        context.to_str().unwrap(),
        "--prompt",
        "Now answer.",
        "--max-new-tokens",
        "16",
        "--greedy",
    ]);
    String::from_utf8(out.stdout).unwrap()
}

/// AVP-ENG-28, AVP-ENG-29: think --kv-quant int8 writes a KV_CACHE_EXT
/// message smaller than the plain one, and generate continues from it as
/// from a plain message holding the codec's dequantization of it.
#[test]
fn think_kv_quant_int8_decodes_and_generate_continues_from_it() {
    let dir = Scratch::new("kvq", "think");
    let (plain, quant, dequant) = (
        dir.path("plain.avp"),
        dir.path("q8.avp"),
        dir.path("dq.avp"),
    );
    think(&plain, None);
    let report = think(&quant, Some("int8"));
    let stderr = String::from_utf8_lossy(&report.stderr);
    assert!(stderr.contains("(int8) written to"), "{stderr}");

    let bytes = std::fs::read(&quant).unwrap();
    let msg = avp_codec::decode(&bytes).unwrap();
    assert_eq!(msg.metadata.payload_type, PayloadType::KvCacheExt);
    let ext = KvExt::parse(&msg.payload).unwrap();
    assert_eq!(ext.header.scheme, KvScheme::Int8);
    assert_eq!(
        ext.header.group_size, 12,
        "trained_b's head_dim (AVP-ENG-30)"
    );
    let plain_len = std::fs::metadata(&plain).unwrap().len();
    // (12 int8 + one f32 scale) per 12 float32 values: a third, plus headers.
    assert!(
        (bytes.len() as u64) * 20 < plain_len * 7,
        "{} bytes quantized, {plain_len} plain (float32)",
        bytes.len()
    );
    let plain_msg = std::fs::read(&plain).unwrap();
    let plain_decoded = avp_codec::decode(&plain_msg).unwrap();
    assert_eq!(msg.metadata.extra, plain_decoded.metadata.extra);

    // The same floats as a plain KV_CACHE message, dequantized by the codec.
    let mut meta = msg.metadata.clone();
    meta.payload_type = PayloadType::KvCache;
    meta.compression = None;
    meta.payload_checksum = None; // the encoder writes the new payload's
    let floats = ext.dequantize().unwrap();
    std::fs::write(
        &dequant,
        avp_codec::encode(&meta, &floats, Compression::None).unwrap(),
    )
    .unwrap();
    let from_quantized = generate(&quant);
    assert!(!from_quantized.trim().is_empty());
    assert_eq!(from_quantized, generate(&dequant));

    // A LatentMAS chain continues from it too (think --context).
    let next = dir.path("next.avp");
    ok(&[
        "think",
        "--model",
        &model("trained_b"),
        "--prompt",
        "Check it.",
        "--steps",
        "2",
        "--context",
        quant.to_str().unwrap(),
        "--out",
        next.to_str().unwrap(),
    ]);
    let chained = std::fs::read(&next).unwrap();
    let chained = avp_codec::decode(&chained).unwrap();
    let kv = avp_codec::kv::KvHeader::parse(&chained.payload).unwrap();
    assert!(
        kv.seq_len > ext.header.seq_len,
        "the chain extends the quantized context"
    );
}

/// AVP-CLI-110, AVP-ENG-28/29: think --kv-quant int8-channel writes a
/// scheme-3 message with the engine's group (no residual), and generate continues
/// from it as from the codec's dequantization of it.
#[test]
fn think_kv_quant_int8_channel_decodes_and_generate_continues_from_it() {
    let dir = Scratch::new("kvq", "think8c");
    let (quant, dequant) = (dir.path("q8c.avp"), dir.path("dq8c.avp"));
    let report = think(&quant, Some("int8-channel"));
    let stderr = String::from_utf8_lossy(&report.stderr);
    assert!(stderr.contains("(int8-channel) written to"), "{stderr}");
    let bytes = std::fs::read(&quant).unwrap();
    let msg = avp_codec::decode(&bytes).unwrap();
    assert_eq!(msg.metadata.payload_type, PayloadType::KvCacheExt);
    let ext = KvExt::parse(&msg.payload).unwrap();
    let h = ext.header;
    assert_eq!(h.scheme, KvScheme::Int8Channel);
    assert_eq!(12 % h.group_size, 0, "a divisor of trained_b's head_dim");
    assert_eq!(
        h.residual, 0,
        "a shorter last key group instead (AVP-KVQ-31)"
    );
    let mut meta = msg.metadata.clone();
    meta.payload_type = PayloadType::KvCache;
    meta.compression = None;
    meta.payload_checksum = None;
    let floats = ext.dequantize().unwrap();
    std::fs::write(
        &dequant,
        avp_codec::encode(&meta, &floats, Compression::None).unwrap(),
    )
    .unwrap();
    let from_quantized = generate(&quant);
    assert!(!from_quantized.trim().is_empty());
    assert_eq!(from_quantized, generate(&dequant));
}

/// AVP-ENG-30: int4 on a head_dim of 12 is refused with the reason and
/// writes nothing; --kv-quant with --to is refused by the parser (the peer
/// must announce the scheme first, AVP-KVQ-1).
#[test]
fn think_kv_quant_refusals_are_clear() {
    let dir = Scratch::new("kvq", "refuse");
    let out = dir.path("q4.avp");
    let m = model("trained_b");
    let o = out.to_str().unwrap();
    let base = [
        "think", "--model", &m, "--prompt", "Hi.", "--steps", "1", "--out", o,
    ];
    let mut args = base.to_vec();
    args.extend(["--kv-quant", "int4"]);
    let r = run(&args);
    assert_eq!(r.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("head_dim is 12"), "{stderr}");
    assert!(!out.exists());

    let mut args = base.to_vec();
    args.extend(["--kv-quant", "int8", "--to", "http://127.0.0.1:9"]);
    let r = run(&args);
    assert_eq!(r.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("--to"), "{stderr}");
    assert!(!out.exists());
}

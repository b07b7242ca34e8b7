//! `avp convert` (spec/impl/cli.md, AVP-CLI-20 .. AVP-CLI-22): quantize,
//! change the dtype, write and assemble deltas; what the SDK reads back; and
//! hostile or nonsensical inputs, which get a typed error and no output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod kv_files;

use std::path::Path;
use std::process::Output;

use avp_codec::kv::{KvCache, KvDtype};
use avp_codec::kv_quant::KvExt;
use avp_codec::{Compression, DataType, Metadata, PayloadType};
use common::{Scratch, avp, workspace};
use kv_files::{MODEL_HASH, context_file, ext_message, kv_message, kv_payload};
use serde_json::Value;

type Arg<'a> = &'a dyn AsRef<std::ffi::OsStr>;

/// The arguments as they would be shown in a shell.
fn shown(args: &[Arg<'_>]) -> Vec<std::ffi::OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

fn run(args: &[Arg<'_>]) -> (i32, Value, Output) {
    let out = avp()
        .arg("convert")
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, out)
}

/// Runs a conversion that must succeed and returns its report line.
fn convert_ok(args: &[Arg<'_>]) -> Value {
    let (code, v, out) = run(args);
    assert_eq!(
        code,
        0,
        "{:?}: {}{}",
        shown(args),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

/// Runs a conversion that must fail with exit 1 and `kind`; OUT must not exist.
fn convert_refused(args: &[Arg<'_>], out_file: &Path, kind: &str) -> String {
    let (code, v, out) = run(args);
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (1, Some(kind)),
        "{:?}: {}{}",
        shown(args),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out_file.exists(),
        "{} written on error",
        out_file.display()
    );
    let mut tmp = out_file.as_os_str().to_owned();
    tmp.push(".tmp-avp");
    assert!(!Path::new(&tmp).exists(), "temporary file left behind");
    v["error"]["message"].as_str().unwrap().to_owned()
}

fn decoded(path: &Path) -> avp_codec::Message<'static> {
    let bytes = std::fs::read(path).unwrap();
    avp_codec::decode_with(&bytes, &avp_codec::DecodeOptions::strict())
        .unwrap()
        .into_owned()
}

/// `||x^ - x|| / ||x||` over all keys (`part` 0) or values (1) of two KV v1 payloads.
fn relative_error(a: &[u8], b: &[u8], part: usize) -> f64 {
    let (a, b) = (KvCache::parse(a).unwrap(), KvCache::parse(b).unwrap());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (la, lb) in a.layers().zip(b.layers()) {
        let (ta, tb) = if part == 0 {
            (la.key, lb.key)
        } else {
            (la.value, lb.value)
        };
        for (x, y) in ta.iter_f32().zip(tb.iter_f32()) {
            diff += f64::from(x - y).powi(2);
            norm += f64::from(y).powi(2);
        }
    }
    (diff / norm).sqrt()
}

/// The SDK 0.6.2 in the venv decodes `msg` and deserializes its KV cache;
/// returns the raw bytes of every K and V tensor it got, in order, or the
/// SDK's error line. `None` when the venv is missing.
fn sdk_tensors(dir: &Scratch, msg: &Path) -> Option<Result<Vec<u8>, String>> {
    let python = workspace().join(".venv/bin/python");
    if !python.exists() {
        eprintln!("skipped: no .venv/bin/python");
        return None;
    }
    let dump = dir.path("sdk.bin");
    let script = r#"
import sys, torch
from avp.codec import decode
from avp.errors import DecodeError
from avp.kv_cache import deserialize_kv_cache
try:
    msg = decode(open(sys.argv[1], 'rb').read())
except DecodeError as e:
    print('DecodeError:', e)
    sys.exit(0)
kv, header = deserialize_kv_cache(msg.payload)
with open(sys.argv[2], 'wb') as f:
    for k, v in kv:
        for t in (k, v):
            t = t.contiguous()
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            f.write(t.numpy().tobytes())
print('OK', header.dtype, header.seq_len)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(msg)
        .arg(&dump)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if stdout.starts_with("OK") {
        Ok(std::fs::read(dump).unwrap())
    } else {
        Err(stdout)
    })
}

#[test]
fn cli_20_kv_quant_int8_and_int4_then_kv_dtype_gives_what_the_sdk_reads() {
    let dir = Scratch::new("convert", "quant");
    let full = context_file(&dir, "full.avp", 72, KvDtype::Float16);
    let original = kv_payload(2, 2, 64, 72, KvDtype::Float16);
    // AVP-CLI-110: int8-channel's default group is the largest dividing head_dim (64 here),
    // no residual: the 8 tokens over 64 form a shorter last key group.
    for (scheme, bound, group, residual) in [
        ("int8", 0.01, 64, 0),
        ("int4", 0.10, 64, 8),
        ("int8-channel", 0.01, 64, 0),
    ] {
        let q = dir.path(&format!("{scheme}.avp"));
        let report = convert_ok(&[&full, &"-o", &q, &"--kv-quant", &scheme]);
        assert_eq!(report["payload_type"], "KV_CACHE_EXT");
        assert_eq!(report["scheme"], scheme);
        // Defaults (AVP-CLI-20): int4 groups of 64 as 64 divides head_dim; of its 72 tokens the
        // 8 that do not fill a group stay in the residual.
        assert_eq!(report["group_size"], group);
        assert_eq!(report["residual"], residual);
        let msg = decoded(&q);
        assert_eq!(msg.metadata.payload_type, PayloadType::KvCacheExt);
        assert_eq!(msg.metadata.dtype, DataType::Float16);
        assert_eq!(msg.metadata.session_id, "s-1", "metadata kept");
        let ext = KvExt::parse(&msg.payload).unwrap();
        assert_eq!(ext.header.scheme.name(), scheme);
        assert_eq!(report["length"], std::fs::read(&q).unwrap().len());
        // The SDK refuses the quantized message loudly (AVP-KVQ-1).
        if let Some(sdk) = sdk_tensors(&dir, &q) {
            let said = sdk.unwrap_err();
            assert!(said.contains("Unknown payload_type value 3"), "{said}");
        }
        // Back to plain floats: the dequantized values, within the issue's bounds.
        for dtype in ["float16", "float32", "bfloat16"] {
            let plain = dir.path(&format!("{scheme}-{dtype}.avp"));
            let report = convert_ok(&[&q, &"-o", &plain, &"--kv-dtype", &dtype]);
            assert_eq!(
                (report["payload_type"].as_str(), report["dtype"].as_str()),
                (Some("KV_CACHE"), Some(dtype))
            );
            let msg = decoded(&plain);
            assert_eq!(msg.metadata.payload_type, PayloadType::KvCache);
            let kv = KvCache::parse(&msg.payload).unwrap();
            assert_eq!(kv.header.dtype.name(), dtype);
            assert_eq!(kv.header.seq_len, 72);
            if dtype == "float16" {
                assert_eq!(&msg.payload[..], &ext.dequantize().unwrap()[..]);
            }
            for part in [0, 1] {
                let e = relative_error(&msg.payload, &original, part);
                assert!(e < bound, "{scheme} -> {dtype} part {part}: {e}");
            }
            // The SDK reads exactly our tensors.
            if let Some(sdk) = sdk_tensors(&dir, &plain) {
                assert_eq!(sdk.unwrap(), &msg.payload[17..], "{scheme} -> {dtype}");
            }
        }
    }
    // Options: int4 with groups of 32, a residual of 4 (+ 68 % 32 = 4), binary32 scales.
    let q = dir.path("int4-opts.avp");
    let report = convert_ok(&[
        &full,
        &"-o",
        &q,
        &"--kv-quant",
        &"int4",
        &"--group-size",
        &"32",
        &"--residual",
        &"4",
        &"--scale-dtype",
        &"f32",
    ]);
    assert_eq!(
        (report["group_size"].as_u64(), report["residual"].as_u64()),
        (Some(32), Some(8))
    );
    let ext_msg = decoded(&q);
    let ext = KvExt::parse(&ext_msg.payload).unwrap();
    assert_eq!(ext.header.scale_dtype, avp_codec::kv_quant::ScaleDtype::F32);
    // A plain message converted to another dtype directly.
    let f32_file = dir.path("f32.avp");
    convert_ok(&[&full, &"-o", &f32_file, &"--kv-dtype", &"float32"]);
    let msg = decoded(&f32_file);
    assert_eq!(msg.metadata.dtype, DataType::Float32);
    assert_eq!(
        relative_error(&msg.payload, &original, 0),
        0.0,
        "f16 -> f32 is exact"
    );
}

#[test]
fn cli_21_delta_from_then_base_gives_back_the_same_kv_bytes() {
    let dir = Scratch::new("convert", "delta");
    let full = context_file(&dir, "full.avp", 40, KvDtype::Float16);
    let base = context_file(&dir, "base.avp", 24, KvDtype::Float16);
    let delta = dir.path("delta.avp");
    let report = convert_ok(&[&full, &"-o", &delta, &"--delta-from", &base]);
    assert_eq!(
        (report["payload_type"].as_str(), report["scheme"].as_str()),
        (Some("KV_CACHE_EXT"), Some("none"))
    );
    assert_eq!(
        (report["seq_start"].as_u64(), report["seq_len"].as_u64()),
        (Some(24), Some(40))
    );
    let d = decoded(&delta);
    let ext = KvExt::parse(&d.payload).unwrap();
    assert_eq!(
        ext.prefix.unwrap().to_hex(),
        report["prefix"].as_str().unwrap()
    );
    assert!(
        std::fs::metadata(&delta).unwrap().len() < std::fs::metadata(&full).unwrap().len() / 2,
        "16 of 40 positions"
    );
    let full2 = dir.path("full2.avp");
    let report = convert_ok(&[&delta, &"-o", &full2, &"--base", &base]);
    assert_eq!(report["payload_type"], "KV_CACHE");
    assert_eq!(
        decoded(&full2).payload,
        decoded(&full).payload,
        "byte equality of the KV"
    );
    // A base longer than the prefix (one that starts with it) assembles too.
    let longer = context_file(&dir, "longer.avp", 32, KvDtype::Float16);
    let full3 = dir.path("full3.avp");
    convert_ok(&[&delta, &"-o", &full3, &"--base", &longer]);
    assert_eq!(decoded(&full3).payload, decoded(&full).payload);
    // A quantized delta: the prefix exact, the new positions within int8's bound.
    let qdelta = dir.path("qdelta.avp");
    let report = convert_ok(&[
        &full,
        &"-o",
        &qdelta,
        &"--delta-from",
        &base,
        &"--kv-quant",
        &"int8",
    ]);
    assert_eq!(report["scheme"], "int8");
    let full4 = dir.path("full4.avp");
    convert_ok(&[
        &qdelta,
        &"-o",
        &full4,
        &"--base",
        &base,
        &"--kv-dtype",
        &"float16",
    ]);
    let (got, want) = (decoded(&full4).payload, decoded(&full).payload);
    assert!(relative_error(&got, &want, 0) < 0.01);
    let head = 24 * 64 * 2; // the first head's prefix rows of layer 0's K
    assert_eq!(got[17..17 + head], want[17..17 + head]);
    // The SDK reads the assembled context.
    if let Some(sdk) = sdk_tensors(&dir, &full2) {
        assert_eq!(sdk.unwrap(), &decoded(&full).payload[17..]);
    }
}

/// AVP-KVD-30, AVP-KVD-31: a BASE that shares only the first positions of IN (a
/// fork) gives a delta from where they part, naming BASE in
/// `avp.delta_base`; `--base BASE` (longer than p) assembles it back.
#[test]
fn kvd_30_31_convert_delta_from_a_base_sharing_only_a_prefix() {
    let dir = Scratch::new("convert", "delta-fork");
    let full = context_file(&dir, "full.avp", 40, KvDtype::Float16);
    let fork = dir.path("fork.avp");
    let mut payload = kv_payload(2, 2, 64, 32, KvDtype::Float16);
    let row = 64 * 2;
    // Layer 1's V, head 1, position 28 differs: p = 28.
    let tensor = 2 * 32 * row;
    payload[17 + 3 * tensor + 32 * row + 28 * row + 5] ^= 0x20;
    std::fs::write(&fork, kv_message(&payload, KvDtype::Float16)).unwrap();
    let delta = dir.path("delta.avp");
    let report = convert_ok(&[&full, &"-o", &delta, &"--delta-from", &fork]);
    assert_eq!(
        (report["seq_start"].as_u64(), report["seq_len"].as_u64()),
        (Some(28), Some(40))
    );
    let fork_kv = decoded(&fork);
    let want_hint = avp_codec::kv_delta::prefix_address(
        &KvCache::parse(&fork_kv.payload).unwrap(),
        32,
        MODEL_HASH,
    )
    .unwrap()
    .to_hex();
    let d = decoded(&delta);
    assert_eq!(
        d.metadata.extra.get("avp.delta_base"),
        Some(want_hint.as_str())
    );
    let full2 = dir.path("full2.avp");
    convert_ok(&[&delta, &"-o", &full2, &"--base", &fork]);
    assert_eq!(decoded(&full2).payload, decoded(&full).payload);
    assert_eq!(
        decoded(&full2).metadata.extra.get("avp.delta_base"),
        None,
        "the hint is the delta's, not the assembled context's"
    );
    // A base that shares no position: a typed error, nothing written.
    let stranger = dir.path("stranger.avp");
    let mut payload = kv_payload(2, 2, 64, 40, KvDtype::Float16);
    payload[17] ^= 1;
    std::fs::write(&stranger, kv_message(&payload, KvDtype::Float16)).unwrap();
    let out = dir.path("out.avp");
    let why = convert_refused(
        &[&full, &"-o", &out, &"--delta-from", &stranger],
        &out,
        "prefix_mismatch",
    );
    assert!(why.contains("share no position"), "{why}");
}

#[test]
fn cli_21_22_deltas_need_their_base_and_bases_must_fit() {
    let dir = Scratch::new("convert", "delta-bad");
    let full = context_file(&dir, "full.avp", 40, KvDtype::Float16);
    let base = context_file(&dir, "base.avp", 24, KvDtype::Float16);
    let delta = dir.path("delta.avp");
    convert_ok(&[&full, &"-o", &delta, &"--delta-from", &base]);
    let out = dir.path("out.avp");
    // A delta without its base, for every output form.
    for extra in [&["--kv-dtype", "float16"][..], &["--kv-quant", "int8"][..]] {
        let mut args: Vec<Arg<'_>> = vec![&delta, &"-o", &out];
        args.extend(extra.iter().map(|a| a as Arg<'_>));
        let why = convert_refused(&args, &out, "invalid_argument");
        assert!(why.contains("--base"), "{why}");
    }
    // --base given for a full context.
    let why = convert_refused(
        &[&full, &"-o", &out, &"--base", &base],
        &out,
        "invalid_argument",
    );
    assert!(why.contains("not a delta"), "{why}");
    // A base that is not the delta's prefix: another context of 24 positions.
    let other = dir.path("other.avp");
    let mut payload = kv_payload(2, 2, 64, 24, KvDtype::Float16);
    payload[17] ^= 1;
    std::fs::write(&other, kv_message(&payload, KvDtype::Float16)).unwrap();
    convert_refused(
        &[&delta, &"-o", &out, &"--base", &other],
        &out,
        "prefix_mismatch",
    );
    convert_refused(
        &[&full, &"-o", &out, &"--delta-from", &other],
        &out,
        "prefix_mismatch",
    );
    // Bases too short, too long, or of another dtype or shape.
    let short = context_file(&dir, "short.avp", 20, KvDtype::Float16);
    convert_refused(
        &[&delta, &"-o", &out, &"--base", &short],
        &out,
        "delta_mismatch",
    );
    // A base that holds all of IN and more: a delta of no positions (p = n,
    // AVP-KVD-2, AVP-KVD-30) that assembles back to IN.
    let long = context_file(&dir, "long.avp", 41, KvDtype::Float16);
    let report = convert_ok(&[&full, &"-o", &out, &"--delta-from", &long]);
    assert_eq!(
        (report["seq_start"].as_u64(), report["seq_len"].as_u64()),
        (Some(40), Some(40))
    );
    let back = dir.path("back.avp");
    convert_ok(&[&out, &"-o", &back, &"--base", &long]);
    assert_eq!(decoded(&back).payload, decoded(&full).payload);
    std::fs::remove_file(&out).unwrap();
    let f32_base = context_file(&dir, "f32.avp", 24, KvDtype::Float32);
    convert_refused(
        &[&delta, &"-o", &out, &"--base", &f32_base],
        &out,
        "delta_mismatch",
    );
    convert_refused(
        &[&full, &"-o", &out, &"--delta-from", &f32_base],
        &out,
        "delta_mismatch",
    );
    // The model hash: another model's base, or none at all.
    let no_hash = dir.path("nohash.avp");
    let m = Metadata::new()
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(DataType::Float16);
    let payload = kv_payload(2, 2, 64, 40, KvDtype::Float16);
    std::fs::write(
        &no_hash,
        avp_codec::encode(&m, &payload, Compression::None).unwrap(),
    )
    .unwrap();
    let why = convert_refused(
        &[&no_hash, &"-o", &out, &"--delta-from", &base],
        &out,
        "invalid_argument",
    );
    assert!(why.contains("--model-hash"), "{why}");
    convert_ok(&[
        &no_hash,
        &"-o",
        &out,
        &"--delta-from",
        &base,
        &"--model-hash",
        &MODEL_HASH,
    ]);
    assert_eq!(
        decoded(&out).payload,
        decoded(&delta).payload,
        "same address, same delta"
    );
    std::fs::remove_file(&out).unwrap();
    convert_refused(
        &[
            &delta,
            &"-o",
            &out,
            &"--base",
            &base,
            &"--model-hash",
            &"another",
        ],
        &out,
        "prefix_mismatch",
    );
}

#[test]
fn cli_22_hostile_inputs_and_nonsense_get_clear_errors_and_no_output() {
    let dir = Scratch::new("convert", "hostile");
    let full = context_file(&dir, "full.avp", 40, KvDtype::Float16);
    let out = dir.path("out.avp");
    // Truncated: every cut of the message.
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path("cut.avp");
    for len in [0, 5, 12, 40, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        convert_refused(
            &[&cut, &"-o", &out, &"--kv-quant", &"int8"],
            &out,
            "truncated",
        );
    }
    // /dev/zero: refused after its 12 header bytes, never read on.
    convert_refused(
        &[&"/dev/zero", &"-o", &out, &"--kv-quant", &"int8"],
        &out,
        "bad_magic",
    );
    // A quantized message whose header declares a wrong scale count (the corpus case).
    let vectors = workspace().join("conformance/vectors/kv_ext/bin");
    for (file, kind) in [
        ("refused-scale-count.kvx", "scale_count_mismatch"),
        ("refused-negative-scale.kvx", "inconsistent"),
        ("refused-int8-group-48.kvx", "bad_group_size"),
        ("refused-payload-short.kvx", "truncated"),
    ] {
        let payload = std::fs::read(vectors.join(file)).unwrap();
        let msg = dir.path(file);
        std::fs::write(&msg, ext_message(&payload, KvDtype::Float16)).unwrap();
        let why = convert_refused(&[&msg, &"-o", &out, &"--kv-dtype", &"float16"], &out, kind);
        assert!(why.contains(file), "names the file: {why}");
    }
    // Not a KV cache.
    let hidden = dir.path("hidden.avp");
    let m = Metadata::new().with_tensor_shape([1u32, 4]);
    std::fs::write(
        &hidden,
        avp_codec::encode(&m, &[0u8; 16], Compression::None).unwrap(),
    )
    .unwrap();
    convert_refused(
        &[&hidden, &"-o", &out, &"--kv-quant", &"int8"],
        &out,
        "invalid_argument",
    );
    // Parameters the spec does not allow for this shape.
    convert_refused(
        &[
            &full,
            &"-o",
            &out,
            &"--kv-quant",
            &"int4",
            &"--group-size",
            &"16",
        ],
        &out,
        "invalid_argument",
    );
    convert_refused(
        &[
            &full,
            &"-o",
            &out,
            &"--kv-quant",
            &"int8",
            &"--residual",
            &"2",
        ],
        &out,
        "invalid_argument",
    );
    // The output is never an input, and an existing output survives a failure.
    let before = std::fs::read(&full).unwrap();
    let (code, v, _) = run(&[&full, &"-o", &full, &"--kv-quant", &"int8"]);
    assert_eq!(
        (code, v["error"]["kind"].as_str()),
        (1, Some("invalid_argument"))
    );
    assert_eq!(std::fs::read(&full).unwrap(), before);
    let base = context_file(&dir, "base.avp", 24, KvDtype::Float16);
    let (code, _, _) = run(&[&full, &"-o", &base, &"--delta-from", &base]);
    assert_eq!(code, 1);
    std::fs::write(&out, b"keep me").unwrap();
    let (code, _, _) = run(&[&cut, &"-o", &out, &"--kv-quant", &"int8"]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    std::fs::remove_file(&out).unwrap();
    // A missing input is an I/O error (exit 2).
    let (code, v, _) = run(&[&dir.path("nope.avp"), &"-o", &out, &"--kv-quant", &"int8"]);
    assert_eq!((code, v["error"]["kind"].as_str()), (2, Some("io")));
    // Combinations that make no sense are usage errors (exit 2, nothing written).
    for args in [
        &["--kv-quant", "int8", "--kv-dtype", "float16"][..],
        &["--delta-from", "x", "--base", "y"][..],
        &["--delta-from", "x", "--kv-dtype", "float32"][..],
        &["--kv-quant", "int8", "--base", "y"][..],
        &["--group-size", "32"][..],
        &["--kv-dtype", "float16", "--residual", "4"][..],
        &["--base", "y", "--scale-dtype", "f16"][..],
        &["--kv-quant", "int2"][..],
        &[][..],
    ] {
        let mut all: Vec<Arg<'_>> = vec![&full, &"-o", &out];
        all.extend(args.iter().map(|a| a as Arg<'_>));
        let (code, _, output) = run(&all);
        assert_eq!(code, 2, "{args:?}");
        assert!(!output.stderr.is_empty());
        assert!(!out.exists());
    }
}

/// The messages of a file written back to back, split by their headers.
fn messages_of(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = avp_codec::check_header(&bytes[at..], &avp_codec::Limits::DEFAULT).unwrap();
        let end = at + header.message_len() as usize;
        out.push(bytes[at..end].to_vec());
        at = end;
    }
    out
}

#[test]
fn cli_25_chunk_mib_splits_and_join_gives_back_the_message() {
    let dir = Scratch::new("convert", "chunks");
    // 2 layers of 2 x 2 x 3000 x 64 x 2 bytes: 1.5 MiB each.
    let payload = kv_payload(2, 2, 64, 3000, KvDtype::Float16);
    let full = dir.path("full.avp");
    std::fs::write(&full, kv_message(&payload, KvDtype::Float16)).unwrap();
    let chunked = dir.path("chunked.avp");
    let report = convert_ok(&[&full, &"-o", &chunked, &"--chunk-mib", &"2"]);
    assert_eq!(report["chunks"], 2, "one layer per chunk of at most 2 MiB");
    let messages = messages_of(&chunked);
    assert_eq!(messages.len(), 2);
    for m in &messages {
        let msg = avp_codec::decode_with(m, &avp_codec::DecodeOptions::strict()).unwrap();
        assert!(msg.metadata.extra.get("avp.chunk").is_some());
        assert!(m.len() <= 2 << 20);
    }
    let joined = dir.path("joined.avp");
    let report = convert_ok(&[&chunked, &"-o", &joined, &"--join"]);
    assert_eq!(report["chunks"], Value::Null);
    assert_eq!(
        std::fs::read(&joined).unwrap(),
        std::fs::read(&full).unwrap(),
        "the joined message is the original, byte for byte"
    );
    // Chunks in another order, and an identical duplicate, join the same.
    let shuffled = dir.path("shuffled.avp");
    std::fs::write(
        &shuffled,
        [&messages[1][..], &messages[0], &messages[1]].concat(),
    )
    .unwrap();
    let joined2 = dir.path("joined2.avp");
    convert_ok(&[&shuffled, &"-o", &joined2, &"--join"]);
    assert_eq!(
        std::fs::read(&joined2).unwrap(),
        std::fs::read(&full).unwrap()
    );
    // A chunked file is a context like any other: quantize it, or split it in another dtype.
    let (q1, q2) = (dir.path("q1.avp"), dir.path("q2.avp"));
    convert_ok(&[&chunked, &"-o", &q1, &"--kv-quant", &"int8"]);
    convert_ok(&[&full, &"-o", &q2, &"--kv-quant", &"int8"]);
    assert_eq!(decoded(&q1).payload, decoded(&q2).payload);
    let f32_chunks = dir.path("f32.avp");
    let report = convert_ok(&[
        &chunked,
        &"-o",
        &f32_chunks,
        &"--chunk-mib",
        &"8",
        &"--kv-dtype",
        &"float32",
    ]);
    assert_eq!(
        (report["chunks"].as_u64(), report["dtype"].as_str()),
        (Some(1), Some("float32"))
    );
    // A delta assembled straight into chunks.
    let base = context_file(&dir, "base.avp", 1000, KvDtype::Float16);
    let (delta, rechunked, rejoined) = (dir.path("d.avp"), dir.path("rc.avp"), dir.path("rj.avp"));
    convert_ok(&[&full, &"-o", &delta, &"--delta-from", &base]);
    convert_ok(&[
        &delta,
        &"-o",
        &rechunked,
        &"--base",
        &base,
        &"--chunk-mib",
        &"2",
    ]);
    convert_ok(&[&rechunked, &"-o", &rejoined, &"--join"]);
    assert_eq!(decoded(&rejoined).payload, payload);
    // What cannot work: a layer over the chunk size, --join of one message, a
    // chunk missing, chunks of two contexts, a plain message among chunks.
    let out = dir.path("out.avp");
    let big = dir.path("big.avp");
    std::fs::write(
        &big,
        kv_message(
            &kv_payload(1, 2, 64, 9000, KvDtype::Float16),
            KvDtype::Float16,
        ),
    )
    .unwrap();
    convert_refused(
        &[&big, &"-o", &out, &"--chunk-mib", &"1"],
        &out,
        "invalid_argument",
    );
    let why = convert_refused(&[&full, &"-o", &out, &"--join"], &out, "invalid_argument");
    assert!(why.contains("chunked"), "{why}");
    let missing = dir.path("missing.avp");
    std::fs::write(&missing, &messages[0]).unwrap();
    convert_refused(
        &[&missing, &"-o", &out, &"--join"],
        &out,
        "incomplete_context",
    );
    let other = dir.path("other.avp");
    convert_ok(&[&full, &"-o", &other, &"--chunk-mib", &"2"]);
    let mixed = dir.path("mixed.avp");
    std::fs::write(&mixed, [&messages[0][..], &messages_of(&other)[1]].concat()).unwrap();
    convert_refused(&[&mixed, &"-o", &out, &"--join"], &out, "chunk_conflict");
    let stray = dir.path("stray.avp");
    std::fs::write(
        &stray,
        [
            &messages[0][..],
            &std::fs::read(&full).unwrap(),
            &messages[1],
        ]
        .concat(),
    )
    .unwrap();
    convert_refused(&[&stray, &"-o", &out, &"--join"], &out, "bad_chunk");
    let cut = dir.path("cut.avp");
    let all = std::fs::read(&chunked).unwrap();
    std::fs::write(&cut, &all[..all.len() - 10]).unwrap();
    convert_refused(&[&cut, &"-o", &out, &"--join"], &out, "truncated");
    // A chunked context too large for one message is refused after its first chunk,
    // without reading or assembling the rest (here: 2 of 4000 layers of 2 MiB).
    let huge = dir.path("huge.avp");
    let descriptor = format!("1:{}:0:2000:0:2:4000:{}", "ab".repeat(16), "cd".repeat(32));
    let m = Metadata::new()
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(DataType::Float16)
        .with_extra_entry("avp.chunk", descriptor);
    let two_layers = kv_payload(2, 2, 64, 4096, KvDtype::Float16);
    std::fs::write(
        &huge,
        avp_codec::encode(&m, &two_layers, Compression::None).unwrap(),
    )
    .unwrap();
    let why = convert_refused(&[&huge, &"-o", &out, &"--join"], &out, "invalid_argument");
    assert!(why.contains("more than one message carries"), "{why}");
    // Usage errors: chunks of a quantized or delta payload mean nothing (AVP-CHK-1).
    for args in [
        &["--chunk-mib", "0"][..],
        &["--chunk-mib", "2", "--kv-quant", "int8"][..],
        &["--chunk-mib", "2", "--join"][..],
        &["--join", "--base", "x"][..],
    ] {
        let mut all: Vec<Arg<'_>> = vec![&full, &"-o", &out];
        all.extend(args.iter().map(|a| a as Arg<'_>));
        let (code, _, _) = run(&all);
        assert_eq!(code, 2, "{args:?}");
        assert!(!out.exists());
    }
}

/// Runs `avp ARGS` and returns its status and peak RSS in MiB, as the
/// kernel accounts the child (the probe of tests/bounded.rs).
fn peak_rss_mib(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, u64) {
    const PROBE: &str = "import json, resource, subprocess, sys\n\
        p = subprocess.run(sys.argv[1:], capture_output=True)\n\
        print(json.dumps({'rc': p.returncode,\n\
              'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))";
    let out = std::process::Command::new("python3")
        .args(["-c", PROBE])
        .arg(env!("CARGO_BIN_EXE_avp"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["rc"].as_i64().unwrap() as i32,
        v["maxrss_kib"].as_u64().unwrap() / 1024,
    )
}

#[test]
fn cli_25_split_join_decode_and_inspect_hold_one_chunk_not_the_context() {
    let dir = Scratch::new("convert", "chunk-rss");
    // 96 MiB of float16: 12 layers of 8 MiB, chunks of 8 MiB (one layer each).
    let h = avp_codec::kv::KvHeader {
        num_layers: 12,
        num_kv_heads: 8,
        head_dim: 128,
        seq_len: 2048,
        dtype: KvDtype::Float16,
    };
    let per = h.tensor_bytes().unwrap() as usize;
    let tensor: Vec<u8> = (0..per / 2)
        .flat_map(|i| (0x3c00u16 ^ (i as u16).wrapping_mul(31) & 0x3ff).to_le_bytes())
        .collect();
    let payload =
        avp_codec::kv::write_kv_cache(&h, (0..h.num_layers).map(|_| (&tensor[..], &tensor[..])))
            .unwrap();
    let full = dir.path("full.avp");
    std::fs::write(&full, kv_message(&payload, KvDtype::Float16)).unwrap();
    drop(payload);
    let (chunked, joined) = (dir.path("chunked.avp"), dir.path("joined.avp"));
    let limit = 40; // MiB: one 8 MiB chunk and the process, far from the 96 MiB context
    for (args, what) in [
        (
            vec![
                &"convert" as Arg<'_>,
                &full,
                &"-o",
                &chunked,
                &"--chunk-mib",
                &"9",
            ],
            "split",
        ),
        (
            vec![&"convert" as Arg<'_>, &chunked, &"-o", &joined, &"--join"],
            "join",
        ),
        (vec![&"decode" as Arg<'_>, &"--json", &chunked], "decode"),
        (vec![&"inspect" as Arg<'_>, &chunked], "inspect"),
    ] {
        let (code, mib) = peak_rss_mib(&args);
        assert_eq!(code, 0, "{what}");
        eprintln!("{what}: peak RSS {mib} MiB");
        assert!(mib < limit, "{what}: peak {mib} MiB");
    }
    assert_eq!(messages_of(&chunked).len(), 12);
    assert_eq!(
        std::fs::read(&joined).unwrap(),
        std::fs::read(&full).unwrap()
    );
}

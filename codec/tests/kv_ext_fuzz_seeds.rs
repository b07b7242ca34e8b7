//! Replays the committed seeds of the `kv_ext` and `kv_delta` fuzz targets
//! (FUZZING.md) through their oracles, and checks the seeds reach past the
//! parser (AVP-KVQ-3).
#![allow(clippy::unwrap_used, missing_docs)]

use avp_codec::fuzzing;
use avp_codec::kv_quant::KvExt;

#[path = "../../test-support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::replay;

#[test]
fn fuzz_corpus_kv_ext() {
    assert!(replay("kv_ext", fuzzing::check_kv_ext) >= 5);
}

#[test]
fn fuzz_corpus_kv_delta() {
    assert!(replay("kv_delta", fuzzing::check_kv_delta) >= 1);
}

#[test]
fn kv_ext_seeds_are_valid_payloads_of_every_scheme() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_seeds/kv_ext");
    let mut schemes = std::collections::BTreeSet::new();
    for name in [
        "none_f16",
        "int8_f32_scales",
        "int4_residual",
        "delta_bf16",
        "int8_channel_bf16",
        // AVP-KVQ-31: K and V sections of different sizes (a last key group of 1 token).
        "int8_channel_short_last_group",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let ext = KvExt::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        ext.dequantize().unwrap_or_else(|e| panic!("{name}: {e}"));
        schemes.insert(ext.header.scheme.name());
    }
    assert_eq!(schemes.len(), 4);
}

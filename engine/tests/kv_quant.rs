//! Quantized contexts on the device (spec/impl/engine.md AVP-ENG-28..30):
//! the engine's export is byte for byte the codec's quantizer applied to the
//! plain export, its import yields exactly the codec's dequantized floats,
//! and what cannot be quantized or imported gets a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use avp_codec::kv::KvCache as CodecKv;
use avp_codec::kv_quant::{
    KvExt, KvExtHeader, KvScheme, PrefixAddress, QuantParams, ScaleDtype, encode_ext,
};
use avp_engine::kv_quant::{params_for, quantized_payload};
use avp_engine::wire::{PayloadKind, decode_message, encode_message};
use avp_engine::{Engine, EngineError, Kind, LatentContext, LoadOptions, WeightSource};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models")
}

fn load(dir: &Path, kind: Option<Kind>, weights: WeightSource) -> Engine {
    load_on(avp_engine::Device::Cpu, dir, kind, weights)
}

fn load_on(
    device: avp_engine::Device,
    dir: &Path,
    kind: Option<Kind>,
    weights: WeightSource,
) -> Engine {
    let opts = LoadOptions {
        device,
        kind,
        weights,
        ..LoadOptions::default()
    };
    Engine::load(dir, &opts).unwrap()
}

/// A copy of trained_b's tokenizer with a config whose head_dim (32) int4
/// can group, random weights; removed when dropped.
struct Int4Model(PathBuf);

impl Int4Model {
    fn new(tag: &str) -> Int4Model {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("avp-kvq-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = models().join("trained_b");
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        cfg["head_dim"] = 32.into();
        cfg["num_key_value_heads"] = 2.into();
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        Int4Model(dir)
    }
}

impl Drop for Int4Model {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A context of `steps` latent steps after a fixed prompt.
fn think(engine: &Engine, steps: usize) -> LatentContext {
    engine
        .think("Plan the route from A to B, then check it.", steps, None)
        .unwrap()
}

/// The codec's quantization of the engine's plain export.
fn codec_quantized(ctx: &LatentContext, params: &QuantParams) -> Vec<u8> {
    let plain = ctx.to_bytes().unwrap();
    let msg = decode_message(&plain).unwrap();
    let kv = CodecKv::parse(&msg.tensor).unwrap();
    encode_ext(&kv, params, 0, None).unwrap()
}

/// Every case below: the engine's message against the codec, and the
/// engine's import against the codec's dequantizer.
fn check_both_ways(engine: &Engine, ctx: &LatentContext, params: &QuantParams, what: &str) {
    let message = ctx.to_bytes_quantized(params).unwrap();
    let decoded = decode_message(&message).unwrap();
    assert_eq!(decoded.meta.payload, PayloadKind::KvCacheExt, "{what}");
    let plain_bytes = ctx.to_bytes().unwrap();
    let plain = decode_message(&plain_bytes).unwrap();
    assert_eq!(decoded.meta.extra, plain.meta.extra, "{what}");
    assert_eq!(decoded.meta.dtype, plain.meta.dtype, "{what}");
    let expected = codec_quantized(ctx, params);
    assert!(
        decoded.tensor.as_ref() == expected.as_slice(),
        "{what}: engine and codec quantizations differ"
    );
    let header = KvExtHeader::parse(&expected).unwrap();
    assert_eq!(header.scheme, params.scheme, "{what}");

    let imported = engine.import_message(&message, 8).unwrap();
    assert_eq!(imported.seq_len(), ctx.seq_len(), "{what}");
    assert_eq!(imported.num_steps, ctx.num_steps, "{what}");
    let dequantized = KvExt::parse(&expected).unwrap().dequantize().unwrap();
    assert!(
        imported.kv_payload().unwrap() == dequantized,
        "{what}: engine and codec dequantizations differ"
    );
}

/// AVP-ENG-28, AVP-ENG-29, AVP-ENG-30: int8 on both trained fixture models,
/// in float32 and bfloat16 caches, with the engine's parameters and with
/// binary16 scales (the rounding path).
#[test]
fn int8_on_the_device_matches_the_codec_both_ways() {
    for name in ["trained_a", "trained_b"] {
        for kind in [None, Some(Kind::BFloat16)] {
            let engine = load(&models().join(name), kind, WeightSource::Checkpoint);
            let ctx = think(&engine, 5);
            let d = engine.model().config().head_dim;
            let params = params_for(KvScheme::Int8, d, ctx.seq_len()).unwrap();
            assert_eq!(params.group_size as usize, d.min(64), "AVP-ENG-30");
            check_both_ways(&engine, &ctx, &params, &format!("{name} {kind:?} int8"));
            let f16_scales = QuantParams {
                scale_dtype: ScaleDtype::F16,
                group_size: 4,
                ..params
            };
            check_both_ways(
                &engine,
                &ctx,
                &f16_scales,
                &format!("{name} {kind:?} int8 g4 f16"),
            );
            // Scheme none: the same container holding the floats unchanged.
            check_both_ways(
                &engine,
                &ctx,
                &QuantParams::NONE,
                &format!("{name} {kind:?} none"),
            );
        }
    }
}

/// AVP-ENG-28, AVP-ENG-29, AVP-ENG-30: int4 (keys per channel, values per
/// token, binary16 scales and minimums, residual tokens) on a random model
/// whose head_dim int4 can group, for a context with and without residual.
#[test]
fn int4_on_the_device_matches_the_codec_both_ways() {
    let model = Int4Model::new("both");
    for kind in [None, Some(Kind::Half)] {
        let engine = load(&model.0, kind, WeightSource::Random { seed: 3 });
        let prompt_len = think(&engine, 0).seq_len();
        // A length that leaves a residual, then one that fills the groups exactly.
        for seq in [prompt_len + 40, prompt_len.div_ceil(32).max(2) * 32] {
            let ctx = think(&engine, seq - prompt_len);
            assert_eq!(ctx.seq_len(), seq);
            let params = params_for(KvScheme::Int4, 32, seq).unwrap();
            assert_eq!(params.residual as usize, seq % 32, "AVP-ENG-30");
            check_both_ways(&engine, &ctx, &params, &format!("{kind:?} int4 seq {seq}"));
            if seq >= 64 {
                // More residual than the remainder: a sender's choice.
                let wider = QuantParams {
                    residual: params.residual + 32,
                    ..params
                };
                check_both_ways(&engine, &ctx, &wider, &format!("{kind:?} int4 r+32"));
            }
        }
    }
}

/// AVP-ENG-28, AVP-ENG-29, AVP-ENG-30, AVP-KVQ-32: int8-channel (keys per
/// channel over g tokens with a shorter last group, values per token,
/// residual tokens) on both
/// trained fixtures in float32 and bfloat16 with the engine's fitted
/// parameters and with groups of 4 and binary32 scales, and on a head_dim
/// 32 model in float16 with groups of 32.
#[test]
fn int8_channel_on_the_device_matches_the_codec_both_ways() {
    for name in ["trained_a", "trained_b"] {
        for kind in [None, Some(Kind::BFloat16)] {
            let engine = load(&models().join(name), kind, WeightSource::Checkpoint);
            let ctx = think(&engine, 5);
            let (d, seq) = (engine.model().config().head_dim, ctx.seq_len());
            let params = params_for(KvScheme::Int8Channel, d, seq).unwrap();
            assert_eq!(params.scheme, KvScheme::Int8Channel);
            assert_eq!(d % params.group_size as usize, 0, "AVP-ENG-30");
            assert_eq!(
                params.residual, 0,
                "a shorter last key group instead (AVP-KVQ-31)"
            );
            check_both_ways(&engine, &ctx, &params, &format!("{name} {kind:?} int8-ch"));
            let g4 = QuantParams {
                group_size: 4,
                scale_dtype: ScaleDtype::F32,
                ..QuantParams::INT8_CHANNEL
            };
            check_both_ways(&engine, &ctx, &g4, &format!("{name} {kind:?} int8-ch g4"));
        }
    }
    let model = Int4Model::new("int8ch");
    let engine = load(&model.0, Some(Kind::Half), WeightSource::Random { seed: 3 });
    let ctx = think(&engine, 40);
    let params = QuantParams {
        group_size: 32,
        ..QuantParams::INT8_CHANNEL
    };
    // A length 32 does not divide: each channel's last key group is shorter.
    assert!(
        ctx.seq_len() > 32 && ctx.seq_len() % 32 != 0,
        "{}",
        ctx.seq_len()
    );
    check_both_ways(&engine, &ctx, &params, "half int8-ch g32 short last group");
    let residual = QuantParams {
        residual: 3,
        ..params
    };
    check_both_ways(&engine, &ctx, &residual, "half int8-ch g32 residual 3");
}

/// AVP-ENG-30: int4 on a head_dim it cannot group, a group that does not
/// divide head_dim, and a context holding NaN are refused, not written.
#[test]
fn what_cannot_be_quantized_is_refused_typed() {
    let engine = load(&models().join("trained_a"), None, WeightSource::Checkpoint);
    let ctx = think(&engine, 2);
    let err = params_for(KvScheme::Int4, 16, ctx.seq_len()).unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(ref m) if m.contains("head_dim is 16")));
    let bad_group = QuantParams {
        group_size: 5,
        ..QuantParams::INT8
    };
    let err = quantized_payload(&ctx.cache, &bad_group).unwrap_err();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");

    // llama_nan's think produces a NaN (AVP-ENG-9); the codec refuses it too.
    let nan = load(&models().join("llama_nan"), None, WeightSource::Checkpoint);
    let ctx = nan.think("hello", 4, None).unwrap();
    assert!(ctx.nan_seen);
    let params = params_for(KvScheme::Int8, 8, ctx.seq_len()).unwrap();
    let err = ctx.to_bytes_quantized(&params).unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidArgument(ref m) if m.contains("non-finite")),
        "{err}"
    );
}

/// Rebuilds `message` with its payload replaced (a fresh checksum).
fn with_payload(message: &[u8], payload: &[u8]) -> Vec<u8> {
    let msg = decode_message(message).unwrap();
    encode_message(&msg.meta, payload).unwrap()
}

/// AVP-ENG-29: a delta, a foreign context, a bad scale, a short payload, a
/// wrong shape: each a typed error before anything is imported.
#[test]
fn bad_quantized_contexts_are_refused_typed() {
    let engine = load(&models().join("trained_b"), None, WeightSource::Checkpoint);
    let ctx = think(&engine, 3);
    let params = params_for(KvScheme::Int8, 12, ctx.seq_len()).unwrap();
    let message = ctx.to_bytes_quantized(&params).unwrap();
    let payload = decode_message(&message).unwrap().tensor.into_owned();

    let plain = ctx.to_bytes().unwrap();
    let plain_msg = decode_message(&plain).unwrap();
    let kv = CodecKv::parse(&plain_msg.tensor).unwrap();
    let delta = encode_ext(&kv, &params, 2, Some(&PrefixAddress([7; 32]))).unwrap();
    let err = engine
        .import_message(&with_payload(&message, &delta), 0)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Unsupported(ref m) if m.contains("base")),
        "{err}"
    );

    let other = load(&models().join("trained_a"), None, WeightSource::Checkpoint);
    let err = other.import_message(&message, 0).unwrap_err();
    assert!(
        matches!(err, EngineError::IncompatibleContext { .. }),
        "{err}"
    );

    // The first scale (binary32, right after the header) made negative, then NaN.
    for bad in [-1.0f32, f32::NAN] {
        let mut patched = payload.clone();
        patched[40..44].copy_from_slice(&bad.to_le_bytes());
        let err = engine
            .import_message(&with_payload(&message, &patched), 0)
            .unwrap_err();
        assert!(
            matches!(err, EngineError::InvalidContext(ref m) if m.contains("scale")),
            "{err}"
        );
    }

    let short = &payload[..payload.len() - 1];
    let err = engine
        .import_message(&with_payload(&message, short), 0)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Wire(ref e) if e.kind() == avp_codec::ErrorKind::Truncated),
        "{err}"
    );

    // A valid payload of another shape (trained_a's) under trained_b's identity.
    let a_ctx = think(&other, 1);
    let a_params = params_for(KvScheme::Int8, 16, a_ctx.seq_len()).unwrap();
    let a_payload = quantized_payload(&a_ctx.cache, &a_params).unwrap();
    let err = engine
        .import_message(&with_payload(&message, &a_payload), 0)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::InvalidContext(ref m) if m.contains("does not fit")),
        "{err}"
    );
}

/// AVP-ENG-28, AVP-ENG-29 on CUDA (feature `cuda-tests`; skips without a
/// device unless `AVP_REQUIRE_CUDA=1`): quantizing and dequantizing on the
/// GPU still gives the codec's bytes and floats, the claim that makes the
/// divisors device tensors (a host-scalar division may become a
/// multiplication by the reciprocal there).
#[cfg(feature = "cuda-tests")]
#[test]
fn on_cuda_the_bytes_and_floats_are_the_codecs_too() {
    if !tch::Cuda::is_available() {
        assert!(
            std::env::var_os("AVP_REQUIRE_CUDA").is_none(),
            "AVP_REQUIRE_CUDA set but no GPU"
        );
        eprintln!("cuda-tests: no CUDA device visible, skipping");
        return;
    }
    let gpu = avp_engine::Device::Cuda(0);
    let model = Int4Model::new("cuda");
    for kind in [Some(Kind::Float), Some(Kind::BFloat16), Some(Kind::Half)] {
        let engine = load_on(
            gpu,
            &models().join("trained_b"),
            kind,
            WeightSource::Checkpoint,
        );
        let ctx = think(&engine, 5);
        let params = params_for(KvScheme::Int8, 12, ctx.seq_len()).unwrap();
        check_both_ways(
            &engine,
            &ctx,
            &params,
            &format!("cuda trained_b {kind:?} int8"),
        );
        let engine = load_on(gpu, &model.0, kind, WeightSource::Random { seed: 3 });
        let ctx = think(&engine, 40);
        let params = params_for(KvScheme::Int4, 32, ctx.seq_len()).unwrap();
        check_both_ways(&engine, &ctx, &params, &format!("cuda {kind:?} int4"));
    }
}

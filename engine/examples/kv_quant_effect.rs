//! The effect of a quantized context on the receiver (issue 17, BENCHMARKS.md
//! "Compact contexts: effect on the receiver"): for each model, a think, then
//! 16 greedy tokens after a follow-up prompt from the original context and
//! from the context exported quantized and imported again (AVP-ENG-28/29).
//! Prints one markdown row per model and scheme: payload size against the
//! plain one, greedy token agreement (free-running, position by position),
//! the first diverging token, and the KL divergence KL(original ‖ quantized)
//! of the next-token distributions along the original's tokens (teacher
//! forced, so both see the same text), mean and max over the 16 steps.
//!
//! `cargo run --release -p avp-engine --example kv_quant_effect [STEPS]`
//! (from the repository root; models from engine/testdata/models).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use avp_codec::kv_quant::KvScheme;
use avp_engine::kv_quant::params_for;
use avp_engine::{Engine, Input, Kind, KvCache, LatentContext, LoadOptions, Tensor, WeightSource};

const TOKENS: usize = 16;
const PROMPT: &str = "Plan the route from A to B, then check it twice.";
const FOLLOWUP: &str = "Now answer.";

/// Greedy continuation of `ctx` after the follow-up prompt, `TOKENS` steps,
/// never stopping early; with `teacher`, the given tokens are fed instead of
/// the argmax. Returns the argmax tokens and each step's log-probabilities.
fn continue_from(
    engine: &Engine,
    ctx: &LatentContext,
    teacher: Option<&[i64]>,
) -> (Vec<i64>, Vec<Tensor>) {
    let _guard = tch::no_grad_guard();
    let model = engine.model();
    let mut cache: KvCache = ctx.cache.try_clone().unwrap();
    let ids: Vec<i64> = engine
        .prompt_format()
        .prompt_ids(FOLLOWUP)
        .unwrap()
        .into_iter()
        .map(i64::from)
        .collect();
    cache.reserve(cache.seq_len() + ids.len() + TOKENS).unwrap();
    let mut input = Tensor::from_slice(&ids).reshape([1, -1]);
    let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
    for step in 0..TOKENS {
        let hidden = model.forward(Input::Tokens(&input), &mut cache).unwrap();
        let n = hidden.size()[1];
        let logits = model
            .logits(&hidden.select(1, n - 1))
            .unwrap()
            .to_kind(Kind::Double);
        let best = logits.argmax(-1, false).int64_value(&[0]);
        logprobs.push(logits.log_softmax(-1, Kind::Double));
        tokens.push(best);
        let next = teacher.map_or(best, |t| t[step]);
        input = Tensor::from_slice(&[next]).reshape([1, 1]);
    }
    (tokens, logprobs)
}

fn kl(p: &Tensor, q: &Tensor) -> f64 {
    (p.exp() * (p - q)).sum(Kind::Double).double_value(&[])
}

/// A copy of trained_b's tokenizer with head_dim 32 (int4 can group it).
fn head_dim_32_model(root: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("avp-kvq-effect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = root.join("trained_b");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["head_dim"] = 32.into();
    cfg["num_key_value_heads"] = 2.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map_or(24, |s| s.parse().expect("STEPS is a count"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models");
    let random32 = head_dim_32_model(&root);
    let models: Vec<(String, PathBuf, WeightSource)> = vec![
        (
            "trained_a".into(),
            root.join("trained_a"),
            WeightSource::Checkpoint,
        ),
        (
            "trained_b".into(),
            root.join("trained_b"),
            WeightSource::Checkpoint,
        ),
        (
            "qwen3 (random)".into(),
            root.join("qwen3"),
            WeightSource::Checkpoint,
        ),
        (
            "llama_untied (random)".into(),
            root.join("llama_untied"),
            WeightSource::Checkpoint,
        ),
        (
            "trained_b shape, d=32 (random)".into(),
            random32.clone(),
            WeightSource::Random { seed: 3 },
        ),
    ];
    println!(
        "| model | d | positions | scheme | payload / float32 | greedy tokens equal | first divergence | KL mean | KL max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, dir, weights) in models {
        let opts = LoadOptions {
            weights,
            ..LoadOptions::default()
        };
        let engine = Engine::load(&dir, &opts).unwrap();
        let ctx = engine.think(PROMPT, steps, None).unwrap();
        let d = engine.model().config().head_dim;
        let plain = ctx.kv_payload().unwrap().len();
        let (orig_tokens, orig_lp) = continue_from(&engine, &ctx, None);
        for scheme in [KvScheme::Int8, KvScheme::Int4, KvScheme::Int8Channel] {
            let params = match params_for(scheme, d, ctx.seq_len()) {
                Ok(p) => p,
                Err(_) => {
                    println!(
                        "| {name} | {d} | {} | {} | n/a: head_dim {d} is not a multiple of 32 (AVP-KVQ-4) | | | | |",
                        ctx.seq_len(),
                        scheme.name()
                    );
                    continue;
                }
            };
            let message = ctx.to_bytes_quantized(&params).unwrap();
            let payload = avp_codec::decode(&message).unwrap().payload.len();
            let q = engine.import_message(&message, 0).unwrap();
            let (free, _) = continue_from(&engine, &q, None);
            let (_, forced_lp) = continue_from(&engine, &q, Some(&orig_tokens));
            let equal = free
                .iter()
                .zip(&orig_tokens)
                .filter(|(a, b)| a == b)
                .count();
            let first = free
                .iter()
                .zip(&orig_tokens)
                .position(|(a, b)| a != b)
                .map_or_else(|| "none".to_owned(), |i| format!("token {}", i + 1));
            let kls: Vec<f64> = orig_lp
                .iter()
                .zip(&forced_lp)
                .map(|(p, q)| kl(p, q))
                .collect();
            let mean = kls.iter().sum::<f64>() / kls.len() as f64;
            let max = kls.iter().copied().fold(0.0, f64::max);
            println!(
                "| {name} | {d} | {} | {}{} | {:.3} | {equal}/{TOKENS} | {first} | {mean:.2e} | {max:.2e} |",
                ctx.seq_len(),
                scheme.name(),
                if scheme == KvScheme::Int8Channel {
                    format!(" (g {}, residual {})", params.group_size, params.residual)
                } else if params.residual > 0 {
                    format!(" (residual {})", params.residual)
                } else {
                    String::new()
                },
                payload as f64 / plain as f64,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&random32);
}

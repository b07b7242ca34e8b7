//! The two-agent pipeline on the trained fixture models (engine/testdata,
//! "Trained models"): a projected thought primes the receiver (AVP-PIPE-1)
//! and a LatentMAS chain accumulates one cache (AVP-PIPE-2), each giving the
//! SDK's greedy tokens, and a different context giving different ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};

use avp_engine::wire::{KvHeader, decode_message};
use avp_engine::{Engine, EngineError, GenerateOptions, LoadOptions, Sampling};
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn trained() -> Value {
    let p = testdata().join("expected/trained/trained.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn wire(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join("expected/trained").join(name)).unwrap()
}

fn load(name: &str) -> Engine {
    Engine::load(
        &testdata().join("models").join(name),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: None,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// AVP-PIPE-1: trained_b continues trained_a's projected thought (the
/// HIDDEN_STATE message `avp project` writes) with the SDK's cross-model tokens.
#[test]
fn a_projected_hidden_state_primes_the_target_like_the_sdk() {
    let t = trained();
    let b = load("trained_b");
    let max = usize::try_from(t["max_new_tokens"].as_u64().unwrap()).unwrap();
    let followup = t["followup_prompt"].as_str().unwrap();
    for case in t["cross_model"]["cases"].as_array().unwrap() {
        let msg = wire(case["hidden_state_message"].as_str().unwrap());
        let ctx = b.import_message(&msg, max).unwrap();
        assert_eq!(ctx.seq_len(), 1, "one projected vector at position 0");
        let out = b.generate(followup, Some(&ctx), &greedy(max)).unwrap();
        assert_eq!(
            out.token_ids,
            ids(&case["generate"]),
            "steps {}",
            case["steps"]
        );
        assert_eq!(out.text, case["generate"]["text"].as_str().unwrap());
        let plain = b.generate(followup, None, &greedy(max)).unwrap();
        assert_eq!(plain.token_ids, ids(&case["distinguishes"]["no_context"]));
        assert_ne!(plain.token_ids, out.token_ids);
    }
}

/// AVP-PIPE-1: a projected vector is refused by any model it was not
/// projected for, with a typed error, before anything is primed.
#[test]
fn a_hidden_state_for_another_model_is_refused() {
    let msg = wire("project_a_to_b_s2.avp");
    let a = load("trained_a");
    match a.import_message(&msg, 16) {
        Err(EngineError::IncompatibleContext { .. }) => {}
        other => panic!("expected IncompatibleContext, got {other:?}"),
    }
    // The right model_hash but a map id naming another target.
    let b = load("trained_b");
    let mut meta = decode_message(&msg).unwrap().meta;
    let tensor = decode_message(&msg).unwrap().tensor.into_owned();
    meta.avp_map_id = "7b5589273f5be7de_0000000000000000".into();
    let forged = avp_engine::wire::encode_message(&meta, &tensor).unwrap();
    assert!(matches!(
        b.import_message(&forged, 16),
        Err(EngineError::InvalidContext(_))
    ));
    // A width that is not trained_b's.
    let mut meta = decode_message(&msg).unwrap().meta;
    meta.tensor_shape = vec![47];
    let short = avp_engine::wire::encode_message(&meta, &tensor[..47 * 4]).unwrap();
    assert!(matches!(
        b.import_message(&short, 16),
        Err(EngineError::InvalidContext(_))
    ));
    // A shape that declares more bytes than are present.
    let mut meta = decode_message(&msg).unwrap().meta;
    meta.tensor_shape = vec![2, 48];
    let lying = avp_engine::wire::encode_message(&meta, &tensor).unwrap();
    assert!(matches!(
        b.import_message(&lying, 16),
        Err(EngineError::InvalidContext(_))
    ));
}

/// AVP-PIPE-2: planner -> critic -> refiner on trained_a, each thinking 2
/// steps after the previous agent's context (through its wire form, as
/// separate processes would), gives the SDK's KV sizes and final tokens.
#[test]
fn a_three_agent_chain_accumulates_the_sdks_context() {
    let t = trained();
    let a = load("trained_a");
    let chain = &t["chain"];
    let steps = usize::try_from(chain["steps_per_agent"].as_u64().unwrap()).unwrap();
    let max = usize::try_from(t["max_new_tokens"].as_u64().unwrap()).unwrap();
    let mut previous: Option<Vec<u8>> = None;
    for agent in chain["agents"].as_array().unwrap() {
        let ctx = previous
            .as_ref()
            .map(|bytes| a.import_message(bytes, steps + 64).unwrap());
        let out = a
            .think(agent["prompt"].as_str().unwrap(), steps, ctx)
            .unwrap();
        let want = &agent["kv_header"];
        assert_eq!(out.seq_len() as u64, agent["seq_len"].as_u64().unwrap());
        assert_eq!(
            out.num_steps as u64,
            agent["steps_taken_total"].as_u64().unwrap()
        );
        let bytes = out.to_bytes().unwrap();
        let msg = decode_message(&bytes).unwrap();
        let h = KvHeader::parse(&msg.tensor).unwrap();
        assert_eq!(
            u64::from(h.num_layers),
            want["num_layers"].as_u64().unwrap()
        );
        assert_eq!(
            u64::from(h.num_kv_heads),
            want["num_kv_heads"].as_u64().unwrap()
        );
        assert_eq!(u64::from(h.head_dim), want["head_dim"].as_u64().unwrap());
        assert_eq!(u64::from(h.seq_len), want["seq_len"].as_u64().unwrap());
        previous = Some(bytes);
    }
    let last = a.import_message(&previous.unwrap(), max).unwrap();
    let out = a
        .generate(
            chain["generate_prompt"].as_str().unwrap(),
            Some(&last),
            &greedy(max),
        )
        .unwrap();
    assert_eq!(out.token_ids, ids(&chain["generate"]));
    // The refiner alone (no planner, no critic) answers differently.
    let alone = a.think("Improve the plan.", steps, None).unwrap();
    let other = a
        .generate(
            chain["generate_prompt"].as_str().unwrap(),
            Some(&alone),
            &greedy(max),
        )
        .unwrap();
    assert_eq!(
        other.token_ids,
        ids(&chain["distinguishes"]["refiner_only"])
    );
    assert_ne!(other.token_ids, out.token_ids);
}

fn floats(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect()
}

/// AVP-PIPE-3: the sender's projected message (`handoff::projected_message`,
/// what `avp project` and `avp think --to` send) is the committed HIDDEN_STATE
/// message: metadata exact, the vector within the float32 tolerance (1e-4
/// norm ratio, engine/testdata/README.md); from the map file alone likewise.
#[test]
fn the_projected_message_is_the_sdk_projection() {
    use avp_engine::handoff::{
        TargetModel, Transfer, projected_message, projected_message_from_map_file,
    };
    let t = trained();
    let (a, b) = (load("trained_a"), load("trained_b"));
    let map = avp_engine::calibrate(&a, &b).unwrap();
    let maps = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-engine-pipeline-{}", std::process::id()));
    let path = avp_engine::project::map_path(&maps, a.model_hash(), b.model_hash());
    map.save(&path, &a, &b).unwrap();
    assert_eq!(
        Transfer::for_resolution(
            avp_handshake::Mode::Latent,
            avp_handshake::ResolutionPath::SharedTokenizer
        ),
        Transfer::ProjectedHiddenState
    );
    for case in t["cross_model"]["cases"].as_array().unwrap() {
        let steps = usize::try_from(case["steps"].as_u64().unwrap()).unwrap();
        let ctx = a.think(t["prompt"].as_str().unwrap(), steps, None).unwrap();
        let want_bytes = wire(case["hidden_state_message"].as_str().unwrap());
        let want = decode_message(&want_bytes).unwrap();
        let target = TargetModel {
            model_hash: b.model_hash(),
            model_family: b.model_family(),
            num_layers: 3,
        };
        for ours in [
            projected_message(&a, &b, &map, &ctx).unwrap(),
            projected_message_from_map_file(&a, &path, target, &ctx).unwrap(),
        ] {
            let got = decode_message(&ours).unwrap();
            assert_eq!(got.meta, want.meta, "steps {steps}");
            let (g, w) = (floats(&got.tensor), floats(&want.tensor));
            let diff: f64 = g.iter().zip(&w).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
            let norm: f64 = w.iter().map(|y| y * y).sum::<f64>();
            assert!((diff / norm).sqrt() <= 1e-4, "steps {steps}");
        }
    }
    std::fs::remove_dir_all(&maps).unwrap();
}

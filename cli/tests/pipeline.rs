//! The two-agent pipeline through the `avp` commands, on the trained fixture
//! models (engine/testdata/README.md, "Trained models"): each test compares
//! the greedy text with the SDK's recorded output and runs one
//! `distinguishes` case that must differ (spec/impl/pipeline.md).
#![cfg(feature = "engine")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Scratch, avp, workspace};

fn model(name: &str) -> String {
    workspace()
        .join("engine/testdata/models")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn fixture(name: &str) -> PathBuf {
    workspace()
        .join("engine/testdata/expected/trained")
        .join(name)
}

fn trained() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("trained.json")).unwrap()).unwrap()
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

/// `avp generate --model M --context C --prompt "Now answer."`, greedy, 16 tokens: the text.
fn generate(model_name: &str, context: Option<&str>) -> String {
    let m = model(model_name);
    let mut args = vec![
        "generate",
        "--model",
        &m,
        "--prompt",
        "Now answer.",
        "--max-new-tokens",
        "16",
        "--greedy",
    ];
    if let Some(c) = context {
        args.extend(["--context", c]);
    }
    let out = ok(&args);
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

fn text(v: &serde_json::Value) -> &str {
    v["text"].as_str().unwrap()
}

/// `avp project` of `prompt` after `steps` latent steps, from trained_a into trained_b.
fn project_a_to_b(prompt: &str, steps: &str, out: &Path) {
    ok(&[
        "project",
        "--source",
        &model("trained_a"),
        "--target",
        &model("trained_b"),
        "--prompt",
        prompt,
        "--steps",
        steps,
        "--out",
        out.to_str().unwrap(),
    ]);
}

/// AVP-PIPE-1: `avp generate` continues a projected HIDDEN_STATE message
/// (the SDK's cross-model generate), and `avp project` writes one that
/// continues the same way; another model refuses it with a typed error.
#[test]
fn generate_continues_a_projected_thought() {
    let t = trained();
    let dir = Scratch::new("pipeline", "project");
    for case in t["cross_model"]["cases"].as_array().unwrap() {
        let sdk = fixture(case["hidden_state_message"].as_str().unwrap());
        let got = generate("trained_b", Some(sdk.to_str().unwrap()));
        assert_eq!(got, text(&case["generate"]), "steps {}", case["steps"]);
        let ours = dir.path(&format!("h{}.avp", case["steps"]));
        project_a_to_b(
            t["prompt"].as_str().unwrap(),
            &case["steps"].to_string(),
            &ours,
        );
        assert_eq!(
            generate("trained_b", Some(ours.to_str().unwrap())),
            text(&case["generate"])
        );
    }
    // The wrong prompt's thought continues differently.
    let wrong = dir.path("wrong.avp");
    project_a_to_b(t["wrong_prompt"].as_str().unwrap(), "2", &wrong);
    let case = &t["cross_model"]["cases"][1];
    assert_eq!(
        generate("trained_b", Some(wrong.to_str().unwrap())),
        text(&case["distinguishes"]["wrong_context"])
    );
    // trained_a was not the projection's target.
    let sdk = fixture("project_a_to_b_s2.avp");
    let out = run(&[
        "generate",
        "--model",
        &model("trained_a"),
        "--prompt",
        "Now answer.",
        "--context",
        sdk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("another model"), "{err}");
}

/// The model hash, seq_len and step count a KV_CACHE message declares.
fn kv_shape(path: &std::path::Path) -> (u32, String) {
    let bytes = std::fs::read(path).unwrap();
    let msg = avp_codec::decode(&bytes).unwrap();
    let h = avp_codec::kv::KvHeader::parse(&msg.payload).unwrap();
    (h.seq_len, msg.metadata.extra["num_steps"].to_string())
}

/// AVP-PIPE-2: planner -> critic -> refiner, three `avp think --context`
/// processes on trained_a, then `avp generate` from the refiner's context:
/// the SDK's KV sizes and final text; the refiner alone answers otherwise.
#[test]
fn a_three_agent_chain_of_think_commands() {
    let t = trained();
    let chain = &t["chain"];
    let dir = Scratch::new("pipeline", "chain");
    let mut previous: Option<PathBuf> = None;
    for (i, agent) in chain["agents"].as_array().unwrap().iter().enumerate() {
        let out = dir.path(&format!("{i}.avp"));
        let m = model("trained_a");
        let mut args = vec![
            "think",
            "--model",
            &m,
            "--prompt",
            agent["prompt"].as_str().unwrap(),
            "--steps",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        let prev = previous.as_ref().map(|p| p.to_str().unwrap().to_owned());
        if let Some(p) = &prev {
            args.extend(["--context", p]);
        }
        ok(&args);
        let (seq, steps) = kv_shape(&out);
        assert_eq!(u64::from(seq), agent["seq_len"].as_u64().unwrap());
        assert_eq!(steps, agent["steps_taken_total"].to_string());
        previous = Some(out);
    }
    let last = previous.unwrap();
    assert_eq!(
        generate("trained_a", Some(last.to_str().unwrap())),
        text(&chain["generate"])
    );
    let alone = dir.path("alone.avp");
    ok(&[
        "think",
        "--model",
        &model("trained_a"),
        "--prompt",
        "Improve the plan.",
        "--steps",
        "2",
        "--out",
        alone.to_str().unwrap(),
    ]);
    assert_eq!(
        generate("trained_a", Some(alone.to_str().unwrap())),
        text(&chain["distinguishes"]["refiner_only"])
    );
}

/// `avp serve --model DIR --store STORE --listen 127.0.0.1:0`, announced.
fn serve(model_name: &str, store: &std::path::Path, agent_id: &str) -> common::Running {
    let mut cmd = avp();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model",
        &model(model_name),
        "--store",
        store.to_str().unwrap(),
        "--agent-id",
        agent_id,
        "--quiet",
    ]);
    common::start(cmd)
}

/// `avp store ls --json` of a store: its rows.
fn stored(store: &std::path::Path) -> Vec<serde_json::Value> {
    let out = ok(&["store", "ls", store.to_str().unwrap(), "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// `avp think --model M --prompt P --steps 2 --to URL [extra..]`: stderr.
fn think_to(model_name: &str, url: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let t = trained();
    let m = model(model_name);
    let mut args = vec![
        "think",
        "--model",
        &m,
        "--prompt",
        t["prompt"].as_str().unwrap(),
        "--steps",
        "2",
        "--to",
        url,
        "--agent-id",
        "sender",
    ];
    args.extend_from_slice(extra);
    let out = ok(&args);
    let answer = serde_json::from_slice(&out.stdout).unwrap();
    (String::from_utf8(out.stderr).unwrap(), answer)
}

/// AVP-PIPE-3, AVP-PIPE-4: same model. The receiver answers trained_a's
/// identity, the handshake resolves hash_match, the KV-cache is sent,
/// addressed, stored, listed, and `avp generate` continues it with the SDK's
/// same-model tokens.
#[test]
fn think_to_a_same_model_agent_sends_the_kv_cache() {
    let t = trained();
    let dir = Scratch::new("pipeline", "same");
    let store = dir.path("store");
    let receiver = serve("trained_a", &store, "receiver");
    let (stderr, answer) = think_to("trained_a", &receiver.url, &[]);
    assert!(
        stderr.contains("mode LATENT, rule hash_match") && stderr.contains("sending the KV-cache"),
        "{stderr}"
    );
    assert_eq!(answer["success"], true, "{answer}");
    let rows = stored(&store);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["kind"], "avp");
    assert_eq!(row["source_agent_id"], "sender");
    assert_eq!(row["target_agent_id"], "receiver");
    assert_eq!(row["session_id"].as_str().unwrap().len(), 32);
    let file = row["path"].as_str().unwrap();
    let msg = std::fs::read(file).unwrap();
    let decoded = avp_codec::decode(&msg).unwrap();
    assert_eq!(
        decoded.metadata.payload_type,
        avp_codec::PayloadType::KvCache
    );
    let handoff = &t["handoff"][1];
    assert_eq!(
        generate("trained_a", Some(file)),
        text(&handoff["generate"])
    );
}

/// AVP-PIPE-3, AVP-PIPE-4: another model with the same tokenizer. The
/// handshake resolves shared_tokenizer, the projected hidden state is sent,
/// and trained_b continues it with the SDK's cross-model tokens.
#[test]
fn think_to_a_cross_model_agent_sends_the_projected_thought() {
    let t = trained();
    let dir = Scratch::new("pipeline", "cross");
    let store = dir.path("store");
    let receiver = serve("trained_b", &store, "receiver");
    // Without the target's weights there is nothing to project into.
    let m = model("trained_a");
    let out = run(&[
        "think",
        "--model",
        &m,
        "--prompt",
        "x",
        "--steps",
        "0",
        "--to",
        &receiver.url,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--target-model"), "{err}");
    let b = model("trained_b");
    let (stderr, _) = think_to("trained_a", &receiver.url, &["--target-model", &b]);
    assert!(
        stderr.contains("mode LATENT, rule shared_tokenizer")
            && stderr.contains("sending the projected hidden state"),
        "{stderr}"
    );
    let rows = stored(&store);
    // The refused attempt sent nothing.
    assert_eq!(rows.len(), 1, "{rows:?}");
    let file = rows[0]["path"].as_str().unwrap();
    let decoded = avp_codec::decode(&std::fs::read(file).unwrap())
        .unwrap()
        .into_owned();
    assert_eq!(
        decoded.metadata.payload_type,
        avp_codec::PayloadType::HiddenState
    );
    assert_eq!(decoded.payload.len(), 48 * 4);
    assert_eq!(
        generate("trained_b", Some(file)),
        text(&t["cross_model"]["cases"][1]["generate"])
    );
    // With --maps the first run writes the pair's map file; a sender without
    // the target's weights then projects from it alone, to the same vector.
    let maps = dir.path("maps");
    let maps = maps.to_str().unwrap();
    think_to(
        "trained_a",
        &receiver.url,
        &["--target-model", &b, "--maps", maps],
    );
    let (stderr, _) = think_to("trained_a", &receiver.url, &["--maps", maps]);
    assert!(stderr.contains("no target weights loaded"), "{stderr}");
    let rows = stored(&store);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let last = rows
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect::<Vec<_>>();
    let from_map = avp_codec::decode(&std::fs::read(last[2]).unwrap())
        .unwrap()
        .into_owned();
    assert_eq!(from_map.metadata.avp_map_id, decoded.metadata.avp_map_id);
    assert_eq!(from_map.metadata.extra, decoded.metadata.extra);
    assert_eq!(from_map.metadata.num_layers, decoded.metadata.num_layers);
    assert_eq!(from_map.payload, decoded.payload);
}

/// AVP-PIPE-3: models that share nothing fall back to JSON: the text the
/// sender generates, addressed, arrives at the receiver as a text message.
#[test]
fn think_to_an_unrelated_agent_sends_text() {
    let dir = Scratch::new("pipeline", "json");
    let store = dir.path("store");
    let receiver = serve("trained_b", &store, "receiver");
    let (stderr, _) = think_to("llama_tied", &receiver.url, &["--text-tokens", "4"]);
    assert!(
        stderr.contains("mode JSON, rule json_fallback")
            && stderr.contains("generated text as a JSON message"),
        "{stderr}"
    );
    let rows = stored(&store);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["kind"], "text");
    assert_eq!(rows[0]["source_agent_id"], "sender");
    assert_eq!(rows[0]["target_agent_id"], "receiver");
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rows[0]["path"].as_str().unwrap()).unwrap()).unwrap();
    assert!(!body["content"].as_str().unwrap().is_empty(), "{body}");
}

fn python() -> std::process::Command {
    let mut cmd = std::process::Command::new(workspace().join(".venv/bin/python"));
    cmd.arg(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transport_py/pipeline_peer.py"),
    );
    cmd
}

/// `avp generate` greedy, 16 tokens, accepting the SDK's model hash.
fn generate_with_hash(model_name: &str, context: &str, hash: &str) -> String {
    let m = model(model_name);
    let out = ok(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Now answer.",
        "--max-new-tokens",
        "16",
        "--greedy",
        "--model-hash",
        hash,
        "--context",
        context,
    ]);
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

/// AVP-PIPE-5: an SDK agent (`AVPClient.transmit` of `context.to_bytes()`)
/// sends to `avp serve`; `avp generate` continues what was stored with the
/// tokens the SDK's own `generate` gives from that context.
#[test]
fn an_sdk_agent_hands_off_to_avp_serve() {
    let t = trained();
    let dir = Scratch::new("pipeline", "sdk-send");
    let store = dir.path("store");
    let receiver = serve("trained_a", &store, "receiver");
    let out = python()
        .args([
            "send",
            &receiver.url,
            &model("trained_a"),
            t["prompt"].as_str().unwrap(),
            "Now answer.",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sdk["text"], t["handoff"][1]["generate"]["text"]);
    let rows = stored(&store);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["source_agent_id"], "sdk");
    // The SDK's hash (it covers the path the model was loaded from), not the engine's.
    let hash = sdk["model_hash"].as_str().unwrap();
    assert_ne!(hash, t["models"]["trained_a"]["config_json_hash"]);
    let file = rows[0]["path"].as_str().unwrap();
    assert_eq!(
        generate_with_hash("trained_a", file, hash),
        sdk["text"].as_str().unwrap()
    );
}

/// AVP-PIPE-5: `avp think --to` an SDK `create_app` server (with a
/// handshake handler answering its identity and a session): the SDK
/// continues our KV-cache with the same text `avp generate` gives from it.
#[test]
fn avp_think_hands_off_to_an_sdk_server() {
    let t = trained();
    let dir = Scratch::new("pipeline", "sdk-serve");
    let record = dir.path("record.jsonl");
    let mut cmd = python();
    cmd.args([
        "server",
        &model("trained_a"),
        "Now answer.",
        record.to_str().unwrap(),
    ]);
    let sdk_server = common::start(cmd);
    let hash = std::fs::read_to_string(dir.path("record.jsonl.hash")).unwrap();
    let hash = hash.as_str();
    let ours = dir.path("ours.avp");
    let (stderr, answer) = think_to(
        "trained_a",
        &sdk_server.url,
        &["--model-hash", hash, "--out", ours.to_str().unwrap()],
    );
    assert!(stderr.contains("rule hash_match"), "{stderr}");
    let lines = std::fs::read_to_string(&record).unwrap();
    let got: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(got["source_agent_id"], "sender");
    assert_eq!(got["target_agent_id"], "sdk-server");
    assert_eq!(got["session_id"].as_str().unwrap().len(), 32);
    assert_eq!(answer["generated"], got["text"]);
    assert_eq!(got["text"], t["handoff"][1]["generate"]["text"]);
    assert_eq!(
        generate_with_hash("trained_a", ours.to_str().unwrap(), hash),
        got["text"].as_str().unwrap()
    );
}

/// AVP-PIPE-3: a bad URL or token file fails before the model thinks, and
/// nothing is written.
#[test]
fn think_to_checks_its_options_before_thinking() {
    let dir = Scratch::new("pipeline", "early");
    let out_file = dir.path("ctx.avp");
    let empty = dir.path("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let m = model("trained_a");
    for (extra, why) in [
        (vec!["--to", "not a url"], "--to not a url"),
        (
            vec![
                "--to",
                "http://127.0.0.1:9",
                "--token-file",
                empty.to_str().unwrap(),
            ],
            "is empty",
        ),
    ] {
        let mut args = vec![
            "think",
            "--model",
            &m,
            "--prompt",
            "x",
            "--steps",
            "1",
            "--out",
            out_file.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = run(&args);
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(why), "{err}");
        assert!(!err.contains("think: "), "thought anyway: {err}");
        assert!(!out_file.exists());
    }
}

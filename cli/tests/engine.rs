//! `avp think | generate | project` against the engine fixtures
//! (engine/testdata): the CLI contract of spec/impl/engine.md.
#![cfg(feature = "engine")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/testdata/models")
}

fn expected(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/testdata/expected")
        .join(name)
        .join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn avp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_avp"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cli-engine-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn generate_prints_the_sdk_greedy_text() {
    let e = expected("qwen2");
    let g = &e["generate"][0];
    let prompt = e["prompts"][g["prompt"].as_str().unwrap()]["text"]
        .as_str()
        .unwrap();
    let model = models().join("qwen2");
    let out = avp(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "8",
        "--greedy",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", g["text"].as_str().unwrap())
    );
    // AVP-CLI-9: one report line, and no progress when stderr is not a terminal.
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("generate: "), "{stderr:?}");
    assert!(stderr.contains(" tokens generated ("), "{stderr:?}");
}

#[test]
fn think_writes_the_sdk_message_and_generate_continues_it() {
    let e = expected("llama_untied");
    let model = models().join("llama_untied");
    let file = tmp("think.avp");
    let hash = e["sdk_model_hash"].as_str().unwrap();
    let out = avp(&[
        "think",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "What is 2+3? Answer briefly.",
        "--steps",
        "4",
        "--model-hash",
        hash,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = std::fs::read(&file).unwrap();
    let sdk = std::fs::read(models().join("../expected/llama_untied/think_ascii_s4.avp")).unwrap();
    let (a, b) = (
        avp_codec::decode(&ours).unwrap(),
        avp_codec::decode(&sdk).unwrap(),
    );
    fn strip(m: &avp_codec::Metadata<'static>) -> avp_codec::Metadata<'static> {
        m.clone().with_payload_checksum(None)
    }
    let (a, b) = (a.into_owned(), b.into_owned());
    assert_eq!(
        strip(&a.metadata),
        strip(&b.metadata),
        "metadata as the SDK writes it"
    );
    assert_eq!(a.payload.len(), b.payload.len());
    assert_eq!(a.payload[..17], b.payload[..17], "KV inner header");
    // The SDK continued its own message with this greedy output.
    let g = e["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["context"] == "think_ascii_s4.avp")
        .unwrap();
    let out = avp(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Now answer.",
        "--context",
        file.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--model-hash",
        hash,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('\n'),
        g["text"].as_str().unwrap()
    );
}

#[test]
fn a_context_from_another_model_fails_cleanly() {
    let file = tmp("other.avp");
    let q = models().join("qwen2");
    assert!(
        avp(&[
            "think",
            "--model",
            q.to_str().unwrap(),
            "--prompt",
            "hi",
            "--steps",
            "1",
            "--out",
            file.to_str().unwrap()
        ])
        .status
        .success()
    );
    let l = models().join("llama_tied");
    let out = avp(&[
        "generate",
        "--model",
        l.to_str().unwrap(),
        "--prompt",
        "x",
        "--context",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: context was made by another model"),
        "{err}"
    );
    let bad = avp(&[
        "think",
        "--model",
        "/nonexistent-model",
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8(bad.stderr)
            .unwrap()
            .contains("config.json")
    );
}

/// `--context` files that are no whole AVP message: `/dev/zero` is refused
/// after its header (not read without end), a truncated message and a stray
/// text file get the codec's typed error; `think` and `generate` alike.
#[test]
fn context_files_that_are_not_messages_fail_cleanly() {
    let q = models().join("qwen2");
    let good = tmp("whole.avp");
    assert!(
        avp(&[
            "think",
            "--model",
            q.to_str().unwrap(),
            "--prompt",
            "hi",
            "--steps",
            "1",
            "--out",
            good.to_str().unwrap()
        ])
        .status
        .success()
    );
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp("truncated.avp");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = tmp("stray.txt");
    std::fs::write(&text, "not a message at all\n").unwrap();
    for (context, expect) in [
        ("/dev/zero", "magic"),
        (truncated.to_str().unwrap(), "truncated"),
        (text.to_str().unwrap(), "magic"),
    ] {
        let never = tmp("never.avp");
        let model = ["--model", q.to_str().unwrap(), "--prompt", "x"];
        let think = ["think", "--steps", "1", "--out", never.to_str().unwrap()];
        for command in [&["generate"][..], &think[..]] {
            let out = avp(&[command, &model[..], &["--context", context][..]].concat());
            assert_eq!(out.status.code(), Some(1), "{command:?} {context}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert!(err.contains(expect), "{command:?} {context}: {err}");
        }
    }
    assert!(!tmp("never.avp").exists(), "nothing is written on failure");
}

/// AVP-ENG-17: `avp project` writes one float32 HIDDEN_STATE message.
#[test]
fn project_writes_a_float32_hidden_state_of_the_target_width() {
    let file = tmp("proj.avp");
    let (s, t) = (models().join("llama_tied"), models().join("qwen3"));
    let maps = tmp("maps");
    let args = [
        "project",
        "--source",
        s.to_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
        "--prompt",
        "What is 2+3?",
        "--steps",
        "2",
        "--maps",
        maps.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ];
    let out = avp(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = std::fs::read(&file).unwrap();
    let msg = avp_codec::decode(&first).unwrap();
    let d = expected("qwen3")["hidden_dim"].as_u64().unwrap() as u32;
    assert_eq!(
        msg.metadata.payload_type,
        avp_codec::PayloadType::HiddenState
    );
    assert_eq!(msg.metadata.dtype, avp_codec::DataType::Float32);
    assert_eq!(msg.metadata.tensor_shape, vec![d]);
    assert_eq!(msg.payload.len(), d as usize * 4);
    assert_eq!(msg.metadata.avp_map_id.len(), 33, "<src16>_<tgt16>");
    assert!(msg.header.flags.has_map());
    let keys: Vec<&str> = msg.metadata.extra.keys().collect();
    assert_eq!(keys, ["model_family", "model_hash", "num_steps"]);
    assert_eq!(&msg.metadata.extra["num_steps"], "2");
    // The vector is normalised to the target's mean embedding norm.
    let v: Vec<f32> = msg
        .payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let target_norm = expected("qwen3")["target_norm"].as_f64().unwrap() as f32;
    assert!(
        (norm - target_norm).abs() < 1e-3 * target_norm,
        "{norm} vs {target_norm}"
    );
    // A second run reads the map file written by the first and gives the same bytes.
    assert_eq!(std::fs::read_dir(&maps).unwrap().count(), 1);
    assert!(avp(&args).status.success());
    assert_eq!(std::fs::read(&file).unwrap(), first);
}

/// AVP-ENG-43: `think --chunk-mib N -o F` writes a chunked context (every
/// message carries an `avp.chunk` descriptor), and `generate --context F`
/// continues it exactly as it continues the plain message of the same think.
#[test]
fn think_writes_a_chunked_context_and_generate_continues_it() {
    let model = models().join("llama_untied");
    let m = model.to_str().unwrap();
    let (plain, chunked) = (tmp("plain.avp"), tmp("chunked.avp"));
    let think = |extra: &[&str]| {
        let mut args = vec![
            "think",
            "--model",
            m,
            "--prompt",
            "Chunk it.",
            "--steps",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = avp(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    };
    think(&["--out", plain.to_str().unwrap()]);
    let report = think(&["--chunk-mib", "1", "-o", chunked.to_str().unwrap()]);
    assert!(report.contains(" in 1 chunks"), "{report}");
    let bytes = std::fs::read(&chunked).unwrap();
    let first = avp_codec::peek(&bytes).unwrap();
    assert!(
        avp_codec::chunk::descriptor_of(&first.metadata)
            .unwrap()
            .is_some()
    );
    // The codec's own join gives back exactly the plain message of the same think.
    let joined = tmp("joined.avp");
    let out = avp(&[
        "kv",
        "join",
        "-o",
        joined.to_str().unwrap(),
        chunked.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&joined).unwrap(),
        std::fs::read(&plain).unwrap()
    );
    let _ = std::fs::remove_file(&joined);
    let generate = |context: &Path| {
        let out = avp(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "Now answer.",
            "--context",
            context.to_str().unwrap(),
            "--max-new-tokens",
            "8",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.stdout, String::from_utf8(out.stderr).unwrap())
    };
    let (from_plain, _) = generate(&plain);
    let (from_chunks, report) = generate(&chunked);
    assert_eq!(from_chunks, from_plain);
    assert!(
        report.contains("context: 1 chunks of a 3-layer context"),
        "{report}"
    );
    // --chunk-mib needs a file to write and a bound of at least 1 MiB.
    let out = avp(&[
        "think",
        "--model",
        m,
        "--prompt",
        "x",
        "--steps",
        "0",
        "--chunk-mib",
        "0",
        "-o",
        "x.avp",
    ]);
    assert!(!out.status.success());
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&chunked);
}

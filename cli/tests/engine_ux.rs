//! AVP-CLI-9: what the engine commands tell their user. Prompt files and
//! stdin, generation cut at the context length with its text kept, the
//! addressing flags, and the stderr reports (insta snapshots with times
//! and temporary paths redacted).
#![cfg(feature = "engine")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

mod common;
use common::{Scratch, avp, workspace};

fn model(name: &str) -> PathBuf {
    workspace().join("engine/testdata/models").join(name)
}

fn run(args: &[&str]) -> Output {
    avp().args(args).output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

/// The report with what varies between runs replaced: seconds and `dir`.
fn redact(report: &str, dir: &Path) -> String {
    let text = report.replace(dir.to_str().unwrap(), "$TMP");
    let text = text.replace(workspace().to_str().unwrap(), "$REPO");
    let text = text.replace("/cli/../", "/");
    text.split(' ')
        .collect::<Vec<_>>()
        .windows(2)
        .fold(Vec::new(), |mut acc: Vec<String>, w| {
            if acc.is_empty() {
                acc.push(w[0].to_owned());
            }
            let is_time =
                w[1].starts_with('s') && w[0].parse::<f64>().is_ok() && w[0].contains('.');
            if is_time {
                *acc.last_mut().unwrap() = "T".to_owned();
            }
            acc.push(w[1].to_owned());
            acc
        })
        .join(" ")
}

#[test]
fn generate_stops_at_the_context_length_and_keeps_its_text() {
    let m = model("qwen2");
    // The default --max-new-tokens (512) exceeds the bundled models' 256 positions.
    let out = run(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "Count on.",
    ]);
    let (text, report) = ok(&out);
    assert!(!text.trim().is_empty(), "the text produced is kept");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "{report}");
    assert!(
        lines[0].starts_with("warning: the model's context is 256 positions"),
        "{report}"
    );
    let ended_early = lines[1].contains("stopped at an end-of-sequence token");
    assert!(
        ended_early || lines[1].contains("reached the model's context length (256 positions)"),
        "{report}"
    );
    insta::assert_snapshot!("report_generate_context_cut", lines[0]);
}

#[test]
fn prompt_file_and_stdin_give_the_text_of_prompt() {
    let s = Scratch::new("engine-ux", "prompt");
    let m = model("qwen2");
    let prompt = "What is 2+3?";
    let file = s.path("prompt.txt");
    std::fs::write(&file, prompt).unwrap();
    let base = [
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--max-new-tokens",
        "6",
        "--greedy",
    ];
    let (direct, _) = ok(&run(&[&base[..], &["--prompt", prompt]].concat()));
    let (from_file, _) = ok(&run(&[
        &base[..],
        &["--prompt-file", file.to_str().unwrap()],
    ]
    .concat()));
    let mut child = avp()
        .args(base)
        .args(["--prompt-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(prompt.as_bytes())
        .unwrap();
    let (from_stdin, report) = ok(&child.wait_with_output().unwrap());
    assert_eq!(from_file, direct);
    assert_eq!(from_stdin, direct);
    let report = redact(&report, s.0.as_path());
    insta::assert_snapshot!("report_generate", report);
    // Exactly one of the two is required.
    let neither = run(&base);
    assert_eq!(neither.status.code(), Some(2));
}

#[test]
fn think_and_project_address_the_message_and_report_it() {
    let s = Scratch::new("engine-ux", "address");
    let out = s.path("ctx.avp");
    let m = model("qwen2");
    let (stdout, report) = ok(&run(&[
        "think",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "What is 2+3?",
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--session",
        "s-1",
        "--source-agent",
        "agent-a",
        "--target-agent",
        "agent-b",
    ]));
    assert!(
        stdout.is_empty(),
        "the message goes to --out, stdout stays empty"
    );
    let bytes = std::fs::read(&out).unwrap();
    let msg = avp_codec::decode(&bytes).unwrap();
    assert_eq!(msg.metadata.session_id, "s-1");
    assert_eq!(msg.metadata.source_agent_id, "agent-a");
    assert_eq!(msg.metadata.target_agent_id, "agent-b");
    assert!(
        report.contains(&format!("{} bytes written to", bytes.len())),
        "{report}"
    );
    insta::assert_snapshot!("report_think", redact(&report, s.0.as_path()));

    let hidden = s.path("h.avp");
    let (_, report) = ok(&run(&[
        "project",
        "--source",
        model("llama_tied").to_str().unwrap(),
        "--target",
        model("qwen3").to_str().unwrap(),
        "--prompt",
        "hi",
        "--steps",
        "2",
        "--out",
        hidden.to_str().unwrap(),
        "--target-agent",
        "agent-c",
    ]));
    let bytes = std::fs::read(&hidden).unwrap();
    let msg = avp_codec::decode(&bytes).unwrap();
    assert_eq!(msg.metadata.target_agent_id, "agent-c");
    assert_eq!(
        msg.metadata.session_id, "",
        "fields not given stay as written"
    );
    insta::assert_snapshot!("report_project", redact(&report, s.0.as_path()));
}

//! The chunk corpus area (conformance/vectors/chunk, made by
//! conformance/gen/gen_chunk.py from the spec text with numpy and blake3)
//! against our codec through the built-in subject: every case PASSes, so the
//! independent generator and avp-codec agree on chunk framing, descriptors
//! and digests (AVP-CHK-1, AVP-CHK-2, AVP-CHK-5), assembly in any order
//! (AVP-CHK-4) and every typed error (AVP-CHK-3, AVP-CHK-7, AVP-CHK-8).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use avp_conformance::builtin::BuiltinSubject;
use avp_conformance::corpus::Corpus;
use avp_conformance::judge::judge;
use avp_conformance::subject::{Request, Subject};
use avp_conformance::verdict::Verdict;

#[test]
fn chunk_corpus_passes_on_the_builtin_subject_strict_and_compatible() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let corpus = Corpus::load(&root).unwrap();
    let cases: Vec<_> = corpus
        .cases
        .iter()
        .filter(|c| c.id.starts_with("chunk/"))
        .collect();
    assert!(cases.len() >= 40, "only {} chunk cases", cases.len());
    let mut kinds = std::collections::BTreeSet::new();
    for strict in [true, false] {
        let mut subject = BuiltinSubject::new(strict);
        let mut failures = Vec::new();
        for &case in &cases {
            let data = case.input_bytes().unwrap();
            let request = Request {
                cmd: &case.op,
                case_id: &case.id,
                input: &case.input,
                input_raw: &case.input_raw,
                data: data.as_deref(),
            };
            let j = judge(case, subject.call(&request));
            if let Some(kind) = case.expect.get("error_kind").and_then(|k| k.as_str()) {
                kinds.insert(kind.to_string());
            }
            if j.verdict != Verdict::Pass {
                failures.push(format!("{}: {:?} {}", case.id, j.verdict, j.detail));
            }
        }
        assert!(failures.is_empty(), "strict {strict}: {failures:#?}");
    }
    // The judge compares the output bytes: other bytes are not a PASS.
    let valid = corpus
        .cases
        .iter()
        .find(|c| c.id == "chunk/valid/in-order")
        .unwrap();
    let wrong = serde_json::json!({"outcome": "accepted", "output": {"b64": "AAAA"}});
    assert_ne!(judge(valid, Ok(wrong)).verdict, Verdict::Pass);
    for kind in [
        "bad_chunk",
        "chunk_conflict",
        "incomplete_context",
        "context_digest_mismatch",
        "limit_exceeded",
        "checksum_mismatch",
        "truncated",
        "unknown_enum",
    ] {
        assert!(kinds.contains(kind), "no case expects {kind}");
    }
}

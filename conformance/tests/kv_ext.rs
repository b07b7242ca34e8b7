//! The kv_ext corpus area (conformance/vectors/kv_ext, made by
//! conformance/gen/gen_kv_ext.py from the spec text with numpy) against our
//! codec through the built-in subject: every case PASSes, so the
//! independent generator and avp-codec agree bit for bit on int8, int4 and
//! int8-channel quantization and dequantization (AVP-KVQ-5, AVP-KVQ-6,
//! AVP-KVQ-32), prefix addresses and assembly
//! (AVP-KVD-1, AVP-KVD-4), and on every typed error (AVP-KVQ-3).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use avp_conformance::builtin::BuiltinSubject;
use avp_conformance::corpus::Corpus;
use avp_conformance::judge::judge;
use avp_conformance::subject::{Request, Subject};
use avp_conformance::verdict::Verdict;

#[test]
fn kv_ext_corpus_passes_on_the_builtin_subject() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let corpus = Corpus::load(&root).unwrap();
    let cases: Vec<_> = corpus
        .cases
        .iter()
        .filter(|c| c.id.starts_with("kv_ext/"))
        .collect();
    assert!(cases.len() >= 40, "only {} kv_ext cases", cases.len());
    let mut subject = BuiltinSubject::new(true);
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for case in cases {
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
    assert!(failures.is_empty(), "{failures:#?}");
    // The judge compares the output bytes: other bytes are not a PASS.
    let valid = corpus
        .cases
        .iter()
        .find(|c| c.id == "kv_ext/int8/f16-g64-f32-scales")
        .unwrap();
    let wrong =
        serde_json::json!({"outcome": "accepted", "output": {"b64": "AAAA"}, "prefix": null});
    assert_ne!(judge(valid, Ok(wrong)).verdict, Verdict::Pass);
    for kind in [
        "bad_group_size",
        "scale_count_mismatch",
        "prefix_mismatch",
        "delta_mismatch",
        "missing_prefix",
        "unknown_enum",
        "truncated",
        "inconsistent",
    ] {
        assert!(kinds.contains(kind), "no case expects {kind}");
    }
}

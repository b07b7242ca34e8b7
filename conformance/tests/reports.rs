//! Golden tests of the report writers (AVP-CONF-30..33): a fixed report is
//! rendered and compared with committed files. `UPDATE_GOLDEN=1` rewrites
//! them (then review the diff).

use std::path::{Path, PathBuf};

use avp_conformance::corpus::Level;
use avp_conformance::expectations::{Entry, StaleEntry};
use avp_conformance::report;
use avp_conformance::runner::{CaseResult, RunReport, SubjectReport};
use avp_conformance::verdict::Verdict;
use serde_json::json;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn case(id: &str, verdict: Verdict, raw: Verdict, detail: &str) -> CaseResult {
    CaseResult {
        id: id.to_string(),
        section: id
            .rsplit_once('/')
            .map(|(s, _)| s.to_string())
            .unwrap_or_default(),
        level: if verdict == Verdict::NonStrict {
            Level::Should
        } else {
            Level::Must
        },
        rules: vec!["AVP-WIRE-15".into()],
        op: "decode".into(),
        description: Some("a <case> & its \"description\"".into()),
        verdict,
        raw_verdict: raw,
        detail: detail.to_string(),
        expectation: (verdict == Verdict::XFail).then(|| "FAIL # known: no limit".to_string()),
        expected: json!({"error_kind": "checksum_mismatch", "result": "invalid"}),
        // Keys in sorted order: the same text whether or not serde_json's
        // preserve_order feature is on in this build (the CLI enables it).
        observed: json!({"decoded": {"payload": {"length": 8}}, "outcome": "accepted"}),
        duration_ms: 1.5,
        log: if verdict == Verdict::Error {
            "Traceback: boom\n".into()
        } else {
            String::new()
        },
        input_len: Some(20),
        input_head: b"AV\x01\x00\x14\x00\x00\x00\x0c\x00\x00\x00<tag>&\x7f\xff".to_vec(),
        output_heads: vec![("decoded.payload".into(), vec![0, 1, 2, 3, 0x41, 0x42])],
    }
}

fn fixed_report() -> RunReport {
    let results = vec![
        case(
            "wire/checksum/flipped",
            Verdict::Fail,
            Verdict::Fail,
            "accepted an input that must be rejected",
        ),
        case(
            "wire/checksum/ok",
            Verdict::Pass,
            Verdict::Pass,
            "rejected (checksum_mismatch)",
        ),
        case(
            "wire/limits/bomb",
            Verdict::XFail,
            Verdict::Fail,
            "accepted an input that must be rejected",
        ),
        case(
            "wire/non-strict/trailing",
            Verdict::NonStrict,
            Verdict::NonStrict,
            "accepted an input a strict implementation rejects",
        ),
        case(
            "wire/zstd/hang",
            Verdict::Error,
            Verdict::Error,
            "timeout: no answer in 10.0 s",
        ),
        case(
            "handshake/weights/x",
            Verdict::Skip,
            Verdict::Skip,
            "skipped: not supported",
        ),
    ];
    let other: Vec<CaseResult> = results
        .iter()
        .map(|r| CaseResult {
            verdict: Verdict::Pass,
            raw_verdict: Verdict::Pass,
            ..r.clone()
        })
        .collect();
    RunReport {
        suite: Some("avp-conformance".into()),
        suite_version: Some("1.0.0".into()),
        manifest_blake3: "ab".repeat(32),
        runner_version: "0.1.0".into(),
        strict: false,
        started_unix: 0,
        subjects: vec![
            SubjectReport {
                name: "impl-a".into(),
                hello: json!({"implementation": {"name": "impl-a", "version": "1.2"}}),
                results,
                expectations: Some("conformance/expectations/impl-a.txt".into()),
                stale: vec![StaleEntry {
                    entry: Entry {
                        pattern: "wire/9/gone".into(),
                        verdict: Verdict::Fail,
                        reason: "old".into(),
                        flaky: false,
                        line: 7,
                    },
                    why: "matches no case of the corpus".into(),
                }],
                duration_ms: 9.0,
            },
            SubjectReport {
                name: "impl-b".into(),
                hello: json!({"implementation": {"name": "impl-b", "version": "0.1"}}),
                results: other,
                expectations: None,
                stale: vec![],
                duration_ms: 3.0,
            },
        ],
        coverage: None,
    }
}

fn check_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        want == actual,
        "{name} differs from the golden file; rerun with UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn conf_32_junit_matches_golden() {
    let xml = report::junit::render(&fixed_report());
    check_golden("report.junit.xml", &xml);
    // The things CI tools key on.
    assert!(xml.contains(
        "<testsuites name=\"avp-conformance\" tests=\"12\" failures=\"1\" errors=\"1\">"
    ));
    assert!(xml.contains("<skipped message=\"expected failure: FAIL # known: no limit\"/>"));
    assert!(xml.contains("<system-err>Traceback: boom\n</system-err>"));
    // Well-formed XML, checked by an independent parser (the pinned venv's Python).
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.xml");
    std::fs::write(&file, &xml).unwrap();
    let status = std::process::Command::new(py)
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
        ])
        .arg(&file)
        .status()
        .expect("run python (scripts/setup-venv.sh)");
    assert!(status.success(), "JUnit XML is not well-formed");
}

#[test]
fn conf_30_terminal_matches_golden() {
    check_golden(
        "report.txt",
        &report::terminal::render(&fixed_report(), false),
    );
}

#[test]
fn conf_33_html_matches_golden_and_is_self_contained() {
    let html = report::html::render(&fixed_report());
    check_golden("report.html", &html);
    for remote in ["src=", "<script", "<link", "url(", "@import"] {
        assert!(
            !html.contains(remote),
            "HTML report must be self-contained: found {remote}"
        );
    }
    assert!(html.contains(
        "00000000  41 56 01 00 14 00 00 00  0c 00 00 00 3c 74 61 67  |AV..........&lt;tag|"
    ));
    assert!(
        html.contains("<td class=\"v FAIL\"><a href=\"#s0-wire_checksum_flipped\">FAIL</a></td>")
    );
    assert!(html.contains("stale expectation line 7"));
}

#[test]
fn conf_31_json_round_trips() {
    let text = report::json(&fixed_report());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["subjects"][0]["results"][2]["verdict"], "XFAIL");
    assert_eq!(v["subjects"][0]["results"][2]["raw_verdict"], "FAIL");
    assert_eq!(
        v["subjects"][0]["stale"][0]["entry"]["pattern"],
        "wire/9/gone"
    );
    assert_eq!(v["manifest_blake3"], "ab".repeat(32));
}

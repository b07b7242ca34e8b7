//! `avp conformance` end to end (spec/protocol/conformance.md): the real SDK through its
//! adapter, a deliberately broken adapter, a misbehaving one, a tampered
//! corpus and stale expectations. Needs the pinned venv (scripts/setup-venv.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> String {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the pinned venv is missing: run scripts/setup-venv.sh ({})",
        py.display()
    );
    py.display().to_string()
}

fn sdk_adapter(extra: &str) -> String {
    format!(
        "{} {} {extra}",
        python(),
        root()
            .join("conformance/adapters/python/avp_adapter.py")
            .display()
    )
}

fn avp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_avp"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run avp")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("json report")).expect("report is JSON")
}

/// Case IDs of one subject with this verdict, sorted.
fn with_verdict(report: &Value, subject: usize, verdict: &str) -> Vec<String> {
    let mut ids: Vec<String> = report["subjects"][subject]["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["verdict"] == verdict)
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

const FIXTURE: &str = "conformance/tests/fixtures/corpus";

/// AVP-CONF-14/15/16: the whole corpus against the real SDK, its divergences
/// recorded in conformance/expectations/avp-python.txt (found by name).
#[test]
fn sdk_passes_the_corpus_with_its_recorded_divergences() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sdk.json");
    let out = avp(&[
        "conformance",
        "run",
        "--strict",
        "--adapter",
        &sdk_adapter(""),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&json);
    assert_eq!(r["subjects"][0]["name"], "avp-python");
    assert!(
        r["subjects"][0]["expectations"]
            .as_str()
            .unwrap()
            .ends_with("conformance/expectations/avp-python.txt")
    );
    for verdict in ["FAIL", "ERROR", "XPASS", "NON-STRICT"] {
        assert!(
            with_verdict(&r, 0, verdict).is_empty(),
            "{verdict}: {:?}",
            with_verdict(&r, 0, verdict)
        );
    }
    let xfail = with_verdict(&r, 0, "XFAIL");
    for id in [
        "wire/non-strict/trailing-bytes",
        "wire/limits/shape-rank-33",
        "wire/kv/kv-unknown-dtype-byte",
        "wire/json/content-not-string",
    ] {
        assert!(xfail.contains(&id.to_string()), "{id} not XFAIL: {xfail:?}");
    }
    // The SDK decodes every valid wire vector and every hash vector exactly.
    let pass = with_verdict(&r, 0, "PASS");
    assert!(
        pass.iter()
            .filter(|id| id.starts_with("wire/valid/"))
            .count()
            >= 16,
        "{pass:?}"
    );
    assert!(pass.contains(&"handshake/hash/real/llama3-8b".to_string()));
    let skip = with_verdict(&r, 0, "SKIP");
    assert!(
        skip.contains(&"wire/limits/zstd-bomb-2gib".to_string()),
        "{skip:?}"
    );
    assert!(
        skip.iter().all(|id| id.starts_with("handshake/weights/")
            || id.starts_with("handshake/resolve/extension/weights-")
            || id.starts_with("mac/") // the SDK has no MAC (spec/protocol/mac.md)
            || id.starts_with("kv_ext/") // nor quantized/delta KV (spec/protocol/kv-quant.md)
            || id.starts_with("chunk/") // nor chunked contexts (spec/protocol/chunked.md)
            || id == "wire/limits/zstd-bomb-2gib"),
        "{skip:?}"
    );
    assert!(r["manifest_blake3"].as_str().unwrap().len() == 64);
}

/// The suite can fail: an adapter that ignores payload_checksum fails
/// exactly the checksum cases, nothing else (AVP-WIRE-15 via AVP-CONF-12).
#[test]
fn broken_adapter_fails_exactly_the_checksum_cases() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("broken.json");
    let out = avp(&[
        "conformance",
        "run",
        "--adapter",
        &sdk_adapter("--ignore-checksum"),
        "--expectations",
        "conformance/expectations/avp-python.txt",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = report(&json);
    assert_eq!(r["subjects"][0]["name"], "avp-python-broken");
    assert_eq!(
        with_verdict(&r, 0, "FAIL"),
        [
            "wire/checksum/compressed-wrong-checksum",
            "wire/checksum/flipped-tensor-bit",
            "wire/checksum/wrong-value",
            "wire/checksum/zero-checksum-present",
            "wire/order/checksum-before-shape"
        ]
    );
    // Without its checksum check the SDK reaches the enum first, as AVP-WIRE-24
    // orders it: the recorded check-order divergence no longer shows (XPASS).
    assert_eq!(
        with_verdict(&r, 0, "XPASS"),
        ["wire/order/enum-before-checksum"]
    );
    assert!(with_verdict(&r, 0, "ERROR").is_empty());
    assert!(text(&out).contains("NOT conformant (exit 1)"));
}

/// AVP-CONF-4: one changed byte, one unlisted file or one missing file and nothing runs (exit 3).
#[test]
fn tampered_corpus_is_refused() {
    let copy = |dir: &Path| {
        let status = Command::new("cp")
            .arg("-r")
            .arg(root().join(FIXTURE))
            .arg(dir.join("corpus"))
            .status()
            .unwrap();
        assert!(status.success());
        dir.join("corpus")
    };
    let run = |corpus: &Path| {
        avp(&[
            "conformance",
            "run",
            "--vectors",
            corpus.to_str().unwrap(),
            "--adapter",
            &sdk_adapter(""),
        ])
    };

    let dir = tempfile::tempdir().unwrap();
    let corpus = copy(dir.path());
    let victim = corpus.join("wire/bin/hidden-f32.avp");
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let out = run(&corpus);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("wire/bin/hidden-f32.avp: blake3"),
        "{}",
        text(&out)
    );
    let verify = avp(&[
        "conformance",
        "vectors",
        "verify",
        "--vectors",
        corpus.to_str().unwrap(),
    ]);
    assert_eq!(verify.status.code(), Some(3));

    let dir = tempfile::tempdir().unwrap();
    let corpus = copy(dir.path());
    std::fs::write(corpus.join("wire/bin/extra.avp"), b"AV").unwrap();
    let out = run(&corpus);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).contains("wire/bin/extra.avp: present but not listed"),
        "{}",
        text(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let corpus = copy(dir.path());
    std::fs::remove_file(corpus.join("wire/bin/zstd.avp")).unwrap();
    let out = run(&corpus);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).contains("wire/bin/zstd.avp: listed in the manifest but missing"),
        "{}",
        text(&out)
    );
}

#[test]
fn committed_corpora_verify() {
    for corpus in ["conformance/vectors", FIXTURE] {
        let out = avp(&["conformance", "vectors", "verify", "--vectors", corpus]);
        assert_eq!(out.status.code(), Some(0), "{corpus}: {}", text(&out));
    }
}

/// AVP-CONF-15: an entry for a case that passes (XPASS) or for no case at all fails the run.
#[test]
fn stale_expectations_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("stale.txt");
    let mut lines = std::fs::read_to_string(
        root().join("conformance/tests/fixtures/expectations/avp-python.txt"),
    )
    .unwrap();
    lines.push_str("wire/2/hidden-f32  FAIL  # claims a failure that does not happen\n");
    lines.push_str("wire/9/no-such-case  FAIL  # names nothing\n");
    std::fs::write(&exp, lines).unwrap();
    let json = dir.path().join("r.json");
    let out = avp(&[
        "conformance",
        "run",
        "--vectors",
        FIXTURE,
        "--adapter",
        &sdk_adapter(""),
        "--expectations",
        exp.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let r = report(&json);
    assert_eq!(with_verdict(&r, 0, "XPASS"), ["wire/2/hidden-f32"]);
    let stale: Vec<&str> = r["subjects"][0]["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["entry"]["pattern"].as_str().unwrap())
        .collect();
    assert_eq!(stale, ["wire/2/hidden-f32", "wire/9/no-such-case"]);
    assert!(text(&out).contains("STALE expectation"), "{}", text(&out));
}

/// NON-STRICT passes by default and fails under --strict (AVP-CONF-11).
#[test]
fn strict_turns_non_strict_into_failure() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("none.txt");
    std::fs::write(&empty, "# nothing expected\n").unwrap();
    let args = [
        "conformance",
        "run",
        "--vectors",
        FIXTURE,
        "--only",
        "wire/6/",
        "--expectations",
        empty.to_str().unwrap(),
    ];
    let adapter = sdk_adapter("");
    let mut relaxed: Vec<&str> = args.to_vec();
    relaxed.extend(["--adapter", &adapter]);
    let out = avp(&relaxed);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("3 NON-STRICT"), "{}", text(&out));
    relaxed.push("--strict");
    let out = avp(&relaxed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// AVP-CONF-25: a crash, a hang, non-JSON and a wrong seq are each an ERROR
/// for that case only; the adapter is restarted and the run goes on (exit 4).
#[test]
fn misbehaving_adapter_errors_per_case_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.json");
    let adapter = format!(
        "{} {} --crash bad-magic --hang bad-version --garbage /zstd --bad-seq kv-flag",
        python(),
        root()
            .join("conformance/adapters/test/misbehaving.py")
            .display()
    );
    let out = avp(&[
        "conformance",
        "run",
        "--vectors",
        FIXTURE,
        "--adapter",
        &adapter,
        "--timeout",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let r = report(&json);
    assert_eq!(
        with_verdict(&r, 0, "ERROR"),
        [
            "wire/1/bad-magic",
            "wire/1/bad-version",
            "wire/2/kv-flag",
            "wire/2/zstd"
        ]
    );
    let results = r["subjects"][0]["results"].as_array().unwrap();
    let detail = |id: &str| {
        results.iter().find(|c| c["id"] == id).unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        detail("wire/1/bad-magic").starts_with("crashed: adapter exited"),
        "{}",
        detail("wire/1/bad-magic")
    );
    assert!(
        detail("wire/1/bad-version").starts_with("timeout"),
        "{}",
        detail("wire/1/bad-version")
    );
    assert!(detail("wire/2/zstd").starts_with("protocol: answer is not JSON"));
    assert!(detail("wire/2/kv-flag").contains("answer has seq"));
    let crash = results
        .iter()
        .find(|c| c["id"] == "wire/1/bad-magic")
        .unwrap();
    assert!(
        crash["log"]
            .as_str()
            .unwrap()
            .contains("about to crash on wire/1/bad-magic")
    );
    // Everything after each failure still ran.
    assert_eq!(with_verdict(&r, 0, "SKIP").len(), results.len() - 4);
}

#[test]
fn usage_errors_exit_2() {
    let out = avp(&[
        "conformance",
        "run",
        "--vectors",
        FIXTURE,
        "--adapter",
        "'unterminated",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = avp(&[
        "conformance",
        "run",
        "--vectors",
        "/nonexistent/corpus",
        "--adapter",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = avp(&[
        "conformance",
        "http",
        "https://example.invalid",
        "--vectors",
        FIXTURE,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// Our own implementation, both decoders, with --strict: the compatible one
/// only through its documented NON-STRICT entries (conformance/expectations/avp-rs.txt).
#[test]
fn builtin_subject_conforms_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ours.json");
    let junit = dir.path().join("ours.xml");
    let out = avp(&[
        "conformance",
        "run",
        "--strict",
        "--builtin",
        "compatible",
        "--builtin",
        "strict",
        "--json",
        json.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&json);
    assert_eq!(r["subjects"][0]["name"], "avp-rs");
    assert_eq!(r["subjects"][1]["name"], "avp-rs-strict");
    let total = r["subjects"][1]["results"].as_array().unwrap().len();
    assert!(total > 600, "{total} cases");
    assert_eq!(
        with_verdict(&r, 1, "PASS").len(),
        total,
        "strict decoder: every case PASS"
    );
    let xfail = with_verdict(&r, 0, "XFAIL");
    assert!(
        xfail.iter().all(|id| id.starts_with("wire/non-strict/")
            || id == "wire/kv/kv-trailing-inner"
            || id == "wire/kv/kv-dtype-differs-from-metadata"),
        "{xfail:?}"
    );
    assert_eq!(with_verdict(&r, 0, "PASS").len() + xfail.len(), total);
    // JUnit: well-formed (an independent parser), one <testcase> per case and subject.
    let count = Command::new(python())
        .args(["-c", "import sys, xml.etree.ElementTree as E; print(len(list(E.parse(sys.argv[1]).iter('testcase'))))"])
        .arg(&junit)
        .output()
        .unwrap();
    assert!(
        count.status.success(),
        "{}",
        String::from_utf8_lossy(&count.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        (2 * total).to_string()
    );
}

/// AVP-CLI-10: from a directory outside the repository, with no path given,
/// `avp conformance vectors verify` finds the corpus of the source tree the
/// binary was built from; `--suite` (alias of `--vectors`) names one; a
/// directory without a MANIFEST.json exits 2 and names what it tried.
#[test]
fn cli_10_the_corpus_is_found_from_any_directory() {
    let elsewhere = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-cli-10-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_avp"))
            .args(args)
            .current_dir(&elsewhere)
            .output()
            .unwrap()
    };
    let found = run(&["conformance", "vectors", "verify"]);
    assert_eq!(found.status.code(), Some(0), "{found:?}");
    assert!(String::from_utf8_lossy(&found.stdout).contains("files match MANIFEST.json"));
    let corpus = root().join("conformance/vectors");
    let named = run(&[
        "conformance",
        "vectors",
        "verify",
        "--suite",
        corpus.to_str().unwrap(),
    ]);
    assert_eq!(named.status.code(), Some(0), "{named:?}");
    let missing = elsewhere.join("no-corpus-here");
    let refused = run(&[
        "conformance",
        "vectors",
        "verify",
        "--vectors",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no-corpus-here"),
        "{refused:?}"
    );
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

//! Runs a corpus against subjects and collects the results every report is
//! rendered from.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::corpus::{Case, Corpus, Level};
use crate::coverage::Coverage;
use crate::expectations::{Expectations, StaleEntry};
use crate::judge::judge;
use crate::subject::{Request, Subject, implementation_name};
use crate::verdict::Verdict;

/// Hex dumps in reports show at most this many bytes.
pub const DUMP_BYTES: usize = 256;

/// The result of one case against one subject.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Case ID.
    pub id: String,
    /// `<area>/<section>`.
    pub section: String,
    /// MUST / SHOULD / INFO.
    pub level: Level,
    /// Rule IDs.
    pub rules: Vec<String>,
    /// Operation.
    pub op: String,
    /// Case description.
    pub description: Option<String>,
    /// Final verdict (after expectations).
    pub verdict: Verdict,
    /// Verdict before expectations.
    pub raw_verdict: Verdict,
    /// Why.
    pub detail: String,
    /// The reason from the expectations file, when an entry matched.
    pub expectation: Option<String>,
    /// The case's `expect`.
    pub expected: Value,
    /// The answer (bytes as digests).
    pub observed: Value,
    /// Milliseconds the subject took.
    pub duration_ms: f64,
    /// Subject stderr written during the case.
    pub log: String,
    /// Input length in bytes (byte-input cases).
    pub input_len: Option<usize>,
    /// First bytes of the input.
    #[serde(skip)]
    pub input_head: Vec<u8>,
    /// First bytes of each byte field of the answer.
    #[serde(skip)]
    pub output_heads: Vec<(String, Vec<u8>)>,
}

/// All results for one subject.
#[derive(Debug, Clone, Serialize)]
pub struct SubjectReport {
    /// `hello.implementation.name`.
    pub name: String,
    /// The full `hello` answer.
    pub hello: Value,
    /// Per case, in corpus order.
    pub results: Vec<CaseResult>,
    /// The expectations file used, if any.
    pub expectations: Option<String>,
    /// Entries that no longer describe the run (each fails it, AVP-CONF-15).
    pub stale: Vec<StaleEntry>,
    /// Wall-clock milliseconds for the whole corpus.
    pub duration_ms: f64,
}

impl SubjectReport {
    /// Count of each verdict, in [`Verdict::ALL`] order.
    pub fn counts(&self) -> Vec<(Verdict, usize)> {
        Verdict::ALL
            .iter()
            .map(|v| (*v, self.results.iter().filter(|r| r.verdict == *v).count()))
            .collect()
    }

    /// Whether this subject makes the run fail (AVP-CONF-16).
    pub fn failed(&self, strict: bool) -> bool {
        !self.stale.is_empty() || self.results.iter().any(|r| r.verdict.fails_run(strict))
    }
}

/// Everything one run found.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Suite name from the manifest.
    pub suite: Option<String>,
    /// Suite version from the manifest.
    pub suite_version: Option<String>,
    /// BLAKE3 of `MANIFEST.json`: which corpus was run (AVP-CONF-5).
    pub manifest_blake3: String,
    /// This runner's version.
    pub runner_version: String,
    /// Whether NON-STRICT fails the run.
    pub strict: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// Per subject.
    pub subjects: Vec<SubjectReport>,
    /// Rules without cases, if a spec directory was given.
    pub coverage: Option<Coverage>,
}

impl RunReport {
    /// Starts an empty report for `corpus`.
    pub fn new(corpus: &Corpus, strict: bool) -> Self {
        RunReport {
            suite: corpus.manifest.suite.clone(),
            suite_version: corpus.manifest.suite_version.clone(),
            manifest_blake3: corpus.manifest.digest.clone(),
            runner_version: env!("CARGO_PKG_VERSION").to_string(),
            strict,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            subjects: Vec::new(),
            coverage: None,
        }
    }

    /// The exit code for the whole run (AVP-CONF-16): 4 if any ERROR, else 1 if
    /// anything fails the run, else 0.
    pub fn exit_code(&self) -> u8 {
        let any_error = self
            .subjects
            .iter()
            .any(|s| s.results.iter().any(|r| r.verdict == Verdict::Error));
        if any_error {
            crate::EXIT_ERROR
        } else if self.subjects.iter().any(|s| s.failed(self.strict)) {
            crate::EXIT_FAIL
        } else {
            crate::EXIT_OK
        }
    }
}

/// Runs every case of `cases` against `subject` and applies `expectations`.
///
/// `universe` is every case ID of the corpus, selected or not: an entry
/// whose cases were merely left out of this run (`--only`) is not stale, an
/// entry matching nothing in the corpus is (AVP-CONF-15).
pub fn run_subject(
    cases: &[Case],
    subject: &mut dyn Subject,
    hello: Value,
    expectations: Option<&Expectations>,
    universe: &[String],
) -> SubjectReport {
    let started = Instant::now();
    let mut results = Vec::with_capacity(cases.len());
    for case in cases {
        let (result, payload) = run_case_keeping_payload(case, subject);
        results.push(result);
        if let Some(encode_case) = derive_encode_case(case, payload.as_deref()) {
            results.push(run_case(&encode_case, subject));
        } else if case.encode.is_some() && case.op == "decode" {
            results.push(skipped_encode(case));
        }
    }
    subject.finish();
    let mut stale = Vec::new();
    if let Some(exp) = expectations {
        let raw: Vec<(&str, Verdict)> = results
            .iter()
            .map(|r| (r.id.as_str(), r.raw_verdict))
            .collect();
        let (finals, st) = exp.apply(&raw);
        for (r, v) in results.iter_mut().zip(finals) {
            r.verdict = v;
            r.expectation = exp
                .lookup(&r.id)
                .map(|(_, e)| format!("{} # {}", e.verdict, e.reason));
        }
        stale = st
            .into_iter()
            .filter(|s| {
                s.why != crate::expectations::NO_CASE
                    || !universe
                        .iter()
                        .any(|id| crate::expectations::id_matches(&s.entry.pattern, id))
            })
            .collect();
    }
    SubjectReport {
        name: implementation_name(&hello),
        hello,
        results,
        expectations: expectations.map(|e| e.source.clone()),
        stale,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// ID of the encode case derived from a decode case (AVP-CONF-27):
/// `<area>/<section>/<slug>` becomes `<area>/<section>.encode/<slug>`.
pub fn encode_case_id(decode_id: &str) -> String {
    match decode_id.rsplit_once('/') {
        Some((section, slug)) => format!("{section}.encode/{slug}"),
        None => format!("{decode_id}.encode"),
    }
}

/// The round-trip case of a valid decode case with `encode` (AVP-CONF-27):
/// encode the corpus' metadata with the payload the subject decoded and
/// expect the original message bytes. `None` when the subject's payload is
/// not the expected one (the decode case already failed).
fn derive_encode_case(case: &Case, payload: Option<&[u8]>) -> Option<Case> {
    let encode = case.encode.as_ref()?;
    if case.op != "decode" || case.result != crate::corpus::ExpectedResult::Valid {
        return None;
    }
    let payload = payload?;
    let want_payload = case.expect.pointer("/decoded/payload/blake3")?.as_str()?;
    if blake3::hash(payload).to_hex().as_str() != want_payload {
        return None;
    }
    let original = case.input_bytes().ok()??;
    let input = serde_json::json!({
        "metadata": case.expect.pointer("/decoded/metadata")?,
        "compression": encode.get("compression").cloned().unwrap_or(Value::from("none")),
        "b64": crate::b64::encode(payload),
    });
    Some(Case {
        id: encode_case_id(&case.id),
        rules: case.rules.clone(),
        level: case.level,
        op: "encode".into(),
        input_raw: input.to_string(),
        input,
        expect: serde_json::json!({
            "result": "valid",
            "output": crate::judge::digest_of(&original),
            "decoded": decoded_without_kv(case),
        }),
        result: crate::corpus::ExpectedResult::Valid,
        description: Some(format!("re-encoding {} gives its bytes back", case.id)),
        input_file: None,
        source: case.source.clone(),
        encode: None,
    })
}

/// `expect.decoded` minus `kv` and `header` (a re-encoding with its map
/// entries in another order has other bytes but the same lengths; the
/// header is checked by the byte comparison).
fn decoded_without_kv(case: &Case) -> Value {
    let mut d = case.expect.get("decoded").cloned().unwrap_or(Value::Null);
    if let Some(map) = d.as_object_mut() {
        map.remove("kv");
        map.remove("header");
    }
    d
}

fn skipped_encode(case: &Case) -> CaseResult {
    let id = encode_case_id(&case.id);
    CaseResult {
        section: id
            .rsplit_once('/')
            .map(|(s, _)| s.to_string())
            .unwrap_or_default(),
        id,
        level: case.level,
        rules: case.rules.clone(),
        op: "encode".into(),
        description: Some(format!("re-encoding {} gives its bytes back", case.id)),
        verdict: Verdict::Skip,
        raw_verdict: Verdict::Skip,
        detail: "not run: the decode case did not yield the expected payload".into(),
        expectation: None,
        expected: Value::Null,
        observed: Value::Null,
        duration_ms: 0.0,
        log: String::new(),
        input_len: None,
        input_head: Vec::new(),
        output_heads: Vec::new(),
    }
}

fn run_case(case: &Case, subject: &mut dyn Subject) -> CaseResult {
    run_case_keeping_payload(case, subject).0
}

/// Runs one case; also returns the full decoded payload of a decode answer.
fn run_case_keeping_payload(
    case: &Case,
    subject: &mut dyn Subject,
) -> (CaseResult, Option<Vec<u8>>) {
    let data = case.input_bytes();
    let started = Instant::now();
    let (judgement, input) = match data {
        Err(e) => (
            crate::judge::Judgement {
                verdict: Verdict::Error,
                detail: format!("corpus input: {e}"),
                observed: Value::Null,
                output_bytes: Vec::new(),
            },
            None,
        ),
        Ok(data) => {
            let request = Request {
                cmd: &case.op,
                case_id: &case.id,
                input: &case.input,
                input_raw: &case.input_raw,
                data: data.as_deref(),
            };
            (judge(case, subject.call(&request)), data)
        }
    };
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;
    let payload = judgement
        .output_bytes
        .iter()
        .find(|(k, _)| k == "decoded.payload")
        .map(|(_, b)| b.clone());
    let result = CaseResult {
        id: case.id.clone(),
        section: case.section().to_string(),
        level: case.level,
        rules: case.rules.clone(),
        op: case.op.clone(),
        description: case.description.clone(),
        verdict: judgement.verdict,
        raw_verdict: judgement.verdict,
        detail: judgement.detail,
        expectation: None,
        expected: case.expect.clone(),
        observed: judgement.observed,
        duration_ms,
        log: subject.take_log(),
        input_len: input.as_ref().map(Vec::len),
        input_head: input
            .map(|mut d| {
                d.truncate(DUMP_BYTES);
                d
            })
            .unwrap_or_default(),
        output_heads: judgement
            .output_bytes
            .into_iter()
            .map(|(k, mut b)| {
                b.truncate(DUMP_BYTES);
                (k, b)
            })
            .collect(),
    };
    (result, payload)
}

//! Turns one answer into one verdict (AVP-CONF-10..13).
//!
//! `expect.result` says what must happen; every other `expect` field (except
//! `error_kind` and prose) must appear in the accepted answer with an equal
//! value (objects compare as subsets, numbers by value). Bytes in answers
//! (`{"b64"}` / `{"path"}`) are replaced by `{"len", "blake3"}` before the
//! comparison, so adapters never need a BLAKE3 library (AVP-CONF-24).

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::corpus::{Case, ExpectedResult, Level};
use crate::subject::HarnessFailure;
use crate::verdict::Verdict;

/// `expect` keys that are not compared with the answer (`kv` is the KV
/// inner-payload aspect, judged on its own; `sdk`, `warnings` and
/// `strict_error_kind` document the SDK or a compatible decoder).
const NOT_COMPARED: [&str; 10] = [
    "result",
    "error_kind",
    "description",
    "note",
    "notes",
    "reason",
    "sdk",
    "warnings",
    "strict_error_kind",
    "kv",
];

/// The judgement of one answer.
#[derive(Debug, Clone, Serialize)]
pub struct Judgement {
    /// Verdict before expectations are applied.
    pub verdict: Verdict,
    /// One line saying why.
    pub detail: String,
    /// The answer as compared (bytes replaced by digests).
    pub observed: Value,
    /// Bytes found in the answer (field name, bytes), for hex dumps.
    #[serde(skip)]
    pub output_bytes: Vec<(String, Vec<u8>)>,
}

fn violated(level: Level) -> Verdict {
    match level {
        Level::Must => Verdict::Fail,
        Level::Should => Verdict::NonStrict,
        Level::Info => Verdict::Info,
    }
}

/// Judges `answer` against `case`.
pub fn judge(case: &Case, answer: Result<Value, HarnessFailure>) -> Judgement {
    let mut answer = match answer {
        Ok(a) => a,
        Err(failure) => {
            return Judgement {
                verdict: Verdict::Error,
                detail: failure.to_string(),
                observed: Value::Null,
                output_bytes: Vec::new(),
            };
        }
    };
    let output_bytes = replace_bytes(&mut answer);
    let outcome = answer
        .get("outcome")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let judged = |verdict, detail: String, answer: Value| Judgement {
        verdict,
        detail,
        observed: answer,
        output_bytes: Vec::new(),
    };
    let mut j = match outcome.as_str() {
        "skipped" => {
            let reason = answer
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            judged(Verdict::Skip, format!("skipped: {reason}"), answer)
        }
        "errored" => {
            let message = answer
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            judged(Verdict::Error, format!("adapter error: {message}"), answer)
        }
        "http" => {
            let (verdict, detail) = crate::http::judge_http(case, &answer);
            judged(verdict, detail, answer)
        }
        "accepted" if case.op == "encode" => {
            let (verdict, detail) = judge_encode(case, &answer, &output_bytes);
            judged(verdict, detail, answer)
        }
        "accepted" => {
            let (verdict, detail) = judge_accepted(case, &answer);
            judged(verdict, detail, answer)
        }
        _ => {
            let (verdict, detail) = judge_rejected(case, &answer);
            judged(verdict, detail, answer)
        }
    };
    if case.level == Level::Info && !matches!(j.verdict, Verdict::Error | Verdict::Skip) {
        j.detail = format!("{outcome} (recorded): {}", j.detail);
        j.verdict = Verdict::Info;
    }
    j.output_bytes = output_bytes;
    j
}

fn judge_accepted(case: &Case, answer: &Value) -> (Verdict, String) {
    let fields = compare_fields(&case.expect, answer);
    let (verdict, detail) = match case.result {
        ExpectedResult::Valid => match fields {
            Ok(()) => (
                Verdict::Pass,
                "accepted with the expected result".to_string(),
            ),
            Err(m) => return (violated(case.level), format!("accepted, but {m}")),
        },
        ExpectedResult::Invalid => {
            return (
                violated(case.level),
                "accepted an input that must be rejected".into(),
            );
        }
        ExpectedResult::NonStrict => match fields {
            Ok(()) => (
                Verdict::NonStrict,
                "accepted an input a strict implementation rejects".to_string(),
            ),
            Err(m) => {
                return (
                    violated(case.level),
                    format!("accepted a non-strict input, but {m}"),
                );
            }
        },
        ExpectedResult::Acceptable => (
            Verdict::Pass,
            "accepted (either answer is acceptable)".to_string(),
        ),
    };
    match judge_kv(case, answer) {
        Some((kv_verdict, kv_detail)) if severity(kv_verdict) > severity(verdict) => {
            (kv_verdict, kv_detail)
        }
        _ => (verdict, detail),
    }
}

/// An encode answer (AVP-CONF-27): the same bytes as the corpus is PASS;
/// other bytes that our reference decoder reads back as the same message
/// are NON-STRICT (semantically equal, AVP-WIRE-22's byte identity missed);
/// anything else is a violation.
fn judge_encode(case: &Case, answer: &Value, bytes: &[(String, Vec<u8>)]) -> (Verdict, String) {
    let same_bytes = match (case.expect.get("output"), answer.get("output")) {
        (Some(want), Some(got)) => subset(want, got, "output").is_ok(),
        _ => false,
    };
    if same_bytes {
        return (Verdict::Pass, "byte-identical to the corpus".into());
    }
    let Some((_, output)) = bytes.iter().find(|(k, _)| k == "output") else {
        return (
            violated(case.level),
            "no `output` bytes in the answer".into(),
        );
    };
    let Some(want) = case.expect.get("decoded") else {
        return (
            violated(case.level),
            "output differs from the corpus bytes".into(),
        );
    };
    match avp_codec::decode(output) {
        Ok(msg) => {
            let mut view = crate::builtin::decoded_view(&msg, false);
            replace_bytes(&mut view);
            match subset(want, &view, "decoded") {
                Ok(()) => (
                    Verdict::NonStrict,
                    "other bytes, same message (not byte-identical)".into(),
                ),
                Err(m) => (
                    violated(case.level),
                    format!("re-encoded message differs: {m}"),
                ),
            }
        }
        Err(e) => (violated(case.level), format!("output does not decode: {e}")),
    }
}

/// How bad a verdict is, for combining aspects of one case.
fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Fail | Verdict::Error => 2,
        Verdict::NonStrict => 1,
        _ => 0,
    }
}

/// The KV inner-payload aspect of an accepted decode (AVP-CONF-12):
/// `expect.kv.result` (default `valid`) against the answer's `decoded.kv`,
/// which is `null`, the inner header, or `{"error_kind", "message"}`.
fn judge_kv(case: &Case, answer: &Value) -> Option<(Verdict, String)> {
    let want_view = case
        .expect
        .pointer("/decoded/kv")
        .filter(|v| v.is_object())?;
    let got = answer.pointer("/decoded/kv").filter(|v| !v.is_null());
    let got_kind = got
        .and_then(|g| g.get("error_kind"))
        .and_then(Value::as_str);
    let aspect = case.expect.get("kv");
    let wanted = aspect
        .and_then(|a| a.get("result"))
        .and_then(Value::as_str)
        .unwrap_or("valid");
    Some(match (wanted, got, got_kind) {
        (_, None, _) => (
            violated(case.level),
            "`decoded.kv` missing from the answer".into(),
        ),
        ("valid", Some(_), Some(kind)) => (
            violated(case.level),
            format!("rejected a valid KV payload ({kind})"),
        ),
        ("valid", Some(g), None) => {
            if want_view.get("sdk_error").is_some() {
                return None;
            }
            match subset(want_view, g, "decoded.kv") {
                Ok(()) => (Verdict::Pass, "KV payload as expected".into()),
                Err(m) => (violated(case.level), format!("accepted, but {m}")),
            }
        }
        ("invalid", Some(_), Some(kind)) => match aspect.and_then(|a| a.get("error_kind")) {
            Some(k) if !kind_matches(k, kind) => (
                Verdict::NonStrict,
                format!("KV payload rejected as {kind}, expected {k}"),
            ),
            _ => (Verdict::Pass, format!("KV payload rejected ({kind})")),
        },
        ("invalid", Some(_), None) => (
            violated(case.level),
            "accepted a KV payload that must be rejected".into(),
        ),
        ("non_strict", Some(_), Some(_)) => (
            Verdict::Pass,
            "KV payload rejected, as a strict implementation does".into(),
        ),
        (_, Some(_), _) => (
            Verdict::NonStrict,
            "accepted a KV payload a strict implementation rejects".into(),
        ),
    })
}

fn judge_rejected(case: &Case, answer: &Value) -> (Verdict, String) {
    let kind = answer
        .get("error_kind")
        .and_then(Value::as_str)
        .unwrap_or("other");
    let message = answer.get("message").and_then(Value::as_str).unwrap_or("");
    match case.result {
        ExpectedResult::Valid => (
            violated(case.level),
            format!("rejected a valid input ({kind}: {message})"),
        ),
        ExpectedResult::Invalid => match case.expect.get("error_kind") {
            Some(expected) if !kind_matches(expected, kind) => (
                Verdict::NonStrict,
                format!("rejected, but as {kind}, expected {expected}"),
            ),
            _ => (Verdict::Pass, format!("rejected ({kind})")),
        },
        ExpectedResult::NonStrict => match case.expect.get("strict_error_kind") {
            Some(expected) if !kind_matches(expected, kind) => (
                Verdict::NonStrict,
                format!("rejected, but as {kind}, a strict implementation says {expected}"),
            ),
            _ => (
                Verdict::Pass,
                format!("rejected ({kind}), as a strict implementation does"),
            ),
        },
        ExpectedResult::Acceptable => (
            Verdict::Pass,
            format!("rejected ({kind}) (either answer is acceptable)"),
        ),
    }
}

fn kind_matches(expected: &Value, kind: &str) -> bool {
    match expected {
        Value::String(s) => s == kind,
        Value::Array(list) => list.iter().any(|v| v.as_str() == Some(kind)),
        _ => true,
    }
}

/// Every compared `expect` field must be in `answer` with an equal value.
fn compare_fields(expect: &Value, answer: &Value) -> Result<(), String> {
    let Some(expect) = expect.as_object() else {
        return Ok(());
    };
    for (key, want) in expect {
        if NOT_COMPARED.contains(&key.as_str()) {
            continue;
        }
        let mut want = want.clone();
        if key == "decoded" {
            // Judged as its own aspect (judge_kv).
            if let Some(d) = want.as_object_mut() {
                d.remove("kv");
            }
        }
        match answer.get(key) {
            None => return Err(format!("`{key}` missing from the answer")),
            Some(got) => subset(&want, got, key)?,
        }
    }
    Ok(())
}

fn subset(want: &Value, got: &Value, path: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let p = format!("{path}.{k}");
                match g.get(k) {
                    Some(gv) => subset(wv, gv, &p)?,
                    None => return Err(format!("`{p}` missing from the answer")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!(
                    "`{path}` has {} items, expected {}",
                    g.len(),
                    w.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                subset(wv, gv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(w), Value::Number(g)) if numbers_equal(w, g) => Ok(()),
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("`{path}` is {g}, expected {w}")),
    }
}

/// Integers compare exactly (beyond 2^53 too); otherwise by f64 value.
fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i128(), b.as_i128()) {
        (Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// Replaces every `{"b64": ..}` / `{"path": ..}` byte reference in an answer
/// (at any depth up to 8) by `{"length", "crc32", "blake3"}` and returns the
/// bytes with their JSON path.
fn replace_bytes(answer: &mut Value) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    replace_in(answer, "", 0, &mut found);
    found
}

fn replace_in(value: &mut Value, path: &str, depth: usize, found: &mut Vec<(String, Vec<u8>)>) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if depth > 8 {
        return;
    }
    for (key, child) in map.iter_mut() {
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Some(bytes) = child.as_object().and_then(read_ref) {
            *child = digest_of(&bytes);
            found.push((child_path, bytes));
        } else {
            replace_in(child, &child_path, depth + 1, found);
        }
    }
}

fn read_ref(obj: &Map<String, Value>) -> Option<Vec<u8>> {
    if obj.len() != 1 {
        return None;
    }
    if let Some(text) = obj.get("b64").and_then(Value::as_str) {
        return crate::b64::decode(text);
    }
    obj.get("path")
        .and_then(Value::as_str)
        .and_then(|p| std::fs::read(p).ok())
}

/// `{"length", "crc32", "blake3"}` of some bytes, as compared with `expect`
/// (the wire corpus' `decoded.payload` form).
pub fn digest_of(bytes: &[u8]) -> Value {
    json!({
        "length": bytes.len(),
        "crc32": crc32fast::hash(bytes),
        "blake3": blake3::hash(bytes).to_hex().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::corpus::{Case, ExpectedResult, Level};

    fn case(level: Level, result: ExpectedResult, expect: Value) -> Case {
        Case {
            id: "wire/t/x".into(),
            rules: vec![],
            level,
            op: "decode".into(),
            input: json!({}),
            input_raw: "{}".into(),
            expect,
            result,
            description: None,
            input_file: None,
            source: "t".into(),
            encode: None,
        }
    }

    fn verdict(c: &Case, answer: Value) -> Verdict {
        judge(c, Ok(answer)).verdict
    }

    #[test]
    fn conf_12_decode_outcomes() {
        let payload = json!({"b64": crate::b64::encode(b"abcd")});
        let digest = digest_of(b"abcd");
        let valid = case(
            Level::Must,
            ExpectedResult::Valid,
            json!({"result": "valid", "decoded": {"payload": digest, "kv": null}}),
        );
        assert_eq!(
            verdict(
                &valid,
                json!({"outcome": "accepted", "decoded": {"payload": payload}})
            ),
            Verdict::Pass
        );
        let other = json!({"b64": crate::b64::encode(b"abce")});
        assert_eq!(
            verdict(
                &valid,
                json!({"outcome": "accepted", "decoded": {"payload": other}})
            ),
            Verdict::Fail
        );
        assert_eq!(
            verdict(
                &valid,
                json!({"outcome": "rejected", "error_kind": "truncated"})
            ),
            Verdict::Fail
        );

        let invalid = case(
            Level::Must,
            ExpectedResult::Invalid,
            json!({"result": "invalid", "error_kind": "truncated"}),
        );
        assert_eq!(
            verdict(
                &invalid,
                json!({"outcome": "rejected", "error_kind": "truncated"})
            ),
            Verdict::Pass
        );
        assert_eq!(
            verdict(
                &invalid,
                json!({"outcome": "rejected", "error_kind": "other"})
            ),
            Verdict::NonStrict
        );
        assert_eq!(
            verdict(&invalid, json!({"outcome": "accepted"})),
            Verdict::Fail
        );
        let should = case(
            Level::Should,
            ExpectedResult::Invalid,
            json!({"result": "invalid"}),
        );
        assert_eq!(
            verdict(&should, json!({"outcome": "accepted"})),
            Verdict::NonStrict
        );
        let info = case(
            Level::Info,
            ExpectedResult::Invalid,
            json!({"result": "invalid"}),
        );
        assert_eq!(
            verdict(&info, json!({"outcome": "accepted"})),
            Verdict::Info
        );

        let ns = case(
            Level::Should,
            ExpectedResult::NonStrict,
            json!({"result": "non_strict", "strict_error_kind": "inconsistent"}),
        );
        assert_eq!(
            verdict(&ns, json!({"outcome": "accepted"})),
            Verdict::NonStrict
        );
        assert_eq!(
            verdict(
                &ns,
                json!({"outcome": "rejected", "error_kind": "inconsistent"})
            ),
            Verdict::Pass
        );
        assert_eq!(
            verdict(&ns, json!({"outcome": "skipped", "reason": "no"})),
            Verdict::Skip
        );
        assert_eq!(
            verdict(&ns, json!({"outcome": "errored", "message": "boom"})),
            Verdict::Error
        );
        assert_eq!(
            judge(&ns, Err(HarnessFailure::Crashed("x".into()))).verdict,
            Verdict::Error
        );
    }

    #[test]
    fn conf_12_kv_aspect() {
        let view = json!({"num_layers": 2, "dtype": "float16"});
        let kv_invalid = case(
            Level::Must,
            ExpectedResult::Valid,
            json!({"result": "valid", "decoded": {"kv": view}, "kv": {"result": "invalid", "error_kind": "unknown_enum"}}),
        );
        let accepted_kv = json!({"outcome": "accepted", "decoded": {"kv": view}});
        assert_eq!(verdict(&kv_invalid, accepted_kv.clone()), Verdict::Fail);
        let rejected_kv = json!({"outcome": "accepted", "decoded": {"kv": {"error_kind": "unknown_enum", "message": "m"}}});
        assert_eq!(verdict(&kv_invalid, rejected_kv), Verdict::Pass);
        let kv_valid = case(
            Level::Must,
            ExpectedResult::Valid,
            json!({"result": "valid", "decoded": {"kv": view}}),
        );
        assert_eq!(verdict(&kv_valid, accepted_kv), Verdict::Pass);
        let wrong = json!({"outcome": "accepted", "decoded": {"kv": {"num_layers": 3, "dtype": "float16"}}});
        assert_eq!(verdict(&kv_valid, wrong), Verdict::Fail);
    }

    #[test]
    fn subset_compares_numbers_by_value_and_objects_as_subsets() {
        assert!(subset(&json!({"a": 1}), &json!({"a": 1.0, "b": 2}), "x").is_ok());
        assert!(subset(&json!({"a": [1, 2]}), &json!({"a": [1]}), "x").is_err());
        let err = subset(&json!({"a": {"b": "x"}}), &json!({"a": {"b": "y"}}), "m").unwrap_err();
        assert_eq!(err, "`m.a.b` is \"y\", expected \"x\"");
    }
}

//! The case model (AVP-CONF-1, AVP-CONF-2) and the corpus loader.
//!
//! A case file is any `.json` file under the corpus root (other than the
//! manifest) holding either `{"cases": [...]}` or a bare list of cases; other
//! JSON files are data (inputs referenced by cases). Inputs are kept as the
//! exact JSON text of the file so an adapter receives big integers and `-0.0`
//! untouched (hash cases depend on it).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::ConformanceError;
use crate::manifest::{self, Manifest};

/// How binding a case is (AVP-CONF-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// A violation is a FAIL.
    #[serde(rename = "MUST")]
    Must,
    /// A violation is NON-STRICT.
    #[serde(rename = "SHOULD")]
    Should,
    /// Recorded, never judged.
    #[serde(rename = "INFO")]
    Info,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Must => "MUST",
            Self::Should => "SHOULD",
            Self::Info => "INFO",
        })
    }
}

/// `expect.result` (AVP-CONF-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedResult {
    /// Must be accepted, and the answer must match the other `expect` fields.
    Valid,
    /// Must be rejected; `expect.error_kind`, when given, is a SHOULD-level aspect.
    Invalid,
    /// A strict implementation rejects; accepting is NON-STRICT.
    NonStrict,
    /// Either answer passes; the choice is recorded.
    Acceptable,
}

/// One case of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// Stable ID `<area>/<section>/<slug>`.
    pub id: String,
    /// Spec rule IDs the case checks.
    pub rules: Vec<String>,
    /// MUST / SHOULD / INFO.
    pub level: Level,
    /// Operation (`decode`, `model_hash`, ...), sent to the subject as `cmd`.
    pub op: String,
    /// Parsed `input`.
    pub input: Value,
    /// `input` exactly as written in the case file.
    pub input_raw: String,
    /// The whole `expect` object.
    pub expect: Value,
    /// `expect.result`.
    pub result: ExpectedResult,
    /// Free text, when the case has one.
    pub description: Option<String>,
    /// For byte inputs (`input.file`), the file on disk.
    pub input_file: Option<PathBuf>,
    /// Case file, relative to the corpus root.
    pub source: String,
    /// For a valid `decode` case: re-encode the decoded message with these
    /// arguments (`{"compression": ...}`) and expect the input bytes back
    /// (the derived `<area>/<section>.encode/<slug>` case, AVP-CONF-27).
    pub encode: Option<Value>,
}

impl Case {
    /// `<area>/<section>`: the grouping used by every report (AVP-CONF-30).
    pub fn section(&self) -> &str {
        match self.id.rfind('/') {
            Some(i) => &self.id[..i],
            None => &self.id,
        }
    }

    /// The input bytes of a byte-input case (`input.file`, `input.b64` or `input.hex`).
    pub fn input_bytes(&self) -> Result<Option<Vec<u8>>, ConformanceError> {
        if let Some(path) = &self.input_file {
            return std::fs::read(path)
                .map(Some)
                .map_err(|e| ConformanceError::io(path, e));
        }
        if let Some(text) = self.input.get("b64").and_then(Value::as_str) {
            return crate::b64::decode(text).map(Some).ok_or_else(|| {
                ConformanceError::format(&self.source, format!("{}: bad input.b64", self.id))
            });
        }
        if let Some(text) = self.input.get("hex").and_then(Value::as_str) {
            return decode_hex(text).map(Some).ok_or_else(|| {
                ConformanceError::format(&self.source, format!("{}: bad input.hex", self.id))
            });
        }
        Ok(None)
    }
}

/// A verified corpus.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Root directory.
    pub root: PathBuf,
    /// Its manifest (already verified).
    pub manifest: Manifest,
    /// All cases, sorted by ID.
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
struct RawCase {
    id: String,
    #[serde(default)]
    rules: Vec<String>,
    level: Level,
    op: String,
    #[serde(default)]
    input: Option<Box<RawValue>>,
    expect: Box<RawValue>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    encode: Option<Value>,
}

/// `{"cases": [...]}` (other keys ignored). Not an untagged enum with the
/// bare-list form: serde buffers untagged input, which `RawValue` cannot survive.
#[derive(Deserialize)]
struct WrappedCases {
    cases: Vec<RawCase>,
}

impl Corpus {
    /// Verifies the manifest (refusing on any mismatch, AVP-CONF-4), then loads every case.
    pub fn load(root: &Path) -> Result<Self, ConformanceError> {
        let manifest = manifest::load_verified(root)?;
        let mut cases = Vec::new();
        let mut ids = BTreeSet::new();
        for rel in manifest.files.keys() {
            if !rel.ends_with(".json") {
                continue;
            }
            let path = root.join(rel);
            let text =
                std::fs::read_to_string(&path).map_err(|e| ConformanceError::io(&path, e))?;
            match looks_like_case_file(&text) {
                Ok(true) => {}
                Ok(false) => continue,
                // A corpus file nobody can read must not vanish from the run.
                Err(e) => return Err(ConformanceError::format(&path, format!("not JSON: {e}"))),
            }
            let parsed = if text.trim_start().starts_with('[') {
                serde_json::from_str::<Vec<RawCase>>(&text)
            } else {
                serde_json::from_str::<WrappedCases>(&text).map(|w| w.cases)
            };
            let raw = parsed
                .map_err(|e| ConformanceError::format(&path, format!("bad case file: {e}")))?;
            let dir = path.parent().unwrap_or(root).to_path_buf();
            for rc in raw {
                let case = build_case(rc, &dir, rel, &path)?;
                if !ids.insert(case.id.clone()) {
                    return Err(ConformanceError::format(
                        &path,
                        format!("duplicate case id {}", case.id),
                    ));
                }
                cases.push(case);
            }
        }
        cases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Corpus {
            root: root.to_path_buf(),
            manifest,
            cases,
        })
    }
}

fn looks_like_case_file(text: &str) -> Result<bool, serde_json::Error> {
    Ok(
        match serde_json::from_str::<Value>(&without_lone_surrogates(text))? {
            Value::Object(map) => map.get("cases").is_some_and(Value::is_array),
            Value::Array(list) => list
                .first()
                .is_some_and(|c| c.get("id").is_some() && c.get("op").is_some()),
            _ => false,
        },
    )
}

/// JSON text with every `\uXXXX` escape of an unpaired UTF-16 surrogate
/// replaced by `\ufffd`. Python's `json` reads and writes lone surrogates
/// (hash vectors use them), serde_json's `Value` cannot hold them; the
/// runner only needs its own view to be parseable: inputs still reach
/// subjects byte-for-byte (AVP-CONF-24).
pub fn without_lone_surrogates(text: &str) -> String {
    fn escape_at(b: &[u8], i: usize) -> Option<u16> {
        let hex = b.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(unit) = escape_at(b, i) {
                let high = (0xD800..0xDC00).contains(&unit);
                let low = (0xDC00..0xE000).contains(&unit);
                if high && escape_at(b, i + 6).is_some_and(|n| (0xDC00..0xE000).contains(&n)) {
                    i += 12;
                    continue;
                }
                if high || low {
                    out.push_str(&text[last..i]);
                    out.push_str("\\ufffd");
                    i += 6;
                    last = i;
                    continue;
                }
                i += 6;
                continue;
            }
            i += 2; // any other escape, including `\\`
            continue;
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

fn build_case(rc: RawCase, dir: &Path, rel: &str, path: &Path) -> Result<Case, ConformanceError> {
    let bad = |m: String| ConformanceError::format(path, format!("{}: {m}", rc.id));
    if rc.id.split('/').count() < 3 || rc.id.split('/').any(str::is_empty) {
        return Err(bad("id is not <area>/<section>/<slug>".into()));
    }
    let expect: Value = serde_json::from_str(&without_lone_surrogates(rc.expect.get()))
        .map_err(|e| bad(format!("expect: {e}")))?;
    let result: ExpectedResult = expect
        .get("result")
        .cloned()
        .ok_or_else(|| bad("expect.result missing".into()))
        .and_then(|v| serde_json::from_value(v).map_err(|e| bad(format!("expect.result: {e}"))))?;
    let mut input_raw = rc
        .input
        .as_ref()
        .map(|r| r.get().to_string())
        .unwrap_or_else(|| "{}".into());
    let mut input: Value = serde_json::from_str(&without_lone_surrogates(&input_raw))
        .map_err(|e| bad(format!("input: {e}")))?;
    // Directory inputs (`dir`, `model_dir`, ...) reach subjects as absolute
    // paths (AVP-CONF-24), so adapters need not know where the corpus lives.
    if let Some(map) = input.as_object_mut() {
        let mut rewritten = false;
        for (key, value) in map.iter_mut() {
            if key != "dir" && !key.ends_with("_dir") {
                continue;
            }
            let Some(name) = value.as_str() else { continue };
            let full = dir.join(name);
            if !full.is_dir() {
                return Err(bad(format!("input.{key} {name} is not a directory")));
            }
            let full = full.canonicalize().unwrap_or(full);
            *value = Value::String(full.display().to_string());
            rewritten = true;
        }
        if rewritten {
            input_raw = input.to_string();
        }
    }
    let mut input_file = None;
    for key in ["file", "path", "bin"] {
        if let Some(name) = input.get(key).and_then(Value::as_str) {
            let full = dir.join(name);
            if !full.is_file() {
                return Err(bad(format!("input.{key} {name} does not exist")));
            }
            input_file = Some(full);
        }
    }
    Ok(Case {
        id: rc.id,
        rules: rc.rules,
        level: rc.level,
        op: rc.op,
        input,
        input_raw,
        expect,
        result,
        description: rc.description,
        input_file,
        source: rel.to_string(),
        encode: rc.encode,
    })
}

/// Decodes lower- or upper-case hex; `None` on odd length or a bad digit.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| Some(((p[0] as char).to_digit(16)? * 16 + (p[1] as char).to_digit(16)?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_are_neutralised_pairs_and_other_escapes_kept() {
        assert_eq!(without_lone_surrogates(r#""\ud800x""#), r#""\ufffdx""#);
        assert_eq!(without_lone_surrogates(r#""\udc00""#), r#""\ufffd""#);
        assert_eq!(
            without_lone_surrogates(r#""\ud83d\ude00""#),
            r#""\ud83d\ude00""#
        );
        assert_eq!(without_lone_surrogates(r#""\\ud800""#), r#""\\ud800""#);
        assert_eq!(
            without_lone_surrogates(r#""\ud800\u0041é""#),
            r#""\ufffd\u0041é""#
        );
        assert!(
            serde_json::from_str::<Value>(&without_lone_surrogates(r#"{"\ud800": "\udfff"}"#))
                .is_ok()
        );
    }
}

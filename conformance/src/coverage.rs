//! Rule coverage: spec rule IDs (`AVP-<AREA>-<n>` in spec/*.md) against the
//! `rules` the cases cite (AVP-CONF-6). Rules with no case are listed in every
//! report; a case citing a rule the spec does not define is listed too.
//!
//! Rules that no language-neutral case can check (engine numerics, crash
//! atomicity, client retries) are mapped to in-tree tests by a committed
//! file (`conformance/rules-elsewhere.json`, AVP-CONF-7). Every entry is
//! verified (the file exists, defines `fn <test>` and mentions the rule), and
//! verified rules are reported apart, as "covered by in-tree tests".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::corpus::Case;
use crate::error::ConformanceError;

/// Prefixes whose rules describe tools rather than implementations and so
/// cannot have cases (the suite itself, the CLI).
pub const NOT_CASE_TESTABLE: [&str; 2] = ["AVP-CONF-", "AVP-CLI-"];

/// The coverage of a spec by a corpus.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Coverage {
    /// Case-testable rules defined in the spec.
    pub rules_total: usize,
    /// How many of them have at least one case.
    pub rules_covered: usize,
    /// Rules without a case, with the spec file that defines them.
    pub rules_without_cases: Vec<(String, String)>,
    /// Rules cited by cases but absent from the spec, with the citing cases.
    pub unknown_rules: Vec<(String, Vec<String>)>,
    /// Rules without a case that verified in-tree tests cover
    /// (AVP-CONF-7), each with its `file::test` references.
    pub rules_covered_elsewhere: Vec<(String, Vec<String>)>,
    /// Rules with neither a case nor a verified in-tree test, with the spec
    /// file that defines them: the list that must stay empty.
    pub rules_uncovered: Vec<(String, String)>,
    /// Map entries that failed verification (each a sentence); such an entry
    /// covers nothing.
    pub elsewhere_errors: Vec<String>,
}

/// One in-tree test named by the rules-elsewhere map (AVP-CONF-7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRef {
    /// File, relative to the repository root.
    pub file: String,
    /// Name of the test function the file defines.
    pub test: String,
}

/// The rules-elsewhere map: rule ID → the in-tree tests that check it, plus
/// the directory its paths are relative to.
#[derive(Debug, Clone, Default)]
pub struct ElsewhereMap {
    /// Repository root the `file` members are relative to.
    pub root: std::path::PathBuf,
    /// Entries in file order of rule ID (sorted).
    pub rules: BTreeMap<String, Vec<TestRef>>,
}

impl ElsewhereMap {
    /// Reads a map file: `{"rules": {"AVP-X-n": [{"file", "test"}, ...], ...}}`
    /// (other members are documentation). Paths are relative to `root`.
    /// A file that is not such an object is a usage error.
    pub fn load(path: &Path, root: &Path) -> Result<Self, ConformanceError> {
        let bytes = std::fs::read(path).map_err(|e| ConformanceError::io(path, e))?;
        let bad = |what: &str| ConformanceError::Usage(format!("{}: {what}", path.display()));
        let doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let rules = doc
            .get("rules")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| bad("no `rules` object"))?;
        let mut out = BTreeMap::new();
        for (rule, refs) in rules {
            let refs = refs
                .as_array()
                .ok_or_else(|| bad(&format!("{rule}: expected a list of {{file, test}}")))?;
            let mut list = Vec::new();
            for r in refs {
                let field = |k: &str| r.get(k).and_then(serde_json::Value::as_str);
                match (field("file"), field("test")) {
                    (Some(file), Some(test)) => list.push(TestRef {
                        file: file.to_string(),
                        test: test.to_string(),
                    }),
                    _ => {
                        return Err(bad(&format!(
                            "{rule}: every entry needs string `file` and `test`"
                        )));
                    }
                }
            }
            out.insert(rule.clone(), list);
        }
        Ok(ElsewhereMap {
            root: root.to_path_buf(),
            rules: out,
        })
    }

    /// Checks one reference: `None` when the file exists, defines
    /// `fn <test>` (Rust) or `def <test>` (Python) and mentions `rule`;
    /// otherwise why not.
    pub fn verify(&self, rule: &str, r: &TestRef) -> Option<String> {
        let path = self.root.join(&r.file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Some(format!("{rule}: {}: file not found or unreadable", r.file));
        };
        let valid_name = !r.test.is_empty()
            && r.test
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        let defined = valid_name
            // `def`: the Python package's tests (python/tests, spec/python.md).
            && [
                format!("fn {}(", r.test),
                format!("fn {}<", r.test),
                format!("def {}(", r.test),
            ]
                .iter()
                .any(|needle| text.contains(needle.as_str()));
        if !defined {
            return Some(format!("{rule}: {}: no `fn {}`", r.file, r.test));
        }
        if !rule_ids(&text).iter().any(|id| id == rule) {
            return Some(format!(
                "{rule}: {}: the file never mentions {rule} (name it in the test's doc comment)",
                r.file
            ));
        }
        None
    }
}

/// Every `AVP-<LETTERS>-<digits>` in `text`, in order of appearance.
pub fn rule_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("AVP-") {
        let start = i + pos;
        let mut j = start + 4;
        while j < bytes.len() && bytes[j].is_ascii_uppercase() {
            j += 1;
        }
        let letters_end = j;
        if letters_end > start + 4 && j < bytes.len() && bytes[j] == b'-' {
            j += 1;
            let digits_start = j;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            let boundary =
                j >= bytes.len() || !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_');
            let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
            if j > digits_start && boundary && before_ok {
                out.push(text[start..j].to_string());
            }
        }
        i = letters_end.max(start + 4);
    }
    out
}

/// Computes coverage of the `*.md` files in `spec_dir` by `cases` alone.
pub fn compute(spec_dir: &Path, cases: &[Case]) -> Result<Coverage, ConformanceError> {
    compute_with(spec_dir, cases, None)
}

/// Computes coverage by `cases` and, for rules without a case, by the
/// verified entries of `elsewhere` (AVP-CONF-6, AVP-CONF-7).
pub fn compute_with(
    spec_dir: &Path,
    cases: &[Case],
    elsewhere: Option<&ElsewhereMap>,
) -> Result<Coverage, ConformanceError> {
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    let entries = std::fs::read_dir(spec_dir).map_err(|e| ConformanceError::io(spec_dir, e))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ConformanceError::io(&file, e))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for id in rule_ids(&text) {
            defined.entry(id).or_insert_with(|| name.clone());
        }
    }
    let mut cited: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in cases {
        for rule in &case.rules {
            cited.entry(rule.clone()).or_default().push(case.id.clone());
        }
    }
    let testable: BTreeSet<&String> = defined
        .keys()
        .filter(|id| !NOT_CASE_TESTABLE.iter().any(|p| id.starts_with(p)))
        .collect();
    let rules_without_cases: Vec<(String, String)> = testable
        .iter()
        .filter(|id| !cited.contains_key(id.as_str()))
        .map(|id| ((*id).clone(), defined[*id].clone()))
        .collect();
    let unknown_rules = cited
        .iter()
        .filter(|(id, _)| !defined.contains_key(*id))
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect();
    let mut elsewhere_errors = Vec::new();
    let mut verified: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(map) = elsewhere {
        for (rule, refs) in &map.rules {
            if !defined.contains_key(rule) {
                elsewhere_errors.push(format!("{rule}: not a rule of the spec"));
                continue;
            }
            if refs.is_empty() {
                elsewhere_errors.push(format!("{rule}: no tests listed"));
            }
            for r in refs {
                match map.verify(rule, r) {
                    Some(error) => elsewhere_errors.push(error),
                    None => verified
                        .entry(rule.clone())
                        .or_default()
                        .push(format!("{}::{}", r.file, r.test)),
                }
            }
        }
    }
    let rules_covered_elsewhere: Vec<(String, Vec<String>)> = rules_without_cases
        .iter()
        .filter_map(|(id, _)| verified.get(id).map(|t| (id.clone(), t.clone())))
        .collect();
    let rules_uncovered = rules_without_cases
        .iter()
        .filter(|(id, _)| !verified.contains_key(id))
        .cloned()
        .collect();
    Ok(Coverage {
        rules_total: testable.len(),
        rules_covered: testable.len() - rules_without_cases.len(),
        rules_without_cases,
        unknown_rules,
        rules_covered_elsewhere,
        rules_uncovered,
        elsewhere_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rule_ids_with_word_boundaries() {
        let text = "**AVP-WIRE-3** and (AVP-HS-12), not XAVP-WIRE-4 or AVP-WIRE-5a or AVP-wire-6 or AVP--7; AVP-LIM-1.";
        assert_eq!(rule_ids(text), ["AVP-WIRE-3", "AVP-HS-12", "AVP-LIM-1"]);
    }

    #[test]
    fn conf_7_elsewhere_entries_are_verified() {
        let root = std::env::temp_dir().join(format!("avp-cov-{}", std::process::id()));
        std::fs::create_dir_all(root.join("spec")).unwrap();
        std::fs::write(
            root.join("spec/x.md"),
            "**AVP-WIRE-1** a. **AVP-WIRE-2** b. **AVP-WIRE-3** c. **AVP-WIRE-4** d.",
        )
        .unwrap();
        std::fs::write(
            root.join("t.rs"),
            "/// Checks AVP-WIRE-1.\nfn good_test() {}\nfn silent_test() {}\n",
        )
        .unwrap();
        let map_path = root.join("map.json");
        std::fs::write(
            &map_path,
            r#"{"rules": {
                "AVP-WIRE-1": [{"file": "t.rs", "test": "good_test"}],
                "AVP-WIRE-2": [{"file": "t.rs", "test": "silent_test"}],
                "AVP-WIRE-3": [{"file": "t.rs", "test": "missing_test"}, {"file": "nope.rs", "test": "x"}],
                "AVP-WIRE-99": [{"file": "t.rs", "test": "good_test"}]
            }}"#,
        )
        .unwrap();
        let map = ElsewhereMap::load(&map_path, &root).unwrap();
        let cov = compute_with(&root.join("spec"), &[], Some(&map)).unwrap();
        assert_eq!(cov.rules_covered, 0);
        assert_eq!(
            cov.rules_covered_elsewhere,
            [(
                "AVP-WIRE-1".to_string(),
                vec!["t.rs::good_test".to_string()]
            )]
        );
        let uncovered: Vec<&str> = cov
            .rules_uncovered
            .iter()
            .map(|(r, _)| r.as_str())
            .collect();
        assert_eq!(uncovered, ["AVP-WIRE-2", "AVP-WIRE-3", "AVP-WIRE-4"]);
        assert_eq!(cov.elsewhere_errors.len(), 4, "{:?}", cov.elsewhere_errors);
        assert!(cov.elsewhere_errors[0].contains("never mentions AVP-WIRE-2"));
        assert!(cov.elsewhere_errors[1].contains("no `fn missing_test`"));
        assert!(cov.elsewhere_errors[2].contains("nope.rs: file not found"));
        assert!(cov.elsewhere_errors[3].contains("AVP-WIRE-99: not a rule of the spec"));
        std::fs::write(&map_path, r#"{"rules": {"AVP-WIRE-1": [{"file": 3}]}}"#).unwrap();
        assert!(ElsewhereMap::load(&map_path, &root).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}

//! Rule coverage: spec rule IDs (`AVP-<AREA>-<n>` in spec/*.md) against the
//! `rules` the cases cite (AVP-CONF-6). Rules with no case are listed in every
//! report; a case citing a rule the spec does not define is listed too.

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

/// Computes coverage of the `*.md` files in `spec_dir` by `cases`.
pub fn compute(spec_dir: &Path, cases: &[Case]) -> Result<Coverage, ConformanceError> {
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
    Ok(Coverage {
        rules_total: testable.len(),
        rules_covered: testable.len() - rules_without_cases.len(),
        rules_without_cases,
        unknown_rules,
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
}

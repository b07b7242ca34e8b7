//! Rule coverage: spec rule IDs (`AVP-<AREA>-<n>` in the `*.md` files of
//! spec/ and its sub-directories, spec/protocol/ and spec/impl/) against the
//! `rules` the cases cite (AVP-CONF-6). Rules with no case are listed in every
//! report; a case citing a rule the spec does not define is listed too.
//! Each rule belongs to the tree (sub-directory) of the file that defines it
//! (a bold `**AVP-..`, a heading or a table row that starts with the ID;
//! failing that, the first file in sorted path order that names it), so
//! coverage can be told apart for the protocol and for this implementation.
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
    /// Rules that more than one file defines, with those files (sorted): a
    /// rule is stated once, every other file cites it.
    pub rules_defined_twice: Vec<(String, Vec<String>)>,
    /// Per spec tree (`protocol`, `impl`; `""` for files directly in the spec
    /// directory): how many case-testable rules it defines, how many have a
    /// case, and how many are covered only by in-tree tests.
    pub by_tree: BTreeMap<String, TreeCoverage>,
}

/// Coverage of the rules one spec tree defines (AVP-CONF-6).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TreeCoverage {
    /// Case-testable rules the tree defines.
    pub rules_total: usize,
    /// Of those, rules with at least one case.
    pub with_cases: usize,
    /// Of those, rules without a case that verified in-tree tests cover.
    pub covered_elsewhere: usize,
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
            // `def`: the Python package's tests (python/tests, spec/impl/python.md).
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
    rule_ids_at(text).into_iter().map(|(_, id)| id).collect()
}

/// The rule IDs that `text` defines rather than cites: an ID right after
/// `**` (`**AVP-WIRE-1**`, `**AVP-HS-11 (exchange).**`), or one that starts a
/// heading (`## AVP-ENG-1 ...`) or a table row (`| AVP-HS-5 | ...`). A cited
/// ID is written in running text, in backticks or after other words.
pub fn defined_rule_ids(text: &str) -> Vec<String> {
    rule_ids_at(text)
        .into_iter()
        .filter(|(start, _)| {
            let before = &text[..*start];
            let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
            before.ends_with("**")
                || (line.starts_with('#') && line.trim_start_matches('#').trim().is_empty())
                || (line.starts_with('|') && line.trim_start_matches('|').trim().is_empty())
        })
        .map(|(_, id)| id)
        .collect()
}

/// Every `AVP-<LETTERS>-<digits>` in `text` with its byte offset.
fn rule_ids_at(text: &str) -> Vec<(usize, String)> {
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
                out.push((start, text[start..j].to_string()));
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
    let mut defining_files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut mentioned: BTreeMap<String, String> = BTreeMap::new();
    let mut files = Vec::new();
    markdown_files(spec_dir, spec_dir, &mut files)?;
    files.sort();
    for (name, file) in files {
        let text = std::fs::read_to_string(&file).map_err(|e| ConformanceError::io(&file, e))?;
        for id in defined_rule_ids(&text) {
            defining_files
                .entry(id.clone())
                .or_default()
                .insert(name.clone());
            defined.entry(id).or_insert_with(|| name.clone());
        }
        for id in rule_ids(&text) {
            mentioned.entry(id).or_insert_with(|| name.clone());
        }
    }
    let rules_defined_twice = defining_files
        .into_iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(id, files)| (id, files.into_iter().collect()))
        .collect();
    // A rule only ever cited still counts (a typo'd definition must not
    // silently drop a rule from coverage); it belongs to its first mention.
    for (id, name) in mentioned {
        defined.entry(id).or_insert(name);
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
    let mut by_tree: BTreeMap<String, TreeCoverage> = BTreeMap::new();
    for id in &testable {
        let tree = by_tree.entry(tree_of(&defined[*id])).or_default();
        tree.rules_total += 1;
        if cited.contains_key(id.as_str()) {
            tree.with_cases += 1;
        } else if verified.contains_key(id.as_str()) {
            tree.covered_elsewhere += 1;
        }
    }
    Ok(Coverage {
        rules_total: testable.len(),
        rules_covered: testable.len() - rules_without_cases.len(),
        rules_without_cases,
        unknown_rules,
        rules_covered_elsewhere,
        rules_uncovered,
        elsewhere_errors,
        rules_defined_twice,
        by_tree,
    })
}

/// The spec tree of a file path relative to the spec directory: its first
/// component when it is in a sub-directory (`protocol/wire.md` → `protocol`),
/// else `""`.
fn tree_of(relative: &str) -> String {
    match relative.split_once('/') {
        Some((tree, _)) => tree.to_string(),
        None => String::new(),
    }
}

/// Collects every `*.md` file below `dir`, with its `/`-separated path
/// relative to `root`. Symbolic links are followed like any path; the spec
/// tree is ours, so a loop would be a checkout bug, not an input.
fn markdown_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, std::path::PathBuf)>,
) -> Result<(), ConformanceError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConformanceError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| ConformanceError::io(dir, e))?.path();
        if path.is_dir() {
            markdown_files(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "md") {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let name = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_bold_heading_or_row_starts() {
        let text = "## AVP-ENG-1 Model\n| AVP-HS-5 | x |\n- **AVP-WIRE-3** and AVP-WIRE-4;\n\
                    **AVP-HS-11 (exchange; see AVP-HS-30).**\nrules\nAVP-HS-6 and `AVP-LIM-8` |";
        assert_eq!(
            defined_rule_ids(text),
            ["AVP-ENG-1", "AVP-HS-5", "AVP-WIRE-3", "AVP-HS-11"]
        );
    }

    #[test]
    fn finds_rule_ids_with_word_boundaries() {
        let text = "**AVP-WIRE-3** and (AVP-HS-12), not XAVP-WIRE-4 or AVP-WIRE-5a or AVP-wire-6 or AVP--7; AVP-LIM-1.";
        assert_eq!(rule_ids(text), ["AVP-WIRE-3", "AVP-HS-12", "AVP-LIM-1"]);
    }

    /// AVP-CONF-6: rules are read from every sub-directory of the spec and
    /// counted for the tree of the file that defines them; a rule that is
    /// only ever cited still counts, for its first mention.
    #[test]
    fn conf_6_rules_are_read_recursively_and_counted_per_tree() {
        let root = std::env::temp_dir().join(format!("avp-cov-tree-{}", std::process::id()));
        std::fs::create_dir_all(root.join("spec/protocol/deeper")).unwrap();
        std::fs::create_dir_all(root.join("spec/impl")).unwrap();
        std::fs::write(
            root.join("spec/README.md"),
            "Aliases: AVP-WIRE-1, `AVP-WIRE-7`.",
        )
        .unwrap();
        std::fs::write(
            root.join("spec/protocol/wire.md"),
            "**AVP-WIRE-1** **AVP-WIRE-2**",
        )
        .unwrap();
        std::fs::write(root.join("spec/protocol/deeper/x.md"), "**AVP-HS-1**").unwrap();
        std::fs::write(root.join("spec/protocol/notes.txt"), "AVP-WIRE-9").unwrap();
        std::fs::write(root.join("spec/protocol/again.md"), "| AVP-HS-1 | twice |").unwrap();
        std::fs::write(
            root.join("spec/impl/codec.md"),
            "**AVP-WIRE-25** and AVP-WIRE-2; AVP-CLI-1",
        )
        .unwrap();
        let case = Case {
            id: "wire/x/y".into(),
            rules: vec!["AVP-WIRE-2".into()],
            level: crate::corpus::Level::Must,
            op: "decode".into(),
            input: serde_json::json!({}),
            input_raw: "{}".into(),
            expect: serde_json::json!({"result": "valid"}),
            result: crate::corpus::ExpectedResult::Valid,
            description: None,
            input_file: None,
            source: "cases.json".into(),
            encode: None,
        };
        let cov = compute(&root.join("spec"), &[case]).unwrap();
        let ids: Vec<&str> = cov
            .rules_without_cases
            .iter()
            .map(|(r, _)| r.as_str())
            .collect();
        assert_eq!(ids, ["AVP-HS-1", "AVP-WIRE-1", "AVP-WIRE-25", "AVP-WIRE-7"]);
        let file = |i: usize| cov.rules_without_cases[i].1.as_str();
        assert_eq!(file(0), "protocol/again.md", "the first of its two homes");
        // README.md sorts first but only cites AVP-WIRE-1; wire.md defines it.
        assert_eq!(file(1), "protocol/wire.md");
        assert_eq!(file(2), "impl/codec.md");
        assert_eq!(file(3), "README.md");
        let tree = |name: &str| cov.by_tree.get(name).copied().unwrap_or_default();
        assert_eq!(tree("protocol").rules_total, 3);
        assert_eq!(
            tree("protocol").with_cases,
            1,
            "AVP-WIRE-2, cited from impl/"
        );
        assert_eq!(
            tree("impl").rules_total,
            1,
            "AVP-CLI-1 is a tool rule, not counted"
        );
        assert_eq!(tree("").rules_total, 1);
        assert_eq!(
            cov.rules_defined_twice,
            [(
                "AVP-HS-1".to_string(),
                vec![
                    "protocol/again.md".to_string(),
                    "protocol/deeper/x.md".to_string()
                ]
            )]
        );
        std::fs::remove_dir_all(&root).unwrap();
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

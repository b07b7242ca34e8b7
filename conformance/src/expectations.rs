//! Per-implementation expected failures (AVP-CONF-14, AVP-CONF-15).
//!
//! One entry per line: `<case-id-or-glob>  <VERDICT>  # reason`. `*` matches
//! within one ID segment. The reason is mandatory: a divergence nobody can
//! explain is not a recorded divergence. An entry that no longer describes
//! what happens (the case passes now, fails differently, or no longer exists)
//! is stale and fails the run, so the file cannot rot silently.

use std::path::Path;

use serde::Serialize;

use crate::error::ConformanceError;
use crate::verdict::Verdict;

/// One line of an expectations file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Case ID, `*` allowed per segment.
    pub pattern: String,
    /// The verdict the case is expected to get: FAIL, NON-STRICT, ERROR or SKIP.
    pub verdict: Verdict,
    /// Why (and where it is tracked).
    pub reason: String,
    /// Written `<VERDICT>|PASS`: the implementation is nondeterministic here
    /// and PASS is also expected (neither XPASS nor stale).
    pub flaky: bool,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// A parsed expectations file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Expectations {
    /// Where it came from (for messages), empty when built in memory.
    pub source: String,
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

/// `StaleEntry::why` of an entry that matched none of the cases run.
pub const NO_CASE: &str = "matches no case of the corpus";

/// An entry that does not describe the run (AVP-CONF-15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleEntry {
    /// The entry.
    pub entry: Entry,
    /// What happened instead.
    pub why: String,
}

impl Expectations {
    /// Parses the text of an expectations file.
    pub fn parse(text: &str, source: &str) -> Result<Self, ConformanceError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |m: &str| ConformanceError::format(source, format!("line {line_no}: {m}"));
            let (body, reason) = trimmed
                .split_once('#')
                .ok_or_else(|| bad("entry without `# reason`"))?;
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(bad("empty reason"));
            }
            let mut words = body.split_whitespace();
            let (Some(pattern), Some(verdict), None) = (words.next(), words.next(), words.next())
            else {
                return Err(bad("expected `<case-id> <VERDICT> # reason`"));
            };
            let (verdict, flaky) = match verdict.split_once('|') {
                Some((v, "PASS")) | Some(("PASS", v)) => (v, true),
                Some(_) => {
                    return Err(bad(
                        "the only alternative allowed is `|PASS` (a flaky case)",
                    ));
                }
                None => (verdict, false),
            };
            let verdict = match Verdict::parse(verdict) {
                Some(v @ (Verdict::Fail | Verdict::NonStrict | Verdict::Error | Verdict::Skip)) => {
                    v
                }
                _ => return Err(bad("verdict must be FAIL, NON-STRICT, ERROR or SKIP")),
            };
            entries.push(Entry {
                pattern: pattern.to_string(),
                verdict,
                reason: reason.to_string(),
                flaky,
                line: line_no,
            });
        }
        Ok(Expectations {
            source: source.to_string(),
            entries,
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConformanceError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConformanceError::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The first entry matching `case_id`.
    pub fn lookup(&self, case_id: &str) -> Option<(usize, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| id_matches(&e.pattern, case_id))
    }

    /// Applies the entries to raw verdicts `(case_id, verdict)`: returns the
    /// final verdict per case and the stale entries.
    pub fn apply(&self, raw: &[(&str, Verdict)]) -> (Vec<Verdict>, Vec<StaleEntry>) {
        let mut used = vec![false; self.entries.len()];
        let mut seen: Vec<Vec<String>> = vec![Vec::new(); self.entries.len()];
        let mut out = Vec::with_capacity(raw.len());
        for (id, verdict) in raw {
            let Some((i, entry)) = self.lookup(id) else {
                out.push(*verdict);
                continue;
            };
            seen[i].push(format!("{id}: {verdict}"));
            let final_verdict = if *verdict == entry.verdict {
                used[i] = true;
                Verdict::XFail
            } else if entry.flaky && *verdict == Verdict::Pass {
                used[i] = true;
                Verdict::Pass
            } else if matches!(verdict, Verdict::Pass | Verdict::Info) {
                Verdict::XPass
            } else {
                *verdict
            };
            out.push(final_verdict);
        }
        let stale = self
            .entries
            .iter()
            .zip(used.iter().zip(seen))
            .filter(|(_, (used, _))| !**used)
            .map(|(entry, (_, seen))| StaleEntry {
                entry: entry.clone(),
                why: if seen.is_empty() {
                    NO_CASE.to_string()
                } else {
                    format!("expected {}, got {}", entry.verdict, seen.join(", "))
                },
            })
            .collect();
        (out, stale)
    }
}

/// Segment-wise glob: `*` matches any run of characters inside one `/` segment.
pub fn id_matches(pattern: &str, id: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = id.split('/').collect();
    p.len() == s.len()
        && p.iter()
            .zip(&s)
            .all(|(p, s)| segment_matches(p.as_bytes(), s.as_bytes()))
}

fn segment_matches(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| segment_matches(rest, &s[i..])),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(d, srest)| c == d && segment_matches(rest, srest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_stay_inside_a_segment() {
        assert!(id_matches("wire/6/*", "wire/6/trailing-bytes"));
        assert!(id_matches("wire/*/checksum-*", "wire/4/checksum-mismatch"));
        assert!(!id_matches("wire/*", "wire/6/trailing-bytes"));
        assert!(!id_matches("wire/6/trailing", "wire/6/trailing-bytes"));
    }

    #[test]
    fn reason_is_mandatory_and_verdicts_are_checked() {
        assert!(Expectations::parse("wire/1/a FAIL\n", "t").is_err());
        assert!(Expectations::parse("wire/1/a FAIL #   \n", "t").is_err());
        assert!(Expectations::parse("wire/1/a PASS # no\n", "t").is_err());
        let e =
            Expectations::parse("# header\n\nwire/1/a  NON-STRICT  # sdk accepts\n", "t").unwrap();
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.entries[0].line, 3);
        assert_eq!(e.entries[0].verdict, Verdict::NonStrict);
    }

    #[test]
    fn flaky_entries_accept_pass_too() {
        let e = Expectations::parse(
            "a/1/x NON-STRICT|PASS # map order varies per process\n",
            "t",
        )
        .unwrap();
        assert!(e.entries[0].flaky);
        assert_eq!(
            e.apply(&[("a/1/x", Verdict::Pass)]),
            (vec![Verdict::Pass], vec![])
        );
        assert_eq!(
            e.apply(&[("a/1/x", Verdict::NonStrict)]),
            (vec![Verdict::XFail], vec![])
        );
        assert_eq!(e.apply(&[("a/1/x", Verdict::Fail)]).0, vec![Verdict::Fail]);
        assert!(Expectations::parse("a/1/x FAIL|ERROR # no\n", "t").is_err());
    }

    #[test]
    fn apply_marks_xfail_xpass_and_stale_entries() {
        let e = Expectations::parse(
            "a/1/x FAIL # known\na/1/y FAIL # fixed upstream\na/1/z FAIL # now errors\na/9/* SKIP # gone\n",
            "t",
        )
        .unwrap();
        let raw = [
            ("a/1/x", Verdict::Fail),
            ("a/1/y", Verdict::Pass),
            ("a/1/z", Verdict::Error),
            ("a/1/w", Verdict::Fail),
        ];
        let (out, stale) = e.apply(&raw);
        assert_eq!(
            out,
            vec![
                Verdict::XFail,
                Verdict::XPass,
                Verdict::Error,
                Verdict::Fail
            ]
        );
        let stale_patterns: Vec<&str> = stale.iter().map(|s| s.entry.pattern.as_str()).collect();
        assert_eq!(stale_patterns, vec!["a/1/y", "a/1/z", "a/9/*"]);
        assert_eq!(stale[2].why, "matches no case of the corpus");
    }
}

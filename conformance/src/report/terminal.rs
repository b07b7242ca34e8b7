//! The terminal summary: an h2spec-style tree by area and section, failures
//! re-listed with expected and observed, totals and the corpus digest last.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::runner::{CaseResult, RunReport};
use crate::verdict::Verdict;

/// Renders the summary (plain text, no colours: it goes to logs too).
pub fn render(report: &RunReport, verbose: bool) -> String {
    let mut out = String::new();
    for subject in &report.subjects {
        let version = subject
            .hello
            .pointer("/implementation/version")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let _ = writeln!(
            out,
            "== {} {} ({} cases, {:.0} ms)",
            subject.name,
            version,
            subject.results.len(),
            subject.duration_ms
        );
        let mut sections: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
        for r in &subject.results {
            sections.entry(&r.section).or_default().push(r);
        }
        for (section, results) in &sections {
            let ok = results
                .iter()
                .filter(|r| !r.verdict.fails_run(report.strict))
                .count();
            let _ = writeln!(out, "  {section}  ({ok}/{})", results.len());
            for r in results {
                if verbose || r.verdict != Verdict::Pass {
                    let slug = r.id.rsplit('/').next().unwrap_or(&r.id);
                    let _ = writeln!(
                        out,
                        "    {} {:<10} {slug}: {}",
                        r.verdict.mark(),
                        r.verdict.as_str(),
                        r.detail
                    );
                }
            }
        }
        let failing: Vec<&CaseResult> = subject
            .results
            .iter()
            .filter(|r| r.verdict.fails_run(report.strict))
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(out, "  Failures:");
            for r in failing {
                let _ = writeln!(
                    out,
                    "    {} [{}] {} {}",
                    r.id,
                    r.level,
                    r.verdict,
                    r.rules.join(",")
                );
                let _ = writeln!(out, "      expected: {}", r.expected);
                let _ = writeln!(out, "      observed: {}", compact(&r.observed));
                if !r.log.trim().is_empty() {
                    let tail: Vec<&str> = r.log.trim_end().lines().rev().take(3).collect();
                    let _ = writeln!(
                        out,
                        "      stderr:   {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    );
                }
            }
        }
        for s in &subject.stale {
            let _ = writeln!(
                out,
                "  STALE expectation {}:{} `{} {}`: {}",
                subject.expectations.as_deref().unwrap_or("?"),
                s.entry.line,
                s.entry.pattern,
                s.entry.verdict,
                s.why
            );
        }
        let totals: Vec<String> = subject
            .counts()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(out, "  Totals: {}", totals.join(", "));
    }
    if let Some(cov) = &report.coverage {
        let _ = writeln!(
            out,
            "Rule coverage: {}/{} rules have cases",
            cov.rules_covered, cov.rules_total
        );
        // Protocol rules bind every implementation, impl rules only ours (spec/README.md).
        let trees: Vec<String> = cov
            .by_tree
            .iter()
            .map(|(tree, t)| {
                let name = if tree.is_empty() { "top level" } else { tree };
                format!(
                    "{name} {} ({} with cases, {} by in-tree tests)",
                    t.rules_total, t.with_cases, t.covered_elsewhere
                )
            })
            .collect();
        if !trees.is_empty() {
            let _ = writeln!(out, "  by spec tree: {}", trees.join("; "));
        }
        if !cov.rules_covered_elsewhere.is_empty() {
            let rules: Vec<&str> = cov
                .rules_covered_elsewhere
                .iter()
                .map(|(r, _)| r.as_str())
                .collect();
            let _ = writeln!(
                out,
                "  {} more covered by in-tree tests (rules-elsewhere map): {}",
                rules.len(),
                rules.join(" ")
            );
        }
        for (rule, file) in &cov.rules_uncovered {
            let _ = writeln!(out, "  no case and no in-tree test: {rule} ({file})");
        }
        for error in &cov.elsewhere_errors {
            let _ = writeln!(out, "  rules-elsewhere map error: {error}");
        }
        for (rule, cases) in &cov.unknown_rules {
            let more = if cases.len() > 3 {
                format!(" and {} more", cases.len() - 3)
            } else {
                String::new()
            };
            let first: Vec<&str> = cases.iter().take(3).map(String::as_str).collect();
            let _ = writeln!(
                out,
                "  rule {rule} not in the spec, cited by {}{more}",
                first.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "Corpus: {} (MANIFEST blake3 {})",
        report.suite.as_deref().unwrap_or("?"),
        report.manifest_blake3
    );
    let code = report.exit_code();
    let _ = writeln!(
        out,
        "Result: {} (exit {code}{})",
        if code == 0 {
            "conformant"
        } else {
            "NOT conformant"
        },
        if report.strict { ", --strict" } else { "" }
    );
    out
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 300 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(300).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

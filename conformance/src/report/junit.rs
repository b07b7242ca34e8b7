//! JUnit XML (AVP-CONF-32), written by hand: one `<testsuite>` per subject and
//! spec section, one `<testcase>` per case. FAIL and XPASS become `<failure>`,
//! ERROR `<error>`, SKIP and XFAIL `<skipped>` (JUnit has no xfail);
//! NON-STRICT and INFO pass with a `verdict` property so CI tools still show them.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::escape;
use crate::runner::{CaseResult, RunReport};
use crate::verdict::Verdict;

/// Renders the report as JUnit XML.
pub fn render(report: &RunReport) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let all: Vec<&CaseResult> = report.subjects.iter().flat_map(|s| &s.results).collect();
    let count = |pred: &dyn Fn(&CaseResult) -> bool| all.iter().filter(|r| pred(r)).count();
    let failures = count(&|r| is_failure(r.verdict, report.strict));
    let errors = count(&|r| r.verdict == Verdict::Error);
    let _ = writeln!(
        out,
        "<testsuites name=\"avp-conformance\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">",
        all.len()
    );
    for subject in &report.subjects {
        let mut sections: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
        for r in &subject.results {
            sections.entry(&r.section).or_default().push(r);
        }
        for (section, results) in sections {
            let f = results
                .iter()
                .filter(|r| is_failure(r.verdict, report.strict))
                .count();
            let e = results
                .iter()
                .filter(|r| r.verdict == Verdict::Error)
                .count();
            let s = results
                .iter()
                .filter(|r| matches!(r.verdict, Verdict::Skip | Verdict::XFail))
                .count();
            let time: f64 = results.iter().map(|r| r.duration_ms).sum::<f64>() / 1e3;
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{s}\" time=\"{time:.3}\">",
                escape(&format!("{}: {section}", subject.name)),
                results.len()
            );
            for r in results {
                write_case(&mut out, r, &subject.name, report.strict);
            }
            out.push_str("  </testsuite>\n");
        }
    }
    out.push_str("</testsuites>\n");
    out
}

fn is_failure(v: Verdict, strict: bool) -> bool {
    matches!(v, Verdict::Fail | Verdict::XPass) || (strict && v == Verdict::NonStrict)
}

fn write_case(out: &mut String, r: &CaseResult, subject: &str, strict: bool) {
    let area = r.id.split('/').next().unwrap_or("");
    let _ = write!(
        out,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">\n      <properties><property name=\"verdict\" value=\"{}\"/><property name=\"level\" value=\"{}\"/><property name=\"rules\" value=\"{}\"/></properties>\n",
        escape(&r.id),
        escape(&format!("{subject}.{area}")),
        r.duration_ms / 1e3,
        r.verdict,
        r.level,
        escape(&r.rules.join(" "))
    );
    let body = format!("expected: {}\nobserved: {}", r.expected, r.observed);
    match r.verdict {
        v if is_failure(v, strict) => {
            let _ = writeln!(
                out,
                "      <failure message=\"{}\" type=\"{v}\">{}</failure>",
                escape(&r.detail),
                escape(&body)
            );
        }
        Verdict::Error => {
            let _ = writeln!(
                out,
                "      <error message=\"{}\" type=\"ERROR\">{}</error>",
                escape(&r.detail),
                escape(&body)
            );
        }
        Verdict::Skip => {
            let _ = writeln!(out, "      <skipped message=\"{}\"/>", escape(&r.detail));
        }
        Verdict::XFail => {
            let why = r.expectation.as_deref().unwrap_or("");
            let _ = writeln!(
                out,
                "      <skipped message=\"{}\"/>",
                escape(&format!("expected failure: {why}"))
            );
        }
        _ => {}
    }
    if !r.log.is_empty() {
        let _ = writeln!(out, "      <system-err>{}</system-err>", escape(&r.log));
    }
    out.push_str("    </testcase>\n");
}

//! The HTML report (AVP-CONF-33): one self-contained page (inline CSS, no
//! script, no remote assets) with an implementations × cases matrix coloured
//! by verdict and, per case and implementation, a panel with expected,
//! observed, the hex dump of input and output, and the subject's stderr.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{escape, hex_dump};
use crate::runner::{CaseResult, RunReport};
use crate::verdict::Verdict;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2433;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#555;font-size:12px;word-break:break-all}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #d5d9e0;padding:3px 8px;text-align:left}
th{background:#eef1f5;position:sticky;top:0}
td.v{text-align:center;font-weight:600;font-size:12px;white-space:nowrap}td.v a{color:inherit;text-decoration:none;display:block}
tr.sec td{background:#dfe5ee;font-weight:600}
.PASS{background:#2da44e;color:#fff}.NON-STRICT{background:#e3b341;color:#222}.FAIL{background:#d1242f;color:#fff}
.ERROR{background:#6e2b9e;color:#fff}.SKIP{background:#8c959f;color:#fff}.XFAIL{background:#f0883e;color:#222}
.XPASS{background:#0969da;color:#fff}.INFO{background:#9ecbff;color:#222}.none{background:#f3f3f3;color:#999}
.legend span{display:inline-block;padding:2px 8px;margin:2px;border-radius:3px;font-size:12px}
details{background:#fff;border:1px solid #d5d9e0;border-radius:4px;margin:6px 0;padding:4px 10px}
summary{cursor:pointer}summary .v{padding:1px 6px;border-radius:3px;font-size:12px;font-weight:600}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:6px;overflow:auto;font:12px/1.35 ui-monospace,monospace;margin:4px 0}
dt{font-weight:600;margin-top:6px}dd{margin:0}
";

const LEGEND: [(Verdict, &str); 8] = [
    (Verdict::Pass, "the strict expected outcome"),
    (
        Verdict::NonStrict,
        "tolerated deviation; fails under --strict",
    ),
    (Verdict::Fail, "a MUST violated"),
    (
        Verdict::Error,
        "no usable answer (crash, timeout, protocol)",
    ),
    (Verdict::Skip, "op not supported by the implementation"),
    (Verdict::XFail, "failed as its expectations file says"),
    (Verdict::XPass, "listed as failing but passed: stale list"),
    (Verdict::Info, "behaviour recorded, not judged"),
];

/// Renders the page.
pub fn render(report: &RunReport) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>AVP conformance report</title>\n<style>");
    out.push_str(STYLE);
    out.push_str("</style></head><body>\n<h1>AVP conformance report</h1>\n");
    let _ = writeln!(
        out,
        "<p class=\"meta\">Corpus {} {} · MANIFEST blake3 <code>{}</code> · runner {} · {} · exit code {}</p>",
        escape(report.suite.as_deref().unwrap_or("?")),
        escape(report.suite_version.as_deref().unwrap_or("")),
        escape(&report.manifest_blake3),
        escape(&report.runner_version),
        if report.strict {
            "--strict"
        } else {
            "default mode"
        },
        report.exit_code()
    );
    out.push_str("<p class=\"legend\">");
    for (v, meaning) in LEGEND {
        let _ = write!(
            out,
            "<span class=\"{v}\" title=\"{}\">{} {v}</span>",
            escape(meaning),
            v.mark()
        );
    }
    out.push_str("</p>\n");

    // Summary per implementation.
    out.push_str("<h2>Implementations</h2>\n<table><tr><th>implementation</th><th>version</th><th>cases</th>");
    for v in Verdict::ALL {
        let _ = write!(out, "<th>{v}</th>");
    }
    out.push_str("<th>stale expectations</th></tr>\n");
    for s in &report.subjects {
        let version = s
            .hello
            .pointer("/implementation/version")
            .and_then(|v| v.as_str())
            .unwrap_or("?");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(&s.name),
            escape(version),
            s.results.len()
        );
        for (v, n) in s.counts() {
            let class = if n > 0 { v.as_str() } else { "none" };
            let _ = write!(out, "<td class=\"v {class}\">{n}</td>");
        }
        let _ = writeln!(out, "<td>{}</td></tr>", s.stale.len());
    }
    out.push_str("</table>\n");

    // Matrix: rows are cases (grouped by section), columns implementations.
    let mut rows: BTreeMap<(String, String), BTreeMap<usize, &CaseResult>> = BTreeMap::new();
    for (i, s) in report.subjects.iter().enumerate() {
        for r in &s.results {
            rows.entry((r.section.clone(), r.id.clone()))
                .or_default()
                .insert(i, r);
        }
    }
    out.push_str(
        "<h2>Cases × implementations</h2>\n<table><tr><th>case</th><th>level</th><th>rules</th>",
    );
    for s in &report.subjects {
        let _ = write!(out, "<th>{}</th>", escape(&s.name));
    }
    out.push_str("</tr>\n");
    let mut section = String::new();
    for ((sec, id), by_subject) in &rows {
        if *sec != section {
            section.clone_from(sec);
            let _ = writeln!(
                out,
                "<tr class=\"sec\"><td colspan=\"{}\">{}</td></tr>",
                3 + report.subjects.len(),
                escape(sec)
            );
        }
        let first = by_subject.values().next();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(id),
            first.map(|r| r.level.to_string()).unwrap_or_default(),
            escape(&first.map(|r| r.rules.join(" ")).unwrap_or_default())
        );
        for i in 0..report.subjects.len() {
            match by_subject.get(&i) {
                Some(r) => {
                    let _ = write!(
                        out,
                        "<td class=\"v {}\"><a href=\"#{}\">{}</a></td>",
                        r.verdict,
                        anchor(i, id),
                        r.verdict
                    );
                }
                None => out.push_str("<td class=\"v none\">–</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");

    // Per-case detail.
    for (i, s) in report.subjects.iter().enumerate() {
        let _ = writeln!(out, "<h2>Details: {}</h2>", escape(&s.name));
        for st in &s.stale {
            let _ = writeln!(
                out,
                "<p class=\"FAIL\">stale expectation line {}: <code>{} {}</code> — {}</p>",
                st.entry.line,
                escape(&st.entry.pattern),
                st.entry.verdict,
                escape(&st.why)
            );
        }
        for r in &s.results {
            detail(&mut out, i, r);
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn anchor(subject: usize, id: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("s{subject}-{id}")
}

fn detail(out: &mut String, subject: usize, r: &CaseResult) {
    let open = if r.verdict.fails_run(true) {
        " open"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "<details id=\"{}\"{open}><summary><span class=\"v {}\">{}</span> {} — {}</summary><dl>",
        anchor(subject, &r.id),
        r.verdict,
        r.verdict,
        escape(&r.id),
        escape(&r.detail)
    );
    let mut field = |name: &str, body: String| {
        let _ = writeln!(out, "<dt>{name}</dt><dd>{body}</dd>");
    };
    if let Some(d) = &r.description {
        field("description", escape(d));
    }
    field(
        "level / rules / op",
        escape(&format!("{} · {} · {}", r.level, r.rules.join(" "), r.op)),
    );
    if let Some(e) = &r.expectation {
        field("expectations entry", escape(e));
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    field(
        "expected",
        format!("<pre>{}</pre>", escape(&pretty(&r.expected))),
    );
    field(
        "observed",
        format!("<pre>{}</pre>", escape(&pretty(&r.observed))),
    );
    if let Some(len) = r.input_len {
        field(
            &format!("input ({len} bytes, first {})", r.input_head.len()),
            format!("<pre>{}</pre>", escape(&hex_dump(&r.input_head))),
        );
    }
    for (name, bytes) in &r.output_heads {
        field(
            &format!("output `{}` (first {} bytes)", escape(name), bytes.len()),
            format!("<pre>{}</pre>", escape(&hex_dump(bytes))),
        );
    }
    if !r.log.is_empty() {
        field("stderr", format!("<pre>{}</pre>", escape(&r.log)));
    }
    out.push_str("</dl></details>\n");
}

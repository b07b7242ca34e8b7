//! The conformance runner (spec/protocol/conformance.md) in process: the same corpus
//! loading, subjects, verdicts, expectations and reports as `avp conformance
//! run`, so `avp_rs.conformance.run` and the CLI cannot disagree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use avp_conformance::adapter::AdapterSubject;
use avp_conformance::builtin::BuiltinSubject;
use avp_conformance::corpus::Corpus;
use avp_conformance::expectations::Expectations;
use avp_conformance::runner::{RunReport, run_subject};
use avp_conformance::subject::{Subject, implementation_name};
use avp_conformance::{ConformanceError, report};
use pyo3::prelude::*;

use crate::errors::{self, Party};

fn conformance_error(py: Python<'_>, e: &ConformanceError) -> PyErr {
    let kind = match e {
        ConformanceError::Usage(_) => "usage",
        _ => "conformance",
    };
    let party = if matches!(e, ConformanceError::Usage(_)) {
        Party::Caller
    } else {
        Party::Peer
    };
    errors::raise(py, party, kind, &e.to_string())
}

/// The CLI's default expectations file: `<vectors>/../expectations/<name>.txt`.
fn default_expectations(
    vectors: &Path,
    name: &str,
) -> Result<Option<Expectations>, ConformanceError> {
    let path = vectors
        .join("..")
        .join("expectations")
        .join(format!("{name}.txt"));
    if path.is_file() {
        Expectations::load(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// run_json(vectors, builtin, adapters, only, expectations, strict, timeout) -> (exit_code, json_report, terminal_text)
///
/// Runs the corpus at `vectors` against the built-in subject(s) (`builtin`:
/// "compatible" and/or "strict") and adapter commands, exactly as
/// `avp conformance run` does (without the spec-coverage section).
#[pyfunction]
#[pyo3(signature = (vectors, builtin, adapters, only, expectations=None, strict=false, timeout=30.0, verbose=false))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_json(
    py: Python<'_>,
    vectors: PathBuf,
    builtin: Vec<String>,
    adapters: Vec<String>,
    only: Vec<String>,
    expectations: Option<PathBuf>,
    strict: bool,
    timeout: f64,
    verbose: bool,
) -> PyResult<(u8, String, String)> {
    if !(timeout > 0.0 && timeout.is_finite()) {
        return Err(errors::usage(
            py,
            "timeout must be a positive number of seconds",
        ));
    }
    py.allow_threads(|| -> Result<(u8, String, String), ConformanceError> {
        let corpus = Corpus::load(&vectors)?;
        let cases: Vec<_> = corpus
            .cases
            .iter()
            .filter(|c| only.is_empty() || only.iter().any(|p| c.id.starts_with(p.as_str())))
            .cloned()
            .collect();
        let mut subjects: Vec<Box<dyn Subject>> = Vec::new();
        for command in &adapters {
            subjects.push(Box::new(AdapterSubject::new(
                command,
                Duration::from_secs_f64(timeout),
            )?));
        }
        for mode in &builtin {
            let strict_mode = match mode.as_str() {
                "compatible" => false,
                "strict" => true,
                other => {
                    return Err(ConformanceError::Usage(format!(
                        "builtin {other}: expected compatible or strict"
                    )));
                }
            };
            subjects.push(Box::new(BuiltinSubject::new(strict_mode)));
        }
        let universe: Vec<String> = corpus.cases.iter().map(|c| c.id.clone()).collect();
        let mut run = RunReport::new(&corpus, strict);
        for subject in &mut subjects {
            let hello = subject.hello()?;
            let name = implementation_name(&hello);
            let exp = match &expectations {
                Some(p) => Some(Expectations::load(p)?),
                None => default_expectations(&vectors, &name)?,
            };
            run.subjects.push(run_subject(
                &cases,
                subject.as_mut(),
                hello,
                exp.as_ref(),
                &universe,
            ));
        }
        Ok((
            run.exit_code(),
            report::json(&run),
            report::terminal::render(&run, verbose),
        ))
    })
    .map_err(|e| conformance_error(py, &e))
}

//! `avp conformance`: check an implementation against the golden corpus
//! (spec/protocol/conformance.md). Exit codes are AVP-CONF-16's: 0 conformant,
//! 1 failures, 2 usage, 3 corpus integrity, 4 harness/adapter errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use avp_conformance::adapter::AdapterSubject;
use avp_conformance::builtin::BuiltinSubject;
use avp_conformance::corpus::Corpus;
use avp_conformance::expectations::Expectations;
use avp_conformance::runner::{RunReport, run_subject};
use avp_conformance::subject::{Subject, implementation_name};
use avp_conformance::{ConformanceError, coverage, http, manifest, report};
use clap::{Args, Subcommand};

/// `avp conformance` subcommands.
#[derive(Subcommand)]
pub(crate) enum ConformanceCommand {
    /// Run the corpus against this implementation or, with --adapter, another one.
    Run(Box<RunArgs>),
    /// Check a live AVP HTTP endpoint.
    Http(Box<HttpArgs>),
    /// Corpus maintenance.
    Vectors {
        #[command(subcommand)]
        command: VectorsCommand,
    },
}

/// `avp conformance vectors ...`.
#[derive(Subcommand)]
pub(crate) enum VectorsCommand {
    /// Recompute every digest and compare with MANIFEST.json (exit 3 on any difference).
    Verify {
        /// Corpus root (default: found as described in `avp conformance run --help`).
        #[arg(long, alias = "suite", value_name = "DIR")]
        vectors: Option<PathBuf>,
    },
}

/// Report options shared by `run` and `http`.
#[derive(Args)]
pub(crate) struct ReportArgs {
    /// NON-STRICT verdicts fail the run.
    #[arg(long)]
    strict: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the self-contained HTML report here.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// List passing cases too.
    #[arg(long, short)]
    verbose: bool,
    /// Expectations file (expected failures, each with a reason); default:
    /// <vectors>/../expectations/<implementation name>.txt when it exists.
    #[arg(long, value_name = "FILE")]
    expectations: Option<PathBuf>,
    /// Spec directory for the rule-coverage report [default: <vectors>/../../spec].
    #[arg(long, value_name = "DIR")]
    spec: Option<PathBuf>,
    /// Map of rules checked by in-tree tests instead of cases (AVP-CONF-7);
    /// its paths are relative to the spec directory's parent
    /// [default: <vectors>/../rules-elsewhere.json].
    #[arg(long, value_name = "FILE")]
    rules_elsewhere: Option<PathBuf>,
}

/// `avp conformance run`.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// Corpus root (holds MANIFEST.json). Default: ./conformance/vectors if present, else the
    /// corpus of the source tree this binary was built from.
    #[arg(long, alias = "suite", value_name = "DIR")]
    vectors: Option<PathBuf>,
    /// Adapter command line ('CMD ARGS'); repeat to compare implementations.
    #[arg(long, value_name = "CMD")]
    adapter: Vec<String>,
    /// Also run this workspace's own implementation, decoding in this mode
    /// (`compatible` or `strict`; repeatable). The default when no --adapter is given.
    #[arg(long, value_name = "MODE")]
    builtin: Vec<String>,
    /// Per-case timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Only cases whose ID starts with this prefix (repeatable).
    #[arg(long, value_name = "PREFIX")]
    only: Vec<String>,
    #[command(flatten)]
    report: ReportArgs,
}

/// `avp conformance http`.
#[derive(Args)]
pub(crate) struct HttpArgs {
    /// Base URL, e.g. http://127.0.0.1:8080
    url: String,
    /// Bearer token the server requires (enables the auth cases).
    #[arg(long)]
    token: Option<String>,
    /// Corpus root whose wire vectors are replayed (default: as for `run`).
    #[arg(long, alias = "suite", value_name = "DIR")]
    vectors: Option<PathBuf>,
    /// Body size the oversized-body case sends (declared in Content-Length).
    #[arg(long, default_value_t = http::DEFAULT_OVERSIZE)]
    oversize: u64,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Only cases whose ID starts with this prefix (repeatable).
    #[arg(long, value_name = "PREFIX")]
    only: Vec<String>,
    /// Name for the server in reports and its expectations file (default "http-server").
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    report: ReportArgs,
}

pub(crate) fn run(command: ConformanceCommand) -> ExitCode {
    let result = match command {
        ConformanceCommand::Run(args) => run_corpus(*args),
        ConformanceCommand::Http(args) => run_http(*args),
        ConformanceCommand::Vectors {
            command: VectorsCommand::Verify { vectors },
        } => resolve_vectors(vectors).and_then(|v| verify(&v)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("avp conformance: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The corpus built into this binary's source tree: `cargo install --path cli`
/// leaves the checkout in place, so `avp conformance run` works from any directory.
const BUILD_TREE_VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance/vectors");

/// The corpus root: `--vectors` (alias `--suite`) if given, else
/// `./conformance/vectors` when it holds a MANIFEST.json, else the build tree's.
fn resolve_vectors(given: Option<PathBuf>) -> Result<PathBuf, ConformanceError> {
    if let Some(v) = given {
        return Ok(v);
    }
    let here = PathBuf::from("conformance/vectors");
    let built = PathBuf::from(BUILD_TREE_VECTORS);
    for candidate in [&here, &built] {
        if candidate.join("MANIFEST.json").is_file() {
            return Ok(candidate.clone());
        }
    }
    Err(ConformanceError::Usage(format!(
        "no conformance corpus found in ./conformance/vectors or {}; give --vectors DIR \
         (the conformance/vectors directory of an avp-rs checkout)",
        built.display()
    )))
}

fn verify(root: &Path) -> Result<u8, ConformanceError> {
    let m = manifest::load_verified(root)?;
    let shown = crate::out::line(format_args!(
        "{}: {} files match MANIFEST.json (blake3 {})",
        root.display(),
        m.files.len(),
        m.digest
    ));
    Ok(shown.err().map_or(0, |_| crate::out::EXIT_BROKEN_PIPE))
}

fn expectations_for(
    args: &ReportArgs,
    vectors: &Path,
    name: &str,
) -> Result<Option<Expectations>, ConformanceError> {
    if let Some(path) = &args.expectations {
        return Expectations::load(path).map(Some);
    }
    let parent = match vectors.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => vectors.join(".."),
    };
    let default = parent.join("expectations").join(format!("{name}.txt"));
    if default.is_file() {
        Expectations::load(&default).map(Some)
    } else {
        Ok(None)
    }
}

fn run_corpus(mut args: RunArgs) -> Result<u8, ConformanceError> {
    let vectors = resolve_vectors(args.vectors.take())?;
    let corpus = Corpus::load(&vectors)?;
    let cases = select(&corpus.cases, &args.only);
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(ConformanceError::Usage(
            "--timeout must be a positive number of seconds".into(),
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut subjects: Vec<Box<dyn Subject>> = Vec::new();
    for command in &args.adapter {
        subjects.push(Box::new(AdapterSubject::new(command, timeout)?));
    }
    let mut builtin = args.builtin.clone();
    if builtin.is_empty() && subjects.is_empty() {
        builtin.push("compatible".into());
    }
    for mode in &builtin {
        let strict = match mode.as_str() {
            "compatible" => false,
            "strict" => true,
            other => {
                return Err(ConformanceError::Usage(format!(
                    "--builtin {other}: expected compatible or strict"
                )));
            }
        };
        subjects.push(Box::new(BuiltinSubject::new(strict)));
    }
    let mut report = RunReport::new(&corpus, args.report.strict);
    for subject in &mut subjects {
        let hello = subject.hello()?;
        let name = implementation_name(&hello);
        let expectations = expectations_for(&args.report, &vectors, &name)?;
        let universe: Vec<String> = corpus.cases.iter().map(|c| c.id.clone()).collect();
        report.subjects.push(run_subject(
            &cases,
            subject.as_mut(),
            hello,
            expectations.as_ref(),
            &universe,
        ));
    }
    // spec/ and rules-elsewhere.json sit beside the corpus in a checkout.
    let conformance_dir = vectors.join("..");
    let spec = (args.report.spec.clone()).unwrap_or_else(|| conformance_dir.join("../spec"));
    let rules_elsewhere = (args.report.rules_elsewhere.clone())
        .unwrap_or_else(|| conformance_dir.join("rules-elsewhere.json"));
    if spec.is_dir() {
        // The live HTTP mode's own cases cover the HTTP binding's rules.
        let http_options = http::HttpOptions {
            token: Some(String::new()),
            timeout: Duration::from_secs(1),
            oversize: http::DEFAULT_OVERSIZE,
            name: None,
        };
        let mut all = corpus.cases.clone();
        all.extend(http::cases(&corpus, &http_options));
        let elsewhere = if rules_elsewhere.is_file() {
            let root = spec.parent().unwrap_or(std::path::Path::new(""));
            Some(coverage::ElsewhereMap::load(&rules_elsewhere, root)?)
        } else {
            None
        };
        report.coverage = Some(coverage::compute_with(&spec, &all, elsewhere.as_ref())?);
    }
    emit(&report, &args.report)
}

fn run_http(mut args: HttpArgs) -> Result<u8, ConformanceError> {
    let vectors = resolve_vectors(args.vectors.take())?;
    let corpus = Corpus::load(&vectors)?;
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        return Err(ConformanceError::Usage(
            "--timeout must be a positive number of seconds".into(),
        ));
    }
    let options = http::HttpOptions {
        token: args.token.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        oversize: args.oversize,
        name: args.name.clone(),
    };
    let target = http::Target::parse(&args.url)?;
    let cases = select(&http::cases(&corpus, &options), &args.only);
    // Every case the mode has, the token cases included even without --token:
    // an entry for a case not run this time is not stale (AVP-CONF-15).
    let with_token = http::HttpOptions {
        token: Some(String::new()),
        ..options.clone()
    };
    let universe: Vec<String> = http::cases(&corpus, &with_token)
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut subject = http::HttpSubject::new(target, options);
    let valid = corpus.cases.iter().find(|c| {
        c.op == "decode"
            && c.result == avp_conformance::corpus::ExpectedResult::Valid
            && c.level == avp_conformance::corpus::Level::Must
    });
    match valid {
        Some(case) => subject.set_valid_message(case.input_bytes()?.unwrap_or_default()),
        None => {
            return Err(ConformanceError::Usage(
                "the corpus has no valid MUST-level decode vector to send".into(),
            ));
        }
    }
    let hello = subject.hello()?;
    let name = implementation_name(&hello);
    let expectations = expectations_for(&args.report, &vectors, &name)?;
    let mut report = RunReport::new(&corpus, args.report.strict);
    report.subjects.push(run_subject(
        &cases,
        &mut subject,
        hello,
        expectations.as_ref(),
        &universe,
    ));
    emit(&report, &args.report)
}

/// The cases whose ID starts with one of `prefixes` (all when none are given).
fn select(
    cases: &[avp_conformance::corpus::Case],
    prefixes: &[String],
) -> Vec<avp_conformance::corpus::Case> {
    cases
        .iter()
        .filter(|c| prefixes.is_empty() || prefixes.iter().any(|p| c.id.starts_with(p.as_str())))
        .cloned()
        .collect()
}

fn emit(report: &RunReport, args: &ReportArgs) -> Result<u8, ConformanceError> {
    let write = |path: &Option<PathBuf>, text: String| -> Result<(), ConformanceError> {
        match path {
            Some(p) => std::fs::write(p, text).map_err(|e| ConformanceError::Io {
                path: p.clone(),
                source: e,
            }),
            None => Ok(()),
        }
    };
    write(&args.json, report::json(report))?;
    write(&args.junit, report::junit::render(report))?;
    write(&args.html, report::html::render(report))?;
    if crate::out::text(&report::terminal::render(report, args.verbose)).is_err() {
        // A failing run keeps its failing status; a passing one reports the closed pipe.
        return Ok(match report.exit_code() {
            0 => crate::out::EXIT_BROKEN_PIPE,
            code => code,
        });
    }
    Ok(report.exit_code())
}

//! AVP conformance suite (spec/protocol/conformance.md): golden corpus, runner and the
//! adapter protocol that lets any implementation be checked.
//!
//! The pieces, in the order a run uses them:
//! - [`manifest`]: BLAKE3 integrity of the corpus (AVP-CONF-3..5); nothing runs
//!   on a corpus that does not match its `MANIFEST.json`.
//! - [`corpus`]: the case model (AVP-CONF-1, AVP-CONF-2).
//! - [`subject`]: the implementation under test, as a trait; [`adapter`] drives
//!   an external program over JSON lines (AVP-CONF-20..), so built-in and
//!   foreign implementations share one runner.
//! - [`judge`] and [`runner`]: verdicts (AVP-CONF-10..), with [`expectations`]
//!   (per-implementation expected failures, AVP-CONF-14).
//! - [`coverage`]: spec rules without cases.
//! - [`report`]: terminal, JSON, JUnit and HTML outputs.
//! - [`http`]: the live HTTP mode (AVP-CONF-40..).
#![forbid(unsafe_code)]

pub mod adapter;
pub mod b64;
pub mod builtin;
pub mod corpus;
pub mod coverage;
pub mod error;
pub mod expectations;
pub mod http;
pub mod judge;
pub mod manifest;
pub mod report;
pub mod runner;
pub mod subject;
pub mod verdict;

pub use error::ConformanceError;
pub use verdict::Verdict;

/// Exit code: the implementation conforms (AVP-CONF-16).
pub const EXIT_OK: u8 = 0;
/// Exit code: an unexpected FAIL, an XPASS, a stale expectation, or NON-STRICT under `--strict`.
pub const EXIT_FAIL: u8 = 1;
/// Exit code: a harness or adapter ERROR (crash, timeout, malformed answer, dead server).
pub const EXIT_ERROR: u8 = 4;
/// Exit code: the corpus does not match its manifest.
pub const EXIT_INTEGRITY: u8 = 3;
/// Exit code: bad command line or unreadable input files (2, like every clap parse error).
pub const EXIT_USAGE: u8 = 2;

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

pub mod adapter; // external implementations over the JSON-lines adapter protocol
pub mod b64; // base64 for binaries in adapter messages
pub mod builtin; // our own codec and handshake as a subject
pub mod corpus; // the case model and the corpus loader
pub mod coverage; // spec rule IDs against cases and in-tree tests
pub mod error; // the crate's one error type
pub mod expectations; // per-implementation expected failures
pub mod http; // live HTTP mode against a running endpoint
pub mod judge; // one answer to one verdict
pub mod manifest; // BLAKE3 integrity of the corpus
pub mod report; // terminal, JSON, JUnit and HTML reports
pub mod runner; // runs a corpus against subjects
pub mod subject; // the implementation under test, as the runner sees it
pub mod verdict; // verdicts and their exit codes

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

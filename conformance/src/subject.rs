//! The implementation under test, as seen by the runner.
//!
//! Built-in and external implementations answer the same requests with the
//! same JSON answers (the adapter protocol of spec/protocol/conformance.md,
//! AVP-CONF-20..), so one runner and one judge serve both.

use std::fmt;

use serde_json::Value;

use crate::error::ConformanceError;

/// One request: a case's op and input.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Operation (`decode`, `encode`, `model_hash`, `tokenizer_hash`, `resolve`, ...).
    pub cmd: &'a str,
    /// Case ID (adapters may log it).
    pub case_id: &'a str,
    /// The case input as parsed JSON.
    pub input: &'a Value,
    /// The case input exactly as written in the corpus.
    pub input_raw: &'a str,
    /// Input bytes for byte-input ops (`decode`).
    pub data: Option<&'a [u8]>,
}

/// Why no answer came back (each becomes an ERROR verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HarnessFailure {
    /// No answer within the per-case timeout; the subject was restarted.
    Timeout(std::time::Duration),
    /// The subject exited or closed stdout; it was restarted.
    Crashed(String),
    /// The answer was not one JSON object with the request's `seq` and a known `outcome`.
    Protocol(String),
}

impl fmt::Display for HarnessFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(d) => write!(f, "timeout: no answer in {:.1} s", d.as_secs_f64()),
            Self::Crashed(m) => write!(f, "crashed: {m}"),
            Self::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

/// Something that can be checked against the corpus.
pub trait Subject {
    /// Starts the subject if needed and returns its `hello` answer
    /// (`implementation.name` names it in reports and picks its expectations file).
    fn hello(&mut self) -> Result<Value, ConformanceError>;
    /// Runs one request and returns the answer object (AVP-CONF-22).
    fn call(&mut self, request: &Request<'_>) -> Result<Value, HarnessFailure>;
    /// Diagnostic output (stderr) produced since the previous call.
    fn take_log(&mut self) -> String;
    /// Stops the subject (adapter: `stop`, then wait).
    fn finish(&mut self);
}

/// The name an implementation reports in `hello.implementation.name`.
pub fn implementation_name(hello: &Value) -> String {
    hello
        .pointer("/implementation/name")
        .and_then(Value::as_str)
        .unwrap_or("unnamed")
        .to_string()
}

//! Verdicts (AVP-CONF-10..13) and what each does to the exit code.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The judgement of one case against one implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The strict expected outcome.
    #[serde(rename = "PASS")]
    Pass,
    /// A tolerated deviation (accepting a non-strict input, a SHOULD missed,
    /// a wrong `error_kind`): fails only under `--strict`.
    #[serde(rename = "NON-STRICT")]
    NonStrict,
    /// A MUST violated.
    #[serde(rename = "FAIL")]
    Fail,
    /// The harness could not get an answer (crash, timeout, protocol breach).
    #[serde(rename = "ERROR")]
    Error,
    /// The implementation declared the op unsupported.
    #[serde(rename = "SKIP")]
    Skip,
    /// Failed as its expectations file says.
    #[serde(rename = "XFAIL")]
    XFail,
    /// Listed as failing but passed: the list is stale.
    #[serde(rename = "XPASS")]
    XPass,
    /// An INFO case: the behaviour is recorded, nothing is judged.
    #[serde(rename = "INFO")]
    Info,
}

impl Verdict {
    /// All verdicts, in report order.
    pub const ALL: [Verdict; 8] = [
        Verdict::Pass,
        Verdict::NonStrict,
        Verdict::Fail,
        Verdict::Error,
        Verdict::Skip,
        Verdict::XFail,
        Verdict::XPass,
        Verdict::Info,
    ];

    /// The spelling used in reports and expectation files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::NonStrict => "NON-STRICT",
            Self::Fail => "FAIL",
            Self::Error => "ERROR",
            Self::Skip => "SKIP",
            Self::XFail => "XFAIL",
            Self::XPass => "XPASS",
            Self::Info => "INFO",
        }
    }

    /// Parses the report spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// One-character mark for the terminal tree.
    pub fn mark(self) -> &'static str {
        match self {
            Self::Pass => "✔",
            Self::NonStrict => "~",
            Self::Fail => "✗",
            Self::Error => "!",
            Self::Skip => "s",
            Self::XFail => "x",
            Self::XPass => "X",
            Self::Info => "i",
        }
    }

    /// Whether this verdict makes the run fail (AVP-CONF-16).
    pub fn fails_run(self, strict: bool) -> bool {
        match self {
            Self::Fail | Self::Error | Self::XPass => true,
            Self::NonStrict => strict,
            Self::Pass | Self::Skip | Self::XFail | Self::Info => false,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

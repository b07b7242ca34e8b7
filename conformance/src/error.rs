//! The crate's one error type. Corpus problems (the vectors' fault), harness
//! problems (the subject's fault) and usage problems (the caller's fault) stay
//! apart because each maps to its own exit code (AVP-CONF-16).

use std::fmt;
use std::path::PathBuf;

/// Everything that stops a conformance run before or while it produces verdicts.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConformanceError {
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A corpus, manifest or expectations file is not what the spec describes.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The corpus does not match its manifest (AVP-CONF-4): nothing may run.
    Integrity(Vec<IntegrityProblem>),
    /// The subject could not be started or broke the adapter protocol at `hello`.
    Subject(String),
    /// Bad options (unknown URL scheme, empty adapter command, ...).
    Usage(String),
}

impl ConformanceError {
    /// The exit code spec/protocol/conformance.md assigns to this error (AVP-CONF-16).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Integrity(_) => crate::EXIT_INTEGRITY,
            Self::Subject(_) => crate::EXIT_ERROR,
            Self::Io { .. } | Self::Format { .. } | Self::Usage(_) => crate::EXIT_USAGE,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConformanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Format { path, message } => write!(f, "{}: {message}", path.display()),
            Self::Integrity(problems) => {
                write!(
                    f,
                    "corpus integrity check failed ({} problem(s)):",
                    problems.len()
                )?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            Self::Subject(m) => write!(f, "subject: {m}"),
            Self::Usage(m) => write!(f, "usage: {m}"),
        }
    }
}

impl std::error::Error for ConformanceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One way the corpus on disk differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntegrityProblem {
    /// Listed but absent.
    Missing(String),
    /// Present but not listed.
    Unlisted(String),
    /// Size differs.
    Size {
        /// File.
        path: String,
        /// Listed size.
        listed: u64,
        /// Size on disk.
        actual: u64,
    },
    /// Digest differs.
    Digest {
        /// File.
        path: String,
        /// Listed digest.
        listed: String,
        /// Digest of the file on disk.
        actual: String,
    },
}

impl fmt::Display for IntegrityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(p) => write!(f, "{p}: listed in the manifest but missing"),
            Self::Unlisted(p) => write!(f, "{p}: present but not listed in the manifest"),
            Self::Size {
                path,
                listed,
                actual,
            } => {
                write!(f, "{path}: size {actual}, manifest says {listed}")
            }
            Self::Digest {
                path,
                listed,
                actual,
            } => {
                write!(f, "{path}: blake3 {actual}, manifest says {listed}")
            }
        }
    }
}

//! The engine's one error type (AVP-ENG-12).
//!
//! Kinds are kept apart by who is at fault: the caller's input or files
//! (`Io`, `Config`, `MissingWeight`, `Tokenizer`, `Template`, `InvalidArgument`),
//! a peer's message (`Wire`, `InvalidContext`, `IncompatibleContext`), a limit
//! (`CacheFull`, `NoProjectionPath`) or the tensor backend (`Torch`), which is
//! either a resource problem (out of memory, no CUDA) or our bug.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineError {
    /// A file could not be read or written.
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// `config.json` (or another model file) is malformed or inconsistent.
    Config {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model uses something this engine does not implement.
    Unsupported(String),
    /// A weight the architecture needs is absent from the checkpoint.
    MissingWeight(String),
    /// A weight has the wrong shape or dtype.
    BadWeight {
        /// The tensor name.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer failed to load or to encode/decode.
    Tokenizer(String),
    /// The chat template failed to parse or render.
    Template(String),
    /// A caller passed an argument outside its domain (API misuse).
    InvalidArgument(String),
    /// A KV-cache payload from a peer is malformed (AVP-ENG-10).
    InvalidContext(String),
    /// A context was produced by a different model (AVP-ENG-11).
    IncompatibleContext {
        /// The `model_hash` the context carries.
        context_hash: String,
        /// This model's hash.
        model_hash: String,
    },
    /// A forward pass would exceed the model's position limit.
    CacheFull {
        /// Positions the model supports.
        capacity: usize,
        /// Positions the request needs.
        needed: usize,
    },
    /// Two models share neither a vocabulary nor ≥ 100 token strings.
    NoProjectionPath {
        /// Number of shared token strings found.
        shared_tokens: usize,
    },
    /// A message is not valid AVP (from `avp-codec`: bad magic, truncated, checksum, …).
    Wire(avp_codec::Error),
    /// libtorch reported an error (device, memory, or a bug of ours).
    Torch(tch::TchError),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "cannot access {}: {source}", path.display()),
            Self::Config { path, message } => {
                write!(f, "bad model file {}: {message}", path.display())
            }
            Self::Unsupported(what) => write!(f, "unsupported: {what}"),
            Self::MissingWeight(name) => write!(f, "checkpoint lacks weight {name:?}"),
            Self::BadWeight { name, message } => write!(f, "weight {name:?}: {message}"),
            Self::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            Self::Template(m) => write!(f, "chat template: {m}"),
            Self::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Self::InvalidContext(m) => write!(f, "invalid KV-cache context: {m}"),
            Self::IncompatibleContext {
                context_hash,
                model_hash,
            } => write!(
                f,
                "context was made by another model (model_hash {context_hash:?}, this model {model_hash:?}); \
                 use cross-model projection instead"
            ),
            Self::CacheFull { capacity, needed } => write!(
                f,
                "sequence of {needed} positions exceeds the model's {capacity} positions"
            ),
            Self::NoProjectionPath { shared_tokens } => write!(
                f,
                "no projection path: vocabularies differ and share only {shared_tokens} token strings (need 100)"
            ),
            Self::Wire(e) => write!(f, "AVP message: {e}"),
            Self::Torch(e) => write!(f, "libtorch: {e}"),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The causes are already part of Display (one line for CLI users);
        // reporting them here too would print them twice in error chains.
        let _ = self;
        None
    }
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e)
    }
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> EngineError {
    let path = path.into();
    move |source| EngineError::Io { path, source }
}

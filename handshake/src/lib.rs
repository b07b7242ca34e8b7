//! AVP handshake (spec/protocol/handshake.md): model identities, Python-exact hashes,
//! mode negotiation and sessions. Sans-I/O (the optional `fs` feature adds
//! the one module that reads files).
//!
//! - [`json`]: the `avp-json` crate (re-exported), a JSON reader/writer that
//!   reproduces Python's `json` module byte for byte (AVP-HASH-1..AVP-HASH-9);
//! - [`model_hash`], [`tokenizer_hash`], [`vocab_from_tokenizer_json`]
//!   (AVP-HASH-10, AVP-HASH-11);
//! - [`ModelIdentity`], [`identity_from_config`], [`HelloMessage`] (AVP-HS-1..4);
//! - [`resolve`]: the SDK's six rules (AVP-HS-5..10);
//! - [`state`]: the handshake as a consuming state machine (AVP-HS-11, 12),
//!   which the transport's client drives;
//! - [`SessionManager`]: sessions with TTL (AVP-HS-13), the one session store
//!   (the transport's server keeps its sessions in it);
//! - [`weights`]: the `weights_digest` extension (AVP-HS-20..23).
#![forbid(unsafe_code)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

pub mod error; // the crate's one error type
#[cfg(feature = "fs")]
pub mod fs; // reads model directories (feature `fs`)
pub mod hash; // model_hash and tokenizer_hash (SHA-256)
pub mod hello; // the hello message and its capabilities
pub mod identity; // ModelIdentity from a HF config.json
/// Python-exact JSON (the `avp-json` crate), re-exported so that hashes and
/// their inputs use one JSON model.
pub use avp_json as json;

#[doc(hidden)]
pub mod fuzzing; // oracles for fuzz targets and corpus replays

pub mod resolve; // the SDK's six resolution rules
pub mod session; // sessions with a time-to-live
pub mod state; // the handshake as a consuming state machine
pub mod vocab; // vocabularies from tokenizer.json, overlap
pub mod weights; // the weights_digest extension (BLAKE3)

pub use error::{Error, JsonError, JsonErrorKind};
pub use hash::{model_hash, tokenizer_hash, tokenizer_hash_of_tokens, tokenizer_hash_with_threads};
pub use hello::{AVP_VERSION_STRING, HelloMessage, WEIGHTS_DIGEST_CAPABILITY};
pub use identity::{ModelIdentity, identity_from_config};
pub use resolve::{
    MIN_VOCAB_OVERLAP, MapLookup, Mode, Resolution, ResolutionPath, ResolveOptions, map_id, resolve,
};
pub use session::{DEFAULT_TTL, Session, SessionManager};
pub use vocab::{count_vocab_overlap, vocab_from_document, vocab_from_tokenizer_json};
pub use weights::WeightsDigest;

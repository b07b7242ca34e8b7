//! `model_hash`: the identity a context carries (AVP-ENG-CTX).
//!
//! The SDK hashes its config dictionary as canonical JSON (sorted keys,
//! `(",", ":")` separators, Python float/int spelling). That canonical writer
//! belongs to the `avp-handshake` crate; until it is wired in here this one
//! function is the only place that computes the hash, so switching over is a
//! one-line change. INTERIM: SHA-256 hex of the config.json bytes as stored,
//! which identifies the same file the same way but does not equal the SDK's
//! value.

use sha2::{Digest, Sha256};

/// The model hash of a config.json text.
pub fn model_hash(config_json: &str) -> String {
    let digest = Sha256::digest(config_json.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

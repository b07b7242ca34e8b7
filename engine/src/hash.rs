//! `model_hash`: the identity a context carries (AVP-ENG-11).
//!
//! spec/engine.md asks for the AVP-HASH model hash of config.json (SHA-256 of
//! Python-canonical JSON: sorted keys, `(",", ":")` separators, Python
//! float/int spelling; `config_json_hash` in the fixtures). That canonical
//! writer belongs to the `avp-handshake` crate and must not be duplicated, so
//! this one function is the only place the hash is computed.
//!
//! INTERIM, until `avp-handshake` is a dependency of this crate: SHA-256 hex
//! of the config.json bytes as stored. It identifies the same file the same
//! way on every machine but differs from `config_json_hash`. The switch is:
//! `avp_handshake::json::parse(config_json.as_bytes())` then
//! `avp_handshake::model_hash(&value)`, with its error mapped to
//! `EngineError::Config`.

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

//! `model_hash`: the identity a context carries (AVP-ENG-11).
//!
//! The AVP-HASH-1 model hash of config.json: SHA-256 of its Python-canonical
//! JSON form, computed by `avp-handshake` (the one canonical JSON writer in
//! the workspace), so a context made here names the same model as the
//! handshake does.

use std::path::Path;

use crate::EngineError;

/// The model hash of a config.json text; `path` names the file in errors.
pub fn model_hash(config_json: &str, path: &Path) -> Result<String, EngineError> {
    let config_error = |message: String| EngineError::Config {
        path: path.to_path_buf(),
        message,
    };
    let value = avp_handshake::json::parse(config_json.as_bytes())
        .map_err(|e| config_error(format!("not hashable as JSON: {e}")))?;
    avp_handshake::model_hash(&value).map_err(|e| config_error(format!("model hash: {e}")))
}

//! [`ModelConfig`]: `config.json` as Hugging Face writes it, read into one
//! typed decoder description by the module of its `model_type` (AVP-ENG-1).
//! It sits above `config` and the architecture modules, so those never
//! import each other in both directions.

use std::path::Path;

use crate::config::{DecoderConfig, RawConfig};
use crate::error::{EngineError, Result, io_err};

/// A parsed config.json: the typed decoder plus the raw JSON text (hashed
/// for `model_hash`).
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The typed decoder description.
    pub decoder: DecoderConfig,
    /// The exact bytes of config.json.
    pub raw_json: String,
}

impl ModelConfig {
    /// Reads and validates `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_json(&text, &path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| EngineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        raw.sliding_window_present = value.get("sliding_window").is_some();
        let model_type = raw
            .model_type
            .clone()
            .ok_or_else(|| bad("no model_type".into()))?;
        let decoder = match model_type.as_str() {
            "llama" => crate::llama::config(&raw),
            "qwen2" => crate::qwen2::config(&raw),
            "qwen3" => crate::qwen3::config(&raw),
            "mistral" => crate::mistral::config(&raw),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "model_type {other:?} (supported: llama, qwen2, qwen3, mistral)"
                )));
            }
        }
        .map_err(bad)?;
        Ok(Self {
            decoder,
            raw_json: text.to_owned(),
        })
    }
}

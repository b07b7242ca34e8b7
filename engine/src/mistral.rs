//! Mistral (`model_type: "mistral"`), AVP-ENG-1.
//!
//! The Llama layout without biases; `head_dim` may be explicit (Mistral
//! Nemo). Sliding-window attention is not implemented as a band mask: instead
//! the position limit is capped at `sliding_window`, so every sequence we
//! accept is one where the window has no effect and results equal
//! transformers' exactly; longer ones get [`crate::EngineError::CacheFull`].

use crate::config::{ArchDefaults, Architecture, DecoderConfig, RawConfig, build};

pub(crate) fn config(raw: &RawConfig) -> Result<DecoderConfig, String> {
    let mut cfg = build(
        raw,
        &ArchDefaults {
            architecture: Architecture::Mistral,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 4096 * 32,
            head_dim: None,
            qkv_bias: Some(false),
            qk_norm: false,
        },
    )?;
    if let Some(window) = raw
        .sliding_window
        .as_ref()
        .and_then(serde_json::Value::as_u64)
    {
        let window = usize::try_from(window).unwrap_or(usize::MAX);
        cfg.max_position_embeddings = cfg.max_position_embeddings.min(window);
    }
    Ok(cfg)
}

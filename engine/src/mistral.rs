//! Mistral (`model_type: "mistral"`), AVP-ENG-1.
//!
//! The Llama layout without biases; `head_dim` may be explicit (Mistral
//! Nemo). Sliding-window attention: `sliding_window` (transformers' default
//! 4096 when the key is absent, none when it is `null`) becomes a band mask in
//! the shared decoder; the KV-cache keeps every position (AVP-ENG-3, AVP-ENG-7).

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
    cfg.sliding_window = match &raw.sliding_window {
        None if !raw.sliding_window_present => Some(4096),
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|w| usize::try_from(w).ok()) {
            Some(w) if w > 0 => Some(w),
            _ => return Err(format!("sliding_window {v} is not a positive integer")),
        },
    };
    Ok(cfg)
}

//! Qwen2 / Qwen2.5 (`model_type: "qwen2"`), AVP-ENG-1.
//!
//! Like Llama, but q/k/v projections always carry a bias and o_proj never
//! does. Sliding-window attention is off in every released checkpoint
//! (`use_sliding_window: false`); a config that turns it on is refused.

use crate::config::{ArchDefaults, Architecture, DecoderConfig, RawConfig, build};

pub(crate) fn config(raw: &RawConfig) -> Result<DecoderConfig, String> {
    if raw.use_sliding_window == Some(true) {
        return Err("qwen2 use_sliding_window=true is not implemented".into());
    }
    build(
        raw,
        &ArchDefaults {
            architecture: Architecture::Qwen2,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 32_768,
            head_dim: None,
            qkv_bias: Some(true),
            qk_norm: false,
        },
    )
}

//! Qwen3 dense models (`model_type: "qwen3"`), AVP-ENG-1.
//!
//! Differs from Qwen2 in two ways: a per-head RMSNorm (`q_norm`, `k_norm`,
//! weights of size head_dim) is applied to queries and keys before RoPE, and
//! `head_dim` is explicit (default 128, not hidden/heads), so q_proj may be
//! wider than the model. Biases follow `attention_bias` (default false).

use crate::config::{ArchDefaults, Architecture, DecoderConfig, RawConfig, build};

pub(crate) fn config(raw: &RawConfig) -> Result<DecoderConfig, String> {
    if raw.use_sliding_window == Some(true) {
        return Err("qwen3 use_sliding_window=true is not implemented".into());
    }
    build(
        raw,
        &ArchDefaults {
            architecture: Architecture::Qwen3,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 32_768,
            head_dim: Some(128),
            qkv_bias: None,
            qk_norm: true,
        },
    )
}

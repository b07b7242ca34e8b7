//! Llama (Llama 2, Llama 3.x; `model_type: "llama"`), AVP-ENG-1.
//!
//! Pre-norm decoder: RMSNorm, RoPE (plain, `linear` or `llama3` scaling),
//! grouped-query attention with optional `attention_bias` on q/k/v/o, SiLU-gated
//! MLP with optional `mlp_bias`. Defaults follow transformers' `LlamaConfig`.
//! The forward pass itself is the shared [`crate::decoder`].

use crate::config::{ArchDefaults, Architecture, DecoderConfig, RawConfig, build};

pub(crate) fn config(raw: &RawConfig) -> Result<DecoderConfig, String> {
    build(
        raw,
        &ArchDefaults {
            architecture: Architecture::Llama,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            head_dim: None,
            qkv_bias: None,
            qk_norm: false,
        },
    )
}

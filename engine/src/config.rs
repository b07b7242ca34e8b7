//! The typed decoder description (AVP-ENG-1) and the shared reading of
//! `config.json` fields that the per-architecture modules build it with;
//! [`crate::model_config`] picks the architecture.
//!
//! Every supported architecture is a pre-norm decoder with RMSNorm, RoPE,
//! grouped-query attention and a SiLU-gated MLP; what differs (biases, q/k
//! norms, head_dim defaults, RoPE scaling) is decided in the per-architecture
//! modules and recorded in [`DecoderConfig`]. Both the transformers 4.x
//! layout (`rope_theta` + `rope_scaling`) and the 5.x layout
//! (`rope_parameters`) are accepted.

use serde::Deserialize;

use crate::error::Result;

/// The architectures this engine implements, one module each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Architecture {
    /// `model_type: "llama"` (crate::llama).
    Llama,
    /// `model_type: "qwen2"` (crate::qwen2).
    Qwen2,
    /// `model_type: "qwen3"` (crate::qwen3).
    Qwen3,
    /// `model_type: "mistral"` (crate::mistral).
    Mistral,
}

impl Architecture {
    /// The `model_type` string, which is also the SDK's `model_family`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Mistral => "mistral",
        }
    }
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1 wavelength-dependent scaling.
    Llama3 {
        /// Divisor for low frequencies.
        factor: f64,
        /// Wavelength threshold (as a fraction of the original context) for low frequencies.
        low_freq_factor: f64,
        /// Wavelength threshold for high frequencies.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// The typed description of a decoder, shared by all architectures.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Which architecture module built this.
    pub architecture: Architecture,
    /// Model width (D).
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE rescaling.
    pub rope_scaling: RopeScaling,
    /// Position limit.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the input embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2: always).
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding attention window (Mistral): a query at position p sees keys
    /// at positions > p − window (AVP-ENG-3).
    pub sliding_window: Option<usize>,
    /// End-of-sequence token ids from config.json.
    pub eos_token_ids: Vec<i64>,
    /// The dtype the checkpoint declares (`torch_dtype` / `dtype`), if any.
    pub declared_dtype: Option<String>,
}

/// `config.json` fields we read; everything is optional here and defaulted
/// per architecture.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RawConfig {
    pub model_type: Option<String>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub hidden_act: Option<String>,
    pub eos_token_id: Option<serde_json::Value>,
    pub torch_dtype: Option<String>,
    pub dtype: Option<String>,
    pub use_sliding_window: Option<bool>,
    pub sliding_window: Option<serde_json::Value>,
    /// Whether the `sliding_window` key exists at all (absent and `null` differ for Mistral).
    #[serde(skip)]
    pub sliding_window_present: bool,
    pub partial_rotary_factor: Option<f64>,
}

/// Defaults an architecture applies where config.json is silent.
pub(crate) struct ArchDefaults {
    pub architecture: Architecture,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// Explicit default head_dim (Qwen3: 128); otherwise hidden/heads.
    pub head_dim: Option<usize>,
    pub qkv_bias: Option<bool>,
    pub qk_norm: bool,
}

fn need(v: Option<usize>, name: &str) -> Result<usize, String> {
    match v {
        Some(0) => Err(format!("{name} must be positive")),
        Some(n) => Ok(n),
        None => Err(format!("missing {name}")),
    }
}

/// Builds the shared description from raw fields and an architecture's defaults.
pub(crate) fn build(raw: &RawConfig, d: &ArchDefaults) -> Result<DecoderConfig, String> {
    if let Some(act) = &raw.hidden_act {
        if act != "silu" {
            return Err(format!("hidden_act {act:?} (only silu is implemented)"));
        }
    }
    if raw.partial_rotary_factor.is_some_and(|f| f != 1.0) {
        return Err("partial_rotary_factor != 1 is not implemented".into());
    }
    let hidden_size = need(raw.hidden_size, "hidden_size")?;
    let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
    let num_kv_heads = need(
        raw.num_key_value_heads.or(Some(num_heads)),
        "num_key_value_heads",
    )?;
    if num_heads % num_kv_heads != 0 {
        return Err(format!(
            "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        ));
    }
    let head_dim = match raw.head_dim.or(d.head_dim) {
        Some(h) => need(Some(h), "head_dim")?,
        None => {
            if hidden_size % num_heads != 0 {
                return Err("hidden_size is not a multiple of num_attention_heads".into());
            }
            hidden_size / num_heads
        }
    };
    if head_dim % 2 != 0 {
        return Err(format!("head_dim {head_dim} must be even for RoPE"));
    }
    let (rope_theta, rope_scaling) = rope(raw, d.rope_theta)?;
    let eos_token_ids = match &raw.eos_token_id {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(serde_json::Value::Array(a)) => {
            a.iter().filter_map(serde_json::Value::as_i64).collect()
        }
        Some(other) => return Err(format!("eos_token_id {other} is not an integer or list")),
    };
    let qkv_bias = d.qkv_bias.unwrap_or(raw.attention_bias.unwrap_or(false));
    Ok(DecoderConfig {
        architecture: d.architecture,
        hidden_size,
        intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
        num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: need(raw.vocab_size, "vocab_size")?,
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(d.rms_norm_eps),
        rope_theta,
        rope_scaling,
        max_position_embeddings: raw
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings),
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        qkv_bias,
        o_bias: d.qkv_bias.is_none() && raw.attention_bias.unwrap_or(false),
        mlp_bias: raw.mlp_bias.unwrap_or(false),
        qk_norm: d.qk_norm,
        sliding_window: None,
        eos_token_ids,
        declared_dtype: raw.torch_dtype.clone().or_else(|| raw.dtype.clone()),
    })
}

fn num(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(serde_json::Value::as_f64)
}

/// Reads RoPE base and scaling from either config layout.
fn rope(raw: &RawConfig, default_theta: f64) -> Result<(f64, RopeScaling), String> {
    // transformers 5.x: `rope_parameters` holds everything; 4.x: `rope_scaling`.
    let params = raw
        .rope_parameters
        .as_ref()
        .filter(|v| v.is_object())
        .or(raw.rope_scaling.as_ref().filter(|v| v.is_object()));
    let theta = params
        .and_then(|p| num(p, "rope_theta"))
        .or(raw.rope_theta)
        .unwrap_or(default_theta);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::None));
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default");
    let factor = || num(p, "factor").ok_or_else(|| format!("rope type {kind} needs factor"));
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: num(p, "low_freq_factor")
                .ok_or("llama3 rope needs low_freq_factor")?,
            high_freq_factor: num(p, "high_freq_factor")
                .ok_or("llama3 rope needs high_freq_factor")?,
            original_max_position_embeddings: num(p, "original_max_position_embeddings")
                .or(raw.max_position_embeddings.map(|m| m as f64))
                .ok_or("llama3 rope needs original_max_position_embeddings")?,
        },
        other => {
            return Err(format!(
                "rope type {other:?} is not implemented (default, linear, llama3)"
            ));
        }
    };
    Ok((theta, scaling))
}

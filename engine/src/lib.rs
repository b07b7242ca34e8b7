//! AVP inference engine on libtorch (tch): latent thinking, KV-cache export and
//! import, generation and cross-model projection (spec/impl/engine.md).
//!
//! The behavioural reference is the Python SDK `avp==0.6.2`
//! (`connectors/huggingface.py`, `realign.py`, `rosetta/`); unlike it, the
//! latent loop never leaves the device. No module contains `unsafe`: tensors
//! are built from byte slices with tch's copying constructors after our own
//! length checks.
#![deny(unsafe_code)]

// One job per module; no two import each other (scripts/module_cycles.py).
pub mod cache; // the external KV-cache: one tensor for all layers, per-layer views, written in place
pub mod chunked; // a context as chunk messages: export per layer range, import while chunks arrive
pub mod config; // the typed decoder description and the shared config.json field rules
pub mod context; // LatentContext: the KV-cache a think produced, its wire form, import and priming
pub mod decoder; // the shared pre-norm decoder forward pass over a KvCache
pub mod engine; // Engine: one loaded model and tokenizer; think, generate, import, prime
pub mod error; // the crate's error type
pub mod handoff; // what a sender transmits for a resolved handshake, and those messages
pub mod hash; // the SDK's model hash of a config
pub mod kv_quant; // quantized contexts: quantize before export, dequantize after import, on the device
pub mod latent; // latent realignment: the projector from hidden state to input embedding
pub mod llama; // Llama's config defaults
pub mod mistral; // Mistral's config defaults and sliding window
pub mod model_config; // config.json read by the module of its model_type
pub mod project; // cross-model projection maps: calibrate, project, save, load
pub mod prompt; // chat templates and tokenizer: prompt ids and decoding
pub mod qwen2; // Qwen2's config defaults
pub mod qwen3; // Qwen3's config defaults (q/k norms)
pub mod rng; // the one use of libtorch's global generator, held and seeded explicitly
pub mod sample; // temperature, top-k, top-p and the multinomial draw
mod weights; // safetensors checkpoints read into named tensors
pub mod wire; // the AVP message and KV-cache inner format, via the codec

pub use cache::KvCache;
pub use chunked::{ChunkImport, ChunkOptions, ChunkProgress, ChunkSummary};
pub use config::{Architecture, DecoderConfig, RopeScaling};
pub use context::LatentContext;
pub use decoder::{Decoder, Input};
pub use engine::{
    Engine, GenerateOptions, Generation, LoadOptions, Sampling, WeightSource, parse_device,
    parse_kind,
};
pub use error::{EngineError, Result};
pub use model_config::ModelConfig;
pub use project::{ProjectionMap, ProjectionMethod, calibrate, project};
pub use rng::SeededRng;
pub use tch::{Device, Kind, Tensor};

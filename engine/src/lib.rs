//! AVP inference engine on libtorch (tch): latent thinking, KV-cache export and
//! import, generation and cross-model projection (spec/engine.md).
//!
//! The behavioural reference is the Python SDK `avp==0.6.2`
//! (`connectors/huggingface.py`, `realign.py`, `rosetta/`); unlike it, the
//! latent loop never leaves the device. No module contains `unsafe`: tensors
//! are built from byte slices with tch's copying constructors after our own
//! length checks.
#![deny(unsafe_code)]

pub mod cache;
pub mod config;
pub mod context;
pub mod decoder;
pub mod engine;
pub mod error;
pub mod hash;
pub mod latent;
pub mod llama;
pub mod mistral;
pub mod project;
pub mod prompt;
pub mod qwen2;
pub mod qwen3;
pub mod sample;
mod weights;
pub mod wire;

pub use cache::KvCache;
pub use config::{Architecture, DecoderConfig, ModelConfig, RopeScaling};
pub use context::LatentContext;
pub use decoder::{Decoder, Input};
pub use engine::{
    Engine, GenerateOptions, Generation, LoadOptions, Sampling, WeightSource, parse_device,
    parse_kind,
};
pub use error::{EngineError, Result};
pub use project::{ProjectionMap, ProjectionMethod, calibrate, project};
pub use tch::{Device, Kind, Tensor};

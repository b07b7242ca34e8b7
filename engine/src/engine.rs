//! [`Engine`]: one loaded model with its tokenizer, and the operations the
//! SDK's HuggingFace connector offers: `think`, `generate`, KV export/import
//! (AVP-ENG-4, -7 … -11, -18).

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use avp_codec::chunk::AssemblyLimits;

use crate::cache::{KvCache, to_i64};
use crate::chunked::{ChunkImport, ChunkProgress};
use crate::context::LatentContext;
use crate::decoder::{Decoder, Input, random_weights};
use crate::error::{EngineError, Result, io_err};
use crate::latent::{LatentProjector, load_or_compute};
use crate::model_config::ModelConfig;
use crate::prompt::PromptFormat;
use crate::rng::SeededRng;
use crate::sample::sample;
use crate::weights::Weights;

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeightSource {
    /// The directory's safetensors checkpoint.
    Checkpoint,
    /// Random normal(0, 0.02) weights from config.json alone, seeded (benchmarks).
    Random {
        /// RNG seed.
        seed: i64,
    },
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Device for weights and caches.
    pub device: Device,
    /// Element type; `None` = float32 on CPU, bfloat16 on CUDA (the SDK's choice).
    pub kind: Option<Kind>,
    /// Checkpoint or random weights.
    pub weights: WeightSource,
    /// Realignment cache directory; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Use this identity hash instead of hashing config.json: the SDK hashes
    /// transformers' in-memory config (all defaults included), which cannot
    /// be derived from config.json alone, so a peer running the SDK is
    /// matched by passing the hash it announces (AVP-ENG-11).
    pub model_hash: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: None,
            weights: WeightSource::Checkpoint,
            cache_dir: crate::latent::default_cache_dir(),
            model_hash: None,
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                EngineError::InvalidArgument(format!("device {s:?} (cpu, cuda, cuda:N)"))
            }),
    }
}

/// Parses `float32|f32`, `float16|f16`, `bfloat16|bf16`.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "float32" | "f32" | "fp32" => Ok(Kind::Float),
        "float16" | "f16" | "fp16" | "half" => Ok(Kind::Half),
        "bfloat16" | "bf16" => Ok(Kind::BFloat16),
        _ => Err(EngineError::InvalidArgument(format!(
            "dtype {s:?} (float32, float16, bfloat16)"
        ))),
    }
}

/// Result of [`Engine::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// Decoded text without special tokens, trimmed (as the SDK returns it).
    pub text: String,
    /// Generated ids, including a final stop token if one was produced.
    pub token_ids: Vec<u32>,
    /// Whether a stop token ended generation (else `max_new_tokens` did).
    pub stopped: bool,
}

/// Decoding strategy.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Sampling {
    /// Argmax (the SDK's `do_sample=False`).
    Greedy,
    /// Temperature, then top-k, then top-p (nucleus), as transformers orders them.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Keep the k most likely tokens (0 = off); transformers' default is 50.
        top_k: usize,
        /// Seed given to libtorch's generator before decoding (as
        /// `torch.manual_seed`), through a [`SeededRng`] held for the whole run.
        seed: u64,
    },
}

/// Options of [`Engine::generate`].
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Upper bound on new tokens (the SDK's default is 512).
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: Sampling,
    /// Stop tokens in addition to the model's EOS ids (generation_config.json,
    /// else config.json), AVP-ENG-8.
    pub stop_tokens: Option<Vec<u32>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            sampling: Sampling::Greedy,
            stop_tokens: None,
        }
    }
}

/// A loaded model ready for latent thinking and generation.
pub struct Engine {
    dir: PathBuf,
    config: ModelConfig,
    model: Decoder,
    prompt: PromptFormat,
    model_hash: String,
    eos: Vec<u32>,
    default_top_k: usize,
    cache_dir: Option<PathBuf>,
    projector: OnceCell<LatentProjector>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .field("model_hash", &self.model_hash)
            .finish()
    }
}

fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

impl Engine {
    /// Loads a Hugging Face model directory.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let _guard = tch::no_grad_guard();
        let config = ModelConfig::from_dir(dir)?;
        let kind = opts.kind.unwrap_or(match opts.device {
            Device::Cpu => Kind::Float,
            _ => Kind::BFloat16,
        });
        if let Device::Cuda(_) = opts.device {
            if !tch::Cuda::is_available() {
                return Err(EngineError::Unsupported(
                    "CUDA device requested but libtorch sees no GPU".into(),
                ));
            }
        }
        let cfg = config.decoder.clone();
        let weights = match opts.weights {
            WeightSource::Checkpoint => Weights::load(dir, kind, opts.device)?,
            WeightSource::Random { seed } => {
                random_weights(&cfg, kind, opts.device, &mut SeededRng::seeded(seed)?)?
            }
        };
        let model = Decoder::from_weights(cfg, weights, kind, opts.device)?;
        let prompt = PromptFormat::from_dir(dir, config.decoder.architecture.model_type())?;
        let gen_path = dir.join("generation_config.json");
        let gen_cfg: serde_json::Value = if gen_path.is_file() {
            let text = std::fs::read_to_string(&gen_path).map_err(io_err(&gen_path))?;
            serde_json::from_str(&text).map_err(|e| EngineError::Config {
                path: gen_path.clone(),
                message: e.to_string(),
            })?
        } else {
            serde_json::Value::Null
        };
        let mut eos = ids_of(gen_cfg.get("eos_token_id"));
        if eos.is_empty() {
            eos = config
                .decoder
                .eos_token_ids
                .iter()
                .filter_map(|&i| u32::try_from(i).ok())
                .collect();
        }
        let default_top_k = gen_cfg
            .get("top_k")
            .and_then(|v| v.as_u64())
            .map_or(50, |k| k as usize);
        let model_hash = match &opts.model_hash {
            Some(h) => h.clone(),
            None => crate::hash::model_hash(&config.raw_json, &dir.join("config.json"))?,
        };
        // Random weights must never share a realignment cache entry with the
        // real checkpoint of the same config.
        let cache_dir = match opts.weights {
            WeightSource::Checkpoint => opts.cache_dir.clone(),
            WeightSource::Random { .. } => None,
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            model,
            prompt,
            model_hash,
            eos,
            default_top_k,
            cache_dir,
            projector: OnceCell::new(),
        })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The decoder itself.
    pub fn model(&self) -> &Decoder {
        &self.model
    }

    /// Tokenizer and chat template.
    pub fn prompt_format(&self) -> &PromptFormat {
        &self.prompt
    }

    /// The hash contexts are checked against (see [`crate::hash`]).
    pub fn model_hash(&self) -> &str {
        &self.model_hash
    }

    /// The SDK's `model_family`: config.json `model_type`.
    pub fn model_family(&self) -> &'static str {
        self.config.decoder.architecture.model_type()
    }

    /// transformers' default top-k for sampling (generation_config.json, else 50).
    pub fn default_top_k(&self) -> usize {
        self.default_top_k
    }

    /// EOS ids used as stop tokens.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Whether latent steps use the realignment matrix (untied embeddings).
    pub fn needs_realignment(&self) -> bool {
        !self.config.decoder.tie_word_embeddings
    }

    /// The latent projector, computed (or read from the disk cache) on first use.
    pub fn projector(&self) -> Result<&LatentProjector> {
        if let Some(p) = self.projector.get() {
            return Ok(p);
        }
        let _guard = tch::no_grad_guard();
        let p = if self.needs_realignment() {
            load_or_compute(&self.model, &self.model_hash, self.cache_dir.as_deref())?
        } else {
            LatentProjector::Soft {
                embed: self.model.input_embeddings().f_to_kind(Kind::Float)?,
            }
        };
        Ok(self.projector.get_or_init(|| p))
    }

    fn tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let n = to_i64(v.len())?;
        Ok(Tensor::f_from_slice(&v)?
            .f_reshape([1, n])?
            .f_to_device(self.model.device())?)
    }

    fn check_context(&self, ctx: &LatentContext) -> Result<()> {
        if ctx.model_hash != self.model_hash {
            return Err(EngineError::IncompatibleContext {
                context_hash: ctx.model_hash.clone(),
                model_hash: self.model_hash.clone(),
            });
        }
        let c = &self.config.decoder;
        let cache = &ctx.cache;
        if cache.num_layers() != c.num_layers
            || cache.num_kv_heads() != c.num_kv_heads
            || cache.head_dim() != c.head_dim
        {
            return Err(EngineError::InvalidContext(format!(
                "cache shape {}x{}x{} does not fit this model ({}x{}x{})",
                cache.num_layers(),
                cache.num_kv_heads(),
                cache.head_dim(),
                c.num_layers,
                c.num_kv_heads,
                c.head_dim
            )));
        }
        Ok(())
    }

    /// The SDK's `think()`: prefill the rendered prompt (after `context`, if
    /// any), then run `steps` latent steps, each feeding the projected
    /// last hidden state back as an input embedding (AVP-ENG-5, AVP-ENG-9).
    ///
    /// No tensor leaves the device inside the loop. NaN detection (the SDK
    /// stops at the first step whose hidden state has a NaN) is recorded per
    /// step on the device and read once at the end; the cache is then cut
    /// back to the SDK's length, so the result is identical.
    pub fn think(
        &self,
        prompt: &str,
        steps: usize,
        context: Option<LatentContext>,
    ) -> Result<LatentContext> {
        self.think_with_progress(prompt, steps, context, &mut |_, _| {})
    }

    /// [`Engine::think`] calling `progress(done, total)` after each step is issued.
    pub fn think_with_progress(
        &self,
        prompt: &str,
        steps: usize,
        context: Option<LatentContext>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<LatentContext> {
        let _guard = tch::no_grad_guard();
        let ids = self.prompt.prompt_ids(prompt)?;
        let (mut cache, prior_steps) = match context {
            Some(ctx) => {
                self.check_context(&ctx)?;
                (ctx.cache, ctx.num_steps)
            }
            None => (self.model.new_cache(ids.len().saturating_add(steps))?, 0),
        };
        cache.reserve(
            cache
                .seq_len()
                .saturating_add(ids.len())
                .saturating_add(steps),
        )?;
        let projector = if steps > 0 {
            Some(self.projector()?)
        } else {
            None
        };
        let tokens = self.tokens(&ids)?;
        let hidden = self.model.forward(Input::Tokens(&tokens), &mut cache)?;
        let n = to_i64(ids.len())?;
        let mut last = hidden.f_select(1, n - 1)?; // [1, D]
        let after_prompt = cache.seq_len();
        let mut hiddens = Vec::with_capacity(steps + 1);
        let mut nan_flags = Vec::with_capacity(steps);
        hiddens.push(last.shallow_clone());
        for step in 0..steps {
            let Some(projector) = projector else { break };
            let e = projector
                .apply(&last)?
                .f_to_kind(self.model.kind())?
                .f_unsqueeze(1)?;
            let h = self.model.forward(Input::Embeds(&e), &mut cache)?;
            last = h.f_select(1, 0)?;
            nan_flags.push(last.f_isnan()?.f_any()?);
            hiddens.push(last.shallow_clone());
            progress(step + 1, steps);
        }
        let mut taken = steps;
        if !nan_flags.is_empty() {
            let flags = Tensor::f_stack(&nan_flags, 0)?.f_to_device(Device::Cpu)?;
            let mut host = vec![false; nan_flags.len()];
            flags.f_copy_data(&mut host, nan_flags.len())?;
            if let Some(i) = host.iter().position(|&b| b) {
                taken = i + 1;
                cache.truncate(after_prompt + taken);
            }
        }
        // Whether h_0 … h_taken hold a NaN or an Inf (the SDK warns about both).
        let kept = hiddens.get(..=taken).unwrap_or(&hiddens);
        let stacked = Tensor::f_stack(kept, 0)?;
        let nan_seen = stacked.f_isnan()?.f_any()?.f_int64_value(&[])? != 0;
        let inf_seen = stacked.f_isinf()?.f_any()?.f_int64_value(&[])? != 0;
        let last_hidden = hiddens.swap_remove(taken.min(hiddens.len().saturating_sub(1)));
        let c = &self.config.decoder;
        Ok(LatentContext {
            cache,
            model_hash: self.model_hash.clone(),
            model_family: self.model_family().to_owned(),
            num_steps: prior_steps.saturating_add(taken),
            hidden_dim: c.hidden_size,
            num_layers: c.num_layers,
            last_hidden: Some(last_hidden),
            steps_taken: taken,
            nan_seen,
            inf_seen,
        })
    }

    /// Decodes a KV_CACHE message onto this model's device (the SDK's
    /// `AVPContext.from_bytes` plus its model check): [`LatentContext::import`]
    /// with this engine's model and hash.
    pub fn import_context(&self, bytes: &[u8], headroom: usize) -> Result<LatentContext> {
        LatentContext::import(&self.model, self.model_hash(), bytes, headroom)
    }

    /// An import of a chunked context onto this model's device, chunk by
    /// chunk ([`ChunkImport`], AVP-ENG-41).
    pub fn chunk_import(&self, headroom: usize) -> ChunkImport<'_> {
        ChunkImport::new(
            &self.model,
            self.model_hash(),
            headroom,
            AssemblyLimits::default(),
        )
    }

    /// Imports the chunk messages `reader` yields back to back, reading the
    /// next while the last is uploaded ([`crate::chunked::import_stream`],
    /// AVP-ENG-42); `progress` sees every accepted chunk.
    pub fn import_chunk_stream(
        &self,
        reader: &mut (dyn std::io::Read + Send),
        headroom: usize,
        progress: &mut dyn FnMut(ChunkProgress),
    ) -> Result<LatentContext> {
        crate::chunked::import_stream(&self.model, self.model_hash(), reader, headroom, progress)
    }

    /// Any received context message: a KV_CACHE message is imported
    /// ([`Engine::import_context`]), a quantized KV_CACHE_EXT one is
    /// dequantized on the device ([`crate::kv_quant::import`]), a HIDDEN_STATE message projected for
    /// this model primes a fresh cache ([`LatentContext::import_hidden_state`]).
    /// The receiver continues from whatever arrived (AVP-PIPE-1).
    pub fn import_message(&self, bytes: &[u8], headroom: usize) -> Result<LatentContext> {
        // Header and metadata only (AVP-WIRE-21): the import decodes and
        // checksums the payload once, whatever its size.
        let peeked = avp_codec::peek(bytes).map_err(EngineError::Wire)?;
        // One chunk of a chunked context: a context of one chunk imports,
        // digest checked; any other is `incomplete_context` naming the
        // missing chunks, not a shape error about a partial cache (AVP-ENG-41).
        if avp_codec::chunk::descriptor_of(&peeked.metadata)
            .map_err(EngineError::Wire)?
            .is_some()
        {
            let mut import = self.chunk_import(headroom);
            import.push(bytes)?;
            return import.finish();
        }
        match peeked.metadata.payload_type {
            avp_codec::PayloadType::HiddenState => LatentContext::import_hidden_state(
                &self.model,
                self.model_hash(),
                self.model_family(),
                bytes,
            ),
            avp_codec::PayloadType::KvCacheExt => {
                crate::kv_quant::import(&self.model, self.model_hash(), bytes, headroom)
            }
            _ => self.import_context(bytes, headroom),
        }
    }

    /// Feeds projected embeddings into a fresh cache and returns a context of
    /// this model: [`LatentContext::prime`] with this engine's model and identity.
    pub fn prime_with_embeddings(
        &self,
        embeds: &Tensor,
        num_steps: usize,
    ) -> Result<LatentContext> {
        LatentContext::prime(
            &self.model,
            self.model_hash(),
            self.model_family(),
            embeds,
            num_steps,
        )
    }

    /// The SDK's `generate()`: render and prefill the prompt after the
    /// context's KV-cache (if any), then decode (AVP-ENG-8). The context is
    /// not consumed (its cache is copied).
    pub fn generate(
        &self,
        prompt: &str,
        context: Option<&LatentContext>,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        let _guard = tch::no_grad_guard();
        let ids = self.prompt.prompt_ids(prompt)?;
        let mut cache = match context {
            Some(ctx) => {
                self.check_context(ctx)?;
                ctx.cache.try_clone()?
            }
            None => self.model.new_cache(0)?,
        };
        cache.reserve(
            cache
                .seq_len()
                .saturating_add(ids.len())
                .saturating_add(opts.max_new_tokens),
        )?;
        let tokens = self.tokens(&ids)?;
        self.decode_loop(Input::Tokens(&tokens), &mut cache, opts)
    }

    /// Generates after feeding `embeds` (`[1, n, D]`) into `cache`; used for
    /// primed cross-model generation and by [`Engine::generate`].
    pub fn decode_loop(
        &self,
        first: Input<'_>,
        cache: &mut KvCache,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        let _guard = tch::no_grad_guard();
        if let Sampling::Sample {
            temperature, top_p, ..
        } = opts.sampling
        {
            if !(temperature > 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
                return Err(EngineError::InvalidArgument(format!(
                    "temperature must be > 0 and top_p in (0, 1] (got {temperature}, {top_p})"
                )));
            }
        }
        let mut stop: Vec<u32> = self.eos.clone();
        stop.extend(opts.stop_tokens.iter().flatten().copied());
        // The SDK's reproducibility recipe: torch.manual_seed, then generate;
        // the generator is ours until the loop ends (crate::rng).
        let mut rng = match opts.sampling {
            Sampling::Sample { seed, .. } => Some(SeededRng::seeded_u64(seed)?),
            Sampling::Greedy => None,
        };
        let mut out: Vec<u32> = Vec::new();
        let mut stopped = false;
        let mut hidden = self.model.forward(first, cache)?;
        while out.len() < opts.max_new_tokens {
            let n = hidden.size().get(1).copied().unwrap_or(1);
            let logits = self
                .model
                .logits(&hidden.f_select(1, n - 1)?)?
                .f_to_kind(Kind::Float)?; // [1, V]
            let next = match (opts.sampling, rng.as_mut()) {
                (
                    Sampling::Sample {
                        temperature,
                        top_p,
                        top_k,
                        ..
                    },
                    Some(rng),
                ) => sample(&logits, temperature, top_k, top_p, rng)?,
                _ => logits.f_argmax(-1, false)?,
            };
            let id = next.f_int64_value(&[0])?;
            let id = u32::try_from(id)
                .map_err(|_| EngineError::InvalidArgument("token id out of range".into()))?;
            out.push(id);
            if stop.contains(&id) {
                stopped = true;
                break;
            }
            if out.len() == opts.max_new_tokens {
                break;
            }
            let t = next.f_reshape([1, 1])?;
            hidden = self.model.forward(Input::Tokens(&t), cache)?;
        }
        let text = python_strip(&self.prompt.decode(&out)?).to_owned();
        Ok(Generation {
            text,
            token_ids: out,
            stopped,
        })
    }
}

/// Python's `str.strip()`: Unicode White_Space plus U+001C..U+001F, which
/// Rust's `str::trim` keeps (AVP-ENG-8).
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strip_also_strips_unit_separators() {
        assert_eq!(python_strip("\u{1c}\u{1f} a b\u{1e}\n"), "a b");
        assert_eq!(python_strip("\u{a0}x\u{3000}"), "x");
        assert_eq!(
            python_strip("\u{200b}x"),
            "\u{200b}x",
            "ZWSP is not whitespace in Python"
        );
    }

    #[test]
    fn devices_and_dtypes_parse_or_fail_typed() {
        assert_eq!(parse_device("cuda:1").unwrap(), Device::Cuda(1));
        assert!(matches!(
            parse_device("tpu"),
            Err(EngineError::InvalidArgument(_))
        ));
        assert_eq!(parse_kind("bf16").unwrap(), Kind::BFloat16);
        assert!(matches!(
            parse_kind("int4"),
            Err(EngineError::InvalidArgument(_))
        ));
    }
}

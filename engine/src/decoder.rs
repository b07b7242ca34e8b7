//! The shared decoder: RMSNorm, RoPE, grouped-query attention, gated MLP,
//! and the model that stacks them (AVP-ENG-1, AVP-ENG-3).
//!
//! Numerics follow transformers' eager/SDPA path op for op so results agree
//! with the Python SDK to float32 rounding: RMSNorm in float32 then cast back,
//! cos/sin from `position × inv_freq` in float32, attention through
//! `scaled_dot_product_attention` with scale `head_dim^-0.5`. Only fallible
//! `f_*` tch calls are used; callers hold a `no_grad` guard.

use tch::{Device, Kind, Tensor};

use crate::cache::{KvCache, to_i64};
use crate::config::{DecoderConfig, RopeScaling};
use crate::error::{EngineError, Result};
use crate::rng::SeededRng;
use crate::weights::Weights;

/// A linear layer `y = x Wᵀ + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(
        w: &mut Weights,
        prefix: &str,
        out_dim: usize,
        in_dim: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = w.take(&format!("{prefix}.weight"), &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.take(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// RMSNorm exactly as transformers computes it.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn load(w: &mut Weights, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.take(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.f_kind()?;
        let xf = x.f_to_kind(Kind::Float)?;
        let var = xf
            .f_pow_tensor_scalar(2)?
            .f_mean_dim(-1, true, Kind::Float)?;
        let normed = xf.f_mul(&var.f_add_scalar(self.eps)?.f_rsqrt()?)?;
        Ok(self.weight.f_mul(&normed.f_to_kind(kind)?)?)
    }
}

/// RoPE inverse frequencies (float32, on the model's device).
#[derive(Debug)]
pub(crate) struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    fn new(cfg: &DecoderConfig, device: Device) -> Result<Self> {
        let dim = to_i64(cfg.head_dim)?;
        // 1 / base^(arange(0, dim, 2) / dim), in float32 as transformers does.
        let exps = Tensor::f_arange_start_step(0, dim, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(dim as f64)?;
        let mut inv = Tensor::f_pow_scalar(cfg.rope_theta, &exps)?.f_reciprocal()?;
        match cfg.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv = inv.f_div_scalar(factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv
                    .f_reciprocal()?
                    .f_mul_scalar(2.0 * std::f64::consts::PI)?;
                let scaled = inv.f_div_scalar(factor)?;
                let inv_l = scaled.f_where_self(&wavelen.f_gt(low_wavelen)?, &inv)?;
                let smooth = wavelen
                    .f_reciprocal()?
                    .f_mul_scalar(old)?
                    .f_sub_scalar(low_freq_factor)?
                    .f_div_scalar(high_freq_factor - low_freq_factor)?;
                // (1 - s) * inv_l / factor + s * inv_l
                let smoothed = smooth
                    .f_neg()?
                    .f_add_scalar(1.0)?
                    .f_mul(&inv_l)?
                    .f_div_scalar(factor)?
                    .f_add(&smooth.f_mul(&inv_l)?)?;
                let medium = wavelen
                    .f_lt(high_wavelen)?
                    .f_logical_not()?
                    .f_logical_and(&wavelen.f_gt(low_wavelen)?.f_logical_not()?)?;
                inv = smoothed.f_where_self(&medium, &inv_l)?;
            }
        }
        Ok(Self { inv_freq: inv })
    }

    /// cos and sin `[n, head_dim]` for positions `offset..offset+n`, in `kind`.
    fn cos_sin(&self, offset: i64, n: i64, kind: Kind) -> Result<(Tensor, Tensor)> {
        let device = self.inv_freq.device();
        let pos = Tensor::f_arange_start(offset, offset + n, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?;
        let freqs = pos.f_unsqueeze(-1)?.f_mul(&self.inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok((emb.f_cos()?.f_to_kind(kind)?, emb.f_sin()?.f_to_kind(kind)?))
    }
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.f_narrow(-1, 0, half)?;
    let x2 = x.f_narrow(-1, half, half)?;
    Ok(Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(x.f_mul(cos)?.f_add(&rotate_half(x)?.f_mul(sin)?)?)
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

/// What a forward pass consumes.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Token ids, int64 `[1, n]`.
    Tokens(&'a Tensor),
    /// Input embeddings `[1, n, hidden]` in the model's dtype.
    Embeds(&'a Tensor),
}

/// A loaded (or randomly initialised) decoder-only model.
#[derive(Debug)]
pub struct Decoder {
    cfg: DecoderConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    /// `None` when tied to `embed`.
    lm_head: Option<Tensor>,
    rope: Rope,
    kind: Kind,
    device: Device,
}

impl Decoder {
    /// Builds the model from checkpoint weights (already on `device`, as `kind`).
    pub(crate) fn from_weights(
        cfg: DecoderConfig,
        mut w: Weights,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (qd, kvd) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let eps = cfg.rms_norm_eps;
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(RmsNorm::load(
                        &mut w,
                        &format!("{p}.self_attn.q_norm"),
                        hd,
                        eps,
                    )?),
                    Some(RmsNorm::load(
                        &mut w,
                        &format!("{p}.self_attn.k_norm"),
                        hd,
                        eps,
                    )?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm: RmsNorm::load(&mut w, &format!("{p}.input_layernorm"), d, eps)?,
                attn: Attention {
                    q: Linear::load(
                        &mut w,
                        &format!("{p}.self_attn.q_proj"),
                        qd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    k: Linear::load(
                        &mut w,
                        &format!("{p}.self_attn.k_proj"),
                        kvd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    v: Linear::load(
                        &mut w,
                        &format!("{p}.self_attn.v_proj"),
                        kvd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    o: Linear::load(&mut w, &format!("{p}.self_attn.o_proj"), d, qd, cfg.o_bias)?,
                    q_norm,
                    k_norm,
                    heads: to_i64(cfg.num_heads)?,
                    kv_heads: to_i64(cfg.num_kv_heads)?,
                    head_dim: to_i64(hd)?,
                },
                post_norm: RmsNorm::load(&mut w, &format!("{p}.post_attention_layernorm"), d, eps)?,
                mlp: Mlp {
                    gate: Linear::load(
                        &mut w,
                        &format!("{p}.mlp.gate_proj"),
                        cfg.intermediate_size,
                        d,
                        cfg.mlp_bias,
                    )?,
                    up: Linear::load(
                        &mut w,
                        &format!("{p}.mlp.up_proj"),
                        cfg.intermediate_size,
                        d,
                        cfg.mlp_bias,
                    )?,
                    down: Linear::load(
                        &mut w,
                        &format!("{p}.mlp.down_proj"),
                        d,
                        cfg.intermediate_size,
                        cfg.mlp_bias,
                    )?,
                },
            });
        }
        let norm = RmsNorm::load(&mut w, "model.norm", d, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(w.take("lm_head.weight", &[cfg.vocab_size, d])?)
        };
        let rope = Rope::new(&cfg, device)?;
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            kind,
            device,
        })
    }

    /// The decoder description.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Element type of weights and activations.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Device of weights and activations.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Input embedding matrix `[vocab, hidden]`.
    pub fn input_embeddings(&self) -> &Tensor {
        &self.embed
    }

    /// Output (lm_head) matrix `[vocab, hidden]`; the input embeddings when tied.
    pub fn output_embeddings(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// An empty cache sized for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.cfg, capacity, self.kind, self.device)
    }

    /// Runs `input` at positions `cache.seq_len()..`, appending to the cache.
    /// Returns the final-norm hidden states `[1, n, hidden]`.
    pub fn forward(&self, input: Input<'_>, cache: &mut KvCache) -> Result<Tensor> {
        let mut x = match input {
            Input::Tokens(ids) => {
                let flat = ids.f_reshape([-1])?;
                let n = flat.size().first().copied().unwrap_or(0);
                self.embed.f_index_select(0, &flat)?.f_reshape([1, n, -1])?
            }
            Input::Embeds(e) => e.f_to_kind(self.kind)?,
        };
        let size = x.size();
        let n = match size.as_slice() {
            [1, n, d] if usize::try_from(*d).ok() == Some(self.cfg.hidden_size) && *n > 0 => *n,
            _ => {
                return Err(EngineError::InvalidArgument(format!(
                    "forward input has shape {size:?}"
                )));
            }
        };
        let n_us = usize::try_from(n)
            .map_err(|_| EngineError::InvalidArgument("negative length".into()))?;
        let offset = cache.seq_len();
        let total = offset.checked_add(n_us).ok_or(EngineError::CacheFull {
            capacity: usize::MAX,
            needed: usize::MAX,
        })?;
        if total > self.cfg.max_position_embeddings {
            return Err(EngineError::CacheFull {
                capacity: self.cfg.max_position_embeddings,
                needed: total,
            });
        }
        cache.reserve(total)?;
        let off = to_i64(offset)?;
        let (cos, sin) = self.rope.cos_sin(off, n, self.kind)?;
        // Causal masking: a fresh prefill uses SDPA's causal flag; a
        // multi-token chunk after cached positions needs an explicit
        // [n, offset+n] mask (True = attend); one new token sees everything.
        // With a sliding window w (Mistral) a query at position p also
        // drops keys at positions <= p - w, once the sequence is that long.
        let window = self
            .cfg
            .sliding_window
            .map(to_i64)
            .transpose()?
            .filter(|&w| off + n > w);
        let mask = if (n > 1 && off > 0) || window.is_some() {
            let cols = Tensor::f_arange(off + n, (Kind::Int64, self.device))?.f_unsqueeze(0)?;
            let rows =
                Tensor::f_arange_start(off, off + n, (Kind::Int64, self.device))?.f_unsqueeze(1)?;
            let mut allowed = cols.f_le_tensor(&rows)?;
            if let Some(w) = window {
                allowed = allowed.f_logical_and(&cols.f_gt_tensor(&rows.f_sub_scalar(w)?)?)?;
            }
            Some(allowed)
        } else {
            None
        };
        let causal = n > 1 && off == 0 && mask.is_none();
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let a = layer
                .attn
                .forward(&h, &cos, &sin, cache, i, offset, mask.as_ref(), causal)?;
            x = x.f_add(&a)?;
            let h = layer.post_norm.forward(&x)?;
            x = x.f_add(&layer.mlp.forward(&h)?)?;
        }
        cache.advance(n_us);
        self.norm.forward(&x)
    }

    /// Logits `[.., vocab]` of final-norm hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(hidden.f_linear::<Tensor>(self.output_embeddings(), None)?)
    }
}

impl Attention {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        offset: usize,
        mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let n = x.size().get(1).copied().unwrap_or(0);
        let mut q = self
            .q
            .forward(x)?
            .f_view([1, n, self.heads, self.head_dim])?;
        let mut k = self
            .k
            .forward(x)?
            .f_view([1, n, self.kv_heads, self.head_dim])?;
        let v = self
            .v
            .forward(x)?
            .f_view([1, n, self.kv_heads, self.head_dim])?
            .f_transpose(1, 2)?;
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = apply_rope(&q.f_transpose(1, 2)?, cos, sin)?;
        let k = apply_rope(&k.f_transpose(1, 2)?, cos, sin)?;
        let (keys, values) = cache.write(layer, offset, &k, &v)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = Tensor::f_scaled_dot_product_attention(
            &q,
            &keys,
            &values,
            mask,
            0.0,
            causal,
            scale,
            self.heads != self.kv_heads,
        )?;
        let out = out
            .f_transpose(1, 2)?
            .f_reshape([1, n, self.heads * self.head_dim])?;
        self.o.forward(&out)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate.forward(x)?.f_silu()?;
        self.down.forward(&g.f_mul(&self.up.forward(x)?)?)
    }
}

/// Random weights for a config alone (`--random-weights`): normal(0, 0.02)
/// matrices as transformers initialises them, unit norms, zero biases.
pub(crate) fn random_weights(
    cfg: &DecoderConfig,
    kind: Kind,
    device: Device,
    // Unread: the randn draws below come from the generator this holds.
    _rng: &mut SeededRng,
) -> Result<Weights> {
    let mut names: Vec<(String, Vec<usize>, f64)> = Vec::new();
    let (d, hd) = (cfg.hidden_size, cfg.head_dim);
    let (qd, kvd, ff) = (
        cfg.num_heads * hd,
        cfg.num_kv_heads * hd,
        cfg.intermediate_size,
    );
    names.push((
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, d],
        0.02,
    ));
    for i in 0..cfg.num_layers {
        let p = format!("model.layers.{i}");
        for (n, o, inp, b) in [
            ("self_attn.q_proj", qd, d, cfg.qkv_bias),
            ("self_attn.k_proj", kvd, d, cfg.qkv_bias),
            ("self_attn.v_proj", kvd, d, cfg.qkv_bias),
            ("self_attn.o_proj", d, qd, cfg.o_bias),
            ("mlp.gate_proj", ff, d, cfg.mlp_bias),
            ("mlp.up_proj", ff, d, cfg.mlp_bias),
            ("mlp.down_proj", d, ff, cfg.mlp_bias),
        ] {
            names.push((format!("{p}.{n}.weight"), vec![o, inp], 0.02));
            if b {
                names.push((format!("{p}.{n}.bias"), vec![o], 0.0));
            }
        }
        names.push((format!("{p}.input_layernorm.weight"), vec![d], 1.0));
        names.push((format!("{p}.post_attention_layernorm.weight"), vec![d], 1.0));
        if cfg.qk_norm {
            names.push((format!("{p}.self_attn.q_norm.weight"), vec![hd], 1.0));
            names.push((format!("{p}.self_attn.k_norm.weight"), vec![hd], 1.0));
        }
    }
    names.push(("model.norm.weight".into(), vec![d], 1.0));
    if !cfg.tie_word_embeddings {
        names.push(("lm_head.weight".into(), vec![cfg.vocab_size, d], 0.02));
    }
    let mut tensors = Vec::with_capacity(names.len());
    for (name, shape, std) in names {
        let shape: Vec<i64> = shape.into_iter().map(to_i64).collect::<Result<_>>()?;
        // Norm weights are ones, biases zeros, matrices N(0, std).
        let t = if std == 1.0 {
            Tensor::f_ones(shape.as_slice(), (kind, device))?
        } else if std == 0.0 {
            Tensor::f_zeros(shape.as_slice(), (kind, device))?
        } else {
            Tensor::f_randn(shape.as_slice(), (Kind::Float, device))?
                .f_mul_scalar(std)?
                .f_to_kind(kind)?
        };
        tensors.push((name, t));
    }
    Ok(Weights::from_tensors(tensors))
}

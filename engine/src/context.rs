//! [`LatentContext`]: what `think()` produces and `generate()` consumes, and
//! its wire form, the SDK's `AVPContext.to_bytes()` (AVP-ENG-7).
//!
//! The message is a KV_CACHE AVP message whose tensor bytes are the KV-cache
//! inner format v1 (17-byte `<IIIIB` header, then K₀ V₀ K₁ V₁ … each
//! `[kv_heads, seq_len, head_dim]` little-endian in the cache's dtype), with
//! metadata `hidden_dim`, `num_layers`, `dtype` = the cache dtype, and `extra`
//! = {`model_hash`, `model_family`, `num_steps` (decimal string)}.
//!
//! Import checks, before allocating anything, that the declared sizes add up
//! exactly to the bytes present, that the model hash matches (else
//! [`EngineError::IncompatibleContext`], as the SDK refuses such a context)
//! and that layers/heads/head_dim fit the model; it then copies the cache
//! onto the model's device in the model's dtype.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::cache::{KvCache, to_i64};
use crate::decoder::{Decoder, Input};
use crate::error::{EngineError, Result};
use crate::wire::{
    KV_HEADER_LEN, KvDtype, KvHeader, PayloadKind, WireMessage, WireMeta, decode_message,
    element_size, encode_message,
};

/// A latent context: a KV-cache plus the identity of the model that made it.
#[derive(Debug)]
pub struct LatentContext {
    /// The KV-cache (on the model's device).
    pub cache: KvCache,
    /// Hash of the producing model's config.
    pub model_hash: String,
    /// Producing model's family (`model_type`).
    pub model_family: String,
    /// Latent steps accumulated over all `think` calls.
    pub num_steps: usize,
    /// Producing model's hidden size.
    pub hidden_dim: usize,
    /// Producing model's layer count.
    pub num_layers: usize,
    /// Final-norm hidden state `[1, D]` after the last step (not serialized, as in the SDK).
    pub last_hidden: Option<Tensor>,
    /// Steps the latest `think` call actually ran (fewer than asked after a NaN).
    pub steps_taken: usize,
    /// A hidden state of the latest `think` held a NaN (AVP-ENG-9: callers SHOULD warn).
    pub nan_seen: bool,
    /// A hidden state of the latest `think` held an Inf.
    pub inf_seen: bool,
}

pub(crate) fn wire_dtype(kind: Kind) -> Result<KvDtype> {
    match kind {
        Kind::Float => Ok(KvDtype::Float32),
        Kind::Half => Ok(KvDtype::Float16),
        Kind::BFloat16 => Ok(KvDtype::Bfloat16),
        other => Err(EngineError::Unsupported(format!(
            "cache dtype {other:?} has no wire code"
        ))),
    }
}

pub(crate) fn kind_of(d: KvDtype) -> Result<Kind> {
    match d {
        KvDtype::Float32 => Ok(Kind::Float),
        KvDtype::Float16 => Ok(Kind::Half),
        KvDtype::Bfloat16 => Ok(Kind::BFloat16),
        other => Err(EngineError::InvalidContext(format!(
            "KV dtype {} is not supported",
            other.name()
        ))),
    }
}

pub(crate) fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| EngineError::InvalidArgument(format!("{what} {n} exceeds u32")))
}

/// The `extra` entries that name a context's model and steps (AVP-ENG-7),
/// in a single message and in every chunk alike.
pub(crate) fn identity_extra(ctx: &LatentContext) -> BTreeMap<String, String> {
    [
        ("model_hash".to_owned(), ctx.model_hash.clone()),
        ("model_family".to_owned(), ctx.model_family.clone()),
        ("num_steps".to_owned(), ctx.num_steps.to_string()),
    ]
    .into_iter()
    .collect()
}

impl LatentContext {
    /// Filled KV positions.
    pub fn seq_len(&self) -> usize {
        self.cache.seq_len()
    }

    /// The KV-cache inner format v1 bytes: all layers copied to the host as
    /// one slice of the cache (AVP-ENG-51), behind the KV header.
    pub fn kv_payload(&self) -> Result<Vec<u8>> {
        let c = &self.cache;
        let header = KvHeader {
            num_layers: u32_of(c.num_layers(), "num_layers")?,
            num_kv_heads: u32_of(c.num_kv_heads(), "num_kv_heads")?,
            head_dim: u32_of(c.head_dim(), "head_dim")?,
            seq_len: u32_of(c.seq_len(), "seq_len")?,
            dtype: wire_dtype(c.kind())?,
        };
        let layers = 0..c.num_layers();
        let total = c
            .range_bytes(&layers)?
            .checked_add(KV_HEADER_LEN)
            .ok_or_else(|| EngineError::InvalidArgument("KV-cache too large".into()))?;
        let mut out = vec![0u8; total];
        let Some((head, body)) = out.split_at_mut_checked(KV_HEADER_LEN) else {
            return Err(EngineError::InvalidArgument("KV layout overflow".into()));
        };
        head.copy_from_slice(&header.to_bytes());
        c.copy_range_to(layers, body)?;
        Ok(out)
    }

    /// The SDK's `AVPContext.to_bytes()`: a KV_CACHE AVP message.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let payload = self.kv_payload()?;
        let extra = identity_extra(self);
        let meta = WireMeta {
            hidden_dim: u32_of(self.hidden_dim, "hidden_dim")?,
            num_layers: u32_of(self.num_layers, "num_layers")?,
            payload: PayloadKind::KvCache,
            dtype: wire_dtype(self.cache.kind())?,
            tensor_shape: Vec::new(),
            avp_map_id: String::new(),
            extra,
        };
        encode_message(&meta, &payload)
    }
}

impl LatentContext {
    /// Decodes a KV_CACHE message onto `model`'s device (the SDK's
    /// `AVPContext.from_bytes` plus its model check against `model_hash`).
    /// `headroom` extra positions are preallocated for the prompt and steps
    /// that follow. [`crate::Engine::import_context`] calls this.
    pub fn import(
        model: &Decoder,
        model_hash: &str,
        bytes: &[u8],
        headroom: usize,
    ) -> Result<LatentContext> {
        let _guard = tch::no_grad_guard();
        let (msg, num_steps) = decode_for_model(bytes, PayloadKind::KvCache, model_hash)?;
        let tensor: &[u8] = &msg.tensor;
        let header = KvHeader::parse(tensor).map_err(EngineError::Wire)?;
        check_kv_shape(
            model,
            header.num_layers,
            header.num_kv_heads,
            header.head_dim,
        )?;
        let cfg = model.config();
        let per = header
            .tensor_bytes()
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| EngineError::InvalidContext("KV sizes overflow".into()))?;
        let expected = per
            .checked_mul(2)
            .and_then(|b| b.checked_mul(header.num_layers as usize))
            .and_then(|b| b.checked_add(KV_HEADER_LEN));
        if expected != Some(tensor.len()) {
            return Err(EngineError::InvalidContext(format!(
                "KV payload is {} bytes, its header declares {}",
                tensor.len(),
                expected.map_or_else(|| "an overflowing size".to_owned(), |e| e.to_string())
            )));
        }
        let seq = header.seq_len as usize;
        if seq > cfg.max_position_embeddings {
            return Err(EngineError::CacheFull {
                capacity: cfg.max_position_embeddings,
                needed: seq,
            });
        }
        let mut cache = model.new_cache(seq.saturating_add(headroom))?;
        let shape = [
            1,
            to_i64(cfg.num_kv_heads)?,
            to_i64(seq)?,
            to_i64(cfg.head_dim)?,
        ];
        let src_kind = kind_of(header.dtype)?;
        let body = tensor.get(KV_HEADER_LEN..).unwrap_or_default();
        // One K or V at a time: the host holds one of them besides the
        // message (AVP-ENG-51), and a buffer that small is reused by the
        // allocator instead of being mapped afresh for every layer.
        for (layer, pair) in body.chunks_exact(per.max(1).saturating_mul(2)).enumerate() {
            let (k, v) = pair.split_at(per);
            let kt = Tensor::f_from_data_size(k, &shape, src_kind)?;
            let vt = Tensor::f_from_data_size(v, &shape, src_kind)?;
            cache.load_layer(layer, &kt, &vt)?;
        }
        cache.set_seq_len(seq);
        Ok(LatentContext::received(
            cache, model_hash, &msg.meta, num_steps,
        ))
    }

    /// A context whose cache was just filled from a received message: the
    /// identity fields come from its metadata, nothing has run on it yet.
    pub(crate) fn received(
        cache: KvCache,
        model_hash: &str,
        meta: &WireMeta,
        num_steps: usize,
    ) -> LatentContext {
        LatentContext {
            cache,
            model_hash: model_hash.to_owned(),
            model_family: meta.extra.get("model_family").cloned().unwrap_or_default(),
            num_steps,
            hidden_dim: meta.hidden_dim as usize,
            num_layers: meta.num_layers as usize,
            last_hidden: None,
            steps_taken: 0,
            nan_seen: false,
            inf_seen: false,
        }
    }

    /// Feeds projected embeddings `[D]`, `[n, D]` or `[1, n, D]` into a
    /// fresh cache of `model` and returns a context of that model (the SDK's
    /// KV priming, AVP-ENG-13). [`crate::Engine::prime_with_embeddings`]
    /// calls this.
    pub fn prime(
        model: &Decoder,
        model_hash: &str,
        model_family: &str,
        embeds: &Tensor,
        num_steps: usize,
    ) -> Result<LatentContext> {
        let _guard = tch::no_grad_guard();
        let c = model.config();
        let d = to_i64(c.hidden_size)?;
        let e = embeds
            .f_reshape([1, -1, d])?
            .f_to_device(model.device())?
            .f_to_kind(model.kind())?;
        let n = usize::try_from(e.size().get(1).copied().unwrap_or(0)).unwrap_or(0);
        let mut cache = model.new_cache(n)?;
        let h = model.forward(Input::Embeds(&e), &mut cache)?;
        let last = h.f_select(1, h.size().get(1).copied().unwrap_or(1) - 1)?;
        Ok(LatentContext {
            cache,
            model_hash: model_hash.to_owned(),
            model_family: model_family.to_owned(),
            num_steps,
            hidden_dim: c.hidden_size,
            num_layers: c.num_layers,
            last_hidden: Some(last),
            steps_taken: 0,
            nan_seen: false,
            inf_seen: false,
        })
    }
}

/// Decodes `bytes` as a `kind` message of the model named `model_hash`
/// (AVP-ENG-11): the message and its `num_steps`. KV_CACHE and
/// KV_CACHE_EXT imports share it.
pub(crate) fn decode_for_model<'a>(
    bytes: &'a [u8],
    kind: PayloadKind,
    model_hash: &str,
) -> Result<(WireMessage<'a>, usize)> {
    let msg = decode_message(bytes)?;
    if msg.meta.payload != kind {
        return Err(EngineError::InvalidContext(format!(
            "message is not a {} payload",
            kind.name()
        )));
    }
    let context_hash = msg
        .meta
        .extra
        .get("model_hash")
        .cloned()
        .unwrap_or_default();
    if context_hash != model_hash {
        return Err(EngineError::IncompatibleContext {
            context_hash,
            model_hash: model_hash.to_owned(),
        });
    }
    let num_steps = num_steps_of(&msg.meta.extra)?;
    Ok((msg, num_steps))
}

/// A KV-cache of `layers` x `heads` x `head_dim` fits `model`, or a typed
/// error naming both shapes (AVP-ENG-27).
pub(crate) fn check_kv_shape(
    model: &Decoder,
    layers: u32,
    heads: u32,
    head_dim: u32,
) -> Result<()> {
    let cfg = model.config();
    if layers as usize != cfg.num_layers
        || heads as usize != cfg.num_kv_heads
        || head_dim as usize != cfg.head_dim
    {
        return Err(EngineError::InvalidContext(format!(
            "KV-cache of {layers} layers x {heads} heads x {head_dim} does not fit this model ({} x {} x {})",
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
        )));
    }
    Ok(())
}

/// What a received message's `extra.num_steps` says (absent = 0).
pub(crate) fn num_steps_of(extra: &BTreeMap<String, String>) -> Result<usize> {
    match extra.get("num_steps") {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<usize>()
            .map_err(|_| EngineError::InvalidContext(format!("num_steps {s:?} is not a count"))),
    }
}

impl LatentContext {
    /// Decodes a HIDDEN_STATE message projected for `model` (what `avp
    /// project` writes, AVP-ENG-17) and primes a fresh cache with it, as the
    /// SDK's `generate(..., cross_model=True)` does (AVP-PIPE-1).
    ///
    /// Checked before any tensor is built: the target identity (`extra.model_hash`
    /// and the target half of `avp_map_id` name this model, else
    /// [`EngineError::IncompatibleContext`]), `hidden_dim` and `tensor_shape`
    /// (`[D]` or `[n, D]` with D this model's width) and the payload length.
    pub fn import_hidden_state(
        model: &Decoder,
        model_hash: &str,
        model_family: &str,
        bytes: &[u8],
    ) -> Result<LatentContext> {
        let msg = decode_message(bytes)?;
        if msg.meta.payload != PayloadKind::HiddenState {
            return Err(EngineError::InvalidContext(
                "message is not a HIDDEN_STATE payload".into(),
            ));
        }
        let meta = &msg.meta;
        let context_hash = meta.extra.get("model_hash").cloned().unwrap_or_default();
        if context_hash != model_hash {
            return Err(EngineError::IncompatibleContext {
                context_hash,
                model_hash: model_hash.to_owned(),
            });
        }
        // `{src16}_{tgt16}`: a vector projected for another target must not
        // be primed here even if its extra map was edited.
        let ours = model_hash.get(..16).unwrap_or(model_hash);
        match meta.avp_map_id.split_once('_') {
            Some((_, target)) if target == ours => {}
            _ => {
                return Err(EngineError::InvalidContext(format!(
                    "avp_map_id {:?} does not name this model ({ours}) as the projection target",
                    meta.avp_map_id
                )));
            }
        }
        let width = model.config().hidden_size;
        let rows = match meta.tensor_shape.as_slice() {
            [d] if *d as usize == width => 1,
            [n, d] if *d as usize == width && *n > 0 => *n as usize,
            other => {
                return Err(EngineError::InvalidContext(format!(
                    "hidden state of shape {other:?} does not fit this model's width {width}"
                )));
            }
        };
        if meta.hidden_dim as usize != width {
            return Err(EngineError::InvalidContext(format!(
                "hidden_dim {} is not this model's width {width}",
                meta.hidden_dim
            )));
        }
        let capacity = model.config().max_position_embeddings;
        if rows > capacity {
            return Err(EngineError::CacheFull {
                capacity,
                needed: rows,
            });
        }
        let expected = rows
            .checked_mul(width)
            .and_then(|n| n.checked_mul(element_size(meta.dtype)));
        if expected != Some(msg.tensor.len()) {
            return Err(EngineError::InvalidContext(format!(
                "hidden-state payload is {} bytes, its shape declares {}",
                msg.tensor.len(),
                expected.map_or_else(|| "an overflowing size".to_owned(), |e| e.to_string())
            )));
        }
        let num_steps = num_steps_of(&meta.extra)?;
        let embeds = Tensor::f_from_data_size(
            &msg.tensor,
            &[to_i64(rows)?, to_i64(width)?],
            kind_of(meta.dtype)?,
        )?;
        Self::prime(model, model_hash, model_family, &embeds, num_steps)
    }
}

//! The explicit, preallocated KV cache passed `&mut` into every forward pass
//! (AVP-ENG-3).
//!
//! Per layer one K and one V tensor of shape `[1, kv_heads, capacity,
//! head_dim]` (keys after RoPE, as transformers caches them). A forward pass
//! writes its new positions in place with `narrow(..).copy_(..)` and attends
//! over `narrow(2, 0, seq_len)`; nothing is concatenated per step. When a
//! request needs more room the buffers are reallocated once to the larger
//! size (amortised by doubling).

use tch::{Device, Kind, Tensor};

use crate::config::DecoderConfig;
use crate::error::{EngineError, Result};

/// Keys and values of every layer, plus how many positions are filled.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    seq_len: usize,
    capacity: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kind: Kind,
    device: Device,
}

fn zeros(
    kv_heads: usize,
    cap: usize,
    head_dim: usize,
    kind: Kind,
    device: Device,
) -> Result<Tensor> {
    let shape = [1, to_i64(kv_heads)?, to_i64(cap)?, to_i64(head_dim)?];
    Ok(Tensor::f_zeros(shape, (kind, device))?)
}

pub(crate) fn to_i64(n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| EngineError::InvalidArgument(format!("{n} does not fit in i64")))
}

impl KvCache {
    /// An empty cache for `cfg` with room for `capacity` positions.
    pub fn new(cfg: &DecoderConfig, capacity: usize, kind: Kind, device: Device) -> Result<Self> {
        let capacity = capacity.max(1);
        let mut keys = Vec::with_capacity(cfg.num_layers);
        let mut values = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            keys.push(zeros(
                cfg.num_kv_heads,
                capacity,
                cfg.head_dim,
                kind,
                device,
            )?);
            values.push(zeros(
                cfg.num_kv_heads,
                capacity,
                cfg.head_dim,
                kind,
                device,
            )?);
        }
        Ok(Self {
            keys,
            values,
            seq_len: 0,
            capacity,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            kind,
            device,
        })
    }

    /// Filled positions.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Allocated positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.keys.len()
    }

    /// KV heads per layer.
    pub fn num_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Element type of the cache.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Device the cache lives on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Drops positions past `len` (they are overwritten by later writes).
    pub fn truncate(&mut self, len: usize) {
        self.seq_len = self.seq_len.min(len);
    }

    /// Makes room for `needed` positions in total, keeping the filled ones.
    pub fn reserve(&mut self, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed.max(self.capacity.saturating_mul(2));
        let filled = to_i64(self.seq_len)?;
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let grown = zeros(
                self.num_kv_heads,
                new_cap,
                self.head_dim,
                self.kind,
                self.device,
            )?;
            if filled > 0 {
                grown
                    .f_narrow(2, 0, filled)?
                    .f_copy_(&t.f_narrow(2, 0, filled)?)?;
            }
            *t = grown;
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// The filled part of layer `layer`'s keys and values, `[1, kv_heads, seq_len, head_dim]` views.
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = self.layer_buffers(layer)?;
        let n = to_i64(self.seq_len)?;
        Ok((k.f_narrow(2, 0, n)?, v.f_narrow(2, 0, n)?))
    }

    fn layer_buffers(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(EngineError::InvalidArgument(format!(
                "layer {layer} out of range"
            ))),
        }
    }

    /// Writes `k`, `v` (`[1, kv_heads, n, head_dim]`) of `layer` at positions
    /// `offset..offset+n` and returns views over `0..offset+n`. The caller
    /// has reserved room and advances `seq_len` with [`KvCache::advance`].
    pub(crate) fn write(
        &mut self,
        layer: usize,
        offset: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = k.size().get(2).copied().unwrap_or(0);
        let off = to_i64(offset)?;
        let (kb, vb) = self.layer_buffers(layer)?;
        let (kb, vb) = (kb.shallow_clone(), vb.shallow_clone());
        kb.f_narrow(2, off, n)?.f_copy_(k)?;
        vb.f_narrow(2, off, n)?.f_copy_(v)?;
        Ok((kb.f_narrow(2, 0, off + n)?, vb.f_narrow(2, 0, off + n)?))
    }

    /// Marks `n` more positions as filled.
    pub(crate) fn advance(&mut self, n: usize) {
        self.seq_len = self.seq_len.saturating_add(n).min(self.capacity);
    }

    /// Fills layer `layer` from `[1, kv_heads, seq, head_dim]` tensors (import).
    pub(crate) fn load_layer(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let n = k.size().get(2).copied().unwrap_or(0);
        let (kb, vb) = self.layer_buffers(layer)?;
        let (kb, vb) = (kb.shallow_clone(), vb.shallow_clone());
        let k = k.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let v = v.f_to_device(self.device)?.f_to_kind(self.kind)?;
        kb.f_narrow(2, 0, n)?.f_copy_(&k)?;
        vb.f_narrow(2, 0, n)?.f_copy_(&v)?;
        Ok(())
    }

    /// Layers `range` as one contiguous tensor `[2·n, 1, kv_heads, seq_len, head_dim]`
    /// holding K₀ V₀ K₁ V₁ … of the filled positions: the KV inner format's
    /// layer order, so one device-to-host copy of it is a chunk's layer bytes
    /// (AVP-ENG-40). Built by one `stack` on the cache's device.
    pub(crate) fn stacked_layers(&self, range: std::ops::Range<usize>) -> Result<Tensor> {
        let n = to_i64(self.seq_len)?;
        let mut views = Vec::with_capacity(range.len().saturating_mul(2));
        for layer in range {
            let (k, v) = self.layer_buffers(layer)?;
            views.push(k.f_narrow(2, 0, n)?);
            views.push(v.f_narrow(2, 0, n)?);
        }
        if views.is_empty() {
            return Err(EngineError::InvalidArgument("an empty layer range".into()));
        }
        Ok(Tensor::f_stack(&views, 0)?)
    }

    /// Fills layers `first..first + n` from `stacked`, `[2·n, 1, kv_heads,
    /// seq, head_dim]` in [`KvCache::stacked_layers`]' order (a chunk's
    /// import): moved to the device and converted once, then copied per layer
    /// on the device.
    pub(crate) fn load_stacked(&mut self, first: usize, stacked: &Tensor) -> Result<()> {
        let stacked = stacked.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let pairs = stacked.size().first().copied().unwrap_or(0) / 2;
        let pairs = usize::try_from(pairs).unwrap_or(0);
        for i in 0..pairs {
            let at = to_i64(i)? * 2;
            let (k, v) = (stacked.f_get(at)?, stacked.f_get(at + 1)?);
            self.load_layer(first.saturating_add(i), &k, &v)?;
        }
        Ok(())
    }

    /// Sets the number of filled positions after an import.
    pub(crate) fn set_seq_len(&mut self, n: usize) {
        self.seq_len = n.min(self.capacity);
    }

    /// A deep copy (for continuing a context without consuming it).
    pub fn try_clone(&self) -> Result<Self> {
        let copy = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
            ts.iter()
                .map(|t| {
                    let mut c = t.f_zeros_like()?;
                    c.f_copy_(t)?;
                    Ok(c)
                })
                .collect()
        };
        Ok(Self {
            keys: copy(&self.keys)?,
            values: copy(&self.values)?,
            seq_len: self.seq_len,
            capacity: self.capacity,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            kind: self.kind,
            device: self.device,
        })
    }
}

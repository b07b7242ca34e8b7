//! The explicit, preallocated KV cache passed `&mut` into every forward pass
//! (AVP-ENG-3), held as one contiguous tensor (AVP-ENG-50).
//!
//! The storage is `[L, 2, kv_heads, capacity, head_dim]` (layer, K/V, heads,
//! positions, head width; keys after RoPE, as transformers caches them).
//! Every layer's K and V is a `[1, kv_heads, capacity, head_dim]` view of it,
//! so a forward pass writes its new positions in place with
//! `narrow(..).copy_(..)` through those views and attends over
//! `narrow(2, 0, seq_len)`; nothing is concatenated per step. A layer range
//! `[a, b)` with its filled positions is `narrow(0, a, b - a)` then
//! `narrow(3, 0, seq_len)`, K₀ V₀ K₁ V₁ … as the KV v1 payload lays them out,
//! so a chunk of a context leaves and enters the cache with one copy
//! (AVP-ENG-40, AVP-ENG-41). When a request needs more room the storage is
//! reallocated once to the larger size (amortised by doubling).

use std::ops::Range;

use tch::{Device, Kind, Tensor};

use crate::config::DecoderConfig;
use crate::error::{EngineError, Result};

/// How [`KvCache::copy_range_to`] gets a layer range to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostCopy {
    /// The slice is contiguous (`seq_len == capacity`): copied as it is.
    Whole,
    /// On the CPU: each head's `[seq_len, head_dim]` run, contiguous in the
    /// storage, copied straight into its place (no intermediate tensor).
    Runs,
    /// On an accelerator: one contiguous copy on the device, one transfer.
    Gathered,
}

/// Keys and values of every layer, plus how many positions are filled.
#[derive(Debug)]
pub struct KvCache {
    /// `[L, 2, kv_heads, capacity, head_dim]`: the only allocation.
    storage: Tensor,
    /// Per layer, K and V as `[1, kv_heads, capacity, head_dim]` views of `storage`.
    views: Vec<(Tensor, Tensor)>,
    seq_len: usize,
    capacity: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kind: Kind,
    device: Device,
}

pub(crate) fn to_i64(n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| EngineError::InvalidArgument(format!("{n} does not fit in i64")))
}

/// The per-layer K and V views of `storage` (`[L, 2, H, cap, d]`).
fn layer_views(storage: &Tensor, layers: usize) -> Result<Vec<(Tensor, Tensor)>> {
    let mut views = Vec::with_capacity(layers);
    for layer in 0..layers {
        let both = storage.f_select(0, to_i64(layer)?)?;
        let k = both.f_select(0, 0)?.f_unsqueeze(0)?;
        let v = both.f_select(0, 1)?.f_unsqueeze(0)?;
        views.push((k, v));
    }
    Ok(views)
}

impl KvCache {
    /// An empty cache for `cfg` with room for `capacity` positions.
    pub fn new(cfg: &DecoderConfig, capacity: usize, kind: Kind, device: Device) -> Result<Self> {
        let capacity = capacity.max(1);
        let mut cache = Self {
            storage: Tensor::new(),
            views: Vec::new(),
            seq_len: 0,
            capacity,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            kind,
            device,
        };
        cache.storage = cache.allocate(cfg.num_layers, capacity)?;
        cache.views = layer_views(&cache.storage, cfg.num_layers)?;
        Ok(cache)
    }

    /// A storage tensor of `layers` layers and `capacity` positions, not
    /// initialised: no position is read before it is written (reads stop at
    /// `seq_len`), so allocating makes no pass over the memory, and on the
    /// CPU its pages are faulted in only as positions are written
    /// (AVP-ENG-50).
    fn allocate(&self, layers: usize, capacity: usize) -> Result<Tensor> {
        let shape = [
            to_i64(layers)?,
            2,
            to_i64(self.num_kv_heads)?,
            to_i64(capacity)?,
            to_i64(self.head_dim)?,
        ];
        Ok(Tensor::f_empty(shape, (self.kind, self.device))?)
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
        self.views.len()
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

    /// The whole storage, `[L, 2, kv_heads, capacity, head_dim]`: every
    /// view this cache hands out lies inside it (AVP-ENG-50).
    pub fn storage(&self) -> &Tensor {
        &self.storage
    }

    /// Drops positions past `len` (they are overwritten by later writes).
    pub fn truncate(&mut self, len: usize) {
        self.seq_len = self.seq_len.min(len);
    }

    /// Makes room for `needed` positions in total, keeping the filled ones:
    /// one new storage tensor, the filled positions copied into it in one
    /// copy. Both tensors exist during that copy (AVP-ENG-50).
    pub fn reserve(&mut self, needed: usize) -> Result<()> {
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed.max(self.capacity.saturating_mul(2));
        let filled = to_i64(self.seq_len)?;
        let grown = self.allocate(self.num_layers(), new_cap)?;
        if filled > 0 {
            grown
                .f_narrow(3, 0, filled)?
                .f_copy_(&self.storage.f_narrow(3, 0, filled)?)?;
        }
        self.views = layer_views(&grown, self.num_layers())?;
        self.storage = grown;
        self.capacity = new_cap;
        Ok(())
    }

    /// The filled part of layer `layer`'s keys and values, `[1, kv_heads, seq_len, head_dim]` views.
    pub fn layer(&self, layer: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = self.layer_views(layer)?;
        let n = to_i64(self.seq_len)?;
        Ok((k.f_narrow(2, 0, n)?, v.f_narrow(2, 0, n)?))
    }

    fn layer_views(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match self.views.get(layer) {
            Some((k, v)) => Ok((k, v)),
            None => Err(EngineError::InvalidArgument(format!(
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
        let (kb, vb) = self.layer_views(layer)?;
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
        let (kb, vb) = self.layer_views(layer)?;
        // copy_ moves to the device and converts the dtype itself.
        kb.f_narrow(2, 0, n)?.f_copy_(k)?;
        vb.f_narrow(2, 0, n)?.f_copy_(v)?;
        Ok(())
    }

    /// Layers `range` with positions `0..seq`, `[n, 2, kv_heads, seq, head_dim]`:
    /// a view of the storage, contiguous exactly when `seq == capacity`.
    fn layer_range(&self, range: &Range<usize>, seq: usize) -> Result<Tensor> {
        if range.start > range.end || range.end > self.num_layers() || seq > self.capacity {
            return Err(EngineError::InvalidArgument(format!(
                "layers {range:?} at {seq} positions are outside a cache of {} layers and {} positions",
                self.num_layers(),
                self.capacity
            )));
        }
        Ok(self
            .storage
            .f_narrow(0, to_i64(range.start)?, to_i64(range.len())?)?
            .f_narrow(3, 0, to_i64(seq)?)?)
    }

    /// Bytes of layers `range` in the KV v1 payload: K and V of each layer,
    /// filled positions only.
    pub(crate) fn range_bytes(&self, range: &Range<usize>) -> Result<usize> {
        [
            range.len(),
            2,
            self.num_kv_heads,
            self.seq_len,
            self.head_dim,
            self.kind.elt_size_in_bytes(),
        ]
        .into_iter()
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .ok_or_else(|| EngineError::InvalidArgument("KV-cache too large".into()))
    }

    /// Copies layers `range` (filled positions, K₀ V₀ K₁ V₁ …, the KV v1
    /// payload's layer bytes) into `dst`, which must be exactly
    /// [`KvCache::range_bytes`] long (AVP-ENG-40, AVP-ENG-51). A contiguous
    /// slice (`seq_len == capacity`) goes to `dst` in one copy; otherwise on
    /// the CPU each head's `[seq_len, head_dim]` run (contiguous in the
    /// storage) is copied straight into place, and on an accelerator the
    /// slice is made contiguous on the device and transferred once.
    pub(crate) fn copy_range_to(&self, range: Range<usize>, dst: &mut [u8]) -> Result<()> {
        let how = if self.seq_len == self.capacity {
            HostCopy::Whole
        } else if self.device == Device::Cpu {
            HostCopy::Runs
        } else {
            HostCopy::Gathered
        };
        self.copy_range_with(range, dst, how)
    }

    fn copy_range_with(&self, range: Range<usize>, dst: &mut [u8], how: HostCopy) -> Result<()> {
        let want = self.range_bytes(&range)?;
        if dst.len() != want {
            return Err(EngineError::InvalidArgument(format!(
                "a host buffer of {} bytes for layers {range:?}, which are {want} bytes",
                dst.len()
            )));
        }
        let slice = self.layer_range(&range, self.seq_len)?;
        let elem = self.kind.elt_size_in_bytes();
        if want == 0 {
            return Ok(());
        }
        match how {
            // at_copy_data: a contiguous CPU tensor is one memcpy; on an
            // accelerator one transfer to a host tensor, then the memcpy.
            HostCopy::Whole => slice.f_copy_data_u8(dst, want / elem)?,
            HostCopy::Runs => {
                let run = self.seq_len * self.head_dim * elem;
                let runs = slice.f_view([-1, to_i64(self.seq_len)?, to_i64(self.head_dim)?])?;
                for (i, out) in dst.chunks_exact_mut(run).enumerate() {
                    runs.f_get(to_i64(i)?)?.f_copy_data_u8(out, run / elem)?;
                }
            }
            HostCopy::Gathered => slice.f_contiguous()?.f_copy_data_u8(dst, want / elem)?,
        }
        Ok(())
    }

    /// Fills layers `first..first + n` with the positions of `src`,
    /// `[n, 2, kv_heads, seq, head_dim]` in [`KvCache::copy_range_to`]'s
    /// order, on any device and of any float kind: one `copy_` into that
    /// slice of the storage, which moves and converts as it copies
    /// (a chunk's import, AVP-ENG-41, AVP-ENG-51).
    pub(crate) fn load_range(&mut self, first: usize, src: &Tensor) -> Result<()> {
        let size = src.size();
        let [n, 2, heads, seq, dim] = size.as_slice() else {
            return Err(EngineError::InvalidArgument(format!(
                "a layer range of shape {size:?}, not [layers, 2, heads, positions, head_dim]"
            )));
        };
        if *heads != to_i64(self.num_kv_heads)? || *dim != to_i64(self.head_dim)? {
            return Err(EngineError::InvalidArgument(format!(
                "a layer range of shape {size:?} for a cache of {} heads of {}",
                self.num_kv_heads, self.head_dim
            )));
        }
        let count = usize::try_from(*n).unwrap_or(usize::MAX);
        let end = first.saturating_add(count);
        let seq = usize::try_from(*seq).unwrap_or(usize::MAX);
        self.layer_range(&(first..end), seq)?.f_copy_(src)?;
        Ok(())
    }

    /// Sets the number of filled positions after an import.
    pub(crate) fn set_seq_len(&mut self, n: usize) {
        self.seq_len = n.min(self.capacity);
    }

    /// A deep copy (for continuing a context without consuming it): the
    /// filled positions, in one copy; the rest is never read (AVP-ENG-50).
    pub fn try_clone(&self) -> Result<Self> {
        let storage = self.storage.f_empty_like()?;
        let filled = to_i64(self.seq_len)?;
        storage
            .f_narrow(3, 0, filled)?
            .f_copy_(&self.storage.f_narrow(3, 0, filled)?)?;
        Ok(Self {
            views: layer_views(&storage, self.num_layers())?,
            storage,
            seq_len: self.seq_len,
            capacity: self.capacity,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            kind: self.kind,
            device: self.device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Architecture, RopeScaling};

    const HEADS: usize = 2;
    const DIM: usize = 4;

    fn config(layers: usize) -> DecoderConfig {
        DecoderConfig {
            architecture: Architecture::Llama,
            hidden_size: HEADS * DIM,
            intermediate_size: 8,
            num_layers: layers,
            num_heads: HEADS,
            num_kv_heads: HEADS,
            head_dim: DIM,
            vocab_size: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 1e4,
            rope_scaling: RopeScaling::None,
            max_position_embeddings: 64,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            sliding_window: None,
            eos_token_ids: Vec::new(),
            declared_dtype: None,
        }
    }

    /// `[1, HEADS, n, DIM]` of distinct values starting at `base`.
    fn block(base: usize, n: usize, kind: Kind) -> Result<Tensor> {
        let base = base as f64;
        let len = (HEADS * n * DIM) as f64;
        Ok(
            Tensor::f_arange_start(base, base + len, (Kind::Float, Device::Cpu))?
                .f_view([1, HEADS as i64, n as i64, DIM as i64])?
                .f_to_kind(kind)?,
        )
    }

    /// A cache of `layers` layers with room for `capacity`, `seq` positions
    /// written through `write` the way a forward pass does (a prompt, then
    /// one step), every value distinct (exact in float16 and bfloat16 too:
    /// small integers).
    fn filled(layers: usize, seq: usize, capacity: usize, kind: Kind) -> Result<KvCache> {
        let mut c = KvCache::new(&config(layers), capacity, kind, Device::Cpu)?;
        for (offset, n) in [(0, seq - 1), (seq - 1, 1)] {
            for layer in 0..layers {
                let base = 1 + 2 * layer * HEADS * seq * DIM + offset * HEADS * DIM;
                let k = block(base, n, kind)?.f_fmod(251.0)?;
                let v = block(base + HEADS * seq * DIM, n, kind)?.f_fmod(241.0)?;
                let _views = c.write(layer, offset, &k, &v)?;
            }
            c.advance(n);
        }
        Ok(c)
    }

    fn host_bytes(t: &Tensor) -> Result<Vec<u8>> {
        let t = t.f_contiguous()?;
        let numel = t.numel();
        let mut out = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut out, numel)?;
        Ok(out)
    }

    /// What the KV v1 payload holds for `range`: per layer K then V, each
    /// `[kv_heads, seq_len, head_dim]`, read through the per-layer views.
    fn wire_bytes(c: &KvCache, range: Range<usize>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for layer in range {
            let (k, v) = c.layer(layer)?;
            out.extend(host_bytes(&k)?);
            out.extend(host_bytes(&v)?);
        }
        Ok(out)
    }

    fn range_copy(c: &KvCache, range: Range<usize>) -> Result<Vec<u8>> {
        let mut out = vec![0u8; c.range_bytes(&range)?];
        c.copy_range_to(range, &mut out)?;
        Ok(out)
    }

    /// Where `t`'s first element lies in `storage`, in elements; `None` outside it.
    fn offset_in(storage: &Tensor, t: &Tensor) -> Option<usize> {
        let elem = storage.kind().elt_size_in_bytes();
        let start = storage.data_ptr() as usize;
        let end = start + storage.numel() * elem;
        let at = t.data_ptr() as usize;
        (start..end).contains(&at).then(|| (at - start) / elem)
    }

    /// AVP-ENG-50: every per-layer K and V, and what `write` and `layer`
    /// return, is a view inside the one storage tensor at its
    /// `[layer, K/V]` place, and writes through them land in the storage.
    #[test]
    fn eng_50_layer_views_share_the_one_storage_tensor() -> Result<()> {
        let (layers, seq, cap) = (3, 4, 6);
        let mut c = filled(layers, seq, cap, Kind::Float)?;
        let storage = c.storage().shallow_clone();
        assert_eq!(
            storage.size(),
            [layers as i64, 2, HEADS as i64, cap as i64, DIM as i64]
        );
        let plane = HEADS * cap * DIM;
        for layer in 0..layers {
            let (k, v) = c.layer(layer)?;
            assert_eq!(offset_in(&storage, &k), Some(2 * layer * plane));
            assert_eq!(offset_in(&storage, &v), Some((2 * layer + 1) * plane));
            assert_eq!(
                host_bytes(&k)?,
                host_bytes(
                    &storage
                        .f_get(layer as i64)?
                        .f_get(0)?
                        .f_narrow(1, 0, seq as i64)?
                        .f_unsqueeze(0)?
                )?
            );
            let (wk, wv) = c.write(
                layer,
                seq,
                &block(9000, 1, Kind::Float)?,
                &block(9100, 1, Kind::Float)?,
            )?;
            assert_eq!(offset_in(&storage, &wk), Some(2 * layer * plane));
            assert_eq!(offset_in(&storage, &wv), Some((2 * layer + 1) * plane));
            let written = storage
                .f_get(layer as i64)?
                .f_get(1)?
                .f_narrow(1, seq as i64, 1)?;
            assert_eq!(
                host_bytes(&written)?,
                host_bytes(&block(9100, 1, Kind::Float)?.f_squeeze_dim(0)?)?
            );
        }
        Ok(())
    }

    /// AVP-ENG-51: a layer range copied to the host in one piece is the
    /// per-layer wire bytes, for the first, a middle, the last and all
    /// layers, when the filled positions fill the storage (the slice is
    /// contiguous) and when they do not, in every cache dtype.
    #[test]
    fn eng_51_range_bytes_are_the_per_layer_wire_bytes() -> Result<()> {
        let layers = 4;
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            for (seq, cap) in [(5, 5), (5, 9), (1, 3)] {
                let c = filled(layers, seq, cap, kind)?;
                for range in [0..1, 1..3, 3..4, 0..4] {
                    let slice = c.layer_range(&range, seq)?;
                    assert_eq!(slice.is_contiguous(), seq == cap);
                    let got = range_copy(&c, range.clone())?;
                    let want = wire_bytes(&c, range.clone())?;
                    // The accelerator's way, run on the CPU, and the CPU's.
                    for how in [HostCopy::Runs, HostCopy::Gathered] {
                        let mut other = vec![0u8; got.len()];
                        c.copy_range_with(range.clone(), &mut other, how)?;
                        assert!(
                            other == want,
                            "{how:?} {kind:?} seq {seq} cap {cap} layers {range:?}"
                        );
                    }
                    assert_eq!(
                        got.len(),
                        range.len() * 2 * HEADS * seq * DIM * kind.elt_size_in_bytes()
                    );
                    assert!(got == want, "{kind:?} seq {seq} cap {cap} layers {range:?}");
                }
            }
        }
        Ok(())
    }

    /// AVP-ENG-51: a range's bytes loaded into another cache (other
    /// capacity) land in exactly those layers; a wrong shape, range or
    /// buffer is a typed error and changes nothing.
    #[test]
    fn eng_51_load_range_is_the_inverse_of_copy_range_to() -> Result<()> {
        let (layers, seq) = (4, 5);
        let src = filled(layers, seq, seq, Kind::Float)?;
        let bytes = range_copy(&src, 1..3)?;
        let mut dst = KvCache::new(&config(layers), 8, Kind::Half, Device::Cpu)?;
        // The storage is not initialised: what layers 0 and 3 hold before
        // the load must still be there after it.
        dst.set_seq_len(seq);
        let untouched: Vec<Vec<u8>> = (0..layers)
            .map(|l| range_copy(&dst, l..l + 1))
            .collect::<Result<_>>()?;
        let shape = [2, 2, HEADS as i64, seq as i64, DIM as i64];
        let t = Tensor::f_from_data_size(&bytes, &shape, Kind::Float)?;
        dst.load_range(1, &t)?;
        dst.set_seq_len(seq);
        let want = src.layer(1)?.0.f_to_kind(Kind::Half)?;
        assert_eq!(host_bytes(&dst.layer(1)?.0)?, host_bytes(&want)?);
        assert_eq!(wire_bytes(&dst, 1..3)?, range_copy(&dst, 1..3)?);
        for layer in [0, 3] {
            assert_eq!(
                Some(&range_copy(&dst, layer..layer + 1)?),
                untouched.get(layer)
            );
        }
        let before = range_copy(&dst, 0..4)?;
        assert!(matches!(
            dst.load_range(3, &t),
            Err(EngineError::InvalidArgument(_))
        ));
        let flat = t.f_reshape([4, HEADS as i64, seq as i64, DIM as i64])?;
        assert!(matches!(
            dst.load_range(0, &flat),
            Err(EngineError::InvalidArgument(_))
        ));
        let long = Tensor::f_zeros(
            [1, 2, HEADS as i64, 9, DIM as i64],
            (Kind::Float, Device::Cpu),
        )?;
        assert!(matches!(
            dst.load_range(0, &long),
            Err(EngineError::InvalidArgument(_))
        ));
        let mut short = vec![0u8; dst.range_bytes(&(0..1))? - 1];
        assert!(matches!(
            dst.copy_range_to(0..1, &mut short),
            Err(EngineError::InvalidArgument(_))
        ));
        assert!(matches!(
            dst.copy_range_to(3..5, &mut []),
            Err(EngineError::InvalidArgument(_))
        ));
        assert_eq!(range_copy(&dst, 0..4)?, before);
        Ok(())
    }

    /// AVP-ENG-50: `reserve` moves the filled positions into the larger
    /// storage unchanged, the views follow it, and a deep copy owns its own.
    #[test]
    fn eng_50_reserve_and_clone_keep_the_contents() -> Result<()> {
        let (layers, seq) = (3, 5);
        let mut c = filled(layers, seq, seq, Kind::Float)?;
        let before = range_copy(&c, 0..layers)?;
        c.reserve(seq + 1)?;
        assert_eq!(c.capacity(), 2 * seq);
        assert_eq!(c.seq_len(), seq);
        assert_eq!(range_copy(&c, 0..layers)?, before);
        let storage = c.storage().shallow_clone();
        for layer in 0..layers {
            let (k, v) = c.layer(layer)?;
            assert!(offset_in(&storage, &k).is_some() && offset_in(&storage, &v).is_some());
        }
        let copy = c.try_clone()?;
        assert_eq!(offset_in(&storage, &copy.layer(0)?.0), None);
        let _views = c.write(
            0,
            0,
            &block(7000, 1, Kind::Float)?,
            &block(7100, 1, Kind::Float)?,
        )?;
        assert_eq!(range_copy(&copy, 0..layers)?, before);
        assert!(range_copy(&c, 0..layers)? != before);
        Ok(())
    }

    /// AVP-ENG-50: the storage is not initialised, and nothing reads a
    /// position before writing it: a forward pass (a prompt, then one step,
    /// then a step after `reserve` grew the cache) over a cache whose every
    /// element is NaN gives exactly what it gives over a zeroed cache.
    #[test]
    fn eng_50_no_position_is_read_before_it_is_written() -> Result<()> {
        use crate::{Engine, Input, LoadOptions};
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models/llama_untied");
        let opts = LoadOptions {
            cache_dir: None,
            ..LoadOptions::default()
        };
        let engine = Engine::load(&dir, &opts)?;
        let model = engine.model();
        let run = |poison: f64| -> Result<Vec<u8>> {
            let mut cache = model.new_cache(4)?;
            let _poisoned = cache.storage.shallow_clone().f_fill_(poison)?;
            let prompt = Tensor::from_slice(&[1i64, 5, 9]).f_view([1, 3])?;
            let mut out = host_bytes(&model.forward(Input::Tokens(&prompt), &mut cache)?)?;
            for id in [7i64, 2] {
                // The second step needs a fifth position: `reserve` grows the cache.
                let step = Tensor::from_slice(&[id]).f_view([1, 1])?;
                out.extend(host_bytes(
                    &model.forward(Input::Tokens(&step), &mut cache)?,
                )?);
                if id == 7 {
                    assert_eq!(cache.capacity(), 4);
                }
            }
            assert_eq!(cache.capacity(), 8);
            out.extend(range_copy(&cache, 0..cache.num_layers())?);
            Ok(out)
        };
        let clean = run(0.0)?;
        assert!(run(f64::NAN)? == clean);
        Ok(())
    }
}

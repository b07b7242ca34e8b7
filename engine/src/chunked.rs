//! Contexts of any size as chunk messages (issue 18, spec/protocol/chunked.md;
//! our side: spec/impl/engine.md, AVP-ENG-40..43): export a context straight
//! into chunks, import chunks while they arrive.
//!
//! Export ([`write_chunks`]) copies each chunk, one slice of the cache's
//! single storage tensor, to the host in one copy (AVP-ENG-40), one chunk
//! at a time (AVP-ENG-52). Import ([`ChunkImport`]) copies each chunk's
//! layer range into its slice of the cache (one copy) as soon as it is
//! checked, in whatever order chunks come, and hashes the
//! layer bytes in layer order as they become contiguous, so the context
//! digest is known when the last chunk lands (AVP-ENG-41).
//! [`import_stream`] reads chunk messages on a second thread, at most one
//! queued, while the caller's thread uploads (AVP-ENG-42).

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;

use avp_codec::chunk::{
    Added, Assembler, AssemblyLimits, ChunkInfo, ChunkPlan, ChunkSummer, DigestVerifier,
};
use tch::Tensor;

use crate::cache::KvCache;
use crate::context::{LatentContext, identity_extra, kind_of, num_steps_of, u32_of, wire_dtype};
use crate::decoder::Decoder;
use crate::error::{EngineError, Result};
#[cfg(test)]
use crate::wire::KV_HEADER_LEN;
use crate::wire::{KvHeader, PayloadKind, WireMeta, decode_chunk, metadata_of};

/// How a context is cut into chunk messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkOptions {
    /// Upper bound on one chunk's KV payload (its 17-byte KV header
    /// included); layers are never split, so it must hold one layer.
    pub max_chunk_bytes: u64,
    /// The context id every chunk carries; `None` = the first 16 bytes of
    /// the context digest, so the same context always gets the same id.
    pub context_id: Option<[u8; 16]>,
}

impl ChunkOptions {
    /// Chunks of at most `max_chunk_bytes` KV payload bytes, id from the digest.
    pub fn new(max_chunk_bytes: u64) -> Self {
        Self {
            max_chunk_bytes,
            context_id: None,
        }
    }

    /// Sets [`ChunkOptions::context_id`].
    pub fn with_context_id(mut self, id: [u8; 16]) -> Self {
        self.context_id = Some(id);
        self
    }
}

/// What [`write_chunks`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChunkSummary {
    /// Chunk messages written.
    pub count: u32,
    /// Bytes written, all messages together.
    pub bytes: u64,
    /// BLAKE3 of the whole context's KV v1 payload.
    pub context_digest: [u8; 32],
    /// The id the chunks carry.
    pub context_id: [u8; 16],
}

/// The header of the whole context's KV v1 payload.
fn context_header(cache: &KvCache) -> Result<KvHeader> {
    Ok(KvHeader {
        num_layers: u32_of(cache.num_layers(), "num_layers")?,
        num_kv_heads: u32_of(cache.num_kv_heads(), "num_kv_heads")?,
        head_dim: u32_of(cache.head_dim(), "head_dim")?,
        seq_len: u32_of(cache.seq_len(), "seq_len")?,
        dtype: wire_dtype(cache.kind())?,
    })
}

/// Bytes of one layer (K and V) in the payload.
fn layer_bytes(header: &KvHeader) -> Option<usize> {
    header
        .tensor_bytes()
        .and_then(|b| usize::try_from(b).ok())
        .and_then(|b| b.checked_mul(2))
}

/// Layers `range` of `cache` into `body` (resized, its allocation reused),
/// K₀ V₀ K₁ V₁ … as the KV v1 payload lays them out: one slice of the
/// cache's storage, one copy to the host (AVP-ENG-40).
fn chunk_body(cache: &KvCache, range: Range<usize>, body: &mut Vec<u8>) -> Result<()> {
    body.resize(cache.range_bytes(&range)?, 0);
    cache.copy_range_to(range, body)
}

/// Writes `ctx` as chunk messages (spec/protocol/chunked.md, AVP-ENG-40),
/// handing `sink` the parts of one message at a time, in index order.
/// `address` may set the routing fields of every chunk's metadata.
///
/// Every chunk carries the digest of the whole context, so the chunks are
/// copied to the host twice, one at a time into one reused buffer: a first
/// pass hashes them, the second writes them. Host memory is one chunk,
/// whatever the context's size (AVP-ENG-52).
pub fn write_chunks(
    ctx: &LatentContext,
    opts: &ChunkOptions,
    address: &dyn Fn(&mut avp_codec::Metadata<'_>),
    sink: &mut dyn FnMut(&[&[u8]]) -> Result<()>,
) -> Result<ChunkSummary> {
    let _guard = tch::no_grad_guard();
    let header = context_header(&ctx.cache)?;
    let plan = ChunkPlan::new(&header, opts.max_chunk_bytes).map_err(EngineError::Wire)?;
    let ranges: Vec<Range<usize>> = plan
        .ranges()
        .iter()
        .map(|r| r.start as usize..r.end as usize)
        .collect();
    let mut body = Vec::new();
    let mut summer = ChunkSummer::new(&plan);
    for r in &ranges {
        chunk_body(&ctx.cache, r.clone(), &mut body)?;
        summer.update(&body).map_err(EngineError::Wire)?;
    }
    let sums = summer.finish().map_err(EngineError::Wire)?;
    let context_id = opts.context_id.unwrap_or_else(|| {
        let mut id = [0u8; 16];
        for (d, s) in id.iter_mut().zip(sums.context_digest) {
            *d = s;
        }
        id
    });
    let meta = WireMeta {
        hidden_dim: u32_of(ctx.hidden_dim, "hidden_dim")?,
        num_layers: u32_of(ctx.num_layers, "num_layers")?,
        payload: PayloadKind::KvCache,
        dtype: header.dtype,
        tensor_shape: Vec::new(),
        avp_map_id: String::new(),
        extra: identity_extra(ctx),
    };
    let mut base = metadata_of(&meta);
    address(&mut base);
    let mut bytes = 0u64;
    for (index, r) in ranges.into_iter().enumerate() {
        chunk_body(&ctx.cache, r, &mut body)?;
        let prefix = plan
            .chunk_prefix(&base, context_id, &sums, u32_of(index, "chunk index")?)
            .map_err(EngineError::Wire)?;
        sink(&[&prefix, &body])?;
        bytes = bytes.saturating_add((prefix.len() + body.len()) as u64);
    }
    Ok(ChunkSummary {
        count: plan.count(),
        bytes,
        context_digest: sums.context_digest,
        context_id,
    })
}

impl LatentContext {
    /// [`write_chunks`] into one buffer per chunk message.
    pub fn to_chunks(&self, opts: &ChunkOptions) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        write_chunks(self, opts, &|_| {}, &mut |parts| {
            out.push(parts.concat());
            Ok(())
        })?;
        Ok(out)
    }
}

/// How far a [`ChunkImport`] has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChunkProgress {
    /// Chunks received and uploaded (duplicates not counted).
    pub chunks: u32,
    /// Chunks the context has (0 before the first).
    pub count: u32,
    /// Layers on the device.
    pub layers: u32,
    /// Layers the context has (0 before the first chunk).
    pub num_layers: u32,
}

impl ChunkProgress {
    /// Whether every chunk has arrived.
    pub fn is_complete(&self) -> bool {
        self.count > 0 && self.chunks == self.count
    }
}

/// What every chunk must repeat besides the descriptor (AVP-ENG-41).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    hidden_dim: u32,
    num_layers: u32,
    model_family: String,
    num_steps: usize,
}

/// Everything known once the first chunk has been accepted.
struct Started {
    identity: Identity,
    header: KvHeader,
    cache: KvCache,
    per_layer: usize,
    /// The digest over the layer bytes in layer order, fed up to `hashed_to`.
    verifier: DigestVerifier,
    hashed_to: u32,
    /// Layer bytes that arrived ahead of `hashed_to`, by first layer.
    pending: BTreeMap<u32, Vec<u8>>,
    layers: u32,
    chunks: u32,
}

/// A chunked context being imported onto a model's device (AVP-ENG-41):
/// [`ChunkImport::push`] each chunk message as it arrives, in any order,
/// then [`ChunkImport::finish`], which returns the context only when every
/// chunk is there and the digest matches. After an error nothing imported
/// can be used: the import refuses further chunks and `finish`.
pub struct ChunkImport<'m> {
    model: &'m Decoder,
    model_hash: String,
    headroom: usize,
    assembler: Assembler,
    started: Option<Started>,
    failed: bool,
}

impl std::fmt::Debug for ChunkImport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkImport")
            .field("model_hash", &self.model_hash)
            .field("progress", &self.progress())
            .field("failed", &self.failed)
            .finish()
    }
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidContext(msg.into())
}

impl<'m> ChunkImport<'m> {
    /// An import onto `model` (whose identity is `model_hash`) with `headroom`
    /// positions preallocated after the context, within `limits`.
    pub fn new(
        model: &'m Decoder,
        model_hash: &str,
        headroom: usize,
        limits: AssemblyLimits,
    ) -> Self {
        Self {
            model,
            model_hash: model_hash.to_owned(),
            headroom,
            assembler: Assembler::new(limits),
            started: None,
            failed: false,
        }
    }

    /// How far the import has got.
    pub fn progress(&self) -> ChunkProgress {
        match &self.started {
            None => ChunkProgress::default(),
            Some(s) => ChunkProgress {
                chunks: s.chunks,
                count: self.assembler.count().unwrap_or(0),
                layers: s.layers,
                num_layers: s.header.num_layers,
            },
        }
    }

    /// Checks one chunk message and uploads its layers to the device. An
    /// identical duplicate of a chunk already held is ignored. A message
    /// that is no chunk, a chunk of another model, context or shape, or one
    /// that contradicts the chunks before it is a typed error (AVP-ENG-41).
    pub fn push(&mut self, message: &[u8]) -> Result<ChunkProgress> {
        if self.failed {
            return Err(invalid("an earlier chunk failed; this import is abandoned"));
        }
        let pushed = self.push_checked(message);
        self.failed = pushed.is_err();
        pushed
    }

    fn push_checked(&mut self, message: &[u8]) -> Result<ChunkProgress> {
        let _guard = tch::no_grad_guard();
        let (msg, info) = decode_chunk(message)?
            .ok_or_else(|| invalid("message is not a chunk of a chunked context"))?;
        let d = info.descriptor;
        let identity = self.identity_of(&msg.meta, &info)?;
        if let Some(started) = &self.started {
            if started.identity != identity {
                return Err(invalid(format!(
                    "chunk {} names another context ({identity:?}) than the chunks before it ({:?})",
                    d.index, started.identity
                )));
            }
        }
        if self.assembler.add(&info).map_err(EngineError::Wire)? == Added::Duplicate {
            return Ok(self.progress());
        }
        if self.started.is_none() {
            let header = d.context_header(&info.header);
            self.started = Some(self.start(identity, header, d.context_digest)?);
        }
        let Some(started) = self.started.as_mut() else {
            return Err(EngineError::InvalidArgument("import not started".into()));
        };
        let body = ChunkInfo::layer_bytes(&msg.tensor);
        let h = &started.header;
        let shape = [
            i64::from(info.header.num_layers),
            2,
            i64::from(h.num_kv_heads),
            i64::from(h.seq_len),
            i64::from(h.head_dim),
        ];
        // One host tensor of the chunk, one copy into its slice of the cache.
        let layers = Tensor::f_from_data_size(body, &shape, kind_of(h.dtype)?)?;
        started.cache.load_range(d.layer_start as usize, &layers)?;
        started.layers += info.header.num_layers;
        started.chunks += 1;
        started.hash_in_order(d.layer_start, body)?;
        Ok(self.progress())
    }

    /// The identity a chunk states, checked against this model: the
    /// checks of AVP-ENG-11 and AVP-ENG-27 on the whole context.
    fn identity_of(&self, meta: &WireMeta, info: &ChunkInfo) -> Result<Identity> {
        let context_hash = meta.extra.get("model_hash").cloned().unwrap_or_default();
        if context_hash != self.model_hash {
            return Err(EngineError::IncompatibleContext {
                context_hash,
                model_hash: self.model_hash.clone(),
            });
        }
        let header = info.descriptor.context_header(&info.header);
        let cfg = self.model.config();
        if header.num_layers as usize != cfg.num_layers
            || header.num_kv_heads as usize != cfg.num_kv_heads
            || header.head_dim as usize != cfg.head_dim
        {
            return Err(invalid(format!(
                "KV-cache of {} layers x {} heads x {} does not fit this model ({} x {} x {})",
                header.num_layers,
                header.num_kv_heads,
                header.head_dim,
                cfg.num_layers,
                cfg.num_kv_heads,
                cfg.head_dim
            )));
        }
        let seq = header.seq_len as usize;
        if seq > cfg.max_position_embeddings {
            return Err(EngineError::CacheFull {
                capacity: cfg.max_position_embeddings,
                needed: seq,
            });
        }
        kind_of(header.dtype)?;
        let num_steps = num_steps_of(&meta.extra)?;
        Ok(Identity {
            hidden_dim: meta.hidden_dim,
            num_layers: meta.num_layers,
            model_family: meta.extra.get("model_family").cloned().unwrap_or_default(),
            num_steps,
        })
    }

    /// Allocates the cache for the context the first chunk describes.
    fn start(&self, identity: Identity, header: KvHeader, digest: [u8; 32]) -> Result<Started> {
        let per_layer = layer_bytes(&header).ok_or_else(|| invalid("KV sizes overflow"))?;
        let seq = header.seq_len as usize;
        let mut cache = self.model.new_cache(seq.saturating_add(self.headroom))?;
        cache.set_seq_len(seq);
        Ok(Started {
            identity,
            header,
            cache,
            per_layer,
            verifier: DigestVerifier::new(&header, digest).map_err(EngineError::Wire)?,
            hashed_to: 0,
            pending: BTreeMap::new(),
            layers: 0,
            chunks: 0,
        })
    }

    /// The imported context, once every chunk is there and the digest of
    /// the layer bytes equals the one the chunks carry (AVP-ENG-41):
    /// `Wire` errors of kind `incomplete_context` or `context_digest_mismatch` else.
    pub fn finish(self) -> Result<LatentContext> {
        if self.failed {
            return Err(invalid("an earlier chunk failed; this import is abandoned"));
        }
        self.assembler.check_complete().map_err(EngineError::Wire)?;
        let Some(started) = self.started else {
            return Err(EngineError::InvalidArgument(
                "complete without a chunk".into(),
            ));
        };
        if started.hashed_to != started.header.num_layers || !started.pending.is_empty() {
            return Err(EngineError::InvalidArgument(
                "complete, yet layers were not hashed in order".into(),
            ));
        }
        started.verifier.finish().map_err(EngineError::Wire)?;
        let id = started.identity;
        Ok(LatentContext {
            cache: started.cache,
            model_hash: self.model_hash,
            model_family: id.model_family,
            num_steps: id.num_steps,
            hidden_dim: id.hidden_dim as usize,
            num_layers: id.num_layers as usize,
            last_hidden: None,
            steps_taken: 0,
            nan_seen: false,
            inf_seen: false,
        })
    }
}

impl Started {
    /// Feeds the digest with `body` (layers from `first`) and with whatever
    /// was waiting for it; bytes that arrived early wait on the host.
    fn hash_in_order(&mut self, first: u32, body: &[u8]) -> Result<()> {
        let per_layer = self.per_layer.max(1);
        if first != self.hashed_to {
            self.pending.insert(first, body.to_vec());
            return Ok(());
        }
        self.verifier.update(body).map_err(EngineError::Wire)?;
        self.hashed_to = first.saturating_add(u32_of(body.len() / per_layer, "layers")?);
        while let Some(next) = self.pending.remove(&self.hashed_to) {
            self.verifier.update(&next).map_err(EngineError::Wire)?;
            self.hashed_to = self
                .hashed_to
                .saturating_add(u32_of(next.len() / per_layer, "layers")?);
        }
        Ok(())
    }
}

/// Most bytes [`read_message`] reserves on a header's word before they arrive.
const RESERVE_AHEAD: usize = 256 << 20;

/// Reads one AVP message from `reader` into `buf` (cleared first): its
/// 12-byte header, then exactly the length that header declares, within
/// `limits` (so a stray file is refused after 12 bytes). `Ok(false)` at a
/// clean end of input; `Ok(true)` with a codec error in `Err` position
/// for a header the codec refuses.
pub fn read_message(
    reader: &mut dyn Read,
    limits: &avp_codec::Limits,
    buf: &mut Vec<u8>,
) -> std::io::Result<std::result::Result<bool, avp_codec::Error>> {
    buf.clear();
    reader.take(avp_codec::HEADER_LEN as u64).read_to_end(buf)?;
    if buf.is_empty() {
        return Ok(Ok(false));
    }
    let declared = match avp_codec::parse_header(buf, limits) {
        Err(e) => return Ok(Err(e)),
        // Shorter than a header: decoding reports it as truncated.
        Ok(avp_codec::Status::NeedMore(_)) => return Ok(Ok(true)),
        Ok(avp_codec::Status::Complete(h)) => h.message_len(),
    };
    let rest = declared.saturating_sub(avp_codec::HEADER_LEN as u64);
    // Reserve what is declared, so the read fills one allocation instead of
    // doubling its way up; at most RESERVE_AHEAD, so that a header alone
    // (a truncated or hostile stream) cannot make us allocate gigabytes.
    let ahead = usize::try_from(rest)
        .unwrap_or(usize::MAX)
        .min(RESERVE_AHEAD);
    buf.reserve_exact(ahead.saturating_sub(buf.capacity().saturating_sub(buf.len())));
    reader.take(rest).read_to_end(buf)?;
    Ok(Ok(true))
}

/// What the reader thread hands over: a message, the end, or why it stopped.
enum Arrival {
    Message(Vec<u8>),
    End,
    Wire(avp_codec::Error),
    Io(std::io::Error),
}

/// Imports the chunk messages `reader` yields back to back (a chunked
/// file or stream), uploading each while the next is read on a second
/// thread; at most one read chunk waits, and the buffers go back to the
/// reader for reuse, so in-order chunks hold at most three chunks of host
/// memory (AVP-ENG-42). `progress` sees each accepted chunk. The context is
/// returned once the last chunk is on the device and the digest checked.
pub fn import_stream(
    model: &Decoder,
    model_hash: &str,
    reader: &mut (dyn Read + Send),
    headroom: usize,
    progress: &mut dyn FnMut(ChunkProgress),
) -> Result<LatentContext> {
    let limits = avp_codec::Limits::default();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        scope.spawn(move || {
            loop {
                let mut buf = spent_rx.try_recv().unwrap_or_default();
                let next = match read_message(reader, &limits, &mut buf) {
                    Ok(Ok(true)) => Arrival::Message(buf),
                    Ok(Ok(false)) => Arrival::End,
                    Ok(Err(e)) => Arrival::Wire(e),
                    Err(e) => Arrival::Io(e),
                };
                let more = matches!(next, Arrival::Message(_));
                // The importer hung up after an error: stop reading.
                if tx.send(next).is_err() || !more {
                    break;
                }
            }
        });
        let mut import = ChunkImport::new(model, model_hash, headroom, AssemblyLimits::default());
        for next in rx {
            match next {
                Arrival::End => break,
                Arrival::Message(message) => {
                    progress(import.push(&message)?);
                    // The reader may be gone already; then the buffer is just freed.
                    let _ = spent_tx.send(message);
                }
                Arrival::Wire(e) => return Err(EngineError::Wire(e)),
                Arrival::Io(source) => {
                    return Err(EngineError::Io {
                        path: "<chunk stream>".into(),
                        source,
                    });
                }
            }
        }
        import.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, LoadOptions};

    /// AVP-ENG-52: every chunk reaches the sink from the same host buffer
    /// (one chunk of host memory, reused), and its layer bytes are the
    /// plain payload's, whether the cache's filled positions fill it (one
    /// contiguous slice per chunk) or not (headroom after an import).
    #[test]
    fn eng_52_chunks_pass_through_one_reused_host_buffer() -> Result<()> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/models/llama_untied");
        let opts = LoadOptions {
            cache_dir: None,
            ..LoadOptions::default()
        };
        let engine = Engine::load(&dir, &opts)?;
        let ctx = engine.think("one buffer", 2, None)?;
        let roomy = engine.import_context(&ctx.to_bytes()?, 16)?;
        assert!(roomy.cache.capacity() > roomy.cache.seq_len());
        let plain = ctx.kv_payload()?;
        let per = layer_bytes(&context_header(&ctx.cache)?).unwrap_or(0);
        let layers = ctx.cache.num_layers();
        assert!(layers > 1);
        for c in [&ctx, &roomy] {
            let (mut bodies, mut messages) = (Vec::new(), Vec::new());
            // One layer per chunk: every body has the same size.
            let one_layer = ChunkOptions::new((per + KV_HEADER_LEN) as u64);
            write_chunks(c, &one_layer, &|_| {}, &mut |parts| {
                let body = parts.get(1).copied().unwrap_or_default();
                bodies.push((body.as_ptr() as usize, body.len()));
                messages.push(parts.concat());
                Ok(())
            })?;
            assert_eq!(bodies.len(), layers);
            assert!(
                bodies.iter().all(|b| Some(b) == bodies.first()),
                "{bodies:?}"
            );
            for (i, m) in messages.iter().enumerate() {
                let (msg, _) = decode_chunk(m)?.ok_or_else(|| invalid("not a chunk"))?;
                let want = plain.get(KV_HEADER_LEN + per * i..KV_HEADER_LEN + per * (i + 1));
                assert_eq!(Some(ChunkInfo::layer_bytes(&msg.tensor)), want, "chunk {i}");
            }
        }
        Ok(())
    }
}

//! Chunked KV contexts (spec/protocol/chunked.md, AVP-CHK-*).
//!
//! A context too large for one message (or that a sender wants to stream)
//! is sent as a sequence of ordinary KV_CACHE messages, each carrying a
//! contiguous layer range of the context and a [`ChunkDescriptor`] in the
//! `avp.chunk` extra entry (AVP-CHK-2), readable with [`crate::peek`].
//!
//! Sending ([`ChunkPlan`]) is two passes over the layer bytes so nothing
//! has to be held: a [`ChunkSummer`] pass computes the context digest and
//! each chunk's checksum, then [`ChunkPlan::chunk_prefix`] gives each
//! chunk's wire header, metadata and KV header, after which the caller
//! writes that chunk's layer bytes. Receiving ([`Assembler`]) tracks the
//! descriptors only; the caller stores the layer bytes where it likes and
//! streams them back in order through a [`DigestVerifier`] at the end.
//! BLAKE3 (the digest) needs the feature `kv-chunked`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use crate::decode::Message;
use crate::error::{Error, ErrorKind};
use crate::kv::{KV_HEADER_LEN, KvHeader};
use crate::limits::Limits;
use crate::metadata::Metadata;

/// The `extra` key that carries the descriptor (AVP-CHK-2).
pub const CHUNK_EXTRA_KEY: &str = "avp.chunk";

/// The descriptor format version, the first field of the value (AVP-CHK-2).
pub const DESCRIPTOR_VERSION: u32 = 1;

fn err(kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg)
}

fn bad_chunk(msg: impl Into<String>) -> Error {
    err(ErrorKind::BadChunk, msg)
}

fn conflict(msg: impl Into<String>) -> Error {
    err(ErrorKind::ChunkConflict, msg)
}

/// Where one chunk sits in its context (AVP-CHK-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkDescriptor {
    /// Names the context; equal in every chunk of it.
    pub context_id: [u8; 16],
    /// This chunk's position, `0..count`.
    pub index: u32,
    /// Number of chunks of the context.
    pub count: u32,
    /// First layer this chunk carries.
    pub layer_start: u32,
    /// One past the last layer this chunk carries.
    pub layer_end: u32,
    /// Layers of the whole context.
    pub num_layers: u32,
    /// BLAKE3 of the whole context's KV v1 payload (AVP-CHK-5).
    pub context_digest: [u8; 32],
}

fn hex_into(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Lowercase hex only, exactly `N` bytes.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N.checked_mul(2)? {
        return None;
    }
    let mut out = [0u8; N];
    for (dst, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c.wrapping_sub(b'0')),
            b'a'..=b'f' => Some(c.wrapping_sub(b'a').wrapping_add(10)),
            _ => None,
        };
        let &[hi, lo] = pair.first_chunk::<2>()?;
        *dst = (digit(hi)? << 4) | digit(lo)?;
    }
    Some(out)
}

/// Canonical decimal only: no sign, no leading zero, fits u32.
fn parse_decimal(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|c| c.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical { text.parse().ok() } else { None }
}

impl ChunkDescriptor {
    /// The `avp.chunk` value (AVP-CHK-2):
    /// `1:<context_id hex>:<index>:<count>:<layer_start>:<layer_end>:<num_layers>:<digest hex>`.
    pub fn to_extra_value(&self) -> String {
        let mut out = String::with_capacity(140);
        let _ = write!(out, "{DESCRIPTOR_VERSION}:");
        hex_into(&mut out, &self.context_id);
        let _ = write!(
            out,
            ":{}:{}:{}:{}:{}:",
            self.index, self.count, self.layer_start, self.layer_end, self.num_layers
        );
        hex_into(&mut out, &self.context_digest);
        out
    }

    /// Parses an `avp.chunk` value: exactly the canonical form of
    /// [`ChunkDescriptor::to_extra_value`], else `bad_chunk` (AVP-CHK-2).
    /// Does not check the fields against each other ([`ChunkDescriptor::validate`]).
    pub fn parse_extra_value(value: &str) -> Result<ChunkDescriptor, Error> {
        let malformed = || bad_chunk(format!("malformed {CHUNK_EXTRA_KEY} value {value:?}"));
        let mut fields = value.split(':');
        let mut next = || fields.next().ok_or_else(malformed);
        let version = next()?;
        if parse_decimal(version) != Some(DESCRIPTOR_VERSION) {
            return Err(bad_chunk(format!(
                "{CHUNK_EXTRA_KEY} descriptor version {version:?} is not {DESCRIPTOR_VERSION}"
            )));
        }
        let context_id = parse_hex::<16>(next()?).ok_or_else(malformed)?;
        let mut numbers = [0u32; 5];
        for n in &mut numbers {
            *n = parse_decimal(next()?).ok_or_else(malformed)?;
        }
        let context_digest = parse_hex::<32>(next()?).ok_or_else(malformed)?;
        if fields.next().is_some() {
            return Err(malformed());
        }
        let [index, count, layer_start, layer_end, num_layers] = numbers;
        Ok(ChunkDescriptor {
            context_id,
            index,
            count,
            layer_start,
            layer_end,
            num_layers,
            context_digest,
        })
    }

    /// The chunk's layer range.
    pub fn layers(&self) -> Range<u32> {
        self.layer_start..self.layer_end
    }

    /// AVP-CHK-3: the fields agree with each other: `index < count`,
    /// a non-empty range inside `[0, num_layers)` that leaves at least one
    /// layer for every other chunk, chunk 0 starting at layer 0 and the last
    /// chunk ending at `num_layers`. Else `bad_chunk`.
    pub fn validate(&self) -> Result<(), Error> {
        let d = self;
        if d.index >= d.count {
            return Err(bad_chunk(format!(
                "chunk index {} is not below the chunk count {}",
                d.index, d.count
            )));
        }
        if d.layer_start >= d.layer_end || d.layer_end > d.num_layers {
            return Err(bad_chunk(format!(
                "chunk layers [{}, {}) are not a non-empty range of the context's {} layers",
                d.layer_start, d.layer_end, d.num_layers
            )));
        }
        let after = d.count.saturating_sub(d.index).saturating_sub(1);
        if d.layer_start < d.index || d.num_layers.saturating_sub(d.layer_end) < after {
            return Err(bad_chunk(format!(
                "chunk {} of {} at layers [{}, {}) leaves no layer for another chunk of a {}-layer context",
                d.index, d.count, d.layer_start, d.layer_end, d.num_layers
            )));
        }
        if d.index == 0 && d.layer_start != 0 {
            return Err(bad_chunk(format!(
                "chunk 0 starts at layer {}, not 0",
                d.layer_start
            )));
        }
        if after == 0 && d.layer_end != d.num_layers {
            return Err(bad_chunk(format!(
                "the last chunk ends at layer {}, not at the context's {} layers",
                d.layer_end, d.num_layers
            )));
        }
        Ok(())
    }

    /// The whole context's KV header, given one chunk's: same heads, head
    /// size, positions and dtype, `num_layers` of the context.
    pub fn context_header(&self, chunk_header: &KvHeader) -> KvHeader {
        KvHeader {
            num_layers: self.num_layers,
            ..*chunk_header
        }
    }
}

/// The descriptor of a message's metadata (from [`crate::peek`] or a decode):
/// `None` when it has no `avp.chunk` entry (a plain message), `bad_chunk`
/// when the entry is malformed or its fields disagree (AVP-CHK-2, AVP-CHK-3).
pub fn descriptor_of(metadata: &Metadata<'_>) -> Result<Option<ChunkDescriptor>, Error> {
    let Some(value) = metadata.extra.get(CHUNK_EXTRA_KEY) else {
        return Ok(None);
    };
    // The order of AVP-CHK-8: syntax and payload type, then the fields.
    let d = ChunkDescriptor::parse_extra_value(value)?;
    if metadata.payload_type != crate::PayloadType::KvCache {
        return Err(bad_chunk(format!(
            "a chunk's payload type must be KV_CACHE, not {}",
            metadata.payload_type.name()
        )));
    }
    d.validate()?;
    Ok(Some(d))
}

/// What the assembler needs of one received chunk (AVP-CHK-4): its
/// descriptor, its KV header, its payload length and the CRC-32 of its
/// payload (to tell an identical duplicate from a conflicting one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The descriptor.
    pub descriptor: ChunkDescriptor,
    /// The chunk's KV v1 header (`num_layers` = the range's length).
    pub header: KvHeader,
    /// Bytes of the chunk's KV payload, header included.
    pub payload_len: u64,
    /// CRC-32 of the chunk's KV payload.
    pub payload_crc32: u32,
}

impl ChunkInfo {
    /// Checks a chunk's KV header and payload length against its
    /// descriptor (AVP-CHK-3): `num_layers = layer_end - layer_start` and a
    /// payload of exactly that many layers, else `bad_chunk`.
    pub fn new(
        descriptor: ChunkDescriptor,
        header: KvHeader,
        payload_len: u64,
        payload_crc32: u32,
    ) -> Result<ChunkInfo, Error> {
        descriptor.validate()?;
        let span = descriptor.layer_end.saturating_sub(descriptor.layer_start);
        if header.num_layers != span {
            return Err(bad_chunk(format!(
                "chunk {} declares layers [{}, {}) but its KV header has {} layers",
                descriptor.index, descriptor.layer_start, descriptor.layer_end, header.num_layers
            )));
        }
        let expected = header.total_bytes();
        if expected != Some(payload_len) {
            return Err(bad_chunk(format!(
                "chunk {} payload is {payload_len} bytes, its KV header gives {}",
                descriptor.index,
                expected.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
            )));
        }
        Ok(ChunkInfo {
            descriptor,
            header,
            payload_len,
            payload_crc32,
        })
    }

    /// The chunk info of a decoded message; `None` for a message without a
    /// descriptor. The checksum is the message's `payload_checksum` when
    /// present (the decoder verified it), else computed.
    pub fn of_message(message: &Message<'_>) -> Result<Option<ChunkInfo>, Error> {
        let Some(descriptor) = descriptor_of(&message.metadata)? else {
            return Ok(None);
        };
        let header = KvHeader::parse(&message.payload)?;
        let crc = match message.metadata.payload_checksum {
            Some(crc) if !message.was_compressed() => crc,
            _ => crate::crc32(&message.payload),
        };
        ChunkInfo::new(descriptor, header, message.payload.len() as u64, crc).map(Some)
    }

    /// [`ChunkInfo::of_message`] for a message that must be a chunk: one
    /// without a descriptor is `bad_chunk`.
    pub fn of_chunk_message(message: &Message<'_>) -> Result<ChunkInfo, Error> {
        ChunkInfo::of_message(message)?
            .ok_or_else(|| bad_chunk(format!("a message without an {CHUNK_EXTRA_KEY} descriptor")))
    }

    /// Where this chunk's layer bytes sit in the context's canonical KV v1
    /// payload (AVP-CHK-1): `17 + layer_start x layer size`. A receiver can
    /// write each chunk there in a file as it arrives, in any order, and
    /// hash the file's layer bytes in order at the end (AVP-CHK-5).
    pub fn offset_in_context(&self) -> Option<u64> {
        self.header
            .tensor_bytes()?
            .checked_mul(2)?
            .checked_mul(u64::from(self.descriptor.layer_start))?
            .checked_add(KV_HEADER_LEN as u64)
    }

    /// The chunk's layer bytes: everything after the 17-byte KV header of
    /// `payload` (which must be this chunk's payload).
    pub fn layer_bytes(payload: &[u8]) -> &[u8] {
        payload.get(KV_HEADER_LEN..).unwrap_or_default()
    }
}

/// What a receiver allows one chunked context (AVP-CHK-7, AVP-LIM-12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblyLimits {
    /// Most chunks one context may declare.
    pub max_chunks: u32,
    /// Most bytes the whole context's KV payload may have.
    pub max_total_bytes: u64,
    /// Most layers the context may declare (AVP-LIM-12).
    pub max_layers: u32,
}

impl AssemblyLimits {
    /// The recommended values: 4096 chunks, 64 GiB, 4096 layers.
    pub const DEFAULT: AssemblyLimits = AssemblyLimits {
        max_chunks: 4096,
        max_total_bytes: 64 << 30,
        max_layers: Limits::DEFAULT.max_kv_layers,
    };
}

impl Default for AssemblyLimits {
    fn default() -> Self {
        AssemblyLimits::DEFAULT
    }
}

/// What [`Assembler::add`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A chunk the assembler did not hold: the caller stores its layer bytes.
    New,
    /// An identical copy of a chunk it holds: the caller drops it (AVP-CHK-4).
    Duplicate,
}

/// The first chunk's view of the context, which every later chunk must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Context {
    context_id: [u8; 16],
    count: u32,
    num_layers: u32,
    context_digest: [u8; 32],
    header: KvHeader,
}

/// Sans-I/O assembly of one chunked context (AVP-CHK-4..7).
///
/// Keeps the descriptors, never the tensors: memory is bounded by the
/// chunk count limit, whatever the context's size. Chunks may be added in
/// any order; every add checks the chunk against itself, the limits and
/// the chunks held before it, so an error names the chunk that caused it.
#[derive(Debug, Clone)]
pub struct Assembler {
    limits: AssemblyLimits,
    context: Option<Context>,
    held: BTreeMap<u32, ChunkInfo>,
}

impl Assembler {
    /// An empty assembly.
    pub fn new(limits: AssemblyLimits) -> Assembler {
        Assembler {
            limits,
            context: None,
            held: BTreeMap::new(),
        }
    }

    /// Adds one chunk (AVP-CHK-3..8, in the order of AVP-CHK-8):
    /// `bad_chunk` for a chunk that contradicts itself, `limit_exceeded` for a context over
    /// the limits, `chunk_conflict` for one that contradicts the chunks held (another
    /// context, other dimensions, overlapping layers, a gap between
    /// neighbours, a different chunk under an index already held).
    /// On error nothing changes.
    pub fn add(&mut self, chunk: &ChunkInfo) -> Result<Added, Error> {
        let d = &chunk.descriptor;
        let context = Context {
            context_id: d.context_id,
            count: d.count,
            num_layers: d.num_layers,
            context_digest: d.context_digest,
            header: d.context_header(&chunk.header),
        };
        // `new` validated already, but a caller may have built the struct.
        let checked = ChunkInfo::new(*d, chunk.header, chunk.payload_len, chunk.payload_crc32)?;
        match &self.context {
            Some(held) => check_same_context(held, &context)?,
            None => self.check_limits(&context)?,
        }
        if let Some(held) = self.held.get(&d.index) {
            if *held == checked {
                return Ok(Added::Duplicate);
            }
            return Err(conflict(format!(
                "a different chunk {} was already received (layers [{}, {}), CRC-32 {:08x}; now [{}, {}), {:08x})",
                d.index,
                held.descriptor.layer_start,
                held.descriptor.layer_end,
                held.payload_crc32,
                d.layer_start,
                d.layer_end,
                checked.payload_crc32
            )));
        }
        if let Some((_, before)) = self.held.range(..d.index).next_back() {
            check_order(&before.descriptor, d)?;
        }
        if let Some((_, after)) = self.held.range(d.index..).next() {
            check_order(d, &after.descriptor)?;
        }
        self.context = Some(context);
        self.held.insert(d.index, checked);
        Ok(Added::New)
    }

    fn check_limits(&self, c: &Context) -> Result<(), Error> {
        let limit = |msg: String| err(ErrorKind::LimitExceeded, msg);
        if c.count > self.limits.max_chunks {
            return Err(limit(format!(
                "the context declares {} chunks, over the limit of {} (AVP-CHK-7)",
                c.count, self.limits.max_chunks
            )));
        }
        if c.num_layers > self.limits.max_layers {
            return Err(limit(format!(
                "the context declares {} layers, over the limit of {} (AVP-LIM-12)",
                c.num_layers, self.limits.max_layers
            )));
        }
        match c.header.total_bytes() {
            Some(total) if total <= self.limits.max_total_bytes => Ok(()),
            total => Err(limit(format!(
                "the context's KV payload is {} bytes, over the limit of {} (AVP-CHK-7)",
                total.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string()),
                self.limits.max_total_bytes
            ))),
        }
    }

    /// Whether every chunk `0..count` is held.
    pub fn is_complete(&self) -> bool {
        self.context
            .is_some_and(|c| self.held.len() as u64 == u64::from(c.count))
    }

    /// The indices held, ascending (what a resuming sender may skip).
    pub fn held_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.held.keys().copied()
    }

    /// The indices not held yet, ascending (empty before the first chunk).
    pub fn missing_indices(&self) -> impl Iterator<Item = u32> + '_ {
        let count = self.context.map_or(0, |c| c.count);
        (0..count).filter(|i| !self.held.contains_key(i))
    }

    /// The held chunk with `index`.
    pub fn chunk(&self, index: u32) -> Option<&ChunkInfo> {
        self.held.get(&index)
    }

    /// The chunk count the context declares (`None` before the first chunk).
    pub fn count(&self) -> Option<u32> {
        self.context.map(|c| c.count)
    }

    /// The context's id (`None` before the first chunk).
    pub fn context_id(&self) -> Option<[u8; 16]> {
        self.context.map(|c| c.context_id)
    }

    /// The whole context's KV header (`None` before the first chunk).
    pub fn context_header(&self) -> Option<KvHeader> {
        self.context.map(|c| c.header)
    }

    /// The digest every chunk declares (`None` before the first chunk).
    pub fn context_digest(&self) -> Option<[u8; 32]> {
        self.context.map(|c| c.context_digest)
    }

    /// `incomplete_context` unless every chunk is held (AVP-CHK-5).
    pub fn check_complete(&self) -> Result<(), Error> {
        if self.is_complete() {
            return Ok(());
        }
        let missing: Vec<String> = self
            .missing_indices()
            .take(8)
            .map(|i| i.to_string())
            .collect();
        Err(err(
            ErrorKind::IncompleteContext,
            match self.context {
                None => "no chunk of the context was received".to_owned(),
                Some(c) => format!(
                    "{} of {} chunks received; missing {}{}",
                    self.held.len(),
                    c.count,
                    missing.join(", "),
                    if self.missing_indices().nth(8).is_some() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            },
        ))
    }

    /// Once complete, a verifier to stream the layer bytes of chunks
    /// `0..count` through, in index order (AVP-CHK-5); `incomplete_context`
    /// before.
    #[cfg(feature = "kv-chunked")]
    pub fn verifier(&self) -> Result<DigestVerifier, Error> {
        self.check_complete()?;
        let c = self
            .context
            .ok_or_else(|| err(ErrorKind::Internal, "no context"))?;
        DigestVerifier::new(&c.header, c.context_digest)
    }
}

fn check_same_context(held: &Context, new: &Context) -> Result<(), Error> {
    if held.context_id != new.context_id {
        let mut a = String::new();
        let mut b = String::new();
        hex_into(&mut a, &held.context_id);
        hex_into(&mut b, &new.context_id);
        return Err(conflict(format!(
            "a chunk of context {b} in the assembly of context {a}"
        )));
    }
    if held.count != new.count
        || held.num_layers != new.num_layers
        || held.context_digest != new.context_digest
    {
        return Err(conflict(format!(
            "chunks of one context disagree: {} chunks of {} layers before, now {} of {} (or another digest)",
            held.count, held.num_layers, new.count, new.num_layers
        )));
    }
    if held.header != new.header {
        let h = &held.header;
        let n = &new.header;
        return Err(conflict(format!(
            "chunks of one context disagree on the KV shape: {} heads x {} positions x {} ({}) before, now {} x {} x {} ({})",
            h.num_kv_heads,
            h.seq_len,
            h.head_dim,
            h.dtype.name(),
            n.num_kv_heads,
            n.seq_len,
            n.head_dim,
            n.dtype.name()
        )));
    }
    Ok(())
}

/// AVP-CHK-4: chunk `a` comes before chunk `b`; their ranges must leave
/// exactly one layer or more for each chunk between them, none when adjacent.
fn check_order(a: &ChunkDescriptor, b: &ChunkDescriptor) -> Result<(), Error> {
    let between = b.index.saturating_sub(a.index).saturating_sub(1);
    let fits = if between == 0 {
        a.layer_end == b.layer_start
    } else {
        u64::from(a.layer_end).saturating_add(u64::from(between)) <= u64::from(b.layer_start)
    };
    if fits {
        return Ok(());
    }
    let what = if a.layer_end > b.layer_start {
        "overlap"
    } else if between == 0 {
        "leave a gap"
    } else {
        "leave too few layers for the chunks between them"
    };
    Err(conflict(format!(
        "chunk {} (layers [{}, {})) and chunk {} (layers [{}, {})) {what}",
        a.index, a.layer_start, a.layer_end, b.index, b.layer_start, b.layer_end
    )))
}

/// Streams the layer bytes of a complete context, in chunk order, and
/// compares their BLAKE3 digest with the declared one (AVP-CHK-5).
#[cfg(feature = "kv-chunked")]
#[derive(Debug, Clone)]
pub struct DigestVerifier {
    hasher: blake3::Hasher,
    expected: [u8; 32],
    remaining: u64,
}

#[cfg(feature = "kv-chunked")]
impl DigestVerifier {
    /// A verifier for a context with `header` (the whole context's) and
    /// the declared digest.
    pub fn new(header: &KvHeader, expected: [u8; 32]) -> Result<DigestVerifier, Error> {
        let total = header
            .total_bytes()
            .ok_or_else(|| err(ErrorKind::InvalidArgument, "KV dimensions overflow 64 bits"))?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header.to_bytes());
        Ok(DigestVerifier {
            hasher,
            expected,
            remaining: total.saturating_sub(KV_HEADER_LEN as u64),
        })
    }

    /// Feeds the next layer bytes (any split); more than the context has
    /// is `invalid_argument` (the caller fed the wrong bytes).
    pub fn update(&mut self, layer_bytes: &[u8]) -> Result<(), Error> {
        let n = layer_bytes.len() as u64;
        if n > self.remaining {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "{n} more layer bytes fed, only {} left in the context",
                    self.remaining
                ),
            ));
        }
        self.remaining = self.remaining.saturating_sub(n);
        self.hasher.update(layer_bytes);
        Ok(())
    }

    /// `context_digest_mismatch` unless the bytes fed hash to the declared
    /// digest; `invalid_argument` when fewer bytes than the context's were fed.
    pub fn finish(self) -> Result<(), Error> {
        if self.remaining != 0 {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!("{} layer bytes of the context were not fed", self.remaining),
            ));
        }
        let got = *self.hasher.finalize().as_bytes();
        if got == self.expected {
            return Ok(());
        }
        let (mut a, mut b) = (String::new(), String::new());
        hex_into(&mut a, &self.expected);
        hex_into(&mut b, &got);
        Err(err(
            ErrorKind::ContextDigestMismatch,
            format!("the chunks declare context digest {a}, their bytes hash to {b}"),
        ))
    }
}

/// The largest chunk KV payload [`ChunkPlan::new`] plans: one message's
/// `payload_length` (AVP-WIRE-5) less 64 KiB for the metadata.
pub const MAX_CHUNK_PAYLOAD: u64 = u32::MAX as u64 - (64 << 10);

/// How a context is cut into chunks (AVP-CHK-1): the context's header and
/// one layer range per chunk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    header: KvHeader,
    ranges: Vec<Range<u32>>,
}

impl ChunkPlan {
    /// Cuts `header`'s layers into as few chunks as keep every chunk's KV
    /// payload (17-byte header included) within `max_chunk_payload` bytes
    /// and [`MAX_CHUNK_PAYLOAD`] (so each chunk fits one message), spread
    /// evenly. `invalid_argument` when one layer does not fit, or the
    /// context has no layer.
    pub fn new(header: &KvHeader, max_chunk_payload: u64) -> Result<ChunkPlan, Error> {
        let invalid = |msg: String| err(ErrorKind::InvalidArgument, msg);
        let max_chunk_payload = max_chunk_payload.min(MAX_CHUNK_PAYLOAD);
        if header.num_layers == 0 {
            return Err(invalid("a context of 0 layers cannot be chunked".into()));
        }
        let layer = header
            .tensor_bytes()
            .and_then(|t| t.checked_mul(2))
            .ok_or_else(|| invalid("KV dimensions overflow 64 bits".into()))?;
        let room = max_chunk_payload.saturating_sub(KV_HEADER_LEN as u64);
        let per_chunk = if layer == 0 {
            u64::from(header.num_layers)
        } else {
            room.checked_div(layer).unwrap_or(0)
        };
        if per_chunk == 0 {
            return Err(invalid(format!(
                "one layer is {layer} bytes; a chunk of at most {max_chunk_payload} bytes cannot hold it (chunks need {} bytes or more)",
                layer.saturating_add(KV_HEADER_LEN as u64)
            )));
        }
        let layers = u64::from(header.num_layers);
        let count = layers.div_ceil(per_chunk);
        ChunkPlan::with_count(header, u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Cuts `header`'s layers into exactly `count` chunks, sizes differing
    /// by at most one layer. `invalid_argument` unless `1 <= count <= num_layers`.
    pub fn with_count(header: &KvHeader, count: u32) -> Result<ChunkPlan, Error> {
        if count == 0 || count > header.num_layers {
            return Err(err(
                ErrorKind::InvalidArgument,
                format!(
                    "{count} chunks for {} layers: each chunk needs one layer or more",
                    header.num_layers
                ),
            ));
        }
        let base = header.num_layers.checked_div(count).unwrap_or(0);
        let extra = header.num_layers.checked_rem(count).unwrap_or(0);
        let mut ranges = Vec::with_capacity(count as usize);
        let mut start = 0u32;
        for i in 0..count {
            let len = base.saturating_add(u32::from(i < extra));
            let end = start.saturating_add(len);
            ranges.push(start..end);
            start = end;
        }
        Ok(ChunkPlan {
            header: *header,
            ranges,
        })
    }

    /// The whole context's header.
    pub fn header(&self) -> &KvHeader {
        &self.header
    }

    /// The layer ranges, one per chunk.
    pub fn ranges(&self) -> &[Range<u32>] {
        &self.ranges
    }

    /// Number of chunks.
    pub fn count(&self) -> u32 {
        self.ranges.len() as u32
    }

    /// Bytes of one layer (K then V).
    pub fn layer_bytes(&self) -> u64 {
        self.header.tensor_bytes().unwrap_or(0).saturating_mul(2)
    }

    /// Chunk `index`'s KV header.
    pub fn chunk_header(&self, index: u32) -> Option<KvHeader> {
        let r = self.ranges.get(index as usize)?;
        Some(KvHeader {
            num_layers: r.end.saturating_sub(r.start),
            ..self.header
        })
    }

    /// Bytes of chunk `index`'s KV payload, header included.
    pub fn chunk_payload_len(&self, index: u32) -> Option<u64> {
        self.chunk_header(index)?.total_bytes()
    }

    /// The descriptor of chunk `index`.
    pub fn descriptor(
        &self,
        context_id: [u8; 16],
        context_digest: [u8; 32],
        index: u32,
    ) -> Option<ChunkDescriptor> {
        let r = self.ranges.get(index as usize)?;
        Some(ChunkDescriptor {
            context_id,
            index,
            count: self.count(),
            layer_start: r.start,
            layer_end: r.end,
            num_layers: self.header.num_layers,
            context_digest,
        })
    }

    /// Everything chunk `index` starts with (AVP-CHK-1, AVP-CHK-2): the
    /// 12-byte wire header, the metadata (`base` plus the `avp.chunk`
    /// entry and the chunk's checksum, payload type KV_CACHE, dtype of the
    /// context) and the chunk's 17-byte KV header. The caller then writes
    /// the chunk's layer bytes, [`ChunkPlan::chunk_payload_len`] minus 17,
    /// and the message is complete. `invalid_argument` for an index out of
    /// range or a chunk over 4 GiB; `metadata_mismatch` when `base` sets a
    /// `payload_checksum` or `compression`.
    pub fn chunk_prefix(
        &self,
        base: &Metadata<'_>,
        context_id: [u8; 16],
        sums: &ChunkSums,
        index: u32,
    ) -> Result<Vec<u8>, Error> {
        let invalid = |msg: String| err(ErrorKind::InvalidArgument, msg);
        let (Some(descriptor), Some(header), Some(&crc)) = (
            self.descriptor(context_id, sums.context_digest, index),
            self.chunk_header(index),
            sums.chunk_crc32.get(index as usize),
        ) else {
            return Err(invalid(format!(
                "chunk {index} of a plan of {} chunks",
                self.count()
            )));
        };
        if base.payload_checksum.is_some() || base.compression.is_some() {
            return Err(err(
                ErrorKind::MetadataMismatch,
                "chunk metadata gets its payload_checksum from the sums and is never compressed",
            ));
        }
        let payload_len = header
            .total_bytes()
            .ok_or_else(|| invalid("KV dimensions overflow 64 bits".into()))?;
        let metadata = base
            .clone()
            .with_payload_type(crate::PayloadType::KvCache)
            .with_dtype(self.header.dtype.data_type())
            .with_extra_entry(CHUNK_EXTRA_KEY, descriptor.to_extra_value())
            .with_payload_checksum(Some(crc));
        let meta_len = metadata.encoded_len();
        let body = u64::try_from(meta_len)
            .ok()
            .and_then(|m| m.checked_add(payload_len))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "chunk {index} is {payload_len} bytes: over the 4 GiB of one message (AVP-WIRE-5)"
                ))
            })?;
        let header_bytes = crate::Header {
            version: crate::VERSION,
            flags: crate::flags_for(&metadata, crate::Compression::None),
            payload_length: body,
            metadata_length: u32::try_from(meta_len)
                .map_err(|_| invalid("metadata over 4 GiB".into()))?,
        }
        .to_bytes();
        let mut out = Vec::with_capacity(
            crate::HEADER_LEN
                .saturating_add(meta_len)
                .saturating_add(KV_HEADER_LEN),
        );
        out.extend_from_slice(&header_bytes);
        metadata.write(&mut out);
        out.extend_from_slice(&header.to_bytes());
        Ok(out)
    }
}

/// What the first sending pass computes (AVP-CHK-5, AVP-WIRE-15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSums {
    /// BLAKE3 of the whole context's KV v1 payload.
    pub context_digest: [u8; 32],
    /// CRC-32 of each chunk's KV payload, in chunk order.
    pub chunk_crc32: Vec<u32>,
}

/// The first sending pass: feed the context's layer bytes in order (any
/// split); [`ChunkSummer::finish`] gives the digest and chunk checksums.
#[cfg(feature = "kv-chunked")]
#[derive(Debug, Clone)]
pub struct ChunkSummer {
    digest: blake3::Hasher,
    plan: ChunkPlan,
    crcs: Vec<u32>,
    current: crc32fast::Hasher,
    /// Bytes left in the current chunk.
    left_in_chunk: u64,
}

#[cfg(feature = "kv-chunked")]
impl ChunkSummer {
    /// A pass over the context of `plan`.
    pub fn new(plan: &ChunkPlan) -> ChunkSummer {
        let mut digest = blake3::Hasher::new();
        digest.update(&plan.header.to_bytes());
        let mut summer = ChunkSummer {
            digest,
            plan: plan.clone(),
            crcs: Vec::with_capacity(plan.ranges.len()),
            current: crc32fast::Hasher::new(),
            left_in_chunk: 0,
        };
        summer.start_chunk();
        summer
    }

    fn start_chunk(&mut self) {
        let index = self.crcs.len() as u32;
        self.current = crc32fast::Hasher::new();
        if let Some(h) = self.plan.chunk_header(index) {
            self.current.update(&h.to_bytes());
            self.left_in_chunk = h
                .total_bytes()
                .unwrap_or(0)
                .saturating_sub(KV_HEADER_LEN as u64);
        }
    }

    /// Feeds the next layer bytes; more than the context has is `invalid_argument`.
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        self.digest.update(bytes);
        loop {
            // Close every chunk that is full (zero-sized layers included).
            while self.left_in_chunk == 0 && self.crcs.len() < self.plan.ranges.len() {
                self.crcs.push(self.current.clone().finalize());
                self.start_chunk();
            }
            if bytes.is_empty() {
                return Ok(());
            }
            if self.crcs.len() >= self.plan.ranges.len() {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    "more layer bytes fed than the context has",
                ));
            }
            let take = usize::try_from(self.left_in_chunk)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let (now, rest) = bytes.split_at_checked(take).unwrap_or((bytes, &[]));
            self.current.update(now);
            self.left_in_chunk = self.left_in_chunk.saturating_sub(take as u64);
            bytes = rest;
        }
    }

    /// The sums; `invalid_argument` when fewer bytes than the context's were fed.
    pub fn finish(mut self) -> Result<ChunkSums, Error> {
        self.update(&[])?;
        if self.crcs.len() != self.plan.ranges.len() {
            return Err(err(
                ErrorKind::InvalidArgument,
                "fewer layer bytes fed than the context has",
            ));
        }
        Ok(ChunkSums {
            context_digest: *self.digest.finalize().as_bytes(),
            chunk_crc32: self.crcs,
        })
    }
}

/// The BLAKE3 context digest of a whole KV v1 payload (AVP-CHK-5).
#[cfg(feature = "kv-chunked")]
pub fn context_digest(payload: &[u8]) -> [u8; 32] {
    *blake3::hash(payload).as_bytes()
}

/// Splits a whole KV v1 payload into chunk messages in memory (tests, small
/// contexts, the conformance runner): [`ChunkPlan`] with `plan`, then
/// the two passes. `payload` must parse as a KV v1 payload of exactly its
/// declared length (`invalid_argument` otherwise).
#[cfg(feature = "kv-chunked")]
pub fn split_payload(
    payload: &[u8],
    plan_count: u32,
    base: &Metadata<'_>,
    context_id: [u8; 16],
) -> Result<Vec<Vec<u8>>, Error> {
    let invalid = |msg: String| err(ErrorKind::InvalidArgument, msg);
    let header = KvHeader::parse(payload).map_err(|e| invalid(e.message().to_owned()))?;
    if header.total_bytes() != Some(payload.len() as u64) {
        return Err(invalid(
            "the payload is not exactly one KV v1 context".into(),
        ));
    }
    let plan = ChunkPlan::with_count(&header, plan_count)?;
    let layers = payload.get(KV_HEADER_LEN..).unwrap_or_default();
    let mut summer = ChunkSummer::new(&plan);
    summer.update(layers)?;
    let sums = summer.finish()?;
    let layer =
        usize::try_from(plan.layer_bytes()).map_err(|_| invalid("layer over memory".into()))?;
    let mut out = Vec::with_capacity(plan.ranges.len());
    for (index, r) in plan.ranges.iter().enumerate() {
        let mut msg = plan.chunk_prefix(base, context_id, &sums, index as u32)?;
        let from = layer.saturating_mul(r.start as usize);
        let to = layer.saturating_mul(r.end as usize);
        msg.extend_from_slice(
            layers
                .get(from..to)
                .ok_or_else(|| err(ErrorKind::Internal, "plan outside the payload"))?,
        );
        out.push(msg);
    }
    Ok(out)
}

/// Assembles chunk messages held in memory into the context's KV v1
/// payload (AVP-CHK-4..7): decodes each (strict when `strict`), adds it
/// to an [`Assembler`], then checks completeness and the digest. A message
/// without a descriptor is `bad_chunk`.
#[cfg(feature = "kv-chunked")]
pub fn assemble_messages(
    messages: &[&[u8]],
    limits: &AssemblyLimits,
    options: &crate::DecodeOptions,
) -> Result<Vec<u8>, Error> {
    let mut assembler = Assembler::new(*limits);
    let mut payloads: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for bytes in messages {
        let message = crate::decode_with(bytes, options)?;
        let chunk = ChunkInfo::of_chunk_message(&message)?;
        if assembler.add(&chunk)? == Added::New {
            payloads.insert(
                chunk.descriptor.index,
                ChunkInfo::layer_bytes(&message.payload).to_vec(),
            );
        }
    }
    let mut verifier = assembler.verifier()?;
    let header = assembler
        .context_header()
        .ok_or_else(|| err(ErrorKind::Internal, "complete without a context"))?;
    let total = usize::try_from(header.total_bytes().unwrap_or(u64::MAX))
        .map_err(|_| err(ErrorKind::LimitExceeded, "context larger than memory"))?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.to_bytes());
    for layers in payloads.values() {
        verifier.update(layers)?;
        out.extend_from_slice(layers);
    }
    verifier.finish()?;
    Ok(out)
}

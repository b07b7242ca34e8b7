//! Reading one message for `decode` and `inspect` in bounded memory
//! (spec/impl/cli.md, AVP-CLI-4).
//!
//! The 12 header bytes come first and decide alone whether to go on (so
//! `/dev/zero` is `bad_magic` after 12 bytes); then the metadata (at most
//! `max_metadata_len`); then an uncompressed tensor passes through one
//! [`WINDOW`]-sized buffer into a [`TensorSink`] and is never held. A
//! compressed tensor has to be decompressed whole, so that path buffers the
//! declared message (within the limits) and uses the one-shot decoder.
//! Bytes after the message are counted, not kept: from the size of a
//! regular file, by reading and discarding otherwise. For `inspect`, an
//! extended KV payload (`KV_CACHE_EXT`) is kept whole: its statistics need
//! it dequantized (AVP-CLI-24); `decode` needs only its first 72 bytes.
//!
//! Every outcome equals what `decode_with` gives for the whole input: the
//! codec's `check_streamed` and `KvHeader::check_payload` make its checks
//! from lengths and a CRC (codec/tests/streamed.rs holds them to it).

use std::fs::File;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::path::Path;

use avp_codec::kv::{KV_HEADER_LEN, KvHeader};
use avp_codec::kv_quant::{KVX_HEADER_LEN, PREFIX_ADDRESS_LEN};
use avp_codec::mac::{MacKey, StreamVerifier};
use avp_codec::tensor::{ElementType, Stats, StatsAccumulator, TensorView};
use avp_codec::{
    DecodeOptions, Error, Header, Limits, Metadata, PayloadType, StreamDecoder, Warning,
    check_header, check_streamed, peek_with,
};

/// Tensor bytes kept for `decode`: the extended KV header (40 bytes) and
/// a delta's prefix address (32), which cover the 17-byte KV v1 header too.
pub(crate) const HEAD_LEN: usize = KVX_HEADER_LEN + PREFIX_ADDRESS_LEN;

/// The one buffer an uncompressed tensor passes through: large enough that
/// the read syscalls cost little, small enough to stay in L2/L3 cache.
pub(crate) const WINDOW: usize = 1 << 20;

/// Why a message could not be read.
pub(crate) enum Failure {
    /// The input could not be opened or read (exit 2).
    Io(std::io::Error),
    /// The bytes are not a valid message (exit 1).
    Codec(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Codec(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// What to compute over the tensor bytes besides the CRC.
#[derive(Clone, Copy)]
pub(crate) struct Want {
    /// The BLAKE3 hash (`decode`).
    pub(crate) blake3: bool,
    /// Per-tensor statistics (`inspect`).
    pub(crate) stats: bool,
}

/// A decoded message without its tensor bytes.
pub(crate) struct Decoded {
    pub(crate) header: Header,
    pub(crate) metadata: Metadata<'static>,
    pub(crate) warnings: Vec<Warning>,
    /// Bytes in the input, trailing bytes included.
    pub(crate) input_len: u64,
    /// What the sink computed over the (decompressed) tensor bytes.
    pub(crate) tensor: TensorSummary,
}

/// Statistics for `inspect`, in the shape of its report.
pub(crate) enum TensorStats {
    /// A hidden state: the whole tensor in the metadata dtype.
    Hidden(Stats),
    /// A KV cache: the inner header, its warnings, K and V stats per layer;
    /// or why the inner format does not read.
    Kv(Result<(KvHeader, Vec<Warning>, Vec<Stats>), Error>),
    /// An extended KV payload (spec/protocol/kv-quant.md), kept whole:
    /// statistics need it dequantized, which takes the whole layout.
    Ext(Vec<u8>),
}

/// The tensor bytes, summarised.
pub(crate) struct TensorSummary {
    pub(crate) len: u64,
    pub(crate) crc32: u32,
    pub(crate) blake3: Option<blake3::Hash>,
    /// The first `min(HEAD_LEN, len)` bytes: the KV inner header, or the
    /// extended one and a delta's prefix address (AVP-KVQ-2), if any.
    pub(crate) head: Vec<u8>,
    pub(crate) stats: Option<TensorStats>,
}

/// Statistics over elements that arrive in pieces split anywhere: a partial
/// element waits in `carry` for the next piece (a trailing one is ignored,
/// as `TensorView` ignores it).
struct Elements {
    acc: StatsAccumulator,
    el: ElementType,
    carry: [u8; 4],
    carry_len: usize,
}

impl Elements {
    fn new(el: ElementType) -> Self {
        Elements {
            acc: StatsAccumulator::default(),
            el,
            carry: [0; 4],
            carry_len: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        let size = self.el.size();
        if self.carry_len > 0 {
            let take = size.saturating_sub(self.carry_len).min(bytes.len());
            let (part, rest) = bytes.split_at(take);
            for (dst, src) in self.carry.iter_mut().skip(self.carry_len).zip(part) {
                *dst = *src;
            }
            self.carry_len = self.carry_len.saturating_add(take);
            bytes = rest;
            if self.carry_len == size {
                let whole = self.carry.get(..size).unwrap_or_default();
                self.acc.update(&TensorView::new(whole, self.el));
                self.carry_len = 0;
            }
        }
        let whole = bytes.len() / size * size;
        let (full, partial) = bytes.split_at(whole);
        self.acc.update(&TensorView::new(full, self.el));
        for (dst, src) in self.carry.iter_mut().zip(partial) {
            *dst = *src;
        }
        self.carry_len = partial.len();
    }
}

/// Where the statistics stand.
enum Plan {
    None,
    /// KV cache whose inner header has not fully arrived.
    KvPending,
    Hidden(Elements),
    Kv {
        header: KvHeader,
        warnings: Vec<Warning>,
        /// Bytes of one K or V tensor.
        tensor: u64,
        /// Offset in the payload where the last tensor ends.
        end: u64,
        done: Vec<Stats>,
        current: Elements,
    },
    KvUnreadable(Error),
    /// An extended KV payload, collected as it arrives.
    Whole(Vec<u8>),
}

/// Consumes the tensor bytes in order, in pieces of any size.
pub(crate) struct TensorSink {
    crc: crc32fast::Hasher,
    blake3: Option<blake3::Hasher>,
    head: Vec<u8>,
    len: u64,
    /// Tensor bytes the message declares (the KV plan is checked against it).
    declared: u64,
    plan: Plan,
}

impl TensorSink {
    /// A sink for `declared` tensor bytes of a message with this metadata.
    pub(crate) fn new(want: Want, metadata: &Metadata<'_>, declared: u64) -> Self {
        let plan = match (want.stats, metadata.payload_type) {
            (false, _) => Plan::None,
            (true, PayloadType::KvCache) => Plan::KvPending,
            // Grows with the bytes that arrive, not with what the header declares.
            (true, PayloadType::KvCacheExt) => Plan::Whole(Vec::new()),
            (true, _) => Plan::Hidden(Elements::new(ElementType::from(metadata.dtype))),
        };
        TensorSink {
            crc: crc32fast::Hasher::new(),
            blake3: want.blake3.then(blake3::Hasher::new),
            head: Vec::with_capacity(HEAD_LEN),
            len: 0,
            declared,
            plan,
        }
    }

    /// The next `bytes` of the tensor.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        if let Some(h) = &mut self.blake3 {
            h.update(bytes);
        }
        let start = self.len;
        self.len = self.len.saturating_add(bytes.len() as u64);
        if self.head.len() < HEAD_LEN {
            let take = (HEAD_LEN - self.head.len()).min(bytes.len());
            self.head
                .extend_from_slice(bytes.get(..take).unwrap_or_default());
        }
        match &mut self.plan {
            Plan::None | Plan::KvUnreadable(_) => {}
            Plan::Hidden(e) => e.feed(bytes),
            Plan::Whole(all) => all.extend_from_slice(bytes),
            Plan::KvPending => {
                if self.head.len() >= KV_HEADER_LEN {
                    self.plan = kv_plan(&self.head, self.declared);
                    self.feed_kv(start, bytes);
                }
            }
            Plan::Kv { .. } => self.feed_kv(start, bytes),
        }
    }

    /// Routes `bytes` (starting at payload offset `start`) to the K or V
    /// tensor they belong to; the inner header and bytes after the last
    /// layer are not statistics.
    fn feed_kv(&mut self, start: u64, bytes: &[u8]) {
        let Plan::Kv {
            tensor,
            end,
            done,
            current,
            ..
        } = &mut self.plan
        else {
            return;
        };
        let (tensor, end) = (*tensor, *end);
        let mut off = start;
        let mut rest = bytes;
        if off < KV_HEADER_LEN as u64 {
            let skip = (KV_HEADER_LEN as u64 - off).min(rest.len() as u64);
            rest = rest.get(skip as usize..).unwrap_or_default();
            off = off.saturating_add(skip);
        }
        while !rest.is_empty() && off < end && tensor > 0 {
            let within = (off - KV_HEADER_LEN as u64) % tensor;
            let take = (tensor - within).min(end - off).min(rest.len() as u64) as usize;
            let (piece, after) = rest.split_at(take);
            current.feed(piece);
            rest = after;
            off = off.saturating_add(take as u64);
            if within.saturating_add(take as u64) == tensor {
                done.push(current.acc.finish());
                *current = Elements::new(current.el);
            }
        }
    }

    /// The summary, once every tensor byte went through [`Self::feed`].
    pub(crate) fn finish(self) -> TensorSummary {
        let stats = match self.plan {
            Plan::None => None,
            Plan::Hidden(e) => Some(TensorStats::Hidden(e.acc.finish())),
            // Fewer than 17 bytes: the header check says why.
            Plan::KvPending => Some(TensorStats::Kv(
                kv_check(&self.head, self.len).map(|(h, w)| (h, w, Vec::new())),
            )),
            Plan::KvUnreadable(e) => Some(TensorStats::Kv(Err(e))),
            Plan::Whole(all) => Some(TensorStats::Ext(all)),
            Plan::Kv {
                header,
                warnings,
                mut done,
                tensor,
                ..
            } => {
                // Layers of zero-sized tensors never see a byte.
                if tensor == 0 {
                    let empty = Elements::new(header.dtype.element_type()).acc.finish();
                    done = vec![empty; (header.num_layers as usize).saturating_mul(2)];
                }
                Some(TensorStats::Kv(Ok((header, warnings, done))))
            }
        };
        TensorSummary {
            len: self.len,
            crc32: self.crc.finalize(),
            blake3: self.blake3.map(|h| h.finalize()),
            head: self.head,
            stats,
        }
    }
}

/// What `inspect` has always used: `KvCache::parse`, compatible, default limits.
fn kv_check(head: &[u8], len: u64) -> Result<(KvHeader, Vec<Warning>), Error> {
    KvHeader::check_payload(head, len, false, &Limits::DEFAULT)
}

fn kv_plan(head: &[u8], declared: u64) -> Plan {
    match kv_check(head, declared) {
        Ok((header, warnings)) => {
            let tensor = header.tensor_bytes().unwrap_or(0);
            Plan::Kv {
                tensor,
                end: header.total_bytes().unwrap_or(0),
                done: Vec::new(),
                current: Elements::new(header.dtype.element_type()),
                header,
                warnings,
            }
        }
        Err(e) => Plan::KvUnreadable(e),
    }
}

/// Opens `path`; `-` is stdin, taken as a file so that a redirected regular
/// file is sized rather than read to its end.
fn open(path: &Path) -> std::io::Result<File> {
    if path.as_os_str() == "-" {
        Ok(File::from(std::io::stdin().as_fd().try_clone_to_owned()?))
    } else {
        File::open(path)
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn fill(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match f.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Bytes left in the input, read and discarded unless the size says it.
fn count_rest(f: &mut File) -> std::io::Result<u64> {
    if let Ok(meta) = f.metadata() {
        if meta.is_file() {
            if let Ok(pos) = f.stream_position() {
                return Ok(meta.len().saturating_sub(pos));
            }
        }
    }
    // Its own buffer: the tensor's window may be a few bytes for a small message.
    let mut window = vec![0u8; 64 << 10];
    let mut n = 0u64;
    loop {
        match fill(f, &mut window)? {
            0 => return Ok(n),
            got => n = n.saturating_add(got as u64),
        }
    }
}

/// Reads and decodes the message in `path` (`-` = stdin). With a MAC key,
/// the tag is checked in the same pass (AVP-MAC-5) and its verdict comes
/// before any decoding error, as when the whole input is verified first.
pub(crate) fn read_message(
    path: &Path,
    opts: &DecodeOptions,
    want: Want,
    mac: Option<&MacKey>,
) -> Result<Decoded, Failure> {
    let mut f = open(path)?;
    let mut head = vec![0u8; avp_codec::HEADER_LEN];
    let got = fill(&mut f, &mut head)?;
    head.truncate(got);
    // Decides on 12 bytes (or fewer, as truncated): the one-shot decoder's first step.
    let header = check_header(&head, &opts.limits)?;
    head.resize(header.metadata_end(), 0);
    let got = fill(
        &mut f,
        head.get_mut(avp_codec::HEADER_LEN..).unwrap_or_default(),
    )?;
    head.truncate(avp_codec::HEADER_LEN.saturating_add(got));
    let mut verifier = mac
        .map(|key| StreamVerifier::new(&head, key, &opts.limits))
        .transpose()?;
    if header.flags.compressed() {
        return buffered(f, head, opts, want, verifier);
    }
    let declared = header.message_len().saturating_sub(head.len() as u64);
    // Without a key a bad metadata ends the read here; with one, the MAC's
    // verdict over the whole message comes first.
    let mut reading = peek_with(&head, opts).map(|peeked| {
        let metadata = peeked.metadata.clone().into_owned();
        let sink = TensorSink::new(want, &metadata, declared);
        (peeked, metadata, sink)
    });
    if verifier.is_none() {
        if let Err(e) = reading {
            return Err(e.into());
        }
    }
    let mut window = vec![
        0u8;
        WINDOW
            .min(usize::try_from(declared).unwrap_or(WINDOW))
            .max(1)
    ];
    let mut left = declared;
    while left > 0 {
        let want_now = window
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = fill(&mut f, window.get_mut(..want_now).unwrap_or_default())?;
        let piece = window.get(..got).unwrap_or_default();
        if let Ok((_, _, sink)) = reading.as_mut() {
            sink.feed(piece);
        }
        if let Some(v) = verifier.as_mut() {
            v.update(piece);
        }
        left = left.saturating_sub(got as u64);
        if got < want_now {
            break;
        }
    }
    if let Some(v) = verifier {
        v.finish()?;
    }
    let (peeked, metadata, sink) = reading?;
    let trailing = if left == 0 { count_rest(&mut f)? } else { 0 };
    let tensor = sink.finish();
    let input_len = (head.len() as u64)
        .saturating_add(tensor.len)
        .saturating_add(trailing);
    let warnings = check_streamed(&peeked, input_len, tensor.crc32, opts)?;
    Ok(Decoded {
        header,
        metadata,
        warnings,
        input_len,
        tensor,
    })
}

/// A compressed message: buffer the declared bytes (`StreamDecoder` keeps
/// only those and counts the rest), decode in one shot, summarise the
/// decompressed tensor. With a MAC, every byte also goes to the verifier,
/// whose verdict comes before any decoding error and before decompression.
fn buffered(
    mut f: File,
    head: Vec<u8>,
    opts: &DecodeOptions,
    want: Want,
    mut verifier: Option<StreamVerifier>,
) -> Result<Decoded, Failure> {
    let mut dec = StreamDecoder::new(*opts);
    let mut early: Option<Error> = dec.feed(&head).err();
    let mut window = vec![0u8; WINDOW];
    loop {
        if let (Some(e), None) = (&early, &verifier) {
            return Err(e.clone().into());
        }
        let got = fill(&mut f, &mut window)?;
        if got == 0 {
            break;
        }
        let piece = window.get(..got).unwrap_or_default();
        if let Some(v) = verifier.as_mut() {
            v.update(piece);
        }
        if early.is_none() {
            early = dec.feed(piece).err();
        }
    }
    if let Some(v) = verifier {
        v.finish()?;
    }
    if let Some(e) = early {
        return Err(e.into());
    }
    let input_len = (dec.buffered() as u64).saturating_add(dec.trailing_bytes());
    let msg = dec.finish()?;
    Ok(summarise(&msg, input_len, want))
}

/// The summary of a message decoded in one piece (a compressed one).
pub(crate) fn summarise(msg: &avp_codec::Message<'_>, input_len: u64, want: Want) -> Decoded {
    let mut sink = TensorSink::new(want, &msg.metadata, msg.payload.len() as u64);
    sink.feed(&msg.payload);
    Decoded {
        header: msg.header,
        metadata: msg.metadata.clone().into_owned(),
        warnings: msg.warnings.clone(),
        input_len,
        tensor: sink.finish(),
    }
}

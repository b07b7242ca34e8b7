//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{JsonString, Object, Sink, Value, WriteOptions, write_value, write_wtf8_body};

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut text = vec![0u8; bytes.len().saturating_mul(2)];
    for (pair, b) in text.chunks_exact_mut(2).zip(bytes) {
        let digit = |nibble: u8| HEX_DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0');
        pair.copy_from_slice(&[digit(b >> 4), digit(b & 0xf)]);
    }
    // Only ASCII hex digits were written.
    String::from_utf8(text).unwrap_or_default()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A [`Sink`] that gathers output in a stack buffer and feeds SHA-256 only
/// when it fills (or at the end): a config's whole canonical text (under a
/// kilobyte) then costs a single `update`, no heap allocation.
struct HashSink {
    buffer: [u8; HashSink::SIZE],
    len: usize,
    hasher: Sha256,
}

impl HashSink {
    const SIZE: usize = 1024;

    fn new() -> Self {
        Self {
            buffer: [0; Self::SIZE],
            len: 0,
            hasher: Sha256::new(),
        }
    }

    /// Hashes the buffered bytes, then `bytes` (buffered when they fit).
    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        self.hasher
            .update(self.buffer.get(..self.len).unwrap_or_default());
        self.len = 0;
        match self.buffer.get_mut(..bytes.len()) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len = bytes.len();
            }
            None => self.hasher.update(bytes),
        }
    }

    fn finish(mut self) -> String {
        self.hasher
            .update(self.buffer.get(..self.len).unwrap_or_default());
        hex(&self.hasher.finalize())
    }
}

impl Sink for HashSink {
    fn put(&mut self, s: &str) {
        self.put_ascii(s.as_bytes());
    }

    #[inline]
    fn put_ascii(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        match self.buffer.get_mut(self.len..end) {
            Some(slot) => {
                copy_short(slot, bytes);
                self.len = end;
            }
            None => self.spill(bytes),
        }
    }

    #[inline]
    fn spare(&mut self, len: usize) -> Option<&mut [u8]> {
        let end = self.len.saturating_add(len);
        if end > Self::SIZE {
            self.spill(&[]);
        }
        let end = self.len.saturating_add(len);
        self.buffer.get_mut(self.len..end)
    }

    #[inline]
    fn commit(&mut self, len: usize) {
        self.len = self.len.saturating_add(len).min(Self::SIZE);
    }
}

/// `dst.copy_from_slice(src)` (equal lengths) in fixed-size pieces that
/// compile to plain loads and stores: a library memcpy call costs more
/// than copying the ~30-byte items and keys this writes. Pieces overlap
/// at the end instead of falling back to a byte loop.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let len = src.len();
    if len >= 16 {
        for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            d.copy_from_slice(s);
        }
        let from = len.saturating_sub(16);
        if let (Some(d), Some(s)) = (dst.get_mut(from..), src.get(from..)) {
            if let (Ok(d), Ok(s)) = (<&mut [u8; 16]>::try_from(d), <&[u8; 16]>::try_from(s)) {
                *d = *s;
            }
        }
    } else if len >= 8 {
        let from = len.saturating_sub(8);
        for at in [0, from] {
            if let (Some(d), Some(s)) = (
                dst.get_mut(at..at.saturating_add(8)),
                src.get(at..at.saturating_add(8)),
            ) {
                if let (Ok(d), Ok(s)) = (<&mut [u8; 8]>::try_from(d), <&[u8; 8]>::try_from(s)) {
                    *d = *s;
                }
            }
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

/// `model_hash`: SHA-256 hex of `json.dumps(config, sort_keys=True,
/// separators=(",", ":"))` encoded as UTF-8 (AVP-HASH-1).
pub fn model_hash(config: &Value) -> Result<String, Error> {
    let mut sink = HashSink::new();
    write_value(&mut sink, config, WriteOptions::CANONICAL)?;
    Ok(sink.finish())
}

/// The token's first 12 bytes big-endian (zero-padded) in the high 96
/// bits, `offset` (of the token's record) in the low 32: sorting these
/// plain integers orders the tokens by their first 12 bytes without a
/// comparator call.
fn sort_key(token: &[u8], offset: u32) -> u128 {
    let mut head = [0u8; 16];
    if let (Some(slot), Some(first)) = (head.get_mut(..12), token.get(..12)) {
        slot.copy_from_slice(first);
    } else {
        for (slot, b) in head.iter_mut().zip(token) {
            *slot = *b;
        }
    }
    (u128::from_be_bytes(head) & !u128::from(u32::MAX)) | u128::from(offset)
}

/// The record offset in the low 32 bits of a [`sort_key`].
fn key_offset(key: u128) -> usize {
    // Truncation keeps exactly the low 32 bits, where the offset is.
    #[allow(clippy::cast_possible_truncation)]
    let offset = key as u32;
    offset as usize
}

/// `tokenizer_hash`: SHA-256 hex of `json.dumps(sorted(vocab.items()),
/// separators=(",", ":"))` (AVP-HASH-10): a list of `[token, id]` pairs in
/// code-point order of the tokens, `ensure_ascii` escaping, no key sorting
/// inside values. On the calling thread; see [`tokenizer_hash_with_threads`].
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    tokenizer_hash_with_threads(vocab, 1)
}

/// [`tokenizer_hash`], on two threads when `threads >= 2` and the
/// vocabulary has at least 32Ki tokens (the same result either way).
///
/// On an idle 2-core machine this cuts the wall time of a 152k-token
/// vocabulary by about a third for ~20% more CPU time; when the other core
/// is busy it is slower than one thread, hence opt-in. A thread that cannot
/// be started falls back to the calling thread.
pub fn tokenizer_hash_with_threads(vocab: &Object, threads: usize) -> Result<String, Error> {
    hash_entries(vocab, vocab.entries_slice(), threads)
}

/// [`tokenizer_hash_with_threads`] of a vocabulary given as `(token, id)`
/// pairs with distinct tokens, without building an [`Object`] (one
/// allocation per token fewer): what a binding that reads a `{str: int}`
/// dict hands over. Ids must be below `u32::MAX` (every real vocabulary);
/// for others use [`tokenizer_hash_with_threads`].
pub fn tokenizer_hash_of_tokens(tokens: &[(&str, u32)], threads: usize) -> Result<String, Error> {
    if let Some((token, _)) = tokens.iter().find(|(_, id)| *id == u32::MAX) {
        return Err(Error::Tokenizer(format!(
            "token {token:?}: id {} is reserved here; hash the vocabulary as an Object",
            u32::MAX
        )));
    }
    hash_entries(&Object::default(), tokens, threads)
}

/// One vocabulary entry as the hash reads it: the token's bytes and its
/// id, `u32::MAX` for an id that is not a `u32` below it (written from the
/// vocabulary object when its item is written).
trait VocabEntry: Sync {
    fn token(&self) -> &[u8];
    fn id(&self) -> u32;
}

impl VocabEntry for (JsonString, Value) {
    fn token(&self) -> &[u8] {
        self.0.as_wtf8()
    }
    fn id(&self) -> u32 {
        match &self.1 {
            Value::Int(i) => i
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(u32::MAX),
            _ => u32::MAX,
        }
    }
}

impl VocabEntry for (&str, u32) {
    fn token(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn id(&self) -> u32 {
        self.1
    }
}

fn hash_entries<E: VocabEntry>(
    vocab: &Object,
    entries: &[E],
    threads: usize,
) -> Result<String, Error> {
    if threads < 2 || entries.len() < PARALLEL_FROM {
        let all = TokenRuns::build(entries, 0)?;
        let none = TokenRuns::default();
        let mut sink = BlockHasher::new();
        sink.block.push(b'[');
        render_merged(
            vocab,
            (&all, 0..all.keys.len()),
            (&none, 0..0),
            true,
            &mut sink,
        )?;
        sink.block.push(b']');
        return Ok(sink.finish());
    }
    // Two halves of the entries, each turned into sorted records on its own
    // core; then the merged order is cut in two at its middle and each core
    // writes one part; the second part's text is hashed after the first.
    let (first, second) = entries.split_at(entries.len() / 2);
    let worker_failed = || Error::Tokenizer("tokenizer hash worker failed".into());
    let (a, b) = std::thread::scope(|scope| -> Result<_, Error> {
        let other = std::thread::Builder::new()
            .spawn_scoped(scope, || TokenRuns::build(second, first.len()));
        let a = TokenRuns::build(first, 0)?;
        let b = match other {
            Ok(handle) => handle.join().map_err(|_| worker_failed())??,
            Err(_) => TokenRuns::build(second, first.len())?,
        };
        Ok((a, b))
    })?;
    let total = a.keys.len().saturating_add(b.keys.len());
    let (cut_a, cut_b) = co_rank(&a, &b, total / 2);
    let (a, b) = (&a, &b);
    let render_tail = move || -> Result<Vec<u8>, Error> {
        // The escaped text is about 3× the token bytes.
        let size = a
            .records
            .len()
            .saturating_add(b.records.len())
            .saturating_mul(3)
            / 2;
        let mut text = VecSink(Vec::with_capacity(size));
        render_merged(
            vocab,
            (a, cut_a..a.keys.len()),
            (b, cut_b..b.keys.len()),
            cut_a.saturating_add(cut_b) == 0,
            &mut text,
        )?;
        Ok(text.0)
    };
    std::thread::scope(|scope| {
        let second_part = std::thread::Builder::new().spawn_scoped(scope, render_tail);
        let mut sink = BlockHasher::new();
        sink.block.push(b'[');
        render_merged(vocab, (a, 0..cut_a), (b, 0..cut_b), true, &mut sink)?;
        let tail = match second_part {
            Ok(handle) => handle.join().map_err(|_| worker_failed())??,
            Err(_) => render_tail()?,
        };
        sink.flush();
        sink.hasher.update(&tail);
        sink.block.push(b']');
        Ok(sink.finish())
    })
}

/// Vocabularies from this size on may be hashed on two threads.
const PARALLEL_FROM: usize = 32 * 1024;

/// Some vocabulary entries as compact records in one buffer (id, entry
/// number, length, token bytes), with sort keys in token order.
///
/// Memory layout is what decides the speed here: the writing pass visits
/// the tokens in sorted, i.e. random, order, and a 152k vocabulary does
/// not fit in L2, so each token read is a cache miss. A record holds all a
/// token's item needs (one miss instead of several), and the 16-byte
/// integer keys (12-byte token prefix, record offset) sort without a
/// comparator call.
#[derive(Default)]
struct TokenRuns {
    records: Vec<u8>,
    keys: Vec<u128>,
}

impl TokenRuns {
    /// Records and sorted keys of `entries`, whose first is entry `base`.
    fn build<E: VocabEntry>(entries: &[E], base: usize) -> Result<Self, Error> {
        let total: usize = entries
            .iter()
            .map(|e| e.token().len().saturating_add(RECORD_HEADER))
            .fold(0, usize::saturating_add);
        let mut records: Vec<u8> = Vec::with_capacity(total);
        let mut keys: Vec<u128> = Vec::with_capacity(entries.len());
        let too_large = || Error::Tokenizer("vocabulary larger than 4 GiB or 2^32 tokens".into());
        for (i, entry) in entries.iter().enumerate() {
            let bytes = entry.token();
            let offset = u32::try_from(records.len()).map_err(|_| too_large())?;
            // Ids that are not a u32 below u32::MAX (never in a real
            // vocabulary, but any JSON value is allowed) are written from
            // the object when the item is written.
            let id = entry.id();
            let number = u32::try_from(base.saturating_add(i)).map_err(|_| too_large())?;
            let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
            records.extend_from_slice(&id.to_le_bytes());
            records.extend_from_slice(&number.to_le_bytes());
            records.extend_from_slice(&len.to_le_bytes());
            records.extend_from_slice(bytes);
            keys.push(sort_key(bytes, offset));
        }
        let mut runs = TokenRuns { records, keys };
        runs.keys.sort_unstable();
        runs.sort_prefix_ties();
        Ok(runs)
    }

    /// Tokens whose first 12 bytes tie (rare) were ordered by record
    /// offset: re-sort each such run by the full bytes (distinct keys of a
    /// map never compare equal).
    fn sort_prefix_ties(&mut self) {
        let TokenRuns { records, keys } = self;
        let mut run_start = 0;
        while run_start < keys.len() {
            let prefix = keys.get(run_start).map_or(0, |k| k >> 32);
            let run_end = keys
                .get(run_start..)
                .unwrap_or_default()
                .iter()
                .position(|k| k >> 32 != prefix)
                .map_or(keys.len(), |n| run_start.saturating_add(n));
            if run_end.saturating_sub(run_start) > 1 {
                if let Some(run) = keys.get_mut(run_start..run_end) {
                    run.sort_unstable_by(|a, b| {
                        let token = |k: &u128| parse_record(records, key_offset(*k)).2;
                        token(a).cmp(token(b))
                    });
                }
            }
            run_start = run_end.max(run_start.saturating_add(1));
        }
    }

    fn key(&self, i: usize) -> Option<u128> {
        self.keys.get(i).copied()
    }

    fn token(&self, key: u128) -> &[u8] {
        parse_record(&self.records, key_offset(key)).2
    }
}

/// Token order across two runs: the prefix first, the full bytes on a tie.
fn before(a: &TokenRuns, ka: u128, b: &TokenRuns, kb: u128) -> bool {
    match (ka >> 32).cmp(&(kb >> 32)) {
        core::cmp::Ordering::Equal => a.token(ka) < b.token(kb),
        order => order.is_lt(),
    }
}

/// How many of the first `n` items of the merged order come from `a` and
/// from `b` (binary search on the merge path).
fn co_rank(a: &TokenRuns, b: &TokenRuns, n: usize) -> (usize, usize) {
    let mut low = n.saturating_sub(b.keys.len());
    let mut high = n.min(a.keys.len());
    while low < high {
        let i = low.saturating_add(high.saturating_sub(low) / 2);
        let j = n.saturating_sub(i);
        // More of `a` belongs in front while a[i] sorts before b[j - 1].
        match (a.key(i), b.key(j.wrapping_sub(1))) {
            (Some(ka), Some(kb)) if before(a, ka, b, kb) => low = i.saturating_add(1),
            _ => high = i,
        }
    }
    (low, n.saturating_sub(low))
}

/// Where written items go: a growing buffer or the hashing blocks.
trait ItemSink {
    /// The buffer to append the next item to.
    fn buffer(&mut self) -> &mut Vec<u8>;
    /// Called after each item (the hashing sink hashes full blocks).
    fn item_done(&mut self) {}
}

/// Items gathered in one buffer (the second thread's part).
struct VecSink(Vec<u8>);

impl ItemSink for VecSink {
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Items written into a cache-resident block that feeds SHA-256 when full.
struct BlockHasher {
    block: Vec<u8>,
    hasher: Sha256,
}

impl BlockHasher {
    const BLOCK: usize = 64 * 1024;

    fn new() -> Self {
        Self {
            block: Vec::with_capacity(Self::BLOCK.saturating_add(4096)),
            hasher: Sha256::new(),
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.block);
        self.block.clear();
    }

    fn finish(mut self) -> String {
        self.flush();
        hex(&self.hasher.finalize())
    }
}

impl ItemSink for BlockHasher {
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.block
    }

    #[inline]
    fn item_done(&mut self) {
        if self.block.len() >= Self::BLOCK {
            self.flush();
        }
    }
}

/// Writes the items of `a[range_a]` and `b[range_b]` merged in token order,
/// each as `,[token,id]` (no comma before the very first item when `first`).
fn render_merged(
    vocab: &Object,
    (a, range_a): (&TokenRuns, core::ops::Range<usize>),
    (b, range_b): (&TokenRuns, core::ops::Range<usize>),
    first: bool,
    sink: &mut impl ItemSink,
) -> Result<(), Error> {
    let keys_a = a.keys.get(range_a).unwrap_or_default();
    let keys_b = b.keys.get(range_b).unwrap_or_default();
    let (mut i, mut j) = (0usize, 0usize);
    let mut first = first;
    // Sorted order visits the records at random: read a byte of each run's
    // record PREFETCH keys ahead so its cache miss overlaps the work on
    // this one (safe Rust's stand-in for a prefetch instruction; `touched`
    // only keeps the loads from being optimised away).
    const PREFETCH: usize = 8;
    let mut touched = 0u8;
    loop {
        let (runs, key) = match (keys_a.get(i), keys_b.get(j)) {
            (Some(&ka), Some(&kb)) if before(a, ka, b, kb) => {
                i = i.saturating_add(1);
                (a, ka)
            }
            (Some(&ka), None) => {
                i = i.saturating_add(1);
                (a, ka)
            }
            (_, Some(&kb)) => {
                j = j.saturating_add(1);
                (b, kb)
            }
            (None, None) => break,
        };
        for (run, keys, at) in [(a, keys_a, i), (b, keys_b, j)] {
            if let Some(ahead) = keys.get(at.saturating_add(PREFETCH)) {
                touched ^= run.records.get(key_offset(*ahead)).copied().unwrap_or(0);
            }
        }
        let (id, number, token) = parse_record(&runs.records, key_offset(key));
        let out = sink.buffer();
        out.extend_from_slice(if first { b"[" } else { b",[" });
        first = false;
        push_escaped(out, token);
        out.push(b',');
        match id {
            Some(id) if id != u32::MAX => push_u64(out, u64::from(id)),
            _ => {
                let id = vocab.entry(number).map(|(_, v)| v).unwrap_or(&Value::Null);
                let mut bytes = ByteSink(core::mem::take(out));
                let written = write_value(&mut bytes, id, WriteOptions::COMPACT);
                *out = bytes.0;
                written?;
            }
        }
        out.push(b']');
        sink.item_done();
    }
    core::hint::black_box(touched);
    Ok(())
}

/// Bytes before a record's token: id, entry number and token length (u32 LE).
const RECORD_HEADER: usize = 12;

/// (id, entry number, token bytes) of the record at `offset`.
fn parse_record(records: &[u8], offset: usize) -> (Option<u32>, usize, &[u8]) {
    let rest = records.get(offset..).unwrap_or_default();
    let word = |at: usize| {
        rest.get(at..at.saturating_add(4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
    };
    let len = word(8).map_or(0, |l| l as usize);
    let token = rest
        .get(RECORD_HEADER..RECORD_HEADER.saturating_add(len))
        .unwrap_or_default();
    (word(0), word(4).map_or(usize::MAX, |n| n as usize), token)
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut count: usize = 1;
    let mut rest = n / 10;
    while rest > 0 {
        count = count.saturating_add(1);
        rest /= 10;
    }
    // Digits left-aligned in a fixed array, copied whole (an inlined
    // fixed-size copy, no memcpy call), then the unused tail dropped.
    let mut digits = [0u8; 20];
    let mut rest = n;
    for slot in digits.iter_mut().take(count).rev() {
        // rest % 10 < 10, so the cast is exact.
        *slot = b'0'.saturating_add((rest % 10) as u8);
        rest /= 10;
    }
    let len = out.len();
    out.extend_from_slice(&digits);
    out.truncate(len.saturating_add(count));
}

/// The four lowercase hex digits of every code point below U+0800 (the
/// 2-byte UTF-8 characters that make up most byte-level BPE tokens),
/// built at compile time: one load per escape instead of four nibble
/// lookups.
static HEX4_BELOW_0800: [[u8; 4]; 0x800] = {
    let mut table = [[0u8; 4]; 0x800];
    let mut cp = 0;
    while cp < 0x800 {
        // In a const block: out-of-range indexing fails the build, not a run.
        #[allow(clippy::indexing_slicing)]
        {
            table[cp] = [
                HEX_DIGITS[(cp >> 12) & 0xf],
                HEX_DIGITS[(cp >> 8) & 0xf],
                HEX_DIGITS[(cp >> 4) & 0xf],
                HEX_DIGITS[cp & 0xf],
            ];
        }
        cp += 1;
    }
    table
};

/// Appends `"token"` with `ensure_ascii` escaping (AVP-HASH-5), the same
/// bytes as the general writer, with a short path for the characters of
/// byte-level BPE vocabularies (plain ASCII and 2-byte sequences).
fn push_escaped(out: &mut Vec<u8>, token: &[u8]) {
    out.push(b'"');
    let mut rest = token;
    while let Some((&lead, tail)) = rest.split_first() {
        match (lead, tail.first()) {
            (0x20..=0x7e, _) if lead != b'"' && lead != b'\\' => {
                out.push(lead);
                rest = tail;
            }
            (0xc0..=0xdf, Some(&second)) => {
                let cp = (usize::from(lead & 0x1f) << 6) | usize::from(second & 0x3f);
                let [a, b, c, d] = HEX4_BELOW_0800.get(cp).copied().unwrap_or(*b"fffd");
                out.extend_from_slice(&[b'\\', b'u', a, b, c, d]);
                rest = tail.get(1..).unwrap_or_default();
            }
            _ => {
                // Everything else (quotes, controls, 3- and 4-byte
                // sequences, surrogates): the general writer, one character.
                let width = match lead {
                    0x00..=0x7f => 1,
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    _ => 4,
                }
                .min(rest.len());
                let (one, after) = rest.split_at(width);
                let mut sink = ByteSink(core::mem::take(out));
                write_wtf8_body(&mut sink, one);
                *out = sink.0;
                rest = after;
            }
        }
    }
    out.push(b'"');
}
/// A [`Sink`] into a byte buffer (the writer only emits ASCII).
struct ByteSink(Vec<u8>);

impl Sink for ByteSink {
    fn put(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    #[inline]
    fn put_ascii(&mut self, bytes: &[u8]) {
        // Short pieces (brackets, commas, escapes, short runs) skip the
        // memcpy call, which costs more than the copy itself.
        if bytes.len() <= 8 {
            self.0.extend(bytes.iter().copied());
        } else {
            self.0.extend_from_slice(bytes);
        }
    }
}

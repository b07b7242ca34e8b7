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

/// `tokenizer_hash`: SHA-256 hex of `json.dumps(sorted(vocab.items()),
/// separators=(",", ":"))` (AVP-HASH-10): a list of `[token, id]` pairs in
/// code-point order of the tokens, `ensure_ascii` escaping, no key sorting
/// inside values. On the calling thread; see [`tokenizer_hash_with_threads`].
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    tokenizer_hash_with_threads(vocab, 1)
}

/// [`tokenizer_hash`], on up to `threads` threads (the caller's included)
/// when `threads >= 2` and the vocabulary has at least 32Ki tokens (the
/// same result either way).
///
/// The sorted order is cut into ~64 parts that each thread claims in
/// turn, so a helper that is not scheduled (a busy core) holds up at most
/// one part; on an idle 2-core machine a 152k-token vocabulary hashes in
/// about two thirds of the one-thread time. A thread that cannot be
/// started leaves its parts to the others.
pub fn tokenizer_hash_with_threads(vocab: &Object, threads: usize) -> Result<String, Error> {
    hash_entries(vocab, vocab.entries_slice(), threads)
}

/// [`tokenizer_hash_with_threads`] of a vocabulary given as `(token, id)`
/// pairs with distinct tokens, without building an [`Object`] (one
/// allocation per token fewer). Ids must be below `u32::MAX` (every real
/// vocabulary); for others use [`tokenizer_hash_with_threads`].
pub fn tokenizer_hash_of_tokens(tokens: &[(&str, u32)], threads: usize) -> Result<String, Error> {
    let mut table = TokenTable::with_capacity(tokens.len());
    for (token, id) in tokens {
        table.push(token, *id)?;
    }
    table.hash(threads)
}

/// A vocabulary gathered for [`tokenizer_hash`] one `(token, id)` at a
/// time, e.g. by a binding reading a `{str: int}` dict: the tokens are
/// copied in as they come (no object per token, nothing borrowed), so the
/// hash can run later, elsewhere (with an interpreter lock released).
/// Tokens must be distinct; [`TokenTable::hash`] gives the same result as
/// [`tokenizer_hash_with_threads`] of the same pairs.
#[derive(Default)]
pub struct TokenTable {
    items: Vec<Item>,
    /// Records of the items that do not fit in one: tokens longer than
    /// [`INLINE`] bytes and entries whose id is read from the vocabulary
    /// object (entry number, length, token bytes; u32s little-endian).
    side: Vec<u8>,
}

impl TokenTable {
    /// An empty table with room for `tokens` entries.
    pub fn with_capacity(tokens: usize) -> Self {
        Self {
            items: Vec::with_capacity(tokens),
            side: Vec::new(),
        }
    }

    /// Adds one token with its id, which must be below `u32::MAX`.
    pub fn push(&mut self, token: &str, id: u32) -> Result<(), Error> {
        if id == u32::MAX {
            return Err(Error::Tokenizer(format!(
                "token {token:?}: id {} is reserved here; hash the vocabulary as an Object",
                u32::MAX
            )));
        }
        self.push_entry(token.as_bytes(), id, 0)
    }

    /// Number of tokens pushed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no token was pushed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `tokenizer_hash` of the tokens, on up to `threads` threads when `threads >= 2`
    /// and there are at least 32Ki of them (see [`tokenizer_hash_with_threads`]).
    pub fn hash(self, threads: usize) -> Result<String, Error> {
        hash_table(&Object::default(), self, threads)
    }

    /// `id` is `u32::MAX` for an entry whose id is written from the
    /// vocabulary object (entry `number`).
    fn push_entry(&mut self, token: &[u8], id: u32, number: u32) -> Result<(), Error> {
        let too_large = || Error::Tokenizer("vocabulary larger than 4 GiB or 2^32 tokens".into());
        let mut head = [0u8; INLINE];
        if let Some(first) = token.get(..INLINE) {
            head.copy_from_slice(first);
        } else {
            for (slot, b) in head.iter_mut().zip(token) {
                *slot = *b;
            }
        }
        let [hi, lo] = split_head(head);
        let at = if token.len() <= INLINE && id != u32::MAX {
            // Inline lengths are 0..=16: always below SIDE_FROM.
            u32::try_from(token.len()).map_err(|_| too_large())?
        } else {
            let offset = u32::try_from(self.side.len())
                .ok()
                .and_then(|o| o.checked_add(SIDE_FROM))
                .ok_or_else(too_large)?;
            let len = u32::try_from(token.len()).map_err(|_| too_large())?;
            self.side.extend_from_slice(&number.to_le_bytes());
            self.side.extend_from_slice(&len.to_le_bytes());
            self.side.extend_from_slice(token);
            offset
        };
        self.items.push(Item { hi, lo, at, id });
        Ok(())
    }

    /// The bytes of `item`'s token; `head` holds `item`'s head bytes.
    fn token<'a>(&'a self, item: &Item, head: &'a [u8; INLINE]) -> &'a [u8] {
        match item.at.checked_sub(SIDE_FROM) {
            None => head.get(..item.at as usize).unwrap_or_default(),
            Some(offset) => self.record(offset).1,
        }
    }

    /// (entry number, token bytes) of the side record at `offset`.
    fn record(&self, offset: u32) -> (usize, &[u8]) {
        let rest = self.side.get(offset as usize..).unwrap_or_default();
        let word = |at: usize| {
            rest.get(at..at.saturating_add(4))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, |b| u32::from_le_bytes(b) as usize)
        };
        let token = rest
            .get(SIDE_HEADER..SIDE_HEADER.saturating_add(word(4)))
            .unwrap_or_default();
        (word(0), token)
    }
}

/// One vocabulary entry as the sort moves it (24 bytes): the token's first
/// [`INLINE`] bytes as two big-endian, zero-padded integers (integer order
/// is byte order), its id, and `at`: the token's length when it lives in
/// the item alone, else [`SIDE_FROM`] plus the offset of its side record.
///
/// Memory layout is what decides the speed here. The writing pass visits
/// the entries in sorted order; had the items pointed at their tokens, each
/// token read would be a cache miss (a 152k vocabulary does not fit in L2).
/// An item carries all its output needs for every token of at most 16
/// bytes (almost all of a BPE vocabulary), so that pass reads the sorted
/// items front to back, and the sort moves small items within buckets
/// that fit in cache.
#[derive(Clone, Copy, Default)]
struct Item {
    hi: u64,
    lo: u64,
    at: u32,
    id: u32,
}

/// Tokens up to this many bytes live in their [`Item`].
const INLINE: usize = 16;
/// `Item::at` values from here on point at a side record.
const SIDE_FROM: u32 = 17;
/// Bytes before a side record's token: entry number and length.
const SIDE_HEADER: usize = 8;

fn split_head(head: [u8; INLINE]) -> [u64; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    for (i, b) in head.into_iter().enumerate() {
        if let Some(slot) = hi.get_mut(i).or_else(|| lo.get_mut(i.wrapping_sub(8))) {
            *slot = b;
        }
    }
    [u64::from_be_bytes(hi), u64::from_be_bytes(lo)]
}

fn join_head(item: &Item) -> [u8; INLINE] {
    let mut head = [0u8; INLINE];
    for (slot, b) in head.iter_mut().zip(
        item.hi
            .to_be_bytes()
            .into_iter()
            .chain(item.lo.to_be_bytes()),
    ) {
        *slot = b;
    }
    head
}

/// Token order (code point order is UTF-8 byte order): the first 16 bytes
/// as two integers, then, on a tie (rare), the full bytes.
#[inline(always)]
fn order(table: &TokenTable, a: &Item, b: &Item) -> core::cmp::Ordering {
    (a.hi, a.lo).cmp(&(b.hi, b.lo)).then_with(|| {
        if a.at < SIDE_FROM && b.at < SIDE_FROM {
            // Equal heads, both inline: the shorter is a prefix of the other.
            a.at.cmp(&b.at)
        } else {
            let (head_a, head_b) = (join_head(a), join_head(b));
            table.token(a, &head_a).cmp(table.token(b, &head_b))
        }
    })
}

/// The hash of a vocabulary object: ids that are not a u32 below
/// `u32::MAX` (never in a real vocabulary, but any JSON value is allowed)
/// are written from the object when their item is written.
fn hash_entries(
    vocab: &Object,
    entries: &[(JsonString, Value)],
    threads: usize,
) -> Result<String, Error> {
    let mut table = TokenTable::with_capacity(entries.len());
    let too_large = || Error::Tokenizer("vocabulary larger than 4 GiB or 2^32 tokens".into());
    for (number, (token, value)) in entries.iter().enumerate() {
        let id = match value {
            Value::Int(i) => i
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        let number = u32::try_from(number).map_err(|_| too_large())?;
        table.push_entry(token.as_wtf8(), id, number)?;
    }
    hash_table(vocab, table, threads)
}

fn hash_table(vocab: &Object, mut table: TokenTable, threads: usize) -> Result<String, Error> {
    let mut items = core::mem::take(&mut table.items);
    let mut sink = BlockHasher::new();
    sink.block.push(b'[');
    if threads < 2 || items.len() < PARALLEL_FROM {
        sort_items(&table, &mut items);
        render(vocab, &table, &items, true, &mut sink)?;
    } else {
        hash_parts_in_parallel(vocab, &table, &mut items, threads, &mut sink)?;
    }
    sink.block.push(b']');
    Ok(sink.finish())
}

/// Vocabularies from this size on may be hashed on several threads.
const PARALLEL_FROM: usize = 32 * 1024;

/// Into about how many parts a parallel hash cuts the items.
const PARTS: usize = 64;

/// The parallel hash: the items are cut (by their first bytes, see
/// [`cut_into_groups`]) into ~64 consecutive parts that sort apart; every
/// thread, the caller's included, claims the next part, sorts it and
/// writes its text, and the caller hashes the texts in part order. On a
/// busy machine a helper that is not scheduled holds up at most the one
/// part it claimed; a fixed half per thread made the caller wait for the
/// whole half.
fn hash_parts_in_parallel(
    vocab: &Object,
    table: &TokenTable,
    items: &mut [Item],
    threads: usize,
    sink: &mut BlockHasher,
) -> Result<(), Error> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut ends = Vec::new();
    let limit = (items.len() / PARTS).max(1);
    cut_into_groups(items, 0, 0, limit, &mut ends);
    // Consecutive groups packed into parts of about `limit` items.
    let mut parts: Vec<Mutex<Option<&mut [Item]>>> = Vec::new();
    let mut rest = items;
    let mut taken = 0usize;
    let mut start = 0usize;
    for end in ends {
        if end.saturating_sub(start) >= limit || end == taken.saturating_add(rest.len()) {
            let (part, after) = rest.split_at_mut(end.saturating_sub(taken).min(rest.len()));
            parts.push(Mutex::new(Some(part)));
            rest = after;
            taken = end;
            start = end;
        }
    }
    let next = AtomicUsize::new(0);
    // Claims the next part, sorts and writes it: (part number, its text).
    let work = || -> Option<(usize, Result<Vec<u8>, Error>)> {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let part = parts.get(i)?.lock().ok()?.take()?;
        sort_items(table, part);
        // About 24 bytes of text per item (`,["token",id]`, escapes).
        let mut text = VecSink(Vec::with_capacity(part.len().saturating_mul(24)));
        Some((
            i,
            render(vocab, table, part, i == 0, &mut text).map(|()| text.0),
        ))
    };
    let work = &work;
    let worker_failed = || Error::Tokenizer("tokenizer hash worker failed".into());
    std::thread::scope(|scope| {
        let (done, received) = std::sync::mpsc::channel();
        let helpers: Vec<_> = (1..threads.min(parts.len()))
            .filter_map(|_| {
                let done = done.clone();
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || {
                        while let Some(result) = work() {
                            if done.send(result).is_err() {
                                break;
                            }
                        }
                    })
                    .ok()
            })
            .collect();
        // Only helpers hold senders: `recv` fails once they all stopped.
        drop(done);
        let mut texts: Vec<Option<Vec<u8>>> = parts.iter().map(|_| None).collect();
        let mut hashed = 0usize;
        let outcome = loop {
            // Hash, in order, the texts that are ready.
            while let Some(text) = texts.get_mut(hashed).and_then(Option::take) {
                sink.flush();
                sink.hasher.update(&text);
                hashed = hashed.saturating_add(1);
            }
            if hashed >= parts.len() {
                break Ok(());
            }
            let (i, text) = match work() {
                Some(claimed) => claimed,
                // Nothing left to claim: wait for a helper's part.
                None => match received.recv() {
                    Ok(sent) => sent,
                    Err(_) => break Err(worker_failed()),
                },
            };
            match (text, texts.get_mut(i)) {
                (Ok(text), Some(slot)) => *slot = Some(text),
                (Err(e), _) => break Err(e),
                (Ok(_), None) => break Err(worker_failed()),
            }
        };
        // Dropping the receiver stops helpers still sending.
        drop(received);
        for helper in helpers {
            if helper.join().is_err() && outcome.is_ok() {
                return Err(worker_failed());
            }
        }
        outcome
    })
}

/// Permutes `items` (whose first `depth` bytes are equal) into groups that
/// sort apart, each at most `limit` items unless its first two bytes are
/// all equal, and appends the groups' end positions (plus `base`) to `ends`.
fn cut_into_groups(
    items: &mut [Item],
    depth: u32,
    base: usize,
    limit: usize,
    ends: &mut Vec<usize>,
) {
    if items.len() <= limit || depth >= 2 {
        ends.push(base.saturating_add(items.len()));
        return;
    }
    let bucket_ends = flag_pass(items, depth);
    let mut start = 0usize;
    for end in bucket_ends {
        if end > start {
            if let Some(bucket) = items.get_mut(start..end) {
                cut_into_groups(
                    bucket,
                    depth.saturating_add(1),
                    base.saturating_add(start),
                    limit,
                    ends,
                );
            }
        }
        start = end;
    }
}

/// Item counts from this size on are first bucketed by a byte.
const BUCKET_FROM: usize = 2048;

/// Sorts `items` in token order. Large sets are first permuted in place
/// into 256 buckets by their first byte (an American flag sort pass: one
/// count, one cycle of swaps whose 256 write positions stay in L1), and
/// large buckets again by their second byte, and so on; what is left,
/// a few thousand items at most, is sorted in cache. (One comparison sort
/// of all items makes ~17 passes over 3.6 MB; 65,536 buckets of two bytes
/// at once made each swap a cache miss.)
fn sort_items(table: &TokenTable, items: &mut [Item]) {
    sort_from_byte(table, items, 0);
}

/// [`sort_items`] of items whose first `depth` bytes are all equal.
fn sort_from_byte(table: &TokenTable, items: &mut [Item], depth: u32) {
    if items.len() < BUCKET_FROM || depth >= 8 {
        items.sort_unstable_by(|a, b| order(table, a, b));
        return;
    }
    let ends = flag_pass(items, depth);
    let mut start = 0usize;
    for end in ends {
        if end.saturating_sub(start) > 1 {
            if let Some(run) = items.get_mut(start..end) {
                sort_from_byte(table, run, depth.saturating_add(1));
            }
        }
        start = end;
    }
}

/// Permutes `items` in place into 256 buckets by byte `depth` (< 8) of
/// their tokens, in byte order; returns where each bucket ends.
fn flag_pass(items: &mut [Item], depth: u32) -> [usize; 256] {
    let shift = 56u32.saturating_sub(depth.saturating_mul(8));
    let bucket = |item: &Item| ((item.hi >> shift) & 0xff) as usize;
    // ends[k]: one past bucket k once counted; next[k]: its fill cursor.
    let mut ends = [0usize; 256];
    for item in items.iter() {
        if let Some(count) = ends.get_mut(bucket(item)) {
            *count = count.saturating_add(1);
        }
    }
    let mut next = [0usize; 256];
    let mut total = 0usize;
    for (end, start) in ends.iter_mut().zip(next.iter_mut()) {
        *start = total;
        total = total.saturating_add(*end);
        *end = total;
    }
    for (k, &end) in ends.iter().enumerate() {
        while let Some(&at) = next.get(k).filter(|&&at| at < end) {
            // Carry the item at `at` to its bucket, bringing back the one
            // there, until one belongs in bucket k.
            let Some(mut carried) = items.get(at).copied() else {
                break;
            };
            loop {
                let home = bucket(&carried);
                if home == k {
                    break;
                }
                let Some(slot) = next.get_mut(home) else {
                    break;
                };
                let Some(target) = items.get_mut(*slot) else {
                    break;
                };
                *slot = slot.saturating_add(1);
                core::mem::swap(&mut carried, target);
            }
            if let Some(slot) = items.get_mut(at) {
                *slot = carried;
            }
            if let Some(cursor) = next.get_mut(k) {
                *cursor = at.saturating_add(1);
            }
        }
    }
    ends
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

/// Writes the sorted `items` (of `table`), each as `,[token,id]` (no comma
/// before the very first item when `first`).
fn render(
    vocab: &Object,
    table: &TokenTable,
    items: &[Item],
    first: bool,
    sink: &mut impl ItemSink,
) -> Result<(), Error> {
    let mut first = first;
    for item in items {
        let head = join_head(item);
        let token = table.token(item, &head);
        let out = sink.buffer();
        // Two pushes, not a slice of run-time length (a memcpy call).
        if !first {
            out.push(b',');
        }
        out.push(b'[');
        first = false;
        if item.at < SIDE_FROM && head_is_plain(item) {
            // Copied as the whole 16-byte head (an inlined fixed-size
            // copy), then the padding dropped.
            let start = out.len();
            out.push(b'"');
            out.extend_from_slice(&head);
            out.truncate(start.saturating_add(1).saturating_add(token.len()));
            out.push(b'"');
        } else {
            push_escaped(out, token);
        }
        out.push(b',');
        if item.id == u32::MAX {
            let number = item
                .at
                .checked_sub(SIDE_FROM)
                .map_or(usize::MAX, |offset| table.record(offset).0);
            let id = vocab.entry(number).map(|(_, v)| v).unwrap_or(&Value::Null);
            let mut bytes = ByteSink(core::mem::take(out));
            let written = write_value(&mut bytes, id, WriteOptions::COMPACT);
            *out = bytes.0;
            written?;
        } else {
            push_u64(out, u64::from(item.id));
        }
        out.push(b']');
        sink.item_done();
    }
    Ok(())
}

/// Appends the decimal digits of `n`.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut count: usize = 1;
    let mut power: u64 = 10;
    while count < 20 && n >= power {
        count = count.saturating_add(1);
        power = power.saturating_mul(10);
    }
    // Room made with a fixed-size write (an inlined store, no memcpy
    // call), the digits stored into it, the unused tail dropped. (Digits
    // built in a local array and copied over stalled on store forwarding.)
    let len = out.len();
    out.extend_from_slice(&[0u8; 20]);
    if let Some(slots) = out.get_mut(len..len.saturating_add(count)) {
        // Two digits per division (a table lookup): half the dependent
        // divide chain of one digit at a time.
        let mut rest = n;
        let mut pairs = slots.rchunks_exact_mut(2);
        for pair in pairs.by_ref() {
            // rest % 100 < 100, so the cast is exact.
            let at = usize::from((rest % 100) as u8).saturating_mul(2);
            if let Some(digits) = DIGIT_PAIRS.get(at..at.saturating_add(2)) {
                pair.copy_from_slice(digits);
            }
            rest /= 100;
        }
        if let Some(first) = pairs.into_remainder().first_mut() {
            // rest < 10 here, so the cast is exact.
            *first = b'0'.saturating_add(rest as u8);
        }
    }
    out.truncate(len.saturating_add(count));
}

/// "00" to "99", back to back.
static DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        // In a const block: out-of-range indexing fails the build, not a run.
        #[allow(clippy::indexing_slicing)]
        {
            table[2 * i] = b'0' + (i / 10) as u8;
            table[2 * i + 1] = b'0' + (i % 10) as u8;
        }
        i += 1;
    }
    table
};

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

/// Whether an inline token is written as is between quotes: printable
/// ASCII without `"` and `\\` (most tokens of byte-level BPE
/// vocabularies). Checked on the head's two words at once (SWAR), the
/// padding after the token replaced by a plain byte first.
fn head_is_plain(item: &Item) -> bool {
    let head = (u128::from(item.hi) << 64) | u128::from(item.lo);
    // The low bytes past the token's length are padding.
    let padding = u128::MAX
        .checked_shr(item.at.saturating_mul(8))
        .unwrap_or(0);
    let w = head | (padding & ONES.wrapping_mul(u128::from(b'a')));
    // Some byte is zero (exact as an any/none test).
    let has_zero = |v: u128| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    let below_space = w.wrapping_sub(ONES.wrapping_mul(0x20)) & !w & HIGHS != 0;
    w & HIGHS == 0
        && !below_space
        && !has_zero(w ^ ONES.wrapping_mul(0x7f))
        && !has_zero(w ^ ONES.wrapping_mul(u128::from(b'"')))
        && !has_zero(w ^ ONES.wrapping_mul(u128::from(b'\\')))
}

/// 0x01 in every byte, and 0x80 in every byte.
const ONES: u128 = u128::MAX / 0xff;
const HIGHS: u128 = ONES << 7;

/// Appends `"token"` with `ensure_ascii` escaping (AVP-HASH-5), the same
/// bytes as the general writer, with a short path for the characters of
/// byte-level BPE vocabularies (plain ASCII and 2-byte sequences).
fn push_escaped(out: &mut Vec<u8>, token: &[u8]) {
    // At most 6 output bytes per input byte: no reallocation inside.
    out.reserve(token.len().saturating_mul(6).saturating_add(2));
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
            (0xe0..=0xef, Some(&second)) if tail.len() >= 2 => {
                // 3-byte sequences (CJK, most other scripts; WTF-8 lone
                // surrogates too): one `\uXXXX` of the code point.
                let third = tail.get(1).copied().unwrap_or(0);
                let cp = (u32::from(lead & 0x0f) << 12)
                    | (u32::from(second & 0x3f) << 6)
                    | u32::from(third & 0x3f);
                let digit = |shift: u32| {
                    HEX_DIGITS
                        .get(((cp >> shift) & 0xf) as usize)
                        .copied()
                        .unwrap_or(b'0')
                };
                out.extend_from_slice(&[b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]);
                rest = tail.get(2..).unwrap_or_default();
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

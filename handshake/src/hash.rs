//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{Object, Sink, Value, WriteOptions, write_value, write_wtf8_body};

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
/// inside values.
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    // Memory layout is what decides the speed here: the final pass visits
    // the tokens in sorted, i.e. random, order, and a 152k vocabulary does
    // not fit in L2, so every token read is a cache miss. One sequential
    // pass therefore copies each token into one compact record (id, entry
    // number, length, bytes: one miss instead of several) and builds a
    // 16-byte integer sort key that carries the record's offset; the sort
    // moves only those keys; the last pass reads the records in sorted
    // order and writes each escaped item straight into a small block that
    // feeds SHA-256 (no ~4.5 MB intermediate text).
    let total: usize = vocab
        .iter()
        .map(|(k, _)| k.as_wtf8().len().saturating_add(RECORD_HEADER))
        .fold(0, usize::saturating_add);
    let mut records: Vec<u8> = Vec::with_capacity(total);
    let mut keys: Vec<u128> = Vec::with_capacity(vocab.len());
    let too_large = || Error::Tokenizer("vocabulary larger than 4 GiB or 2^32 tokens".into());
    for (number, (token, id)) in vocab.iter().enumerate() {
        let bytes = token.as_wtf8();
        let offset = u32::try_from(records.len()).map_err(|_| too_large())?;
        // Ids that are not a u32 below u32::MAX (never in a real vocabulary,
        // but any JSON value is allowed) are written from the object later.
        let id = match id {
            Value::Int(i) => i
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(u32::MAX),
            _ => u32::MAX,
        };
        let number = u32::try_from(number).map_err(|_| too_large())?;
        let len = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        records.extend_from_slice(&id.to_le_bytes());
        records.extend_from_slice(&number.to_le_bytes());
        records.extend_from_slice(&len.to_le_bytes());
        records.extend_from_slice(bytes);
        keys.push(sort_key(bytes, offset));
    }
    let record = |key: &u128| parse_record(&records, key_offset(*key));
    keys.sort_unstable();
    // Tokens whose first 12 bytes tie (rare) were ordered by record offset:
    // re-sort each such run by the full bytes (distinct keys of a map
    // never compare equal).
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
                run.sort_unstable_by(|a, b| record(a).2.cmp(record(b).2));
            }
        }
        run_start = run_end.max(run_start.saturating_add(1));
    }
    const BLOCK: usize = 64 * 1024;
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK.saturating_add(4096));
    let mut hasher = Sha256::new();
    block.push(b'[');
    // Sorted order visits the records at random: read a byte of the record
    // PREFETCH keys ahead so its cache miss overlaps the work on this one
    // (safe Rust's stand-in for a prefetch instruction; `touched` only
    // keeps the loads from being optimised away).
    const PREFETCH: usize = 8;
    let mut touched = 0u8;
    for (i, key) in keys.iter().enumerate() {
        if let Some(ahead) = keys.get(i.saturating_add(PREFETCH)) {
            touched ^= records.get(key_offset(*ahead)).copied().unwrap_or(0);
        }
        let (id, number, token) = record(key);
        block.extend_from_slice(if i == 0 { b"[" } else { b",[" });
        push_escaped(&mut block, token);
        block.push(b',');
        match id {
            Some(id) if id != u32::MAX => push_u64(&mut block, u64::from(id)),
            _ => {
                let id = vocab.entry(number).map(|(_, v)| v).unwrap_or(&Value::Null);
                let mut sink = ByteSink(core::mem::take(&mut block));
                let written = write_value(&mut sink, id, WriteOptions::COMPACT);
                block = sink.0;
                written?;
            }
        }
        block.push(b']');
        if block.len() >= BLOCK {
            hasher.update(&block);
            block.clear();
        }
    }
    block.push(b']');
    hasher.update(&block);
    core::hint::black_box(touched);
    Ok(hex(&hasher.finalize()))
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

/// `\uXXXX` of one UTF-16 unit, lowercase hex.
fn u16_escape(unit: u32) -> [u8; 6] {
    let digit = |shift: u32| {
        HEX_DIGITS
            .get(((unit >> shift) & 0xf) as usize)
            .copied()
            .unwrap_or(b'0')
    };
    [b'\\', b'u', digit(12), digit(8), digit(4), digit(0)]
}

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
                let cp = (u32::from(lead & 0x1f) << 6) | u32::from(second & 0x3f);
                out.extend_from_slice(&u16_escape(cp));
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

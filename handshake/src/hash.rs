//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{Object, Sink, Value, WriteOptions, write_value, write_wtf8_string};

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
                slot.copy_from_slice(bytes);
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

/// `model_hash`: SHA-256 hex of `json.dumps(config, sort_keys=True,
/// separators=(",", ":"))` encoded as UTF-8 (AVP-HASH-1).
pub fn model_hash(config: &Value) -> Result<String, Error> {
    let mut sink = HashSink::new();
    write_value(&mut sink, config, WriteOptions::CANONICAL)?;
    Ok(sink.finish())
}

/// The first 8 bytes big-endian (zero-padded): comparing these first
/// settles most comparisons of a sort without touching the strings.
fn sort_prefix(s: &[u8]) -> u64 {
    let mut head = [0u8; 8];
    for (slot, b) in head.iter_mut().zip(s) {
        *slot = *b;
    }
    u64::from_be_bytes(head)
}

/// `tokenizer_hash`: SHA-256 hex of `json.dumps(sorted(vocab.items()),
/// separators=(",", ":"))` (AVP-HASH-10): a list of `[token, id]` pairs in
/// code-point order of the tokens, `ensure_ascii` escaping, no key sorting
/// inside values.
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    // One sequential pass renders every `[token,id]` item into `items`; the
    // sort then moves only (8-byte prefix, entry number) pairs and the final
    // pass reads the compact `items` buffer, instead of chasing 150k
    // scattered heap strings and values in sorted (random) order.
    let total: usize = vocab
        .iter()
        .map(|(k, _)| k.as_wtf8().len())
        .fold(0, usize::saturating_add);
    // Escaping at most triples a token (2-byte UTF-8 → 6-byte escape; 3- and
    // 4-byte sequences grow less); ids and brackets add ~12 bytes per item.
    let estimate = total
        .saturating_mul(3)
        .saturating_add(vocab.len().saturating_mul(12));
    let mut items = ByteSink(Vec::with_capacity(estimate));
    let mut tokens: Vec<&[u8]> = Vec::with_capacity(vocab.len());
    let mut bounds: Vec<usize> = Vec::with_capacity(vocab.len().saturating_add(1));
    let mut order: Vec<(u64, u32)> = Vec::with_capacity(vocab.len());
    bounds.push(0);
    for (token, id) in vocab.iter() {
        let bytes = token.as_wtf8();
        let number = u32::try_from(tokens.len())
            .map_err(|_| Error::Tokenizer("more than 2^32 tokens".into()))?;
        items.put_ascii(b"[");
        write_wtf8_string(&mut items, bytes);
        items.put_ascii(b",");
        write_value(&mut items, id, WriteOptions::COMPACT)?;
        items.put_ascii(b"]");
        bounds.push(items.0.len());
        tokens.push(bytes);
        order.push((sort_prefix(bytes), number));
    }
    let token = |number: u32| tokens.get(number as usize).copied().unwrap_or_default();
    // Equal prefixes fall back to the full comparison; zero padding cannot
    // misorder ("a" vs "a\0" tie on the prefix and are then compared fully).
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| token(a.1).cmp(token(b.1))));
    // Feed SHA-256 through a small cache-resident buffer (a fresh buffer
    // for the whole text costs more in page faults than it saves).
    let mut sink = HashSink::new();
    sink.put_ascii(b"[");
    for (i, (_, number)) in order.into_iter().enumerate() {
        if i > 0 {
            sink.put_ascii(b",");
        }
        let n = number as usize;
        let (start, end) = (
            bounds.get(n).copied().unwrap_or(0),
            bounds.get(n.saturating_add(1)).copied().unwrap_or(0),
        );
        sink.put_ascii(items.0.get(start..end).unwrap_or_default());
    }
    sink.put_ascii(b"]");
    Ok(sink.finish())
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

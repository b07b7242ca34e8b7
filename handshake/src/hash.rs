//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{Object, Sink, Value, WriteOptions, write_value, write_wtf8_string};

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// A [`Sink`] that feeds SHA-256 in blocks of up to 64 KiB.
struct HashSink {
    buffer: Vec<u8>,
    hasher: Sha256,
}

impl HashSink {
    const BLOCK: usize = 64 * 1024;

    fn new() -> Self {
        Self {
            buffer: Vec::with_capacity(1024),
            hasher: Sha256::new(),
        }
    }

    fn finish(mut self) -> String {
        self.hasher.update(&self.buffer);
        hex(&self.hasher.finalize())
    }
}

impl Sink for HashSink {
    fn put(&mut self, s: &str) {
        self.put_ascii(s.as_bytes());
    }

    #[inline]
    fn put_ascii(&mut self, bytes: &[u8]) {
        if self.buffer.len().saturating_add(bytes.len()) > Self::BLOCK {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
        self.buffer.extend_from_slice(bytes);
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

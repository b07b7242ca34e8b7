//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{JsonString, Object, Sink, Value, WriteOptions, write_string_pub, write_value};

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

/// A [`Sink`] that feeds SHA-256 in 64 KiB blocks.
struct HashSink {
    buffer: String,
    hasher: Sha256,
}

impl HashSink {
    const BLOCK: usize = 64 * 1024;

    fn new() -> Self {
        Self {
            buffer: String::with_capacity(Self::BLOCK),
            hasher: Sha256::new(),
        }
    }

    fn finish(mut self) -> String {
        self.hasher.update(self.buffer.as_bytes());
        hex(&self.hasher.finalize())
    }
}

impl Sink for HashSink {
    fn put(&mut self, s: &str) {
        if self.buffer.len().saturating_add(s.len()) > Self::BLOCK {
            self.hasher.update(self.buffer.as_bytes());
            self.buffer.clear();
        }
        self.buffer.push_str(s);
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
/// settles most comparisons of a sort without touching the heap.
fn sort_prefix(s: &JsonString) -> u64 {
    let mut head = [0u8; 8];
    for (slot, b) in head.iter_mut().zip(s.as_wtf8()) {
        *slot = *b;
    }
    u64::from_be_bytes(head)
}

/// `tokenizer_hash`: SHA-256 hex of `json.dumps(sorted(vocab.items()),
/// separators=(",", ":"))` (AVP-HASH-10): a list of `[token, id]` pairs in
/// code-point order of the tokens, `ensure_ascii` escaping, no key sorting
/// inside values.
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    let mut entries: Vec<(u64, &JsonString, &Value)> =
        vocab.iter().map(|(k, v)| (sort_prefix(k), k, v)).collect();
    // Equal prefixes fall back to the full comparison; zero padding cannot
    // misorder ("a" vs "a\0" tie on the prefix and are then compared fully).
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let mut sink = HashSink::new();
    sink.put("[");
    for (i, (_, token, id)) in entries.into_iter().enumerate() {
        sink.put(if i > 0 { ",[" } else { "[" });
        write_string_pub(&mut sink, token);
        sink.put(",");
        write_value(&mut sink, id, WriteOptions::COMPACT)?;
        sink.put("]");
    }
    sink.put("]");
    Ok(sink.finish())
}

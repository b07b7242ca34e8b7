//! The two SHA-256 hashes the SDK exchanges (AVP-HASH-1, AVP-HASH-10).

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::json::{JsonString, Object, Value, WriteOptions, to_canonical, write_value};

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

/// `model_hash`: SHA-256 hex of `json.dumps(config, sort_keys=True,
/// separators=(",", ":"))` encoded as UTF-8 (AVP-HASH-1).
pub fn model_hash(config: &Value) -> Result<String, Error> {
    let canonical = to_canonical(config)?;
    Ok(hex(&Sha256::digest(canonical.as_bytes())))
}

/// `tokenizer_hash`: SHA-256 hex of `json.dumps(sorted(vocab.items()),
/// separators=(",", ":"))` (AVP-HASH-10): a list of `[token, id]` pairs in
/// code-point order of the tokens, `ensure_ascii` escaping, no key sorting
/// inside values.
pub fn tokenizer_hash(vocab: &Object) -> Result<String, Error> {
    let mut entries: Vec<(&JsonString, &Value)> = vocab.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // Tokens are short: ~20 bytes per pair is a good first guess.
    let mut out = String::with_capacity(entries.len().saturating_mul(20).saturating_add(2));
    out.push('[');
    for (i, (token, id)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        crate::json::write_string_pub(&mut out, token);
        out.push(',');
        write_value(&mut out, id, WriteOptions::COMPACT)?;
        out.push(']');
    }
    out.push(']');
    Ok(hex(&Sha256::digest(out.as_bytes())))
}

//! The JSON writer: Python's `json.dumps` with `ensure_ascii=True` and
//! `allow_nan=True` (its defaults), byte for byte (AVP-HASH-2..AVP-HASH-5).
//!
//! Output goes to a [`Sink`]: a `String`, or a hashing sink that feeds
//! SHA-256 in blocks so a hash never materialises the whole text.

use core::fmt::Write as _;

use crate::error::{JsonError, JsonErrorKind};
use crate::float::{StackBuf, format_u64, write_py_float_to};
use crate::{JsonString, MAX_DEPTH, Value};

/// Where written JSON text goes. The writer only ever hands over ASCII.
pub trait Sink {
    /// Appends `s`.
    fn put(&mut self, s: &str);

    /// Appends ASCII bytes (the writer never passes anything else).
    fn put_ascii(&mut self, bytes: &[u8]) {
        self.put(core::str::from_utf8(bytes).unwrap_or_default());
    }

    /// Exactly `len` bytes of room to write ASCII into in place, if the sink
    /// can lend them (a fast path for sinks with a buffer; the default
    /// `None` makes the writer use [`put_ascii`](Sink::put_ascii)). Nothing
    /// written there counts until [`commit`](Sink::commit).
    fn spare(&mut self, len: usize) -> Option<&mut [u8]> {
        let _ = len;
        None
    }

    /// Keeps the `len` bytes just written into the slice from [`spare`](Sink::spare).
    fn commit(&mut self, len: usize) {
        let _ = len;
    }
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

/// Item and key separators, as `json.dumps(separators=...)` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Separators {
    /// `(",", ":")`: what the hashes use.
    Compact,
    /// `(", ", ": ")`: Python's default, what the SDK sends on the wire.
    PythonDefault,
}

/// How to write a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Sort object keys by code point (`sort_keys=True`).
    pub sort_keys: bool,
    /// Separators between items and between key and value.
    pub separators: Separators,
}

impl WriteOptions {
    /// `sort_keys=True, separators=(",", ":")`: the model-hash form (AVP-HASH-1).
    pub const CANONICAL: WriteOptions = WriteOptions {
        sort_keys: true,
        separators: Separators::Compact,
    };
    /// `separators=(",", ":")` without sorting: the tokenizer-hash form (AVP-HASH-10).
    pub const COMPACT: WriteOptions = WriteOptions {
        sort_keys: false,
        separators: Separators::Compact,
    };
    /// `json.dumps(x)` with every default: the SDK's wire form of a hello.
    pub const PYTHON_DEFAULT: WriteOptions = WriteOptions {
        sort_keys: false,
        separators: Separators::PythonDefault,
    };
}

/// `value` written with `options` into a new string, e.g.
/// `to_string(&v, WriteOptions::PYTHON_DEFAULT)` is Python's `json.dumps(v)`.
pub fn to_string(value: &Value, options: WriteOptions) -> Result<String, JsonError> {
    let mut out = String::new();
    write_value(&mut out, value, options)?;
    Ok(out)
}

/// `json.dumps(value, sort_keys=True, separators=(",", ":"))` (AVP-HASH-1).
pub fn to_canonical(value: &Value) -> Result<String, JsonError> {
    let mut out = String::new();
    write_value(&mut out, value, WriteOptions::CANONICAL)?;
    Ok(out)
}

/// Appends `value` written with `options`. Fails only for values nested
/// deeper than [`MAX_DEPTH`] (which the parser never produces).
pub fn write_value<S: Sink + ?Sized>(
    out: &mut S,
    value: &Value,
    options: WriteOptions,
) -> Result<(), JsonError> {
    write_inner(out, value, options, 0)
}

fn write_inner<S: Sink + ?Sized>(
    out: &mut S,
    value: &Value,
    options: WriteOptions,
    depth: usize,
) -> Result<(), JsonError> {
    // Constant slices per case, so that buffered sinks store them inline
    // instead of calling memcpy for a length known only at run time.
    let put_item_sep = |out: &mut S| match options.separators {
        Separators::Compact => out.put_ascii(b","),
        Separators::PythonDefault => out.put_ascii(b", "),
    };
    let key_sep: &[u8] = match options.separators {
        Separators::Compact => b":",
        Separators::PythonDefault => b": ",
    };
    match value {
        Value::Null => out.put_ascii(b"null"),
        Value::Bool(true) => out.put_ascii(b"true"),
        Value::Bool(false) => out.put_ascii(b"false"),
        Value::Int(i) if i.as_i64().is_some() => put_i64(out, i.as_i64().unwrap_or(0)),
        Value::Int(i) => {
            let mut buf = StackBuf::new();
            if write!(buf, "{i}").is_ok() {
                out.put(buf.as_str());
            } else {
                // Integers too long for the stack buffer.
                out.put(&i.to_string());
            }
        }
        Value::Float(f) => {
            let mut buf = StackBuf::new();
            write_py_float_to(&mut buf, *f);
            out.put_ascii(buf.as_bytes());
        }
        // Number text is ASCII by construction (digits, sign, '.', 'e', NaN, Infinity).
        Value::NumberText(t) => out.put(t),
        Value::Str(s) => {
            if !put_plain_string(out, s.as_wtf8(), b"") {
                write_string(out, s);
            }
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep_to_write());
            }
            out.put_ascii(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    put_item_sep(out);
                }
                write_inner(out, item, options, depth.saturating_add(1))?;
            }
            out.put_ascii(b"]");
        }
        Value::Object(obj) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep_to_write());
            }
            out.put_ascii(b"{");
            let write_member =
                |out: &mut S, i: usize, k: &JsonString, v: &Value| -> Result<(), JsonError> {
                    if i > 0 {
                        put_item_sep(out);
                    }
                    if !put_plain_string(out, k.as_wtf8(), key_sep) {
                        write_string(out, k);
                        out.put_ascii(key_sep);
                    }
                    // Scalars inline; only containers recurse.
                    if write_scalar(out, v) {
                        Ok(())
                    } else {
                        write_inner(out, v, options, depth.saturating_add(1))
                    }
                };
            if !options.sort_keys {
                for (i, (k, v)) in obj.iter().enumerate() {
                    write_member(out, i, k, v)?;
                }
            } else if obj.len() <= SMALL_OBJECT {
                // Configs have a few dozen keys: sort them on the stack
                // (in an array sized for the object: zeroing 1 KiB for a
                // nested 2-key object costs more than sorting it).
                let mut tiny = [0u128; TINY_OBJECT];
                let mut small = [0u128; SMALL_OBJECT];
                let entries = obj.entries.as_slice();
                let order = if entries.len() <= TINY_OBJECT {
                    sorted_small(entries, &mut tiny)
                } else {
                    sorted_small(entries, &mut small)
                };
                for (i, packed) in order.iter().enumerate() {
                    // The low byte is the entry's index (< SMALL_OBJECT).
                    if let Some((k, v)) = entries.get(usize::from(packed.to_le_bytes()[0])) {
                        write_member(out, i, k, v)?;
                    }
                }
            } else {
                let mut entries: Vec<(&JsonString, &Value)> = obj.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    write_member(out, i, k, v)?;
                }
            }
            out.put_ascii(b"}");
        }
    }
    Ok(())
}

/// Writes `"text"` followed by `suffix` in place through [`Sink::spare`]
/// when every byte of `text` goes out unescaped (config keys and most
/// values): one pass that checks and copies, no scan-then-copy. Returns
/// false, having written nothing, when the sink lends no room or some byte
/// needs escaping.
#[inline]
fn put_plain_string<S: Sink + ?Sized>(out: &mut S, text: &[u8], suffix: &[u8]) -> bool {
    let len = text.len().saturating_add(2).saturating_add(suffix.len());
    let Some(room) = out.spare(len) else {
        return false;
    };
    let Some((open, rest)) = room.split_first_mut() else {
        return false;
    };
    *open = b'"';
    let Some((body, tail)) = rest.split_at_mut_checked(text.len()) else {
        return false;
    };
    if !copy_plain(body, text) {
        return false;
    }
    let Some((close, after)) = tail.split_first_mut() else {
        return false;
    };
    *close = b'"';
    for (slot, &b) in after.iter_mut().zip(suffix) {
        *slot = b;
    }
    out.commit(len);
    true
}

/// Copies `src` into `dst` (same length) while checking that every byte is
/// plain; false at the first one that is not. Eight bytes at a time.
#[inline]
fn copy_plain(dst: &mut [u8], src: &[u8]) -> bool {
    let mut dst_words = dst.chunks_exact_mut(8);
    let mut src_words = src.chunks_exact(8);
    for (d, s) in (&mut dst_words).zip(&mut src_words) {
        let Ok(word) = <[u8; 8]>::try_from(s) else {
            return false;
        };
        if !all_plain(u64::from_le_bytes(word)) {
            return false;
        }
        d.copy_from_slice(&word);
    }
    for (slot, &b) in dst_words
        .into_remainder()
        .iter_mut()
        .zip(src_words.remainder())
    {
        if !PLAIN.get(usize::from(b)).copied().unwrap_or(false) {
            return false;
        }
        *slot = b;
    }
    true
}

/// True when all eight bytes of `w` are plain (`0x20..=0x7e`, not `"` or
/// `\\`), by the usual bit tricks: a byte below `n` leaves its high bit set
/// in `(w - n·0x01..) & !w & 0x80..`; a byte above 0x7e sets it in
/// `(w + 0x01..) | w`; equality is a zero byte after an XOR.
#[inline]
fn all_plain(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES.wrapping_mul(n)) & !x & HIGHS;
    let control = below(w, 0x20);
    let high = (w.wrapping_add(ONES) | w) & HIGHS;
    let quote = below(w ^ ONES.wrapping_mul(u64::from(b'"')), 1);
    let backslash = below(w ^ ONES.wrapping_mul(u64::from(b'\\')), 1);
    (control | high | quote | backslash) == 0
}

/// Bytes that go out unchanged in a string, as a table: printable ASCII
/// except `"` and `\`.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b: u8 = 0x20;
    while b < 0x7f {
        // In a const block: out-of-range indexing fails the build, not a run.
        #[allow(clippy::indexing_slicing)]
        {
            table[b as usize] = b != b'"' && b != b'\\';
        }
        b += 1;
    }
    table
};

/// Writes the decimal digits of `v` (with `-`), in place when the sink
/// lends room.
#[inline]
fn put_i64<S: Sink + ?Sized>(out: &mut S, v: i64) {
    let magnitude = v.unsigned_abs();
    let digits = decimal_digits(magnitude);
    let len = digits.saturating_add(usize::from(v < 0));
    if let Some(room) = out.spare(len) {
        let mut n = magnitude;
        for slot in room.iter_mut().rev().take(digits) {
            // n % 10 < 10, so the cast is exact.
            *slot = b'0'.saturating_add((n % 10) as u8);
            n /= 10;
        }
        if let (true, Some(sign)) = (v < 0, room.first_mut()) {
            *sign = b'-';
        }
        out.commit(len);
    } else {
        let mut buf = [0u8; 20];
        out.put_ascii(format_i64(v, &mut buf));
    }
}

/// Number of decimal digits of `n` (1 for 0).
fn decimal_digits(mut n: u64) -> usize {
    let mut count: usize = 1;
    while n >= 10 {
        n /= 10;
        count = count.saturating_add(1);
    }
    count
}

/// Decimal digits of `v` (with `-`), written at the end of `buf` (20 bytes
/// hold `i64::MIN`: 19 digits and the sign).
fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let digits = format_u64(v.unsigned_abs(), buf).len();
    let mut at = buf.len().saturating_sub(digits);
    if v < 0 {
        at = at.saturating_sub(1);
        if let Some(slot) = buf.get_mut(at) {
            *slot = b'-';
        }
    }
    buf.get(at..).unwrap_or_default()
}

/// Objects up to this size are sorted without a heap allocation.
const SMALL_OBJECT: usize = 64;
/// Objects up to this size are sorted in a smaller stack array.
const TINY_OBJECT: usize = 8;

/// Writes `value` when it is a scalar with a fast form (null, booleans,
/// `i64` integers, plain strings); false, having written nothing, otherwise.
#[inline]
fn write_scalar<S: Sink + ?Sized>(out: &mut S, value: &Value) -> bool {
    match value {
        Value::Null => out.put_ascii(b"null"),
        Value::Bool(true) => out.put_ascii(b"true"),
        Value::Bool(false) => out.put_ascii(b"false"),
        Value::Int(i) => match i.as_i64() {
            Some(v) => put_i64(out, v),
            None => return false,
        },
        Value::Str(s) => return put_plain_string(out, s.as_wtf8(), b""),
        Value::Float(_) | Value::NumberText(_) | Value::Array(_) | Value::Object(_) => {
            return false;
        }
    }
    true
}

/// The first 16 bytes of `key` as a big-endian integer, zero-padded
/// (whole-word loads where the key is long enough).
fn key_prefix(key: &[u8]) -> u128 {
    let word = |bytes: Option<&[u8]>| {
        bytes
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes)
    };
    let len = key.len();
    if len >= 16 {
        (u128::from(word(key.get(..8))) << 64) | u128::from(word(key.get(8..16)))
    } else if len >= 8 {
        // The last 8 bytes overlap the first word; shift the overlap out.
        // (len == 8 shifts all 64 bits out: no second word.)
        let shift = u32::try_from(16usize.saturating_sub(len).saturating_mul(8)).unwrap_or(64);
        let low = word(key.get(len.saturating_sub(8)..))
            .checked_shl(shift)
            .unwrap_or(0);
        (u128::from(word(key.get(..8))) << 64) | u128::from(low)
    } else {
        let mut packed = [0u8; 16];
        for (byte, key_byte) in packed.iter_mut().zip(key) {
            *byte = *key_byte;
        }
        u128::from_be_bytes(packed)
    }
}

/// The entries of a small object in key order, each as one `u128`: the
/// key's first 15 bytes big-endian in the high bytes, the entry index in
/// the low byte. Sorting plain integers needs no comparator calls; keys
/// whose 15-byte prefixes tie (rare) are then re-sorted by their full bytes.
fn sorted_small<'a>(entries: &[(JsonString, Value)], order: &'a mut [u128]) -> &'a [u128] {
    let count = entries.len().min(order.len()).min(SMALL_OBJECT);
    for (index, (slot, (key, _))) in order.iter_mut().zip(entries).enumerate() {
        // index < SMALL_OBJECT <= 256.
        *slot = (key_prefix(key.as_wtf8()) & !0xff)
            | u128::from(u8::try_from(index).unwrap_or(u8::MAX));
    }
    let order = order.get_mut(..count).unwrap_or_default();
    order.sort_unstable();
    let prefix_ties = order.windows(2).any(|pair| match pair {
        [a, b] => a >> 8 == b >> 8,
        _ => false,
    });
    if prefix_ties {
        let key = |packed: &u128| {
            entries
                .get(usize::from(packed.to_le_bytes()[0]))
                .map(|(k, _)| k.as_wtf8())
                .unwrap_or_default()
        };
        order.sort_unstable_by(|a, b| key(a).cmp(key(b)));
    }
    order
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `\uXXXX` for one UTF-16 unit, lowercase hex.
fn put_u16_escape<S: Sink + ?Sized>(out: &mut S, unit: u32) {
    let mut esc = *b"\\u0000";
    for (slot, shift) in esc.iter_mut().skip(2).zip([12u32, 8, 4, 0]) {
        *slot = HEX
            .get(((unit >> shift) & 0xf) as usize)
            .copied()
            .unwrap_or(b'0');
    }
    out.put_ascii(&esc);
}

/// Bytes that go out unchanged: printable ASCII except `"` and `\`.
fn is_plain(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'
}

/// A string with `ensure_ascii=True` escaping (AVP-HASH-5): `\"`, `\\`,
/// `\n`, `\r`, `\t`, `\b`, `\f`, everything else outside `' '..='~'` as
/// lowercase `\uXXXX`, astral code points as surrogate pairs.
pub(crate) fn write_string<S: Sink + ?Sized>(out: &mut S, s: &JsonString) {
    write_wtf8_string(out, s.as_wtf8());
}

/// [`write_string`] over the WTF-8 bytes of a [`JsonString`].
pub(crate) fn write_wtf8_string<S: Sink + ?Sized>(out: &mut S, wtf8: &[u8]) {
    out.put_ascii(b"\"");
    write_wtf8_body(out, wtf8);
    out.put_ascii(b"\"");
}

/// The escaped characters of [`write_wtf8_string`], without the quotes.
pub fn write_wtf8_body<S: Sink + ?Sized>(out: &mut S, wtf8: &[u8]) {
    let mut rest = wtf8;
    while !rest.is_empty() {
        // Copy the run of plain ASCII in one piece.
        let run = rest
            .iter()
            .position(|&b| !is_plain(b))
            .unwrap_or(rest.len());
        let (plain, tail) = rest.split_at(run);
        out.put_ascii(plain);
        let Some((&lead, _)) = tail.split_first() else {
            break;
        };
        let width = crate::utf8_width(lead).min(tail.len());
        let (seq, after) = tail.split_at(width);
        rest = after;
        let cp = crate::CodePoints { bytes: seq }.next().unwrap_or(0xfffd);
        match cp {
            0x22 => out.put_ascii(b"\\\""),
            0x5c => out.put_ascii(b"\\\\"),
            0x0a => out.put_ascii(b"\\n"),
            0x0d => out.put_ascii(b"\\r"),
            0x09 => out.put_ascii(b"\\t"),
            0x08 => out.put_ascii(b"\\b"),
            0x0c => out.put_ascii(b"\\f"),
            0..=0xffff => put_u16_escape(out, cp),
            _ => {
                let v = cp.saturating_sub(0x10000);
                put_u16_escape(out, 0xd800 | (v >> 10));
                put_u16_escape(out, 0xdc00 | (v & 0x3ff));
            }
        }
    }
}

#[cold]
fn too_deep_to_write() -> JsonError {
    JsonError::new(JsonErrorKind::TooDeepToWrite, 0)
}

//! The JSON writer: Python's `json.dumps` with `ensure_ascii=True` and
//! `allow_nan=True` (its defaults), byte for byte (AVP-HASH-2..AVP-HASH-5).
//!
//! Output goes to a [`Sink`]: a `String`, or a hashing sink that feeds
//! SHA-256 in blocks so a hash never materialises the whole text.

use core::fmt::Write as _;

use super::float::{StackBuf, write_py_float_to};
use super::{JsonString, MAX_DEPTH, Value};
use crate::error::Error;

/// Where written JSON text goes. The writer only ever hands over ASCII.
pub trait Sink {
    /// Appends `s`.
    fn put(&mut self, s: &str);

    /// Appends ASCII bytes (the writer never passes anything else).
    fn put_ascii(&mut self, bytes: &[u8]) {
        self.put(core::str::from_utf8(bytes).unwrap_or_default());
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

/// `json.dumps(value, sort_keys=True, separators=(",", ":"))` (AVP-HASH-1).
pub fn to_canonical(value: &Value) -> Result<String, Error> {
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
) -> Result<(), Error> {
    write_inner(out, value, options, 0)
}

fn write_inner<S: Sink + ?Sized>(
    out: &mut S,
    value: &Value,
    options: WriteOptions,
    depth: usize,
) -> Result<(), Error> {
    let (item_sep, key_sep) = match options.separators {
        Separators::Compact => (",", ":"),
        Separators::PythonDefault => (", ", ": "),
    };
    match value {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Int(i) if i.as_i64().is_some() => {
            let mut digits = [0u8; 20];
            out.put_ascii(format_i64(i.as_i64().unwrap_or(0), &mut digits));
        }
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
            out.put(buf.as_str());
        }
        Value::Str(s) => write_string(out, s),
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(Error::TooDeepToWrite);
            }
            out.put("[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(item_sep);
                }
                write_inner(out, item, options, depth.saturating_add(1))?;
            }
            out.put("]");
        }
        Value::Object(obj) => {
            if depth >= MAX_DEPTH {
                return Err(Error::TooDeepToWrite);
            }
            out.put("{");
            let write_member =
                |out: &mut S, i: usize, k: &JsonString, v: &Value| -> Result<(), Error> {
                    if i > 0 {
                        out.put(item_sep);
                    }
                    write_string(out, k);
                    out.put(key_sep);
                    write_inner(out, v, options, depth.saturating_add(1))
                };
            if !options.sort_keys {
                for (i, (k, v)) in obj.iter().enumerate() {
                    write_member(out, i, k, v)?;
                }
            } else if obj.len() <= SMALL_OBJECT {
                // Configs have a few dozen keys: sort references on the stack.
                let mut slots: [Option<(&JsonString, &Value)>; SMALL_OBJECT] = [None; SMALL_OBJECT];
                for (slot, entry) in slots.iter_mut().zip(obj.iter()) {
                    *slot = Some(entry);
                }
                let filled = slots.get_mut(..obj.len()).unwrap_or_default();
                filled.sort_unstable_by(|a, b| a.map(|e| e.0).cmp(&b.map(|e| e.0)));
                for (i, (k, v)) in filled.iter().flatten().enumerate() {
                    write_member(out, i, k, v)?;
                }
            } else {
                let mut entries: Vec<(&JsonString, &Value)> = obj.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    write_member(out, i, k, v)?;
                }
            }
            out.put("}");
        }
    }
    Ok(())
}

/// Decimal digits of `v` (with `-`), written at the end of `buf`.
fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut at = buf.len();
    loop {
        at = at.saturating_sub(1);
        if let Some(slot) = buf.get_mut(at) {
            // n % 10 < 10, so the cast is exact.
            *slot = b'0'.saturating_add((n % 10) as u8);
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
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
        let width = super::utf8_width(lead).min(tail.len());
        let (seq, after) = tail.split_at(width);
        rest = after;
        let cp = super::CodePoints { bytes: seq }.next().unwrap_or(0xfffd);
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
    out.put_ascii(b"\"");
}

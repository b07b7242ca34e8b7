//! The JSON writer: Python's `json.dumps` with `ensure_ascii=True` and
//! `allow_nan=True` (its defaults), byte for byte (AVP-HASH-2..AVP-HASH-5).

use super::{JsonString, MAX_DEPTH, Value, write_py_float};
use crate::error::Error;

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
pub fn write_value(out: &mut String, value: &Value, options: WriteOptions) -> Result<(), Error> {
    write_inner(out, value, options, 0)
}

fn write_inner(
    out: &mut String,
    value: &Value,
    options: WriteOptions,
    depth: usize,
) -> Result<(), Error> {
    let (item_sep, key_sep) = match options.separators {
        Separators::Compact => (",", ":"),
        Separators::PythonDefault => (", ", ": "),
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Int(i) => {
            use core::fmt::Write as _;
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_py_float(out, *f),
        Value::Str(s) => write_string(out, s),
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(Error::TooDeepToWrite);
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_inner(out, item, options, depth.saturating_add(1))?;
            }
            out.push(']');
        }
        Value::Object(obj) => {
            if depth >= MAX_DEPTH {
                return Err(Error::TooDeepToWrite);
            }
            out.push('{');
            let mut entries: Vec<(&JsonString, &Value)> = obj.iter().collect();
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_string(out, k);
                out.push_str(key_sep);
                write_inner(out, v, options, depth.saturating_add(1))?;
            }
            out.push('}');
        }
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_u16_escape(out: &mut String, unit: u32) {
    out.push_str("\\u");
    for shift in [12u32, 8, 4, 0] {
        let nibble = (unit >> shift) & 0xf;
        out.push(char::from(
            HEX.get(nibble as usize).copied().unwrap_or(b'0'),
        ));
    }
}

/// A string with `ensure_ascii=True` escaping (AVP-HASH-5): `\"`, `\\`,
/// `\n`, `\r`, `\t`, `\b`, `\f`, everything else outside `' '..='~'` as
/// lowercase `\uXXXX`, astral code points as surrogate pairs.
pub(crate) fn write_string(out: &mut String, s: &JsonString) {
    out.push('"');
    let bytes = s.as_wtf8();
    // Fast path: printable ASCII without quotes or backslashes goes out as is.
    if bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(core::str::from_utf8(bytes).unwrap_or_default());
        out.push('"');
        return;
    }
    for cp in s.code_points() {
        match cp {
            0x22 => out.push_str("\\\""),
            0x5c => out.push_str("\\\\"),
            0x0a => out.push_str("\\n"),
            0x0d => out.push_str("\\r"),
            0x09 => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0x20..=0x7e => out.push(char::from_u32(cp).unwrap_or('?')),
            0..=0xffff => push_u16_escape(out, cp),
            _ => {
                let v = cp.saturating_sub(0x10000);
                push_u16_escape(out, 0xd800 | (v >> 10));
                push_u16_escape(out, 0xdc00 | (v & 0x3ff));
            }
        }
    }
    out.push('"');
}

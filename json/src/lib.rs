//! Python-exact JSON for AVP: a reader and a writer that keep everything
//! Python's `json` module keeps (spec/protocol/handshake.md, AVP-HASH-1..AVP-HASH-9).
//!
//! Generic JSON libraries lose exactly the details that decide a SHA-256
//! over `json.dumps(config, sort_keys=True, separators=(",", ":"))`: the
//! int/float distinction (`100` vs `100.0`), integers beyond 64 bits, `-0.0`,
//! `NaN`/`Infinity` (which `json.dumps` writes and `json.loads` reads, and
//! serde_json refuses), lone UTF-16 surrogates from `\ud800` escapes, and
//! Python's dict semantics for duplicate keys. This crate keeps all of them,
//! with no dependencies, so the sans-I/O codec and handshake crates can use it.
//!
//! - [`parse`] / [`parse_with`]: text to [`Value`];
//! - [`write_value`] to any [`Sink`], or [`to_string`] with [`WriteOptions`]
//!   ([`WriteOptions::PYTHON_DEFAULT`] is `json.dumps(x)`,
//!   [`WriteOptions::COMPACT`] is `separators=(",", ":")`, [`to_canonical`]
//!   adds `sort_keys=True`);
//! - build documents with [`Object::with`] and the `From` conversions into [`Value`].
#![forbid(unsafe_code)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

mod error; // the crate's one error type
mod float; // Python's repr(float)
mod parse; // the reader: json.loads grammar and results
mod write; // the writer: json.dumps output

pub use error::{JsonError, JsonErrorKind};
pub use float::write_py_float;
pub use parse::{MAX_DEPTH, MAX_INT_DIGITS, ParseOptions, parse, parse_with};
pub use write::{
    Separators, Sink, WriteOptions, to_canonical, to_string, write_value, write_wtf8_body,
};

use core::cmp::Ordering;
use core::fmt;

/// A JSON string as Python holds it: any sequence of code points, including
/// lone surrogates (which a Rust `String` cannot hold).
///
/// Stored as WTF-8 (UTF-8 extended to encode surrogates as 3-byte sequences),
/// so byte order equals code-point order (the order Python sorts keys in,
/// AVP-HASH-4) and plain UTF-8 strings cost nothing extra.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct JsonString(Vec<u8>);

impl JsonString {
    /// The WTF-8 bytes (plain UTF-8 unless the string holds a lone surrogate).
    pub fn as_wtf8(&self) -> &[u8] {
        &self.0
    }

    /// The string as `&str`, or `None` when it holds a lone surrogate.
    pub fn as_str(&self) -> Option<&str> {
        core::str::from_utf8(&self.0).ok()
    }

    /// The string with every lone surrogate replaced by U+FFFD.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Builds from WTF-8 bytes produced by this crate's parser.
    pub(crate) fn from_wtf8_unchecked(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The code points of the string, surrogates included.
    pub fn code_points(&self) -> CodePoints<'_> {
        CodePoints { bytes: &self.0 }
    }

    /// The first `n` code points, as Python's `s[:n]` gives them.
    pub fn prefix_code_points(&self, n: usize) -> JsonString {
        let mut end = 0usize;
        let mut rest = self.0.as_slice();
        for _ in 0..n {
            let Some(&lead) = rest.first() else { break };
            let width = utf8_width(lead).min(rest.len());
            end = end.saturating_add(width);
            rest = rest.get(width..).unwrap_or_default();
        }
        JsonString(self.0.get(..end).unwrap_or_default().to_vec())
    }

    /// True when the string is empty (Python truthiness).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for JsonString {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for JsonString {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl PartialOrd for JsonString {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for JsonString {
    /// Code-point order (WTF-8 byte order is code-point order).
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl fmt::Debug for JsonString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

impl fmt::Display for JsonString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

/// Length of the (W)UTF-8 sequence starting with `lead`.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Iterator over the code points of a [`JsonString`].
#[derive(Debug, Clone)]
pub struct CodePoints<'a> {
    pub(crate) bytes: &'a [u8],
}

impl Iterator for CodePoints<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let (&lead, rest) = self.bytes.split_first()?;
        let width = utf8_width(lead);
        let cont = |i: usize| u32::from(rest.get(i).copied().unwrap_or(0x80) & 0x3f);
        let cp = match width {
            1 => u32::from(lead),
            2 => (u32::from(lead & 0x1f) << 6) | cont(0),
            3 => (u32::from(lead & 0x0f) << 12) | (cont(0) << 6) | cont(1),
            _ => (u32::from(lead & 0x07) << 18) | (cont(0) << 12) | (cont(1) << 6) | cont(2),
        };
        self.bytes = self.bytes.get(width..).unwrap_or_default();
        Some(cp)
    }
}

/// A JSON integer of any size, as Python's `int` holds it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Int(IntRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum IntRepr {
    Small(i64),
    /// Normalised decimal (optional `-`, no leading zeros) outside `i64`.
    Big(Box<str>),
}

impl Int {
    /// Parses a JSON integer literal (`-?(0|[1-9][0-9]*)`), already validated.
    pub(crate) fn from_literal(lit: &str) -> Self {
        match lit.parse::<i64>() {
            Ok(v) => Int(IntRepr::Small(v)),
            Err(_) => Int(IntRepr::Big(lit.into())),
        }
    }

    /// The value as `i64`, when it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match &self.0 {
            IntRepr::Small(v) => Some(*v),
            IntRepr::Big(_) => None,
        }
    }

    /// The value as `u64`, when it fits.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            IntRepr::Small(v) => u64::try_from(*v).ok(),
            IntRepr::Big(s) => s.parse::<u64>().ok(),
        }
    }

    /// Python truthiness: non-zero.
    pub fn is_zero(&self) -> bool {
        matches!(self.0, IntRepr::Small(0))
    }

    /// True for values below zero.
    pub fn is_negative(&self) -> bool {
        match &self.0 {
            IntRepr::Small(v) => *v < 0,
            IntRepr::Big(s) => s.starts_with('-'),
        }
    }
}

impl From<i64> for Int {
    fn from(v: i64) -> Self {
        Int(IntRepr::Small(v))
    }
}

impl From<u64> for Int {
    fn from(v: u64) -> Self {
        match i64::try_from(v) {
            Ok(small) => Int(IntRepr::Small(small)),
            Err(_) => Int(IntRepr::Big(v.to_string().into())),
        }
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IntRepr::Small(v) => fmt::Display::fmt(v, f),
            IntRepr::Big(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A JSON object with Python `dict` semantics: insertion order kept; a
/// duplicate key keeps its first position and takes the last value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Object {
    entries: Vec<(JsonString, Value)>,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from entries whose keys the caller knows to be distinct
    /// (skips the duplicate check; with a repeated key, [`Object::get`]
    /// would see only the first).
    pub fn from_distinct(entries: Vec<(JsonString, Value)>) -> Self {
        Self { entries }
    }

    /// Sets `key` (replacing its value in place if present, as `dict` does).
    pub fn insert(&mut self, key: impl Into<JsonString>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// `self` with `key` set to `value`: builds an object in one expression.
    #[must_use]
    pub fn with(mut self, key: impl Into<JsonString>, value: impl Into<Value>) -> Self {
        self.insert(key, value.into());
        self
    }

    /// The value under `key` (a plain UTF-8 key).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_wtf8() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// All entries, in insertion order.
    pub fn entries_slice(&self) -> &[(JsonString, Value)] {
        &self.entries
    }

    /// Entry `index` (insertion order).
    pub fn entry(&self, index: usize) -> Option<(&JsonString, &Value)> {
        self.entries.get(index).map(|(k, v)| (k, v))
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&JsonString, &Value)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Entries in insertion order, by value.
    pub fn into_entries(self) -> Vec<(JsonString, Value)> {
        self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A JSON value as Python's `json.loads` produces it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null` (Python `None`).
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer literal (Python `int`, any size).
    Int(Int),
    /// A literal with a fraction or exponent, or `NaN`/`Infinity`/`-Infinity`
    /// (Python `float`).
    Float(f64),
    /// A string (Python `str`, lone surrogates included).
    Str(JsonString),
    /// A number exactly as written (also `NaN`, `Infinity`, `-Infinity`):
    /// only from [`parse_with`] with [`ParseOptions::keep_number_text`], and
    /// written back verbatim. Build one only from text the parser accepted.
    NumberText(Box<str>),
    /// An array (Python `list`).
    Array(Vec<Value>),
    /// An object (Python `dict`).
    Object(Object),
}

impl Value {
    /// Python truthiness (`bool(x)`), used by the SDK's `a or b` fallbacks.
    pub fn is_truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => !i.is_zero(),
            // NaN is truthy in Python; only ±0.0 is falsy.
            Value::Float(f) => *f != 0.0,
            Value::NumberText(t) => float_of_text(t).is_none_or(|f| f != 0.0),
            Value::Str(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The string, if this is one and holds no lone surrogate.
    pub fn as_str(&self) -> Option<&str> {
        self.as_json_str().and_then(JsonString::as_str)
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer as `i64`, if this is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i.as_i64(),
            _ => None,
        }
    }

    /// The integer as `u64`, if this is an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => i.as_u64(),
            _ => None,
        }
    }

    /// The number as `f64`, as Python's `float(x)` gives it: floats as they
    /// are, integers rounded (`None` for non-numbers and integers beyond `f64`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::NumberText(t) => float_of_text(t),
            #[allow(clippy::cast_precision_loss)] // float(int) rounds too
            Value::Int(i) => match i.as_i64() {
                Some(v) => Some(v as f64),
                None => i.to_string().parse::<f64>().ok().filter(|f| f.is_finite()),
            },
            _ => None,
        }
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// `self[key]` when this is an object holding `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object().and_then(|o| o.get(key))
    }

    /// The string, if this is one.
    pub fn as_json_str(&self) -> Option<&JsonString> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The name of the JSON type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::NumberText(_) => "a number",
            Value::Str(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v.into())
    }
}

/// Python's `float(text)` for a JSON number's text (`NaN`/`Infinity` included).
fn float_of_text(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s.into())
    }
}

impl From<JsonString> for Value {
    fn from(s: JsonString) -> Self {
        Value::Str(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v.into())
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(i64::from(v).into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::Array(items)
    }
}

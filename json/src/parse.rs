//! The JSON reader: Python's `json.loads` grammar and results (AVP-HASH-6).
//!
//! Accepts what `json.loads` accepts (including `NaN`, `Infinity`,
//! `-Infinity` and lone `\uD800` escapes) and yields what it yields (ints of
//! any size, floats correctly rounded, dict semantics for duplicate keys).
//! Differences, each an error instead of Python's behaviour: nesting deeper
//! than [`MAX_DEPTH`] (Python: `RecursionError` near 1000, depending on its
//! stack), a UTF-8 byte-order mark, and invalid UTF-8.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::error::{JsonError, JsonErrorKind};
use crate::{Int, JsonString, Object, Value};

/// Deepest nesting of arrays/objects accepted (AVP-HASH-6).
pub const MAX_DEPTH: usize = 512;

/// Most digits in an integer literal: CPython's default
/// `sys.get_int_max_str_digits()`; `json.loads` raises beyond it (AVP-HASH-6).
pub const MAX_INT_DIGITS: usize = 4300;

/// Objects larger than this get a hash index for duplicate detection.
const INDEX_THRESHOLD: usize = 64;

/// Parses one JSON document (surrounding whitespace allowed) from UTF-8 bytes,
/// nested at most [`MAX_DEPTH`] deep.
pub fn parse(input: &[u8]) -> Result<Value, JsonError> {
    parse_with(input, &ParseOptions::PYTHON)
}

/// How to parse: [`ParseOptions::PYTHON`] is `json.loads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseOptions {
    /// Deepest nesting accepted (at most [`MAX_DEPTH`]; a larger value is
    /// treated as [`MAX_DEPTH`], which bounds the parser's stack use).
    pub max_depth: usize,
    /// Count a scalar as one more level than the container holding it (the
    /// JSON fallback's AVP-LIM-7 counts "each array and the innermost value").
    pub scalars_add_a_level: bool,
    /// Keep every number as its source text ([`Value::NumberText`]) instead
    /// of converting it to an int or float, so that writing it back gives the
    /// same characters (AVP-JSON-4). Python's 4300-digit limit is then not applied.
    pub keep_number_text: bool,
}

impl ParseOptions {
    /// `json.loads`: nesting up to [`MAX_DEPTH`] containers, numbers converted.
    pub const PYTHON: ParseOptions = ParseOptions {
        max_depth: MAX_DEPTH,
        scalars_add_a_level: false,
        keep_number_text: false,
    };

    /// Sets [`ParseOptions::max_depth`].
    #[must_use]
    pub const fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Sets [`ParseOptions::scalars_add_a_level`].
    #[must_use]
    pub const fn with_scalars_adding_a_level(mut self, on: bool) -> Self {
        self.scalars_add_a_level = on;
        self
    }

    /// Sets [`ParseOptions::keep_number_text`].
    #[must_use]
    pub const fn with_number_text_kept(mut self, on: bool) -> Self {
        self.keep_number_text = on;
        self
    }
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self::PYTHON
    }
}

/// [`parse`] with options.
pub fn parse_with(input: &[u8], options: &ParseOptions) -> Result<Value, JsonError> {
    if input.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(JsonError::new(JsonErrorKind::ByteOrderMark, 0));
    }
    if let Err(e) = core::str::from_utf8(input) {
        return Err(JsonError::new(JsonErrorKind::InvalidUtf8, e.valid_up_to()));
    }
    let mut parser = Parser {
        bytes: input,
        pos: 0,
        depth: 0,
        max_depth: options.max_depth.min(MAX_DEPTH),
        scalars_add_a_level: options.scalars_add_a_level,
        keep_number_text: options.keep_number_text,
    };
    parser.skip_ws();
    let value = parser.value()?;
    parser.skip_ws();
    if parser.pos < input.len() {
        return Err(parser.err(JsonErrorKind::TrailingData));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
    scalars_add_a_level: bool,
    keep_number_text: bool,
}

impl Parser<'_> {
    fn err(&self, kind: JsonErrorKind) -> JsonError {
        JsonError::new(kind, self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.bytes.len());
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.bump(1);
        }
    }

    fn rest(&self) -> &[u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, JsonError> {
        if self.rest().starts_with(word) {
            self.bump(word.len());
            Ok(value)
        } else {
            Err(self.err(JsonErrorKind::UnexpectedChar))
        }
    }

    /// `NaN`, `Infinity` or `-Infinity`: a float, or its text when numbers keep theirs.
    fn special_float(&mut self, word: &'static [u8], value: f64) -> Result<Value, JsonError> {
        let value = if self.keep_number_text {
            let text = core::str::from_utf8(word).unwrap_or_default();
            Value::NumberText(text.into())
        } else {
            Value::Float(value)
        };
        self.literal(word, value)
    }

    fn value(&mut self) -> Result<Value, JsonError> {
        if self.scalars_add_a_level
            && self.depth >= self.max_depth
            && !matches!(self.peek(), Some(b'{' | b'[') | None)
        {
            return Err(self.err(JsonErrorKind::TooDeep));
        }
        match self.peek() {
            None => Err(self.err(JsonErrorKind::UnexpectedEnd)),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'N') => self.special_float(b"NaN", f64::NAN),
            Some(b'I') => self.special_float(b"Infinity", f64::INFINITY),
            Some(b'-') if self.rest().starts_with(b"-Infinity") => {
                self.special_float(b"-Infinity", f64::NEG_INFINITY)
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err(JsonErrorKind::UnexpectedChar)),
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        if self.depth >= self.max_depth {
            return Err(self.err(JsonErrorKind::TooDeep));
        }
        self.depth = self.depth.saturating_add(1);
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn array(&mut self) -> Result<Value, JsonError> {
        self.enter()?;
        self.bump(1); // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.bump(1);
            self.leave();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.bump(1),
                Some(b']') => {
                    self.bump(1);
                    break;
                }
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                Some(_) => return Err(self.err(JsonErrorKind::UnexpectedChar)),
            }
        }
        self.leave();
        Ok(Value::Array(items))
    }

    fn object(&mut self) -> Result<Value, JsonError> {
        self.enter()?;
        self.bump(1); // '{'
        let mut entries: Vec<(JsonString, Value)> = Vec::new();
        let mut index: Option<KeyIndex> = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.bump(1);
            self.leave();
            return Ok(Value::Object(Object::from_distinct(entries)));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'"') => {}
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                Some(_) => return Err(self.err(JsonErrorKind::ExpectedKey)),
            }
            let key = self.string()?;
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.bump(1),
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                Some(_) => return Err(self.err(JsonErrorKind::ExpectedColon)),
            }
            self.skip_ws();
            let value = self.value()?;
            insert_entry(&mut entries, &mut index, key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.bump(1),
                Some(b'}') => {
                    self.bump(1);
                    break;
                }
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
                Some(_) => return Err(self.err(JsonErrorKind::UnexpectedChar)),
            }
        }
        self.leave();
        Ok(Value::Object(Object::from_distinct(entries)))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v: u32 = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.err(JsonErrorKind::BadEscape))?;
            v = (v << 4) | digit;
            self.bump(1);
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<JsonString, JsonError> {
        self.bump(1); // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            // Copy the run of plain bytes up to the next quote, backslash or
            // control character in one go (the input is valid UTF-8).
            let rest = self.rest();
            let run = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or_else(|| JsonError::new(JsonErrorKind::UnexpectedEnd, self.bytes.len()))?;
            out.extend_from_slice(rest.get(..run).unwrap_or_default());
            self.bump(run);
            match self.peek() {
                Some(b'"') => {
                    self.bump(1);
                    return Ok(JsonString::from_wtf8_unchecked(out));
                }
                Some(b'\\') => {
                    self.bump(1);
                    let esc = self
                        .peek()
                        .ok_or_else(|| self.err(JsonErrorKind::UnexpectedEnd))?;
                    let simple = match esc {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(0x08),
                        b'f' => Some(0x0c),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => return Err(self.err(JsonErrorKind::BadEscape)),
                    };
                    self.bump(1);
                    match simple {
                        Some(b) => out.push(b),
                        None => {
                            let mut cp = self.hex4()?;
                            // A high surrogate directly followed by an escaped
                            // low surrogate forms one astral code point, as in
                            // CPython's scanstring; anything else stays lone.
                            if (0xd800..0xdc00).contains(&cp) && self.rest().starts_with(b"\\u") {
                                let save = self.pos;
                                self.bump(2);
                                let low = self.hex4()?;
                                if (0xdc00..0xe000).contains(&low) {
                                    // Both ranges were checked just above, so this cannot wrap.
                                    cp = 0x10000u32
                                        .wrapping_add(((cp & 0x3ff) << 10) | (low & 0x3ff));
                                } else {
                                    self.pos = save;
                                }
                            }
                            push_wtf8(&mut out, cp);
                        }
                    }
                }
                Some(_) => return Err(self.err(JsonErrorKind::ControlCharacter)),
                None => return Err(self.err(JsonErrorKind::UnexpectedEnd)),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let n = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        self.bump(n);
        n
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.bump(1);
        }
        let int_digits = match self.peek() {
            Some(b'0') => {
                self.bump(1);
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err(JsonErrorKind::BadNumber)),
        };
        let mut is_float = false;
        // Python's NUMBER_RE: a fraction needs a digit after '.', an exponent
        // needs one after [eE][+-]; otherwise the number ends before them.
        if self.peek() == Some(b'.')
            && self
                .bytes
                .get(self.pos.saturating_add(1))
                .is_some_and(u8::is_ascii_digit)
        {
            self.bump(1);
            self.digits();
            is_float = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            let save = self.pos;
            self.bump(1);
            if let Some(b'+' | b'-') = self.peek() {
                self.bump(1);
            }
            if self.digits() == 0 {
                self.pos = save;
            } else {
                is_float = true;
            }
        }
        let text = self.bytes.get(start..self.pos).unwrap_or_default();
        // Only ASCII digits, signs, '.', 'e' were consumed.
        let text = core::str::from_utf8(text)
            .map_err(|_| JsonError::new(JsonErrorKind::BadNumber, start))?;
        if self.keep_number_text {
            return Ok(Value::NumberText(text.into()));
        }
        if is_float {
            let v: f64 = text
                .parse()
                .map_err(|_| JsonError::new(JsonErrorKind::BadNumber, start))?;
            Ok(Value::Float(v))
        } else {
            if int_digits > MAX_INT_DIGITS {
                return Err(JsonError::new(JsonErrorKind::IntegerTooLong, start));
            }
            Ok(Value::Int(Int::from_literal(text)))
        }
    }
}

/// Duplicate-key index for large objects: key hash → first entry with that
/// hash, plus a chain through entries sharing a hash. Keys are not cloned;
/// SipHash with a random key keeps crafted collisions from degrading it.
struct KeyIndex {
    state: RandomState,
    heads: HashMap<u64, usize>,
    chain: Vec<usize>,
}

const NO_ENTRY: usize = usize::MAX;

impl KeyIndex {
    fn new(entries: &[(JsonString, Value)]) -> Self {
        let mut index = KeyIndex {
            state: RandomState::new(),
            heads: HashMap::with_capacity(entries.len().saturating_mul(2)),
            chain: Vec::with_capacity(entries.len().saturating_mul(2)),
        };
        for (i, (k, _)) in entries.iter().enumerate() {
            index.add(k, i);
        }
        index
    }

    fn hash(&self, key: &JsonString) -> u64 {
        self.state.hash_one(key.as_wtf8())
    }

    fn find(&self, entries: &[(JsonString, Value)], key: &JsonString) -> Option<usize> {
        let mut at = self.heads.get(&self.hash(key)).copied().unwrap_or(NO_ENTRY);
        while at != NO_ENTRY {
            if entries.get(at).is_some_and(|(k, _)| k == key) {
                return Some(at);
            }
            at = self.chain.get(at).copied().unwrap_or(NO_ENTRY);
        }
        None
    }

    /// Records that entry `i` (which must be the next entry) has `key`.
    fn add(&mut self, key: &JsonString, i: usize) {
        let h = self.hash(key);
        let previous = self.heads.insert(h, i).unwrap_or(NO_ENTRY);
        self.chain.push(previous);
    }
}

/// Python dict assignment: a repeated key keeps its slot, takes the new value.
fn insert_entry(
    entries: &mut Vec<(JsonString, Value)>,
    index: &mut Option<KeyIndex>,
    key: JsonString,
    value: Value,
) {
    if index.is_none() && entries.len() >= INDEX_THRESHOLD {
        *index = Some(KeyIndex::new(entries));
    }
    let existing = match index {
        Some(idx) => idx.find(entries, &key),
        None => entries.iter().position(|(k, _)| *k == key),
    };
    match existing.and_then(|i| entries.get_mut(i)) {
        Some(slot) => slot.1 = value,
        None => {
            if let Some(idx) = index {
                idx.add(&key, entries.len());
            }
            entries.push((key, value));
        }
    }
}

/// Appends code point `cp` (surrogates included) as WTF-8.
fn push_wtf8(out: &mut Vec<u8>, cp: u32) {
    // Each arm masks its value into range, so the `as u8` casts are exact.
    #[allow(clippy::cast_possible_truncation)]
    match cp {
        0..=0x7f => out.push(cp as u8),
        0x80..=0x7ff => {
            out.push(0xc0 | (cp >> 6) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
        0x800..=0xffff => {
            out.push(0xe0 | (cp >> 12) as u8);
            out.push(0x80 | ((cp >> 6) & 0x3f) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
        _ => {
            out.push(0xf0 | ((cp >> 18) & 0x07) as u8);
            out.push(0x80 | ((cp >> 12) & 0x3f) as u8);
            out.push(0x80 | ((cp >> 6) & 0x3f) as u8);
            out.push(0x80 | (cp & 0x3f) as u8);
        }
    }
}

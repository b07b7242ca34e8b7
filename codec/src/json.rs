//! The JSON fallback message (AVP-JSON-1 .. AVP-JSON-5).
//!
//! Agents that cannot exchange tensors send a small JSON object instead.
//! The JSON is tiny, so this module carries its own parser and writer
//! instead of a framework dependency. The writer reproduces Python's
//! `json.dumps` defaults (`", "`/`": "` separators, `ensure_ascii`), so
//! [`JsonMessage::to_json`] is byte-identical to the SDK's `to_json()`.
//! Numbers keep their source text, so nothing is lost in a round trip.

use crate::error::{Error, ErrorKind};

/// The SDK version string the fallback message defaults to (AVP-JSON-2).
pub const DEFAULT_AVP_VERSION: &str = "0.6.2";

/// Deepest nesting the parser accepts (AVP-LIM-7).
pub const MAX_DEPTH: usize = 64;

/// A JSON value. Objects keep their key order; numbers keep their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as written (also `NaN`, `Infinity`, `-Infinity`, which Python emits).
    Number(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object; a repeated key keeps its first position and last value, as Python's `dict` does.
    Object(Vec<(String, Value)>),
}

/// The fallback message (AVP-JSON-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonMessage {
    /// `avp_version`, default [`DEFAULT_AVP_VERSION`].
    pub avp_version: String,
    /// `session_id`.
    pub session_id: String,
    /// `source_agent_id`.
    pub source_agent_id: String,
    /// `target_agent_id`.
    pub target_agent_id: String,
    /// `content`: the text.
    pub content: String,
    /// `extra`: any JSON members; omitted from the output when empty.
    pub extra: Vec<(String, Value)>,
}

impl Default for JsonMessage {
    fn default() -> Self {
        JsonMessage {
            avp_version: DEFAULT_AVP_VERSION.to_owned(),
            session_id: String::new(),
            source_agent_id: String::new(),
            target_agent_id: String::new(),
            content: String::new(),
            extra: Vec::new(),
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::new(
        ErrorKind::MalformedMetadata,
        format!("JSON fallback: {}", msg.into()),
    )
}

impl JsonMessage {
    /// Parses a fallback message (AVP-JSON-3): a JSON object whose known
    /// members, when present, must have the right type; others are ignored.
    pub fn from_json(text: &str) -> Result<JsonMessage, Error> {
        let Value::Object(members) = parse(text)? else {
            return Err(bad("top level is not an object"));
        };
        let mut m = JsonMessage::default();
        for (k, v) in members {
            let slot = match k.as_str() {
                "avp_version" => &mut m.avp_version,
                "session_id" => &mut m.session_id,
                "source_agent_id" => &mut m.source_agent_id,
                "target_agent_id" => &mut m.target_agent_id,
                "content" => &mut m.content,
                "extra" => {
                    match v {
                        Value::Object(e) => m.extra = e,
                        _ => return Err(bad("extra is not an object")),
                    }
                    continue;
                }
                _ => continue,
            };
            match v {
                Value::String(s) => *slot = s,
                _ => return Err(bad(format!("{k} is not a string"))),
            }
        }
        Ok(m)
    }

    /// The SDK's `to_json()` output (AVP-JSON-4): fixed member order, `extra` last and only when non-empty.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.content.len().saturating_add(128));
        out.push('{');
        let fields = [
            ("avp_version", &self.avp_version),
            ("session_id", &self.session_id),
            ("source_agent_id", &self.source_agent_id),
            ("target_agent_id", &self.target_agent_id),
            ("content", &self.content),
        ];
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_string(&mut out, k);
            out.push_str(": ");
            write_string(&mut out, v);
        }
        if !self.extra.is_empty() {
            out.push_str(", ");
            write_string(&mut out, "extra");
            out.push_str(": ");
            write_object(&mut out, &self.extra);
        }
        out.push('}');
        out
    }
}

/// Python `json.dumps` text of a value (default settings).
pub fn to_python_json(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => write_object(out, members),
    }
}

fn write_object(out: &mut String, members: &[(String, Value)]) {
    out.push('{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_string(out, k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push('}');
}

/// A string as Python's `ensure_ascii` writes it.
fn write_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Parses one JSON document (Python's `json.loads` grammar, with its
/// `NaN`/`Infinity` extensions), nested at most [`MAX_DEPTH`] deep.
pub fn parse(text: &str) -> Result<Value, Error> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    p.ws();
    let v = p.value(MAX_DEPTH)?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(bad(format!("extra data at byte {}", p.pos)));
    }
    Ok(v)
}

/// The code point of a UTF-16 surrogate pair (both ranges checked by the caller).
#[allow(clippy::arithmetic_side_effects)]
fn surrogate_pair(hi: u32, lo: u32) -> u32 {
    0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos = self.pos.saturating_add(1);
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos = self.pos.saturating_add(1);
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        let end = self.pos.saturating_add(lit.len());
        if self.s.get(self.pos..end) == Some(lit.as_bytes()) {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), Error> {
        if self.bump() == Some(b) {
            Ok(())
        } else {
            Err(bad(format!(
                "expected '{}' at byte {}",
                b as char, self.pos
            )))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let depth = depth
            .checked_sub(1)
            .ok_or_else(|| Error::new(ErrorKind::LimitExceeded, "JSON nested too deeply"))?;
        match self.peek() {
            Some(b'{') => {
                self.pos = self.pos.saturating_add(1);
                let mut members: Vec<(String, Value)> = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos = self.pos.saturating_add(1);
                    return Ok(Value::Object(members));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    let v = self.value(depth)?;
                    match members.iter_mut().find(|(ek, _)| *ek == k) {
                        Some(slot) => slot.1 = v,
                        None => members.push((k, v)),
                    }
                    self.ws();
                    match self.bump() {
                        Some(b',') => continue,
                        Some(b'}') => return Ok(Value::Object(members)),
                        _ => return Err(bad("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.pos = self.pos.saturating_add(1);
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos = self.pos.saturating_add(1);
                    return Ok(Value::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth)?);
                    self.ws();
                    match self.bump() {
                        Some(b',') => continue,
                        Some(b']') => return Ok(Value::Array(items)),
                        _ => return Err(bad("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            _ if self.eat("null") => Ok(Value::Null),
            _ if self.eat("true") => Ok(Value::Bool(true)),
            _ if self.eat("false") => Ok(Value::Bool(false)),
            _ if self.eat("NaN") => Ok(Value::Number("NaN".into())),
            _ if self.eat("Infinity") => Ok(Value::Number("Infinity".into())),
            _ if self.eat("-Infinity") => Ok(Value::Number("-Infinity".into())),
            _ => self.number(),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos = self.pos.saturating_add(1);
        }
        self.pos.saturating_sub(start)
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos = self.pos.saturating_add(1);
        }
        match self.peek() {
            Some(b'0') => self.pos = self.pos.saturating_add(1),
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(bad(format!("unexpected input at byte {start}"))),
        }
        if self.peek() == Some(b'.') {
            self.pos = self.pos.saturating_add(1);
            if self.digits() == 0 {
                return Err(bad("digits expected after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos = self.pos.saturating_add(1);
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos = self.pos.saturating_add(1);
            }
            if self.digits() == 0 {
                return Err(bad("digits expected in exponent"));
            }
        }
        let text = self.s.get(start..self.pos).unwrap_or_default();
        Ok(Value::Number(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let end = self.pos.saturating_add(4);
        let digits = self
            .s
            .get(self.pos..end)
            .ok_or_else(|| bad("short \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| bad("bad \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| bad("bad \\u escape"))?;
        self.pos = end;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None => return Err(bad("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.bump() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) && self.eat("\\u") {
                                let lo = self.hex4()?;
                                if (0xdc00..0xe000).contains(&lo) {
                                    surrogate_pair(hi, lo)
                                } else {
                                    return Err(bad("unpaired surrogate"));
                                }
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or_else(|| bad("lone surrogate in string"))?
                        }
                        _ => return Err(bad("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(b) if b < 0x20 => return Err(bad("control character in string")),
                Some(b) => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| bad("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_like_python_json_dumps() {
        let m = JsonMessage {
            content: "héllo \"q\"\n😀".into(),
            extra: vec![("k".into(), parse(r#"[1, 2.5, null, {"a": true}]"#).unwrap())],
            ..JsonMessage::default()
        };
        assert_eq!(
            m.to_json(),
            r#"{"avp_version": "0.6.2", "session_id": "", "source_agent_id": "", "target_agent_id": "", "content": "h\u00e9llo \"q\"\n\ud83d\ude00", "extra": {"k": [1, 2.5, null, {"a": true}]}}"#
        );
        assert_eq!(JsonMessage::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn rejects_wrong_types_and_deep_nesting() {
        assert!(JsonMessage::from_json(r#"{"content": 3}"#).is_err());
        assert!(JsonMessage::from_json("[]").is_err());
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(parse(&deep).unwrap_err().kind(), ErrorKind::LimitExceeded);
    }
}

//! The JSON fallback message (AVP-JSON-1 .. AVP-JSON-5).
//!
//! Agents that cannot exchange tensors send a small JSON object instead.
//! Reading and writing is the workspace's one JSON crate, `avp-json`
//! (dependency-free): its writer reproduces Python's `json.dumps` defaults
//! (`", "`/`": "` separators, `ensure_ascii`), so [`JsonMessage::to_json`]
//! is byte-identical to the SDK's `to_json()`. The fallback parses with
//! [`FALLBACK_PARSE`]: numbers keep their source text, so nothing is lost in
//! a round trip (AVP-JSON-4), and nesting is bounded by [`MAX_DEPTH`].

use avp_json::{JsonErrorKind, ParseOptions, WriteOptions};
pub use avp_json::{Object, Value};

use crate::error::{Error, ErrorKind};

/// The SDK version string the fallback message defaults to (AVP-JSON-2).
pub const DEFAULT_AVP_VERSION: &str = "0.6.2";

/// Deepest nesting the parser accepts (AVP-LIM-7): the top-level object,
/// each container and the innermost value count one level each.
pub const MAX_DEPTH: usize = 64;

/// How the fallback message is parsed: [`MAX_DEPTH`] levels, scalars
/// counted as a level, numbers kept as written.
pub const FALLBACK_PARSE: ParseOptions = ParseOptions::PYTHON
    .with_max_depth(MAX_DEPTH)
    .with_scalars_adding_a_level(true)
    .with_number_text_kept(true);

/// The fallback message (AVP-JSON-1).
#[derive(Debug, Clone, PartialEq)]
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
    pub extra: Object,
}

impl Default for JsonMessage {
    fn default() -> Self {
        JsonMessage {
            avp_version: DEFAULT_AVP_VERSION.to_owned(),
            session_id: String::new(),
            source_agent_id: String::new(),
            target_agent_id: String::new(),
            content: String::new(),
            extra: Object::new(),
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
        for (k, v) in members.into_entries() {
            let Some(key) = k.as_str() else { continue };
            let slot = match key {
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
            match v.as_str() {
                Some(s) => *slot = s.to_owned(),
                None => return Err(bad(format!("{key} is not a string"))),
            }
        }
        Ok(m)
    }

    /// The SDK's `to_json()` output (AVP-JSON-4): fixed member order, `extra` last and only when non-empty.
    pub fn to_json(&self) -> String {
        let mut doc = Object::new()
            .with("avp_version", self.avp_version.as_str())
            .with("session_id", self.session_id.as_str())
            .with("source_agent_id", self.source_agent_id.as_str())
            .with("target_agent_id", self.target_agent_id.as_str())
            .with("content", self.content.as_str());
        if !self.extra.is_empty() {
            doc.insert("extra", Value::Object(self.extra.clone()));
        }
        to_python_json(&Value::Object(doc))
    }
}

/// Python `json.dumps` text of a value (default settings). A value nested
/// deeper than `avp-json` writes (512) cannot come from [`parse`]; it is
/// written as `null` rather than failing.
pub fn to_python_json(v: &Value) -> String {
    avp_json::to_string(v, WriteOptions::PYTHON_DEFAULT).unwrap_or_else(|_| "null".to_owned())
}

/// Parses one JSON document (Python's `json.loads` grammar, with its
/// `NaN`/`Infinity` extensions) as the fallback does ([`FALLBACK_PARSE`]).
/// Strings must be Unicode: a lone surrogate escape is `malformed_metadata`.
pub fn parse(text: &str) -> Result<Value, Error> {
    let value = avp_json::parse_with(text.as_bytes(), &FALLBACK_PARSE).map_err(|e| {
        if e.kind == JsonErrorKind::TooDeep {
            Error::new(ErrorKind::LimitExceeded, "JSON nested too deeply")
        } else {
            bad(e.to_string())
        }
    })?;
    if holds_lone_surrogate(&value) {
        return Err(bad("lone surrogate in string"));
    }
    Ok(value)
}

/// True when a string or key anywhere in `v` is not valid Unicode (the
/// fallback's fields are Rust strings, and its extras have always been
/// refused with such strings too).
fn holds_lone_surrogate(v: &Value) -> bool {
    match v {
        Value::Str(s) => s.as_str().is_none(),
        Value::Array(items) => items.iter().any(holds_lone_surrogate),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.as_str().is_none() || holds_lone_surrogate(v)),
        _ => false,
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
            extra: Object::new().with("k", parse(r#"[1, 2.5, null, {"a": true}]"#).unwrap()),
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

    #[test]
    fn json_4_numbers_keep_their_text_and_nan_survives() {
        let text =
            r#"{"extra": {"n": [1e5, 1.50, -0, NaN, -Infinity, 123456789012345678901234567890]}}"#;
        let m = JsonMessage::from_json(text).unwrap();
        assert!(m.to_json().ends_with(
            r#""extra": {"n": [1e5, 1.50, -0, NaN, -Infinity, 123456789012345678901234567890]}}"#
        ));
    }

    #[test]
    fn lim_7_counts_the_innermost_value() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&nested(63)).is_ok());
        assert_eq!(
            parse(&nested(64)).unwrap_err().kind(),
            ErrorKind::LimitExceeded
        );
        // Containers alone may go one level deeper than a scalar inside them.
        assert!(parse(&format!("{}{}", "[".repeat(64), "]".repeat(64))).is_ok());
        assert!(parse(r#""\ud800""#).is_err());
    }
}

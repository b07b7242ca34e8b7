//! `ModelIdentity` and how it is derived from a HF `config.json`
//! (AVP-HS-1, AVP-HS-2, AVP-HS-3).

use crate::error::Error;
use crate::hash::model_hash;
use crate::json::{JsonString, Object, Value};

/// What an agent says about its model in the hello (the SDK's `ModelIdentity`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelIdentity {
    /// `model_type` of the config, e.g. `llama`.
    pub model_family: JsonString,
    /// `_name_or_path` of the config.
    pub model_id: JsonString,
    /// [`model_hash`] of the config.
    pub model_hash: JsonString,
    /// Hidden size.
    pub hidden_dim: u64,
    /// Number of transformer layers.
    pub num_layers: u64,
    /// Number of key/value heads.
    pub num_kv_heads: u64,
    /// Dimension of one attention head.
    pub head_dim: u64,
    /// Tokenizer hash; empty when unknown (then omitted from the JSON form).
    pub tokenizer_hash: JsonString,
}

impl ModelIdentity {
    /// The SDK's `to_dict()` (AVP-HS-1): the seven fields in this order,
    /// `tokenizer_hash` last and only when non-empty.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("model_family", Value::Str(self.model_family.clone()));
        o.insert("model_id", Value::Str(self.model_id.clone()));
        o.insert("model_hash", Value::Str(self.model_hash.clone()));
        o.insert("hidden_dim", Value::from(self.hidden_dim));
        o.insert("num_layers", Value::from(self.num_layers));
        o.insert("num_kv_heads", Value::from(self.num_kv_heads));
        o.insert("head_dim", Value::from(self.head_dim));
        if !self.tokenizer_hash.is_empty() {
            o.insert("tokenizer_hash", Value::Str(self.tokenizer_hash.clone()));
        }
        Value::Object(o)
    }

    /// The SDK's `from_dict()` (AVP-HS-1): unknown fields ignored, missing
    /// ones defaulted (`""`, `0`). Unlike the SDK, a present field of the
    /// wrong type is an error (the SDK stores it and fails later, in the
    /// resolver's comparisons). `context` prefixes field names in errors.
    pub fn from_value(value: &Value, context: &str) -> Result<Self, Error> {
        let obj = value.as_object().ok_or_else(|| {
            Error::field(
                context_or(context, "(identity)"),
                "an object",
                value.type_name(),
            )
        })?;
        let text = |key: &str| -> Result<JsonString, Error> {
            match obj.get(key) {
                None => Ok(JsonString::default()),
                Some(Value::Str(s)) => Ok(s.clone()),
                Some(other) => Err(Error::field(
                    join(context, key),
                    "a string",
                    other.type_name(),
                )),
            }
        };
        let count = |key: &str| -> Result<u64, Error> {
            match obj.get(key) {
                None => Ok(0),
                Some(v) => non_negative(v, &join(context, key)),
            }
        };
        Ok(ModelIdentity {
            model_family: text("model_family")?,
            model_id: text("model_id")?,
            model_hash: text("model_hash")?,
            hidden_dim: count("hidden_dim")?,
            num_layers: count("num_layers")?,
            num_kv_heads: count("num_kv_heads")?,
            head_dim: count("head_dim")?,
            tokenizer_hash: text("tokenizer_hash")?,
        })
    }
}

fn context_or(context: &str, fallback: &str) -> String {
    if context.is_empty() {
        fallback.to_owned()
    } else {
        context.to_owned()
    }
}

fn join(context: &str, key: &str) -> String {
    if context.is_empty() {
        key.to_owned()
    } else {
        format!("{context}.{key}")
    }
}

/// A JSON integer in `0..=u64::MAX`.
fn non_negative(v: &Value, field: &str) -> Result<u64, Error> {
    match v {
        Value::Int(i) => i
            .as_u64()
            .ok_or_else(|| Error::field(field, "a non-negative integer below 2^64", i.to_string())),
        other => Err(Error::field(
            field,
            "a non-negative integer",
            other.type_name(),
        )),
    }
}

/// `config.get(a, 0) or config.get(b, 0)`: Python's `or` picks the first
/// truthy value.
fn first_truthy<'a>(config: &'a Object, keys: &[&str]) -> Option<(&'a Value, String)> {
    keys.iter()
        .filter_map(|k| config.get(k).map(|v| (v, (*k).to_owned())))
        .find(|(v, _)| v.is_truthy())
}

fn count_with_fallbacks(config: &Object, keys: &[&str]) -> Result<u64, Error> {
    match first_truthy(config, keys) {
        None => Ok(0),
        Some((v, key)) => non_negative(v, &key),
    }
}

/// `extract_model_identity(config)` of the SDK (AVP-HS-2) for a parsed
/// `config.json`, with `tokenizer_hash` supplied by the caller (or empty).
///
/// - `model_family` = `model_type`, `model_id` = `_name_or_path` (default `""`);
/// - `model_hash` = [`model_hash`] of the whole document;
/// - `hidden_dim` = `hidden_size or n_embd`, `num_layers` =
///   `num_hidden_layers or n_layer`, heads = `num_attention_heads or n_head`
///   (Python truthiness: a missing, `0`, `null` or `false` value falls through);
/// - `num_kv_heads` = `num_key_value_heads` if present, else the head count;
/// - `head_dim` = `head_dim` if truthy, else `hidden_dim // heads` (0 when
///   heads is 0).
///
/// Divergence (AVP-HS-3): where the SDK would put a non-integer or negative
/// number (or `null`) into a count, or a non-string into a name, this is an
/// error naming the config key.
pub fn identity_from_config(
    config: &Value,
    tokenizer_hash: JsonString,
) -> Result<ModelIdentity, Error> {
    let obj = config
        .as_object()
        .ok_or_else(|| Error::field("(config)", "an object", config.type_name()))?;
    let text = |key: &str| -> Result<JsonString, Error> {
        match obj.get(key) {
            None => Ok(JsonString::default()),
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(other) => Err(Error::field(key, "a string", other.type_name())),
        }
    };
    let hidden_dim = count_with_fallbacks(obj, &["hidden_size", "n_embd"])?;
    let num_layers = count_with_fallbacks(obj, &["num_hidden_layers", "n_layer"])?;
    let num_heads = count_with_fallbacks(obj, &["num_attention_heads", "n_head"])?;
    let num_kv_heads = match obj.get("num_key_value_heads") {
        Some(v) => non_negative(v, "num_key_value_heads")?,
        None => num_heads,
    };
    let head_dim = match first_truthy(obj, &["head_dim"]) {
        Some((v, key)) => non_negative(v, &key)?,
        None => hidden_dim.checked_div(num_heads).unwrap_or(0),
    };
    Ok(ModelIdentity {
        model_family: text("model_type")?,
        model_id: text("_name_or_path")?,
        model_hash: model_hash(config)?.into(),
        hidden_dim,
        num_layers,
        num_kv_heads,
        head_dim,
        tokenizer_hash,
    })
}

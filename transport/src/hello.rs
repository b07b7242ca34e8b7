//! Answering `POST /avp/v2/handshake` (AVP-HTTP-30).
//!
//! Interim: the resolution below implements the SDK's first three rules
//! (hash match, structural match, shared tokenizer) so the endpoint works
//! before the `avp-handshake` crate is merged; `resolve` is the one function
//! to replace with its resolver. Everything else here is the HTTP shape.

use serde_json::{Map, Value, json};

/// The SDK feature version we advertise in hellos (`avp_version`).
pub const AVP_VERSION_STRING: &str = "0.6.2";

/// The outcome of comparing two model identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// `"LATENT"` or `"JSON"`.
    pub mode: &'static str,
    /// Which rule decided (`hash_match`, `structural_match`, `shared_tokenizer`, `json_fallback`).
    pub resolution_path: &'static str,
    /// Non-empty for vocabulary-mediated sessions.
    pub avp_map_id: String,
}

fn text<'a>(identity: &'a Map<String, Value>, key: &str) -> &'a str {
    identity.get(key).and_then(Value::as_str).unwrap_or("")
}

fn number(identity: &Map<String, Value>, key: &str) -> u64 {
    identity.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Compares the local and the remote identity (ModelIdentity JSON forms).
pub fn resolve(local: &Map<String, Value>, remote: &Map<String, Value>) -> Resolution {
    let (lh, rh) = (text(local, "model_hash"), text(remote, "model_hash"));
    if !lh.is_empty() && lh == rh {
        return Resolution {
            mode: "LATENT",
            resolution_path: "hash_match",
            avp_map_id: String::new(),
        };
    }
    let family = text(local, "model_family");
    let (dim, layers) = (number(local, "hidden_dim"), number(local, "num_layers"));
    if !family.is_empty()
        && family == text(remote, "model_family")
        && dim > 0
        && dim == number(remote, "hidden_dim")
        && layers > 0
        && layers == number(remote, "num_layers")
    {
        return Resolution {
            mode: "LATENT",
            resolution_path: "structural_match",
            avp_map_id: String::new(),
        };
    }
    let (lt, rt) = (
        text(local, "tokenizer_hash"),
        text(remote, "tokenizer_hash"),
    );
    if !lt.is_empty() && lt == rt {
        let prefix: String = lt.chars().take(16).collect();
        return Resolution {
            mode: "LATENT",
            resolution_path: "shared_tokenizer",
            avp_map_id: format!("vocab:{prefix}"),
        };
    }
    Resolution {
        mode: "JSON",
        resolution_path: "json_fallback",
        avp_map_id: String::new(),
    }
}

/// Checks the shape of a hello (the SDK's `HelloMessage.to_dict()` form):
/// a JSON object whose `agent_id`/`avp_version` are strings and whose
/// `identity`/`capabilities`, when present, are objects.
pub fn validate_hello(hello: &Value) -> Result<&Map<String, Value>, String> {
    let object = hello.as_object().ok_or("the hello must be a JSON object")?;
    for key in ["agent_id", "avp_version"] {
        if object.get(key).is_some_and(|v| !v.is_string()) {
            return Err(format!("`{key}` must be a string"));
        }
    }
    for key in ["identity", "capabilities"] {
        if object.get(key).is_some_and(|v| !v.is_object()) {
            return Err(format!("`{key}` must be an object"));
        }
    }
    Ok(object)
}

/// The answer body: our identity (the SDK client resolves on its side from
/// it), the mode we resolved, and a fresh session id.
pub fn answer(
    agent_id: &str,
    local_identity: &Map<String, Value>,
    hello: &Map<String, Value>,
) -> Value {
    let empty = Map::new();
    let remote = hello
        .get("identity")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let resolution = resolve(local_identity, remote);
    json!({
        "success": true,
        "agent_id": agent_id,
        "avp_version": AVP_VERSION_STRING,
        "identity": local_identity,
        "capabilities": {},
        "session_id": crate::store::new_id(),
        "mode": resolution.mode,
        "resolution_path": resolution.resolution_path,
        "avp_map_id": resolution.avp_map_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn resolution_follows_the_sdk_rule_order() {
        let a = identity(
            json!({"model_hash": "h", "model_family": "qwen2", "hidden_dim": 8, "num_layers": 2}),
        );
        let same_hash = identity(json!({"model_hash": "h"}));
        assert_eq!(resolve(&a, &same_hash).resolution_path, "hash_match");
        let same_shape = identity(
            json!({"model_hash": "x", "model_family": "qwen2", "hidden_dim": 8, "num_layers": 2}),
        );
        assert_eq!(resolve(&a, &same_shape).resolution_path, "structural_match");
        let tok_a = identity(json!({"tokenizer_hash": "0123456789abcdef0123"}));
        let r = resolve(&tok_a, &tok_a.clone());
        assert_eq!(
            (r.mode, r.avp_map_id.as_str()),
            ("LATENT", "vocab:0123456789abcdef")
        );
        assert_eq!(resolve(&a, &Map::new()).mode, "JSON");
    }

    #[test]
    fn hellos_of_the_wrong_shape_are_refused() {
        assert!(validate_hello(&json!([1])).is_err());
        assert!(validate_hello(&json!({"agent_id": 3})).is_err());
        assert!(validate_hello(&json!({"identity": "x"})).is_err());
        assert!(validate_hello(&json!({"agent_id": "a", "identity": {}})).is_ok());
    }
}

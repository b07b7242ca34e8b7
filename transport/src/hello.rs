//! Answering `POST /avp/v2/handshake` (AVP-HTTP-30) with the `avp-handshake`
//! crate: the hello is read with its Python-exact JSON parser and
//! `HelloMessage::from_value` (AVP-HS-4), resolved with its `resolve`
//! (AVP-HS-5..10), and the answer carries our identity in the SDK's
//! `ModelIdentity.to_dict()` form so an SDK client can resolve on its side.

use avp_handshake::json::{self, Object, Value, WriteOptions};
use avp_handshake::{HelloMessage, ModelIdentity, ResolveOptions, resolve};

pub use avp_handshake::AVP_VERSION_STRING;

/// Why a hello was refused (both are 400s, with different error kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloProblem {
    /// The body is not JSON (`invalid_json`).
    NotJson(String),
    /// JSON, but not a hello (`invalid_hello`).
    NotAHello(String),
}

/// The answer body for a hello (`body`, the raw request bytes):
/// `{"success": true, "agent_id", "avp_version", "identity", "capabilities",
///   "session_id", "mode", "resolution_path", "avp_map_id"}`.
pub fn answer(agent_id: &str, local: &ModelIdentity, body: &[u8]) -> Result<Vec<u8>, HelloProblem> {
    let value = json::parse(body).map_err(|err| HelloProblem::NotJson(err.to_string()))?;
    let hello =
        HelloMessage::from_value(&value).map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
    let remote = hello.identity_or_default();
    let resolution = resolve(local, &remote, &ResolveOptions::default());
    let mut out = Object::new();
    out.insert("success", Value::Bool(true));
    out.insert("agent_id", Value::Str(agent_id.into()));
    out.insert("avp_version", Value::Str(AVP_VERSION_STRING.into()));
    out.insert("identity", local.to_value());
    out.insert("capabilities", Value::Object(Object::new()));
    out.insert(
        "session_id",
        Value::Str(crate::store::new_id().as_str().into()),
    );
    out.insert("mode", Value::Str(resolution.mode.name().into()));
    out.insert(
        "resolution_path",
        Value::Str(resolution.resolution_path.as_str().into()),
    );
    out.insert(
        "avp_map_id",
        Value::Str(resolution.avp_map_id.as_str().into()),
    );
    let mut text = String::new();
    json::write_value(&mut text, &Value::Object(out), WriteOptions::COMPACT)
        .map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
    Ok(text.into_bytes())
}

/// The hello this side sends: the SDK's `HelloMessage(agent_id, identity).to_dict()`
/// as `json.dumps` writes it.
pub fn hello_bytes(agent_id: &str, identity: &ModelIdentity) -> Vec<u8> {
    let hello = HelloMessage {
        agent_id: agent_id.into(),
        identity: Some(identity.clone()),
        ..HelloMessage::default()
    };
    // Writing fails only for NaN/Infinity, which a hello built here cannot hold.
    hello.to_wire().unwrap_or_default()
}

/// Reads a ModelIdentity from its JSON form (an `--identity FILE`).
pub fn identity_from_json(bytes: &[u8]) -> Result<ModelIdentity, String> {
    let value = json::parse(bytes).map_err(|err| err.to_string())?;
    ModelIdentity::from_value(&value, "identity").map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> ModelIdentity {
        identity_from_json(text.as_bytes()).expect("identity")
    }

    #[test]
    fn answers_carry_our_identity_and_the_resolved_mode() {
        let local =
            identity(r#"{"model_family":"qwen2","hidden_dim":8,"num_layers":2,"model_hash":"a"}"#);
        let hello = br#"{"agent_id":"p","identity":{"model_family":"qwen2","hidden_dim":8,"num_layers":2,"model_hash":"b"}}"#;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer("me", &local, hello).expect("answer")).expect("JSON");
        assert_eq!(answer["resolution_path"], "structural_match");
        assert_eq!(answer["mode"], "LATENT");
        assert_eq!(answer["identity"]["model_hash"], "a");
        assert_eq!(answer["session_id"].as_str().map(str::len), Some(32));
        let none: serde_json::Value =
            serde_json::from_slice(&super::answer("me", &local, b"{}").expect("answer"))
                .expect("JSON");
        assert_eq!(none["mode"], "JSON");
    }

    #[test]
    fn bodies_that_are_not_hellos_are_told_apart() {
        let local = ModelIdentity::default();
        assert!(matches!(
            answer("me", &local, b"{nope"),
            Err(HelloProblem::NotJson(_))
        ));
        assert!(matches!(
            answer("me", &local, b"[1]"),
            Err(HelloProblem::NotAHello(_))
        ));
        assert!(matches!(
            answer("me", &local, br#"{"agent_id":3}"#),
            Err(HelloProblem::NotAHello(_))
        ));
    }

    #[test]
    fn our_hello_is_the_sdk_dict_form() {
        let text =
            String::from_utf8(hello_bytes("me", &identity(r#"{"model_id":"m"}"#))).expect("utf-8");
        assert!(
            text.starts_with(
                r#"{"agent_id": "me", "avp_version": "0.6.2", "capabilities": {}, "identity": {"#
            ),
            "{text}"
        );
    }
}

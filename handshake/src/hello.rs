//! The hello message (AVP-HS-4) and the `weights_digest` capability (AVP-HS-20).

use crate::error::Error;
use crate::identity::ModelIdentity;
use crate::json::{JsonString, Object, Value, WriteOptions, write_value};
use crate::weights::WeightsDigest;

/// The SDK's protocol feature version, the default `avp_version`.
pub const AVP_VERSION_STRING: &str = "0.6.2";

/// Capability key of the weights-digest extension (AVP-HS-20).
pub const WEIGHTS_DIGEST_CAPABILITY: &str = "weights_digest";

/// The message each side sends first (the SDK's `HelloMessage`).
#[derive(Clone, Debug, PartialEq)]
pub struct HelloMessage {
    /// The sender's agent id.
    pub agent_id: JsonString,
    /// The sender's AVP version string.
    pub avp_version: JsonString,
    /// The sender's model, if it says.
    pub identity: Option<ModelIdentity>,
    /// Free-form capabilities; kept as received.
    pub capabilities: Object,
}

impl Default for HelloMessage {
    fn default() -> Self {
        Self {
            agent_id: JsonString::default(),
            avp_version: AVP_VERSION_STRING.into(),
            identity: None,
            capabilities: Object::new(),
        }
    }
}

impl HelloMessage {
    /// The SDK's `to_dict()`: `agent_id`, `avp_version`, `capabilities`, then
    /// `identity` when present.
    pub fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("agent_id", Value::Str(self.agent_id.clone()));
        o.insert("avp_version", Value::Str(self.avp_version.clone()));
        o.insert("capabilities", Value::Object(self.capabilities.clone()));
        if let Some(identity) = &self.identity {
            o.insert("identity", identity.to_value());
        }
        Value::Object(o)
    }

    /// The bytes the SDK puts on the wire: `json.dumps(hello.to_dict())`.
    pub fn to_wire(&self) -> Result<Vec<u8>, Error> {
        let mut s = String::new();
        write_value(&mut s, &self.to_value(), WriteOptions::PYTHON_DEFAULT)?;
        Ok(s.into_bytes())
    }

    /// The SDK's `from_dict()`: defaults for missing fields, unknown fields
    /// ignored; wrong types are errors (AVP-HS-4).
    pub fn from_value(value: &Value) -> Result<Self, Error> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::field("(hello)", "an object", value.type_name()))?;
        let text = |key: &str, default: &str| -> Result<JsonString, Error> {
            match obj.get(key) {
                None => Ok(default.into()),
                Some(Value::Str(s)) => Ok(s.clone()),
                Some(other) => Err(Error::field(key, "a string", other.type_name())),
            }
        };
        let identity = match obj.get("identity") {
            None => None,
            Some(v) => Some(ModelIdentity::from_value(v, "identity")?),
        };
        let capabilities = match obj.get("capabilities") {
            None => Object::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(other) => {
                return Err(Error::field("capabilities", "an object", other.type_name()));
            }
        };
        Ok(HelloMessage {
            agent_id: text("agent_id", "")?,
            avp_version: text("avp_version", AVP_VERSION_STRING)?,
            identity,
            capabilities,
        })
    }

    /// The identity, or the SDK's stand-in for a missing one
    /// (`ModelIdentity.from_dict({})`: all empty, which resolves to JSON).
    pub fn identity_or_default(&self) -> ModelIdentity {
        self.identity.clone().unwrap_or_default()
    }

    /// The `weights_digest` capability, if the peer sent one (AVP-HS-20).
    /// A present but malformed value is an error.
    pub fn weights_digest(&self) -> Result<Option<WeightsDigest>, Error> {
        match self.capabilities.get(WEIGHTS_DIGEST_CAPABILITY) {
            None => Ok(None),
            Some(Value::Str(s)) => WeightsDigest::from_hex(s.as_str().unwrap_or_default())
                .map(Some)
                .ok_or_else(|| {
                    Error::field(
                        "capabilities.weights_digest",
                        "64 lowercase hex digits",
                        format!("{:?}", s.to_string_lossy()),
                    )
                }),
            Some(other) => Err(Error::field(
                "capabilities.weights_digest",
                "a string",
                other.type_name(),
            )),
        }
    }

    /// Adds (or replaces) the `weights_digest` capability.
    pub fn set_weights_digest(&mut self, digest: &WeightsDigest) {
        self.capabilities.insert(
            WEIGHTS_DIGEST_CAPABILITY,
            Value::Str(digest.to_hex().into()),
        );
    }
}

//! The handshake as a consuming state machine (AVP-HS-11, AVP-HS-12):
//! [`Start`] → (send hello) [`HelloSent`] → (receive the peer's hello)
//! [`HelloReceived`] → (resolve) [`Established`].
//!
//! Each step takes the state by value, so a finished step cannot be
//! replayed. No I/O: the caller moves the bytes.

use crate::error::Error;
use crate::hello::HelloMessage;
use crate::json::{self, JsonString, Object, Value};
use crate::resolve::{MapLookup, Resolution, ResolveOptions, resolve};

/// Before anything was sent.
#[derive(Clone, Debug)]
pub struct Start {
    local: HelloMessage,
}

/// Our hello is out; waiting for the peer's.
#[derive(Clone, Debug)]
pub struct HelloSent {
    local: HelloMessage,
}

/// Both hellos are known; ready to resolve.
#[derive(Clone, Debug)]
pub struct HelloReceived {
    local: HelloMessage,
    remote: HelloMessage,
    peer_session_id: Option<String>,
}

/// The outcome of a handshake.
#[derive(Clone, Debug)]
pub struct Established {
    /// The session id: the peer's `session_id` when its reply carried one
    /// (as the SDK client does), else the one the caller supplied.
    pub session_id: String,
    /// What we sent.
    pub local: HelloMessage,
    /// What the peer sent.
    pub remote: HelloMessage,
    /// The mode and how it was decided.
    pub resolution: Resolution,
}

impl Start {
    /// A handshake that will introduce itself with `local`.
    pub fn new(local: HelloMessage) -> Self {
        Self { local }
    }

    /// Produces the hello bytes (`json.dumps(hello.to_dict())`, AVP-HS-4).
    pub fn send_hello(self) -> Result<(HelloSent, Vec<u8>), Error> {
        let bytes = self.local.to_wire()?;
        Ok((HelloSent { local: self.local }, bytes))
    }
}

impl HelloSent {
    /// Reads the peer's hello (or an SDK server's reply, which carries
    /// `agent_id`, `identity` and maybe `session_id`). Malformed input is an
    /// error and ends the handshake (AVP-HS-12).
    pub fn receive_hello(self, bytes: &[u8]) -> Result<HelloReceived, Error> {
        let value = json::parse(bytes)?;
        let remote = HelloMessage::from_value(&value)?;
        let peer_session_id = match value.as_object().and_then(|o| o.get("session_id")) {
            None => None,
            Some(Value::Str(s)) => Some(s.to_string_lossy()),
            Some(other) => return Err(Error::field("session_id", "a string", other.type_name())),
        };
        // Validate the extension now, so a bad digest fails here, not later.
        remote.weights_digest()?;
        Ok(HelloReceived {
            local: self.local,
            remote,
            peer_session_id,
        })
    }
}

impl HelloReceived {
    /// The peer's hello.
    pub fn remote(&self) -> &HelloMessage {
        &self.remote
    }

    /// Resolves the mode (AVP-HS-5..AVP-HS-10) with both sides' weights
    /// digests taken from the hellos (AVP-HS-22). `session_id` is used when
    /// the peer did not supply one (the SDK uses `uuid4().hex`).
    pub fn establish(
        self,
        session_id: String,
        maps: Option<&dyn MapLookup>,
        vocabularies: Option<(&Object, &Object)>,
    ) -> Result<Established, Error> {
        let options = ResolveOptions {
            maps,
            vocabularies,
            local_weights: self.local.weights_digest()?,
            remote_weights: self.remote.weights_digest()?,
        };
        let resolution = resolve(
            &self.local.identity_or_default(),
            &self.remote.identity_or_default(),
            &options,
        );
        Ok(Established {
            session_id: self.peer_session_id.unwrap_or(session_id),
            local: self.local,
            remote: self.remote,
            resolution,
        })
    }
}

impl Established {
    /// The peer's agent id.
    pub fn remote_agent_id(&self) -> &JsonString {
        &self.remote.agent_id
    }
}

//! The handshake on the wire is the `avp-handshake` crate (AVP-HTTP-30,
//! AVP-HTTP-34, AVP-HTTP-35).
//!
//! Server side, [`HandshakeServer`]: the hello is read with the crate's
//! Python-exact JSON parser and `HelloMessage::from_value` (AVP-HS-4), its
//! `weights_digest` validated (AVP-HS-20, a malformed one is refused), the
//! mode resolved with the full options (our weights digest, map files;
//! AVP-HS-5..10, AVP-HS-22), and the session it issues recorded with a TTL in
//! a bounded table, so a later transmit that claims it can be checked.
//!
//! Client side, [`HandshakeResult`]: the answer goes through the crate's
//! state machine (AVP-HS-11), so the client resolves with the same rules and
//! reports a typed outcome.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use avp_handshake::json::{self, Object, Value, WriteOptions};
use avp_handshake::state::{Established, Start};
use avp_handshake::{
    HelloMessage, MapLookup, Mode, ModelIdentity, ResolutionPath, ResolveOptions, SessionManager,
    WeightsDigest, resolve,
};

pub use avp_handshake::AVP_VERSION_STRING;

use crate::kv_wire::KvCapabilities;

/// Why a hello was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloProblem {
    /// The body is not JSON (400 `invalid_json`).
    NotJson(String),
    /// JSON, but not a hello, or a malformed `weights_digest` (400 `invalid_hello`).
    NotAHello(String),
    /// The session table is full of live sessions (503 `server_busy`).
    TooManySessions,
}

/// Default of [`HandshakeServer::with_session_limit`].
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// What a transmit's `session_id` says, checked against the issued sessions
/// (AVP-HTTP-35).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionCheck {
    /// No `session_id` (the SDK's client without a handshake): accepted.
    None,
    /// A live session this server issued, and the message's mode matches it.
    Live,
    /// A `session_id` this server did not issue or that expired: accepted
    /// with the warning `unknown_session`, unless sessions are required.
    Unknown,
    /// A live session whose negotiated mode is not the message's (409).
    ModeMismatch {
        /// The session's mode.
        session: &'static str,
        /// The message's mode.
        message: &'static str,
    },
}

/// The server's side of the handshake: identity, weights digest, map files
/// and the sessions it issued.
pub struct HandshakeServer {
    agent_id: String,
    identity: ModelIdentity,
    weights: Option<WeightsDigest>,
    maps: Option<Arc<dyn MapLookup + Send + Sync>>,
    sessions: Mutex<SessionManager>,
    max_sessions: usize,
    /// Announce `kv_chunked` (AVP-HTTP-80): the agent assembles chunks.
    kv_chunked: bool,
    /// Compact-context capabilities announced (and so accepted, AVP-HTTP-100).
    kv: KvCapabilities,
}

/// The capability an agent that assembles chunked contexts announces (AVP-HTTP-80).
pub const KV_CHUNKED_CAPABILITY: &str = "kv_chunked";

fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

impl HandshakeServer {
    /// A server side answering as `agent_id` with `identity`.
    pub fn new(agent_id: impl Into<String>, identity: ModelIdentity) -> Self {
        Self {
            agent_id: agent_id.into(),
            identity,
            weights: None,
            maps: None,
            sessions: Mutex::new(SessionManager::default()),
            max_sessions: DEFAULT_MAX_SESSIONS,
            kv_chunked: false,
            kv: KvCapabilities::ALL,
        }
    }

    /// The `KV_CACHE_EXT` capabilities announced in every answer (default:
    /// all of them); an agent refuses payloads that need any other
    /// (AVP-HTTP-100).
    pub fn with_kv_capabilities(mut self, kv: KvCapabilities) -> Self {
        self.kv = kv;
        self
    }

    /// The `KV_CACHE_EXT` capabilities we announce.
    pub fn kv_capabilities(&self) -> KvCapabilities {
        self.kv
    }

    /// Our weights digest (AVP-HS-21): sent in the answer's capabilities and
    /// compared with the peer's (AVP-HS-22).
    pub fn with_weights_digest(mut self, digest: WeightsDigest) -> Self {
        self.weights = Some(digest);
        self
    }

    /// Announces `kv_chunked` in the answer's capabilities (AVP-HTTP-80).
    pub fn with_kv_chunked(mut self, on: bool) -> Self {
        self.kv_chunked = on;
        self
    }

    /// Map files for rule 4 (AVP-HS-8).
    pub fn with_maps(mut self, maps: Arc<dyn MapLookup + Send + Sync>) -> Self {
        self.maps = Some(maps);
        self
    }

    /// Session lifetime (default 3600 s) and the most live sessions kept.
    pub fn with_session_limit(mut self, ttl: Duration, max: usize) -> Self {
        self.sessions = Mutex::new(SessionManager::new(ttl));
        self.max_sessions = max;
        self
    }

    /// The identity we answer with.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn sessions(&self) -> MutexGuard<'_, SessionManager> {
        // Every SessionManager operation is a single map update.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The answer body for a hello (`body`, the raw request bytes):
    /// `{"success": true, "agent_id", "avp_version", "identity",
    ///   "capabilities", "session_id", "mode", "resolution_path",
    ///   "avp_map_id", "weights_mismatch"}`; the session is recorded.
    pub fn answer(&self, body: &[u8]) -> Result<Vec<u8>, HelloProblem> {
        let value = json::parse(body).map_err(|err| HelloProblem::NotJson(err.to_string()))?;
        let hello = HelloMessage::from_value(&value)
            .map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
        // AVP-HS-20/12: a present but malformed digest ends the handshake.
        let remote_weights = hello
            .weights_digest()
            .map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
        let remote = hello.identity_or_default();
        let options = ResolveOptions {
            maps: self.maps.as_deref().map(|m| m as &dyn MapLookup),
            vocabularies: None,
            local_weights: self.weights,
            remote_weights,
        };
        let resolution = resolve(&self.identity, &remote, &options);
        let session_id = crate::store::new_id();
        {
            let mut sessions = self.sessions();
            let at = now();
            sessions.cleanup_expired(at);
            if sessions.active_count(at) >= self.max_sessions {
                return Err(HelloProblem::TooManySessions);
            }
            let peer = hello.agent_id.to_string_lossy();
            sessions
                .create(
                    session_id.clone(),
                    vec![self.agent_id.clone(), peer.clone()],
                    vec![
                        (self.agent_id.clone(), self.identity.clone()),
                        (peer, remote),
                    ],
                    resolution.mode,
                    None,
                    at,
                )
                // Ids are 128 random bits; a repeat means a broken OS RNG.
                .map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
        }
        let mut capabilities = Object::new();
        if let Some(digest) = &self.weights {
            capabilities.insert(
                avp_handshake::WEIGHTS_DIGEST_CAPABILITY,
                Value::Str(digest.to_hex().into()),
            );
        }
        if self.kv_chunked {
            capabilities.insert(KV_CHUNKED_CAPABILITY, Value::Bool(true));
        }
        for name in self.kv.names() {
            capabilities.insert(name, Value::Bool(true));
        }
        let mut out = Object::new();
        out.insert("success", Value::Bool(true));
        out.insert("agent_id", Value::Str(self.agent_id.as_str().into()));
        out.insert("avp_version", Value::Str(AVP_VERSION_STRING.into()));
        out.insert("identity", self.identity.to_value());
        out.insert("capabilities", Value::Object(capabilities));
        out.insert("session_id", Value::Str(session_id.as_str().into()));
        out.insert("mode", Value::Str(resolution.mode.name().into()));
        out.insert(
            "resolution_path",
            Value::Str(resolution.resolution_path.as_str().into()),
        );
        out.insert(
            "avp_map_id",
            Value::Str(resolution.avp_map_id.as_str().into()),
        );
        out.insert("weights_mismatch", Value::Bool(resolution.weights_mismatch));
        let mut text = String::new();
        json::write_value(&mut text, &Value::Object(out), WriteOptions::COMPACT)
            .map_err(|err| HelloProblem::NotAHello(err.to_string()))?;
        Ok(text.into_bytes())
    }

    /// Checks a transmit's `session_id` and mode (`LATENT`/`JSON`) against
    /// the sessions we issued (AVP-HTTP-35).
    pub fn check_session(&self, session_id: &str, mode: &str) -> SessionCheck {
        if session_id.is_empty() {
            return SessionCheck::None;
        }
        let mut sessions = self.sessions();
        match sessions.get(session_id, now()) {
            None => SessionCheck::Unknown,
            Some(session) if session.mode.name() == mode => SessionCheck::Live,
            Some(session) => SessionCheck::ModeMismatch {
                session: session.mode.name(),
                message: match mode {
                    "LATENT" => "LATENT",
                    "JSON" => "JSON",
                    _ => "unknown",
                },
            },
        }
    }

    /// Live sessions now (for tests and metrics).
    pub fn live_sessions(&self) -> usize {
        self.sessions().active_count(now())
    }
}

/// The hello this side sends: the SDK's `HelloMessage(agent_id, identity).to_dict()`
/// as `json.dumps` writes it, with our weights digest when we know it.
pub fn hello_message(
    agent_id: &str,
    identity: &ModelIdentity,
    weights: Option<&WeightsDigest>,
) -> HelloMessage {
    let mut hello = HelloMessage {
        agent_id: agent_id.into(),
        identity: Some(identity.clone()),
        ..HelloMessage::default()
    };
    if let Some(digest) = weights {
        hello.set_weights_digest(digest);
    }
    hello
}

/// [`hello_message`] as bytes.
pub fn hello_bytes(agent_id: &str, identity: &ModelIdentity) -> Vec<u8> {
    // Writing fails only for NaN/Infinity, which a hello built here cannot hold.
    hello_message(agent_id, identity, None)
        .to_wire()
        .unwrap_or_default()
}

/// A handshake as the client sees it (AVP-HTTP-30): resolved on our side by
/// the handshake crate's state machine, next to what the server said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandshakeResult {
    /// The server's agent id.
    pub agent_id: String,
    /// The session id the server issued (what transmits should carry).
    pub session_id: String,
    /// The server's identity.
    pub identity: ModelIdentity,
    /// The server's weights digest, when it sent one.
    pub weights_digest: Option<WeightsDigest>,
    /// The mode we resolve from both hellos.
    pub mode: Mode,
    /// The rule that decided, on our side.
    pub resolution_path: ResolutionPath,
    /// The map id of that rule.
    pub avp_map_id: String,
    /// Both sides sent weights digests and they differ (AVP-HS-22).
    pub weights_mismatch: bool,
    /// The server's `mode` string.
    pub server_mode: String,
    /// The server's `resolution_path` string.
    pub server_resolution_path: String,
    /// The `KV_CACHE_EXT` capabilities the server announced (AVP-KVQ-1).
    pub kv: KvCapabilities,
    /// The answer as sent (for printing).
    pub answer: serde_json::Value,
}

impl HandshakeResult {
    /// Both sides resolved the same mode and path. Rules 4 and 5 depend on
    /// local files, so the sides may legitimately differ there.
    pub fn agrees(&self) -> bool {
        self.server_mode == self.mode.name()
            && self.server_resolution_path == self.resolution_path.as_str()
    }

    /// Reads a server's answer to `ours` through the state machine.
    pub fn from_answer(ours: HelloMessage, body: &[u8]) -> Result<Self, String> {
        let (sent, _) = Start::new(ours).send_hello().map_err(|e| e.to_string())?;
        let received = sent.receive_hello(body).map_err(|e| e.to_string())?;
        let weights_digest = received
            .remote()
            .weights_digest()
            .map_err(|e| e.to_string())?;
        let established: Established = received
            .establish(String::new(), None, None)
            .map_err(|e| e.to_string())?;
        if established.session_id.is_empty() {
            return Err("the answer has no session_id".to_owned());
        }
        let answer: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let text = |key: &str| {
            answer
                .get(key)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Ok(Self {
            agent_id: established.remote_agent_id().to_string_lossy(),
            session_id: established.session_id.clone(),
            identity: established.remote.identity_or_default(),
            weights_digest,
            mode: established.resolution.mode,
            resolution_path: established.resolution.resolution_path,
            avp_map_id: established.resolution.avp_map_id.clone(),
            weights_mismatch: established.resolution.weights_mismatch,
            server_mode: text("mode"),
            server_resolution_path: text("resolution_path"),
            kv: KvCapabilities::from_hello(|name| {
                answer.pointer(&format!("/capabilities/{name}"))
                    == Some(&serde_json::Value::Bool(true))
            }),
            answer,
        })
    }
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

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("JSON")
    }

    #[test]
    fn answers_carry_our_identity_and_the_resolved_mode() {
        let local =
            identity(r#"{"model_family":"qwen2","hidden_dim":8,"num_layers":2,"model_hash":"a"}"#);
        let server = HandshakeServer::new("me", local);
        let hello = br#"{"agent_id":"p","identity":{"model_family":"qwen2","hidden_dim":8,"num_layers":2,"model_hash":"b"}}"#;
        let answer = parse(&server.answer(hello).expect("answer"));
        assert_eq!(answer["resolution_path"], "structural_match");
        assert_eq!(answer["mode"], "LATENT");
        assert_eq!(answer["identity"]["model_hash"], "a");
        assert_eq!(answer["session_id"].as_str().map(str::len), Some(32));
        let none = parse(&server.answer(b"{}").expect("answer"));
        assert_eq!(none["mode"], "JSON");
        assert_eq!(server.live_sessions(), 2, "both sessions recorded");
    }

    /// AVP-HS-20/22 on the wire: malformed digests are refused, a differing
    /// well-formed one skips hash_match, ours is sent back.
    #[test]
    fn http_34_weights_digests_are_validated_and_compared() {
        let local = identity(r#"{"model_hash":"same"}"#);
        let ours = WeightsDigest([7; 32]);
        let server = HandshakeServer::new("me", local).with_weights_digest(ours);
        for bad in [r#""AB""#, "5", r#""ab""#] {
            let bad = bad.replace("AB", &"AB".repeat(32));
            let hello = format!(
                r#"{{"identity":{{"model_hash":"same"}},"capabilities":{{"weights_digest":{bad}}}}}"#
            );
            assert!(
                matches!(
                    server.answer(hello.as_bytes()),
                    Err(HelloProblem::NotAHello(_))
                ),
                "{hello}"
            );
        }
        let other = "cd".repeat(32);
        let hello = format!(
            r#"{{"identity":{{"model_hash":"same"}},"capabilities":{{"weights_digest":"{other}"}}}}"#
        );
        let answer = parse(&server.answer(hello.as_bytes()).expect("answer"));
        assert_eq!(answer["mode"], "JSON", "{answer}");
        assert_eq!(answer["weights_mismatch"], true);
        assert_eq!(answer["capabilities"]["weights_digest"], ours.to_hex());
        let same = format!(
            r#"{{"identity":{{"model_hash":"same"}},"capabilities":{{"weights_digest":"{}"}}}}"#,
            ours.to_hex()
        );
        let answer = parse(&server.answer(same.as_bytes()).expect("answer"));
        assert_eq!(answer["resolution_path"], "hash_match");
    }

    #[test]
    fn http_35_sessions_are_checked_and_bounded() {
        let server = HandshakeServer::new("me", identity(r#"{"model_hash":"h"}"#))
            .with_session_limit(Duration::from_secs(60), 1);
        let answer = parse(
            &server
                .answer(br#"{"agent_id":"p","identity":{"model_hash":"h"}}"#)
                .expect("answer"),
        );
        let id = answer["session_id"].as_str().expect("id").to_owned();
        assert_eq!(server.check_session(&id, "LATENT"), SessionCheck::Live);
        assert!(matches!(
            server.check_session(&id, "JSON"),
            SessionCheck::ModeMismatch {
                session: "LATENT",
                ..
            }
        ));
        assert_eq!(server.check_session("", "JSON"), SessionCheck::None);
        assert_eq!(
            server.check_session(&"0".repeat(32), "LATENT"),
            SessionCheck::Unknown
        );
        assert_eq!(
            server.answer(b"{}"),
            Err(HelloProblem::TooManySessions),
            "the table is bounded"
        );
    }

    #[test]
    fn bodies_that_are_not_hellos_are_told_apart() {
        let server = HandshakeServer::new("me", ModelIdentity::default());
        assert!(matches!(
            server.answer(b"{nope"),
            Err(HelloProblem::NotJson(_))
        ));
        assert!(matches!(
            server.answer(b"[1]"),
            Err(HelloProblem::NotAHello(_))
        ));
        assert!(matches!(
            server.answer(br#"{"agent_id":3}"#),
            Err(HelloProblem::NotAHello(_))
        ));
    }

    #[test]
    fn the_client_resolves_the_answer_with_the_state_machine() {
        let local = identity(r#"{"model_hash":"h"}"#);
        let server = HandshakeServer::new("srv", local.clone());
        let ours = hello_message("cli", &local, None);
        let body = server
            .answer(&ours.to_wire().expect("wire"))
            .expect("answer");
        let result = HandshakeResult::from_answer(ours, &body).expect("typed");
        assert_eq!(result.mode, Mode::Latent);
        assert_eq!(result.resolution_path, ResolutionPath::HashMatch);
        assert_eq!(result.agent_id, "srv");
        assert!(result.agrees());
        assert_eq!(
            server.check_session(&result.session_id, "LATENT"),
            SessionCheck::Live
        );
    }

    /// AVP-HTTP-100: the answer announces the compact-context capabilities
    /// the server accepts, and the client reads them back.
    #[test]
    fn http_100_kv_capabilities_are_announced_and_read() {
        let local = identity(r#"{"model_hash":"h"}"#);
        for kv in [
            KvCapabilities::ALL,
            KvCapabilities::NONE,
            KvCapabilities {
                int4: false,
                ..KvCapabilities::ALL
            },
            KvCapabilities {
                int8_channel: false,
                ..KvCapabilities::ALL
            },
        ] {
            let server = HandshakeServer::new("srv", local.clone()).with_kv_capabilities(kv);
            let ours = hello_message("cli", &local, None);
            let body = server
                .answer(&ours.to_wire().expect("wire"))
                .expect("answer");
            let answer = parse(&body);
            assert_eq!(
                answer["capabilities"]["kv_quant_int8"].as_bool(),
                kv.int8.then_some(true),
                "{answer}"
            );
            let result = HandshakeResult::from_answer(ours, &body).expect("typed");
            assert_eq!(result.kv, kv);
        }
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

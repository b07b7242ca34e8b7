//! The handshake state machine (AVP-HS-11, AVP-HS-12), the weights-digest
//! refusal through it (AVP-HS-22) and the session store's TTL (AVP-HS-13).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use avp_handshake::json::{self, JsonString, Object, Value};
use avp_handshake::state::Start;
use avp_handshake::{
    Error, HelloMessage, Mode, ModelIdentity, ResolutionPath, SessionManager, WeightsDigest,
};

fn identity(hash: &str) -> ModelIdentity {
    ModelIdentity {
        model_family: "qwen2".into(),
        model_id: "Qwen/Qwen2-7B".into(),
        model_hash: hash.into(),
        hidden_dim: 3584,
        num_layers: 28,
        num_kv_heads: 4,
        head_dim: 128,
        tokenizer_hash: JsonString::default(),
    }
}

fn hello(agent: &str, hash: &str) -> HelloMessage {
    HelloMessage {
        agent_id: agent.into(),
        identity: Some(identity(hash)),
        ..HelloMessage::default()
    }
}

/// AVP-HS-11, AVP-HS-30: the exchange runs through the consuming states to
/// `Established`.
#[test]
fn avp_hs_11_full_exchange_reaches_established() {
    let (sent, bytes) = Start::new(hello("a", "h1")).send_hello().unwrap();
    // The wire form is the SDK's json.dumps(hello.to_dict()).
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with(
        r#"{"agent_id": "a", "avp_version": "0.6.2", "capabilities": {}, "identity": {"#
    ));
    let peer = hello("b", "h1").to_wire().unwrap();
    let received = sent.receive_hello(&peer).unwrap();
    assert_eq!(received.remote().agent_id, JsonString::from("b"));
    let done = received.establish("local-id".into(), None, None).unwrap();
    assert_eq!(done.session_id, "local-id");
    assert_eq!(done.resolution.mode, Mode::Latent);
    assert_eq!(done.resolution.resolution_path, ResolutionPath::HashMatch);
    assert_eq!(done.remote_agent_id(), &JsonString::from("b"));
}

#[test]
fn avp_hs_11_sdk_server_reply_session_id_wins() {
    let (sent, _) = Start::new(hello("a", "h1")).send_hello().unwrap();
    let reply = br#"{"success": true, "agent_id": "srv", "identity": {"model_hash": "h2"}, "session_id": "srv-42"}"#;
    let done = sent
        .receive_hello(reply)
        .unwrap()
        .establish("ours".into(), None, None)
        .unwrap();
    assert_eq!(done.session_id, "srv-42");
    assert_eq!(
        done.resolution.resolution_path,
        ResolutionPath::JsonFallback
    );
}

#[test]
fn avp_hs_12_malformed_peer_hello_ends_the_handshake() {
    let bad: &[&[u8]] = &[
        b"not json",
        b"[1]",
        br#"{"identity": null}"#,
        br#"{"identity": {"hidden_dim": -1}}"#,
        br#"{"session_id": 7}"#,
        br#"{"capabilities": {"weights_digest": 5}}"#,
    ];
    for input in bad {
        let (sent, _) = Start::new(hello("a", "h")).send_hello().unwrap();
        assert!(
            sent.receive_hello(input).is_err(),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn avp_hs_12_missing_identity_resolves_like_the_sdk() {
    // The SDK substitutes ModelIdentity.from_dict({}) and falls back to JSON.
    let (sent, _) = Start::new(hello("a", "h")).send_hello().unwrap();
    let done = sent
        .receive_hello(b"{}")
        .unwrap()
        .establish("s".into(), None, None)
        .unwrap();
    assert_eq!(done.resolution.mode, Mode::Json);
    assert_eq!(
        done.resolution.resolution_path,
        ResolutionPath::JsonFallback
    );
}

#[test]
fn avp_hs_22_differing_weights_digests_refuse_same_model_transfer() {
    let mut local = hello("a", "same-config");
    local.set_weights_digest(&WeightsDigest([1; 32]));
    let mut remote = hello("b", "same-config");
    remote.set_weights_digest(&WeightsDigest([2; 32]));
    let (sent, _) = Start::new(local.clone()).send_hello().unwrap();
    let done = sent
        .receive_hello(&remote.to_wire().unwrap())
        .unwrap()
        .establish("s".into(), None, None)
        .unwrap();
    assert_eq!(done.resolution.mode, Mode::Json);
    assert_eq!(
        done.resolution.resolution_path,
        ResolutionPath::JsonFallback
    );
    assert!(done.resolution.weights_mismatch);

    // Equal digests keep the hash match; an SDK peer (no digest) is unaffected.
    remote.set_weights_digest(&WeightsDigest([1; 32]));
    for peer in [remote, hello("b", "same-config")] {
        let (sent, _) = Start::new(local.clone()).send_hello().unwrap();
        let done = sent
            .receive_hello(&peer.to_wire().unwrap())
            .unwrap()
            .establish("s".into(), None, None)
            .unwrap();
        assert_eq!(done.resolution.resolution_path, ResolutionPath::HashMatch);
        assert!(!done.resolution.weights_mismatch);
    }
}

#[test]
fn avp_hs_22_shared_tokenizer_still_applies_after_refusal() {
    let mut local = hello("a", "cfg");
    let mut remote = hello("b", "cfg");
    for h in [&mut local, &mut remote] {
        h.identity.as_mut().unwrap().tokenizer_hash = "f".repeat(64).into();
    }
    local.set_weights_digest(&WeightsDigest([1; 32]));
    remote.set_weights_digest(&WeightsDigest([3; 32]));
    let (sent, _) = Start::new(local).send_hello().unwrap();
    let done = sent
        .receive_hello(&remote.to_wire().unwrap())
        .unwrap()
        .establish("s".into(), None, None)
        .unwrap();
    assert_eq!(
        done.resolution.resolution_path,
        ResolutionPath::SharedTokenizer
    );
    assert_eq!(
        done.resolution.avp_map_id,
        format!("vocab:{}", "f".repeat(16))
    );
}

#[test]
fn avp_hs_22_vocab_overlap_through_the_state_machine() {
    let vocab = |prefix: &str| {
        let mut o = Object::new();
        for i in 0..150u64 {
            o.insert(format!("{prefix}{i}").as_str(), Value::from(i));
        }
        o
    };
    let (a, b) = (vocab("t"), vocab("t"));
    let (sent, _) = Start::new(hello("a", "x")).send_hello().unwrap();
    let done = sent
        .receive_hello(br#"{"identity": {"model_hash": "y"}}"#)
        .unwrap()
        .establish("s".into(), None, Some((&a, &b)))
        .unwrap();
    assert_eq!(done.resolution.avp_map_id, "vocab_overlap:150");
}

#[test]
fn avp_hs_4_weights_digest_hex_roundtrip() {
    let d = WeightsDigest([0xab; 32]);
    assert_eq!(WeightsDigest::from_hex(&d.to_hex()), Some(d));
    assert_eq!(WeightsDigest::from_hex(&"AB".repeat(32)), None);
    assert_eq!(WeightsDigest::from_hex("ab"), None);
    let parsed = json::parse(br#"{"capabilities": {"weights_digest": "zz"}}"#).unwrap();
    assert!(
        HelloMessage::from_value(&parsed)
            .unwrap()
            .weights_digest()
            .is_err()
    );
}

const T0: Duration = Duration::from_secs(1_000);

fn manager_with_one(ttl: Option<Duration>) -> SessionManager {
    let mut m = SessionManager::new(Duration::from_secs(60));
    m.create(
        "s1".into(),
        vec!["a".into(), "b".into()],
        vec![("a".into(), identity("h"))],
        Mode::Latent,
        ttl,
        T0,
    )
    .unwrap();
    m
}

#[test]
fn avp_hs_13_session_lives_exactly_its_ttl() {
    let mut m = manager_with_one(None);
    assert!(m.get("s1", T0).is_some());
    // Expired strictly after created_at + ttl, as in the SDK.
    assert!(m.get("s1", T0 + Duration::from_secs(60)).is_some());
    assert!(
        m.get("s1", T0 + Duration::from_secs(60) + Duration::from_nanos(1))
            .is_none()
    );
    // The expired session was removed, so even an earlier clock cannot see it.
    assert!(m.get("s1", T0).is_none());
    assert_eq!(m.active_count(T0), 0);
}

#[test]
fn avp_hs_13_custom_ttl_find_cleanup_invalidate() {
    let mut m = manager_with_one(Some(Duration::from_secs(5)));
    m.create(
        "s2".into(),
        vec!["b".into(), "c".into()],
        vec![],
        Mode::Json,
        None,
        T0,
    )
    .unwrap();
    let ids = |v: Vec<&avp_handshake::Session>| {
        v.into_iter()
            .map(|s| s.session_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(m.find("b", T0)), ["s1", "s2"]);
    let later = T0 + Duration::from_secs(6);
    assert_eq!(ids(m.find("b", later)), ["s2"]);
    assert_eq!(m.active_count(later), 1);
    assert_eq!(m.cleanup_expired(later), 1);
    assert_eq!(m.cleanup_expired(later), 0);
    assert!(m.invalidate("s2"));
    assert!(!m.invalidate("s2"));
    assert_eq!(m.active_count(T0), 0);
}

#[test]
fn avp_hs_13_duplicate_session_id_is_a_caller_error() {
    let mut m = manager_with_one(None);
    let err = m
        .create("s1".into(), vec![], vec![], Mode::Json, None, T0)
        .unwrap_err();
    assert_eq!(err, Error::DuplicateSession("s1".into()));
}

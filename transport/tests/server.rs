//! The server against hostile and broken clients, in process, on loopback:
//! statuses and JSON error bodies (AVP-HTTP-10..15, AVP-HTTP-20), limits
//! enforced while streaming (AVP-HTTP-12), both HTTP versions on one port
//! (AVP-HTTP-2), graceful shutdown (AVP-HTTP-16). Rule IDs: spec/protocol/http.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use avp_transport::hello::identity_from_json;
use avp_transport::{
    Agent, AvpClient, ClientConfig, ContextStore, Server, ServerConfig, TransportError,
};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod pki;

struct Running {
    addr: SocketAddr,
    store: Arc<ContextStore>,
    agent: Arc<Agent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task").expect("server ran");
    }
}

async fn start(config: ServerConfig) -> Running {
    start_with_budget(config, avp_transport::DEFAULT_MEMORY_BUDGET).await
}

async fn start_with_budget(config: ServerConfig, budget: u64) -> Running {
    let identity =
        identity_from_json(br#"{"model_family": "qwen2", "hidden_dim": 8, "num_layers": 2}"#)
            .expect("identity");
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let agent = Agent::new("test-agent", identity, store).with_memory_budget(budget);
    start_agent(config, agent).await
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A well-formed message: metadata with target_agent_id and dtype, then `payload`.
fn message(target: &str, payload: &[u8]) -> Vec<u8> {
    let mut meta = vec![0x1a];
    varint(target.len() as u64, &mut meta);
    meta.extend_from_slice(target.as_bytes());
    meta.extend_from_slice(&[0x40, 0x00]);
    let mut out = vec![0x41, 0x56, 1, 0];
    out.extend_from_slice(&((meta.len() + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(payload);
    out
}

fn request_head(
    method: &str,
    path: &str,
    content_type: &str,
    length: Option<usize>,
    extra: &str,
) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\n{extra}"
    );
    match length {
        Some(len) => head.push_str(&format!("Content-Length: {len}\r\n\r\n")),
        None => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    head
}

/// Sends one HTTP/1.1 request and returns (status, JSON body); status 0 means
/// the server closed the connection without an answer.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // The server may answer and close before reading everything: that is fine.
    let _ = stream.write_all(body).await;
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> (u16, Value) {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// One malformed-request case: name, path, content type, body, extra headers, status, kind.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [u8], &'a str, u16, &'a str);

fn assert_error(status: u16, body: &Value, want_status: u16, want_kind: &str, case: &str) {
    assert_eq!(status, want_status, "{case}: {body}");
    assert_eq!(body["success"], false, "{case}: {body}");
    assert_eq!(body["error"]["kind"], want_kind, "{case}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}"
    );
}

#[tokio::test]
async fn http_11_14_20_malformed_requests_get_4xx_json_and_the_server_keeps_serving() {
    let config = ServerConfig {
        max_body: 1 << 20,
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let avp = "application/avp+binary";
    let mut random = vec![0u8; 4096];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in &mut random {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    random[0] = 0x00;
    let good = message("bob", &[7u8; 64]);
    let mut version_two = good.clone();
    version_two[2] = 2;
    let mut meta_too_long = good.clone();
    meta_too_long[8..12].copy_from_slice(&1000u32.to_le_bytes());
    let mut broken_meta = good.clone();
    broken_meta[12] = 0x1a;
    broken_meta[13] = 0x7f; // string longer than the metadata
    let short_payload = &good[..good.len() - 10];
    let mut huge = good.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());

    // (case, path, content type, body, extra headers, status, error kind)
    let cases: Vec<Case<'_>> = vec![
        (
            "random bytes",
            "/avp/v2/transmit",
            avp,
            &random,
            "",
            400,
            "bad_magic",
        ),
        (
            "version 2",
            "/avp/v2/transmit",
            avp,
            &version_two,
            "",
            400,
            "unsupported_version",
        ),
        (
            "metadata longer than payload",
            "/avp/v2/transmit",
            avp,
            &meta_too_long,
            "",
            400,
            "truncated",
        ),
        (
            "broken protobuf",
            "/avp/v2/transmit",
            avp,
            &broken_meta,
            "",
            400,
            "malformed_metadata",
        ),
        (
            "payload shorter than declared",
            "/avp/v2/transmit",
            avp,
            short_payload,
            "",
            400,
            "truncated",
        ),
        (
            "empty body",
            "/avp/v2/transmit",
            avp,
            b"",
            "",
            400,
            "truncated",
        ),
        (
            "five bytes",
            "/avp/v2/transmit",
            avp,
            b"AV\x01\x00\x00",
            "",
            400,
            "truncated",
        ),
        (
            "declared size over the limit",
            "/avp/v2/transmit",
            avp,
            &huge,
            "",
            413,
            "body_too_large",
        ),
        (
            "wrong content type",
            "/avp/v2/transmit",
            "text/plain",
            &good,
            "",
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            "/avp/v2/transmit",
            "",
            &good,
            "",
            415,
            "unsupported_media_type",
        ),
        (
            "future AVP-Version",
            "/avp/v2/transmit",
            avp,
            &good,
            "AVP-Version: 9.9\r\n",
            400,
            "unsupported_version",
        ),
        (
            "hello not JSON",
            "/avp/v2/handshake",
            "application/json",
            b"{nope",
            "",
            400,
            "invalid_json",
        ),
        (
            "hello not an object",
            "/avp/v2/handshake",
            "application/json",
            b"[1,2]",
            "",
            400,
            "invalid_hello",
        ),
        (
            "hello as binary",
            "/avp/v2/handshake",
            avp,
            b"{}",
            "",
            415,
            "unsupported_media_type",
        ),
        (
            "text with a numeric content",
            "/avp/v2/text",
            "application/json",
            br#"{"content":5}"#,
            "",
            400,
            "invalid_message",
        ),
        (
            "unknown path",
            "/avp/v3/transmit",
            avp,
            &good,
            "",
            404,
            "not_found",
        ),
    ];
    for (case, path, content_type, body, extra, want_status, want_kind) in cases {
        let head = request_head("POST", path, content_type, Some(body.len()), extra);
        let head = head.replace("Content-Type: \r\n", "");
        let (status, answer) = raw(server.addr, &head, body).await;
        assert_error(status, &answer, want_status, want_kind, case);
    }
    let (status, answer) = raw(
        server.addr,
        &request_head("GET", "/avp/v2/transmit", avp, Some(0), ""),
        b"",
    )
    .await;
    assert_error(status, &answer, 405, "method_not_allowed", "GET transmit");
    let (status, answer) = raw(
        server.addr,
        &request_head("POST", "/health", avp, Some(0), ""),
        b"",
    )
    .await;
    assert_error(status, &answer, 405, "method_not_allowed", "POST health");

    assert!(
        server.store.list().is_empty(),
        "nothing malformed was stored"
    );
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    assert_eq!(
        client.health().await.expect("still serving"),
        json!({"status": "ok"})
    );
    let ok = client
        .transmit(Bytes::from(good))
        .await
        .expect("a good message still goes through");
    assert_eq!(ok["success"], true);
    assert_eq!(server.store.list().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http_12_bodies_over_the_limit_are_refused_while_streaming() {
    let limit = 64 * 1024;
    let server = start(ServerConfig {
        max_body: limit,
        ..ServerConfig::default()
    })
    .await;
    // The header declares a small message but the chunked body never stops:
    // the server must stop at the limit, not when the client does.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        None,
        "",
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let first = message("bob", &[1u8; 100]);
    let mut chunk = format!("{:x}\r\n", first.len()).into_bytes();
    chunk.extend_from_slice(&first);
    chunk.extend_from_slice(b"\r\n");
    stream.write_all(&chunk).await.expect("first chunk");
    let filler = vec![0u8; 16 * 1024];
    let mut frame = format!("{:x}\r\n", filler.len()).into_bytes();
    frame.extend_from_slice(&filler);
    frame.extend_from_slice(b"\r\n");
    for _ in 0..16 {
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let (status, answer) = read_answer(&mut stream).await;
    assert_error(
        status,
        &answer,
        413,
        "body_too_large",
        "endless chunked body",
    );

    // A Content-Length over the limit is refused before any body byte is read.
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(10 << 20),
        "",
    );
    let (status, answer) = raw(server.addr, &head, b"").await;
    assert_error(
        status,
        &answer,
        413,
        "body_too_large",
        "declared Content-Length",
    );
    assert!(server.store.list().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn http_14_truncated_uploads_and_vanishing_clients_store_nothing() {
    let server = start(ServerConfig {
        idle_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .await;
    let good = message("bob", &[9u8; 4096]);
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(good.len()),
        "",
    );

    // Truncated upload: half the promised bytes, then the write side closes.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&good[..good.len() / 2])
        .await
        .expect("half");
    stream.shutdown().await.expect("half-close");
    let (status, _) = read_answer(&mut stream).await;
    assert!(
        status == 0 || (400..500).contains(&status),
        "truncated upload answered {status}"
    );

    // A client that disconnects mid-body.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&good[..100]).await.expect("some");
    drop(stream);

    // A client that stalls mid-body is cut off by the idle timeout (408).
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&good[..100]).await.expect("some");
    let (status, answer) = read_answer(&mut stream).await;
    assert_error(status, &answer, 408, "timeout", "stalled body");

    assert!(
        server.store.list().is_empty(),
        "nothing half-received was stored"
    );
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    client
        .transmit(Bytes::from(good))
        .await
        .expect("still serving");
    assert_eq!(server.store.list().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http_2_http1_and_h2c_prior_knowledge_share_one_port() {
    let server = start(ServerConfig::default()).await;
    for http2 in [false, true] {
        let config = ClientConfig {
            http2,
            agent_id: format!("h2={http2}"),
            ..ClientConfig::default()
        };
        let client = AvpClient::new(&server.url(), config).expect("client");
        let payload = vec![http2 as u8; 300_000];
        let answer = client
            .transmit(Bytes::from(message("bob", &payload)))
            .await
            .expect("transmit");
        let id = answer["request_id"].as_str().expect("request_id");
        let (stored, bytes) = server.store.get(id).expect("read").expect("stored");
        assert_eq!(stored.target_agent_id, "bob");
        assert!(bytes[..] == message("bob", &payload)[..]);
    }
    server.shutdown().await;
}

/// AVP-HTTP-18: an HTTP/2 peer that sends the preface and its SETTINGS and
/// then neither opens a stream nor answers PINGs is closed by the server (after
/// at most twice the idle timeout), instead of holding its connection forever.
#[tokio::test]
async fn http_18_a_silent_http2_connection_is_closed() {
    let server = start(ServerConfig {
        idle_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface + empty SETTINGS");
    // Read (and never answer) until the server closes: the bound is the
    // test's patience, not the server's timing.
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut seen)).await;
    assert!(
        closed.is_ok(),
        "the silent HTTP/2 connection was never closed"
    );
    // The server spoke HTTP/2 to it (SETTINGS frame type 4 first) before giving up.
    assert_eq!(seen.get(3), Some(&4), "{seen:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn http_30_33_handshake_and_text_over_the_client() {
    let server = start(ServerConfig {
        token: Some("tok".into()),
        ..ServerConfig::default()
    })
    .await;
    let config = ClientConfig {
        token: Some("tok".into()),
        ..ClientConfig::default()
    };
    let client = AvpClient::new(&server.url(), config).expect("client");
    let identity = identity_from_json(
        br#"{"model_family": "qwen2", "hidden_dim": 8, "num_layers": 2, "model_hash": "zz"}"#,
    )
    .expect("identity");
    let result = client.handshake(&identity).await.expect("handshake");
    assert!(result.agrees(), "{:?}", result.answer);
    assert_eq!(result.resolution_path.as_str(), "structural_match");
    let answer = &result.answer;
    assert_eq!(answer["mode"], "LATENT");
    assert_eq!(answer["resolution_path"], "structural_match");
    assert_eq!(answer["identity"]["model_family"], "qwen2");
    assert_eq!(answer["agent_id"], "test-agent");

    let text = json!({"avp_version": "0.6.2", "session_id": "s", "source_agent_id": "peer",
        "target_agent_id": "test-agent", "content": "fall back ✓"});
    let answer = client.send_text(&text).await.expect("text");
    let id = answer["request_id"].as_str().expect("id");
    let (stored, bytes) = server.store.get(id).expect("read").expect("stored");
    assert_eq!(stored.source_agent_id, "peer");
    assert_eq!(serde_json::from_slice::<Value>(&bytes).expect("json"), text);

    let anonymous = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    match anonymous.send_text(&text).await {
        Err(TransportError::Status { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    // Health stays open for liveness probes (AVP-HTTP-13).
    assert_eq!(anonymous.health().await.expect("health")["status"], "ok");
    assert_eq!(server.store.list().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn http_16_shutdown_waits_for_the_request_in_flight() {
    let mut server = start(ServerConfig::default()).await;
    let good = message("bob", &[3u8; 100_000]);
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(good.len()),
        "Expect: 100-continue\r\n",
    );
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // The interim answer proves the request is in flight (head parsed, body
    // being read) before the server is told to stop: a condition, not a delay.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(60), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue in time")
        .expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(&good[..50_000]).await.expect("first half");
    let _ = server.stop.take().map(|stop| stop.send(()));
    // New connections are no longer accepted once the stop has been taken...
    let addr = server.addr;
    let closed = async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("listener closed");
    // ...but the upload in flight completes and is answered.
    stream
        .write_all(&good[50_000..])
        .await
        .expect("second half");
    let (status, answer) = read_answer(&mut stream).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(server.store.list().len(), 1);
    let store = Arc::clone(&server.store);
    server.task.await.expect("task").expect("run");
    assert_eq!(store.list().len(), 1);
}

/// Every decode vector of the SDK-generated wire corpus, sent as a transmit:
/// invalid ones get 4xx with the corpus's error kind and are not stored;
/// valid and non-strict ones are stored byte for byte, with the codec's
/// warnings in the answer (AVP-HTTP-14, AVP-HTTP-31, AVP-HTTP-32).
#[tokio::test]
async fn http_14_31_32_the_wire_corpus_through_transmit() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/wire");
    let cases: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).expect("cases.json"))
            .expect("JSON");
    let server = start(ServerConfig::default()).await;
    let client = AvpClient::new(
        &server.url(),
        ClientConfig {
            retries: 0,
            ..ClientConfig::default()
        },
    )
    .expect("client");
    let mut checked = 0;
    for case in cases["cases"].as_array().expect("cases") {
        if case["op"] != "decode" {
            continue;
        }
        let id = case["id"].as_str().expect("id");
        let file = case["input"]["file"].as_str().expect("file");
        let bytes = std::fs::read(dir.join(file)).expect("vector");
        let before = server.store.list().len();
        let outcome = client.transmit(Bytes::from(bytes.clone())).await;
        match case["expect"]["result"].as_str().expect("result") {
            "invalid" => {
                let mut want = case["expect"]["error_kind"].as_str().expect("kind");
                // A header declaring more than the server's body limit is refused
                // as soon as it arrives (AVP-HTTP-12), before the codec sees more.
                let declared = bytes
                    .get(4..8)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if bytes.starts_with(b"AV\x01")
                    && declared.is_some_and(|d| 12 + u64::from(d) > 1 << 30)
                {
                    want = "body_too_large";
                }
                match outcome {
                    Err(TransportError::Status { status, kind, .. }) => {
                        let want_status = if want == "limit_exceeded" || want == "body_too_large" {
                            413
                        } else {
                            400
                        };
                        assert_eq!((status, kind.as_deref()), (want_status, Some(want)), "{id}");
                    }
                    other => panic!("{id}: expected a 4xx, got {other:?}"),
                }
                assert_eq!(server.store.list().len(), before, "{id}: nothing stored");
            }
            result => {
                let answer = outcome.unwrap_or_else(|err| panic!("{id}: {err}"));
                let request = answer["request_id"].as_str().expect("request_id");
                let (_, stored) = server.store.get(request).expect("read").expect("stored");
                assert!(stored[..] == bytes[..], "{id}: stored as sent");
                let warnings = if result == "non_strict" {
                    case["expect"]["warnings"].clone()
                } else {
                    json!([])
                };
                assert_eq!(answer["warnings"], warnings, "{id}");
            }
        }
        checked += 1;
    }
    assert!(checked > 90, "only {checked} decode cases found");
    server.shutdown().await;
}

/// With a 1 MiB budget, bytes are taken as they arrive (AVP-HTTP-17): a
/// second 700 KiB message fills what the stalled first one left and waits;
/// when the first resumes, the two could only wait on each other, so the
/// younger gives up with 503 `server_busy` and the older is stored.
#[tokio::test]
async fn http_17_message_buffers_share_one_memory_budget() {
    let server = start_with_budget(ServerConfig::default(), 1 << 20).await;
    let first = message("bob", &[1u8; 700 * 1024]);
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(first.len()),
        "",
    );
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&first[..first.len() / 2])
        .await
        .expect("first half");
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    let second = tokio::spawn(async move {
        client
            .transmit(Bytes::from(message("bob", &[2u8; 700 * 1024])))
            .await
    });
    // Wait until the second message holds bytes and waits for more.
    let loopback = "127.0.0.1".parse().expect("ip");
    wait_until("the second message waits for budget", || {
        server.agent.budget_waiting() == 1
    })
    .await;
    assert!(!second.is_finished(), "the second message waits for budget");
    assert!(server.store.list().is_empty());

    stream
        .write_all(&first[first.len() / 2..])
        .await
        .expect("second half");
    let (status, answer) = read_answer(&mut stream).await;
    assert_eq!(status, 200, "{answer}");
    match second.await.expect("join") {
        Err(TransportError::Status { status, kind, .. }) => {
            assert_eq!((status, kind.as_deref()), (503, Some("server_busy")));
        }
        other => panic!("the younger message must yield, got {other:?}"),
    }
    assert_eq!(server.store.list().len(), 1);
    assert_eq!(
        server.agent.budget_in_use(loopback),
        (0, 0),
        "all given back"
    );
    server.shutdown().await;
}

/// A server with its own config, budget share and handshake, for the tests
/// of issue 13 (hostile peers).
async fn start_agent(config: ServerConfig, agent: Agent) -> Running {
    let store = Arc::clone(agent.store());
    let agent = Arc::new(agent);
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        config,
        Arc::<Agent>::clone(&agent),
    )
    .await
    .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        store,
        agent,
        stop: Some(stop),
        task,
    }
}

fn plain_agent() -> Agent {
    Agent::new(
        "test-agent",
        avp_transport::ModelIdentity::default(),
        Arc::new(ContextStore::in_memory(Duration::from_secs(60))),
    )
}

/// A connection to `to` whose source address is `from` (another loopback
/// address stands for another peer).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind a loopback source");
    socket.connect(to).await.expect("connect")
}

/// Polls `cond` every 10 ms, failing after 60 s (a bound, not a timing).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let waited = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), waited)
        .await
        .unwrap_or_else(|_| panic!("never happened: {what}"));
}

/// Issue 13, defect 1: 64 hostile connections from another address (16
/// that stall after the request head, 16 that trickle, 32 that declare a
/// 1 GiB message in its header and stall) hold almost no budget, and a
/// legitimate 16 MiB transmit goes through while all of them are still
/// connected. The server's timeouts are set far beyond the test, so it is
/// not their expiry that lets the legitimate request pass.
#[tokio::test]
async fn http_17_18_hostile_connections_do_not_delay_a_legitimate_transmit() {
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(600),
        header_timeout: Duration::from_secs(600),
        min_rate: 0,
        ..ServerConfig::default()
    };
    let server = start_agent(config, plain_agent()).await;
    let attacker = "127.0.0.2";
    let mut hostile = Vec::new();
    for i in 0..64usize {
        let mut stream = connect_from(attacker, server.addr).await;
        let declared = message("bob", &[0u8; 16]);
        let head = request_head(
            "POST",
            "/avp/v2/transmit",
            "application/avp+binary",
            Some(1 << 30),
            "",
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        match i % 4 {
            // Stall after the head.
            0 => {}
            // Trickle: a few bytes of a real header now, more later.
            1 => stream.write_all(&declared[..5]).await.expect("trickle"),
            // A 12-byte AVP header declaring ~1 GiB, then silence.
            _ => {
                let mut header = declared[..12].to_vec();
                header[4..8].copy_from_slice(&((1u32 << 30) - 12).to_le_bytes());
                stream.write_all(&header).await.expect("header");
            }
        }
        hostile.push(stream);
    }
    let attacker_ip: std::net::IpAddr = attacker.parse().expect("ip");
    // Every connection's bytes have reached the server (32 headers of 12 bytes).
    wait_until("the hostile headers arrived", || {
        server.agent.budget_in_use(attacker_ip).1 >= 32 * 12
    })
    .await;
    let config = ClientConfig {
        timeout: Duration::from_secs(120),
        ..ClientConfig::default()
    };
    let client = AvpClient::new(&server.url(), config).expect("client");
    let big = message("bob", &vec![7u8; 16 << 20]);
    let answer = client
        .transmit(Bytes::from(big))
        .await
        .expect("the legitimate transmit is not blocked");
    assert_eq!(answer["success"], true);
    let (_, held) = server.agent.budget_in_use(attacker_ip);
    assert!(
        held < 64 * 1024,
        "the attackers hold only what they sent: {held}"
    );
    // The attackers are still connected: nothing has timed them out.
    for stream in &mut hostile {
        let mut byte = [0u8; 1];
        let open = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await;
        assert!(open.is_err(), "a hostile connection was closed early");
    }
    drop(hostile);
    server.shutdown().await;
}

/// One peer address cannot hold more than its share of the budget: a
/// second peer's message fits beside it (AVP-HTTP-17).
#[tokio::test]
async fn http_17_one_peer_cannot_hold_more_than_its_share() {
    let share = 2u64 << 20;
    let config = ServerConfig {
        max_body: share,
        idle_timeout: Duration::from_secs(600),
        min_rate: 0,
        ..ServerConfig::default()
    };
    // Room for the greedy peer's share and one more message.
    let agent = plain_agent()
        .with_memory_budget(5 << 20)
        .with_peer_share(share);
    let server = start_agent(config, agent).await;
    let greedy = "127.0.0.2";
    let full = message("bob", &vec![1u8; (share as usize) - 64]);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(greedy, server.addr).await;
        let head = request_head(
            "POST",
            "/avp/v2/transmit",
            "application/avp+binary",
            Some(full.len()),
            "",
        );
        let body = full[..3 << 19].to_vec();
        // 1.5 MiB of 2 MiB each, then a stall: together far over the share.
        // In a task: a server that stops reading (share full) blocks the write.
        streams.push(tokio::spawn(async move {
            stream.write_all(head.as_bytes()).await.expect("head");
            let _ = stream.write_all(&body).await;
            std::future::pending::<()>().await;
        }));
    }
    let greedy_ip: std::net::IpAddr = greedy.parse().expect("ip");
    wait_until("the greedy peer reached its share", || {
        server.agent.budget_in_use(greedy_ip).1 > 3 << 19
    })
    .await;
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    let answer = client
        .transmit(Bytes::from(message(
            "bob",
            &vec![2u8; (share as usize) - 64],
        )))
        .await
        .expect("another peer's message fits beside the greedy one");
    assert_eq!(answer["success"], true);
    let (_, held) = server.agent.budget_in_use(greedy_ip);
    assert!(held <= share, "held {held} > share {share}");
    for stream in streams {
        stream.abort();
    }
    server.shutdown().await;
}

/// A client that trickles far below the minimum rate is answered 408 once
/// its grace is over; only its own request is lost (AVP-HTTP-18).
#[tokio::test]
async fn http_18_a_trickling_client_loses_its_own_request() {
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(600),
        min_rate: 1000,
        rate_grace: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start_agent(config, plain_agent()).await;
    let body = message("bob", &[3u8; 4096]);
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(body.len()),
        "",
    );
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        // 20 bytes/s, far below 1000: stops when the server closes.
        for byte in body {
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""kind":"timeout""#), "{text}");
    trickle.abort();
    assert!(server.store.list().is_empty());
    server.shutdown().await;
}

/// A peer that never finishes its first request head is dropped after the
/// header timeout, TLS or not (AVP-HTTP-18).
#[tokio::test]
async fn http_18_a_stalled_request_head_is_dropped_after_the_header_timeout() {
    let config = ServerConfig {
        header_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"POST /avp/v2/transmit HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial head");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server closes the connection");
    server.shutdown().await;
}

/// Issue 13, defect 5: a 1 MB `Authorization` header gets 431 with the JSON
/// envelope (AVP-HTTP-19, AVP-HTTP-20), not an empty body.
#[tokio::test]
async fn http_19_an_oversized_head_gets_431_with_the_json_envelope() {
    let server = start(ServerConfig::default()).await;
    let huge = format!("Authorization: Bearer {}\r\n", "a".repeat(1 << 20));
    let head = request_head(
        "POST",
        "/avp/v2/transmit",
        "application/avp+binary",
        Some(0),
        &huge,
    );
    let (status, body) = raw(server.addr, &head, b"").await;
    assert_error(status, &body, 431, "header_too_large", "1 MB header");
    // The second request of a kept-alive connection, 200 KiB of header:
    // checked by the server too, not only the first head.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("first");
    // The whole first answer (it ends with its JSON body) before the second request.
    let mut first = Vec::new();
    while !first.ends_with(br#""ok"}"#) {
        let mut chunk = [0u8; 256];
        let n = stream.read(&mut chunk).await.expect("first answer");
        assert!(n > 0, "closed early");
        first.extend_from_slice(&chunk[..n]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"));
    let second = format!(
        "POST /avp/v2/transmit HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\nContent-Length: 0\r\n\r\n",
        "p".repeat(200 << 10)
    );
    stream.write_all(second.as_bytes()).await.expect("second");
    let (status, body) = read_answer(&mut stream).await;
    assert_error(
        status,
        &body,
        431,
        "header_too_large",
        "200 KiB on keep-alive",
    );
    // The server keeps serving.
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    assert_eq!(client.health().await.expect("health")["status"], "ok");
    server.shutdown().await;
}

/// Issue 13, defect 5: a client still uploading a body over the limit reads
/// the early 413 instead of a broken pipe, every time (AVP-HTTP-12).
#[tokio::test]
async fn http_12_an_early_413_reaches_a_client_that_is_still_uploading() {
    let server = start(ServerConfig {
        max_body: 1 << 20,
        ..ServerConfig::default()
    })
    .await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-413-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("big.avp");
    std::fs::write(&file, message("bob", &vec![0u8; 8 << 20])).expect("write");
    for round in 0..6 {
        let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
        match client.transmit_file(&file).await {
            Err(TransportError::Status { status, kind, .. }) => {
                assert_eq!(
                    (status, kind.as_deref()),
                    (413, Some("body_too_large")),
                    "round {round}"
                );
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
    server.shutdown().await;
}

/// Issue 13, defect 5: text messages are checked with AVP-JSON-3 and
/// AVP-LIM-7 (extra must be an object; nesting at most 64).
#[tokio::test]
async fn http_33_text_follows_avp_json_3_and_avp_lim_7() {
    let server = start(ServerConfig::default()).await;
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    let status = |outcome: Result<Value, TransportError>| match outcome {
        Err(TransportError::Status { status, kind, .. }) => (status, kind.unwrap_or_default()),
        Ok(_) => (200, String::new()),
        Err(other) => panic!("{other}"),
    };
    let bad_extra = Bytes::from_static(br#"{"content":"x","extra":[1]}"#);
    assert_eq!(
        status(client.send_text_bytes(bad_extra).await),
        (400, "invalid_message".into())
    );
    let deep = format!(
        r#"{{"content":"x","extra":{{"a":{}1{}}}}}"#,
        "[".repeat(70),
        "]".repeat(70)
    );
    assert_eq!(
        status(client.send_text_bytes(Bytes::from(deep)).await),
        (413, "limit_exceeded".into())
    );
    assert!(server.store.list().is_empty(), "nothing stored");
    let fine = Bytes::from_static(br#"{"content":"x","extra":{"k":[1]}}"#);
    assert_eq!(status(client.send_text_bytes(fine).await).0, 200);
    server.shutdown().await;
}

fn session_message(session: &str, mode: avp_codec::Mode) -> Bytes {
    let tensor = [0u8; 64];
    let metadata = avp_codec::Metadata::new()
        .with_session_id(session)
        .with_source_agent_id("peer")
        .with_target_agent_id("test-agent")
        .with_mode(mode)
        .with_tensor_shape(vec![1, 16]);
    Bytes::from(
        avp_codec::encode(&metadata, &tensor, avp_codec::Compression::None).expect("encode"),
    )
}

/// Issue 13, defect 3: the hello is resolved with the full options over
/// HTTP (bad digests refused, our digest sent), the session is recorded,
/// and a transmit claiming it must carry its mode (AVP-HTTP-34, AVP-HTTP-35).
#[tokio::test]
async fn http_34_35_the_handshake_is_enforced_on_the_wire() {
    let identity = identity_from_json(
        br#"{"model_family":"qwen2","hidden_dim":8,"num_layers":2,"model_hash":"h"}"#,
    )
    .expect("identity");
    let digest = avp_transport::WeightsDigest([9; 32]);
    let agent = plain_agent().with_handshake(
        avp_transport::HandshakeServer::new("test-agent", identity.clone())
            .with_weights_digest(digest),
    );
    let server = start_agent(ServerConfig::default(), agent).await;
    for bad in [
        format!("\"{}\"", "AB".repeat(32)),
        "5".to_owned(),
        "\"ab\"".to_owned(),
    ] {
        let hello = format!(
            r#"{{"agent_id":"p","identity":{{"model_hash":"h"}},"capabilities":{{"weights_digest":{bad}}}}}"#
        );
        let head = request_head(
            "POST",
            "/avp/v2/handshake",
            "application/json",
            Some(hello.len()),
            "",
        );
        let (status, body) = raw(server.addr, &head, hello.as_bytes()).await;
        assert_error(status, &body, 400, "invalid_hello", &bad);
    }
    let client = AvpClient::new(&server.url(), ClientConfig::default()).expect("client");
    let result = client.handshake(&identity).await.expect("handshake");
    assert_eq!(
        result.weights_digest,
        Some(digest),
        "the server sends its digest"
    );
    assert_eq!(result.mode.name(), "LATENT");
    assert!(result.agrees());
    // A differing digest from the client skips hash_match (AVP-HS-22).
    let other = ClientConfig {
        weights_digest: Some(avp_transport::WeightsDigest([1; 32])),
        ..ClientConfig::default()
    };
    let mismatch = AvpClient::new(&server.url(), other)
        .expect("client")
        .handshake(&identity)
        .await
        .expect("handshake");
    assert!(mismatch.weights_mismatch);
    assert_eq!(mismatch.answer["weights_mismatch"], true);

    let live = client
        .transmit(session_message(&result.session_id, avp_codec::Mode::Latent))
        .await
        .expect("a message in its session's mode");
    assert_eq!(live["session"], "live");
    match client
        .transmit(session_message(&result.session_id, avp_codec::Mode::Json))
        .await
    {
        Err(TransportError::Status { status, kind, .. }) => {
            assert_eq!(
                (status, kind.as_deref()),
                (409, Some("session_mode_mismatch"))
            );
        }
        other => panic!("a JSON-mode message in a LATENT session: {other:?}"),
    }
    // Unknown sessions and none at all stay accepted (SDK compatibility).
    let unknown = client
        .transmit(session_message(&"f".repeat(32), avp_codec::Mode::Latent))
        .await
        .expect("unknown session");
    assert_eq!(unknown["session"], "unknown");
    assert_eq!(
        client
            .transmit(session_message("", avp_codec::Mode::Json))
            .await
            .expect("no session")["session"],
        "none"
    );
    server.shutdown().await;
}

/// AVP-HTTP-72: a client trusts only the CAs it is given and checks the
/// URL's host against the server certificate: no `--ca`, another CA, or a
/// certificate for another name all fail before any request is sent; the
/// right CA and name succeed.
#[tokio::test]
async fn http_72_clients_verify_the_server_certificate() {
    use avp_transport::tls::{ServerTlsFiles, server_config};
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-tls-verify-{}", std::process::id()));
    let dirs = ["right", "other-ca", "other-name"].map(|d| root.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).expect("dir");
    }
    let [ca, cert, key, _, _] = pki::test_pki(&dirs[0]);
    let [other_ca, _, _, _, _] = pki::test_pki(&dirs[1]);
    let [named_ca, named_cert, named_key, _, _] = pki::test_pki_named(&dirs[2], &["avp.invalid"]);
    let serve = |cert, key| async move {
        let tls = server_config(&ServerTlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .expect("server TLS");
        start_agent(
            ServerConfig {
                tls: Some(tls),
                ..ServerConfig::default()
            },
            plain_agent(),
        )
        .await
    };
    let send = |url: String, ca: Option<std::path::PathBuf>| async move {
        AvpClient::new(&url, pki::client_trusting(ca))
            .expect("client")
            .transmit(Bytes::from(message("bob", &[7u8; 64])))
            .await
    };
    let server = serve(cert, key).await;
    let url = format!("https://{}", server.addr);
    for (what, ca) in [("no CA", None), ("another CA", Some(other_ca))] {
        let refused = send(url.clone(), ca).await;
        assert!(
            matches!(
                refused,
                Err(TransportError::Connect(_) | TransportError::Connection(_))
            ),
            "{what}: {refused:?}"
        );
    }
    assert!(server.store.list().is_empty(), "nothing reached the agent");
    send(url, Some(ca)).await.expect("the right CA and name");
    assert_eq!(server.store.list().len(), 1);
    server.shutdown().await;

    // The certificate chains to the trusted CA but names another host.
    let server = serve(named_cert, named_key).await;
    let refused = send(format!("https://{}", server.addr), Some(named_ca)).await;
    assert!(
        matches!(
            refused,
            Err(TransportError::Connect(_) | TransportError::Connection(_))
        ),
        "a certificate for avp.invalid at 127.0.0.1: {refused:?}"
    );
    assert!(server.store.list().is_empty());
    server.shutdown().await;
    std::fs::remove_dir_all(&root).expect("cleanup");
}

/// HTTPS with mutual TLS (AVP-HTTP-70, AVP-HTTP-71, AVP-HTTP-73, AVP-HTTP-74, AVP-HTTP-76):
/// HTTP/1.1 and HTTP/2 (ALPN) both work, the client certificate's identity is stored with each
/// message, and a client without a certificate is refused at the TLS layer.
#[tokio::test]
async fn http_70_74_https_and_mtls_record_the_client_identity() {
    use avp_transport::tls::{ClientTlsFiles, ServerTlsFiles, client_config, server_config};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let [ca, cert, key, client_cert, client_key] = pki::test_pki(&dir);
    let tls = server_config(&ServerTlsFiles {
        cert,
        key,
        client_ca: Some(ca.clone()),
    })
    .expect("server TLS");
    let config = ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    };
    let server = start_agent(config, plain_agent()).await;
    let url = format!("https://{}", server.addr);
    let with_cert = ClientTlsFiles {
        ca: Some(ca.clone()),
        client_cert: Some((client_cert.clone(), client_key)),
    };
    let client_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_file(&client_cert).expect("client DER")
    };
    let expected = avp_transport::tls::client_identity(&client_der);
    for http2 in [false, true] {
        let config = ClientConfig {
            tls: Some(client_config(&with_cert).expect("client TLS")),
            http2,
            ..ClientConfig::default()
        };
        let client = AvpClient::new(&url, config).expect("client");
        let answer = client
            .transmit(Bytes::from(message("bob", &[5u8; 4096])))
            .await
            .unwrap_or_else(|err| panic!("http2={http2}: {err}"));
        let id = answer["request_id"].as_str().expect("id");
        let (stored, _) = server.store.get(id).expect("read").expect("stored");
        assert_eq!(stored.client_identity.as_deref(), Some(expected.as_str()));
    }
    let refused = AvpClient::new(&url, pki::client_trusting(Some(ca)))
        .expect("client")
        .transmit(Bytes::from(message("bob", &[5u8; 16])))
        .await;
    assert!(
        matches!(
            refused,
            Err(TransportError::Connect(_) | TransportError::Connection(_))
        ),
        "{refused:?}"
    );
    assert_eq!(server.store.list().len(), 2);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    server.shutdown().await;
}

//! The server against hostile and broken clients, in process, on loopback:
//! statuses and JSON error bodies (AVP-HTTP-10..15, AVP-HTTP-20), limits
//! enforced while streaming (AVP-HTTP-12), both HTTP versions on one port
//! (AVP-HTTP-2), graceful shutdown (AVP-HTTP-16). Rule IDs: spec/http.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use avp_transport::hello::identity_from_json;
use avp_transport::{
    Agent, AvpClient, ClientConfig, ContextStore, Role, Server, ServerConfig, TransportError,
};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    addr: SocketAddr,
    store: Arc<ContextStore>,
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
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let identity =
        identity_from_json(br#"{"model_family": "qwen2", "hidden_dim": 8, "num_layers": 2}"#)
            .expect("identity");
    let agent = Agent::new("test-agent", identity, Arc::clone(&store));
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        config,
        Role::Agent(Arc::new(agent)),
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
        stop: Some(stop),
        task,
    }
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
    let answer = client.handshake(&identity).await.expect("handshake");
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
        "",
    );
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&good[..50_000]).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = server.stop.take().map(|stop| stop.send(()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are no longer accepted...
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
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

//! The router in process, in front of an in-process agent: routing by
//! `target_agent_id`, unknown targets, the body limit while streaming, an
//! unreachable destination, and hellos (AVP-HTTP-50, AVP-HTTP-51, AVP-HTTP-52,
//! AVP-HTTP-53, AVP-HTTP-54, AVP-HTTP-55). Rule IDs: spec/protocol/http.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use avp_codec::{Compression, Metadata, encode};
use avp_transport::{
    Agent, AvpClient, ClientConfig, ContextStore, Handler, ModelIdentity, Router, Server,
    ServerConfig, TransportError,
};
use bytes::Bytes;
use tokio::sync::oneshot;

mod pki;

struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.expect("join").expect("served");
    }
}

async fn run(config: ServerConfig, handler: Arc<dyn Handler>) -> Running {
    let server = Server::bind("127.0.0.1:0".parse().expect("addr"), config, handler)
        .await
        .expect("bind");
    let url = format!("http://{}", server.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Running { url, stop, task }
}

fn message(target: &str, tensor_len: usize) -> Bytes {
    let tensor: Vec<u8> = (0..tensor_len).map(|i| (i % 251) as u8).collect();
    let metadata = Metadata::new()
        .with_session_id("s")
        .with_source_agent_id("sender")
        .with_target_agent_id(target);
    Bytes::from(encode(&metadata, &tensor, Compression::None).expect("encode"))
}

fn client(url: &str) -> AvpClient {
    AvpClient::new(
        url,
        ClientConfig {
            retries: 0,
            ..ClientConfig::default()
        },
    )
    .expect("client")
}

fn status_of(outcome: Result<serde_json::Value, TransportError>) -> (u16, String) {
    match outcome {
        Err(TransportError::Status { status, kind, .. }) => (status, kind.unwrap_or_default()),
        Ok(answer) => (200, answer.to_string()),
        Err(other) => (0, other.to_string()),
    }
}

#[tokio::test]
async fn http_50_to_55_routing_limits_and_failures() {
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let agent = Agent::new("bob", ModelIdentity::default(), Arc::clone(&store));
    let bob = run(ServerConfig::default(), Arc::new(agent)).await;
    // A port nothing listens on, for the unreachable destination.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let routes = HashMap::from([
        ("bob".to_owned(), bob.url.clone()),
        ("ghost".to_owned(), format!("http://{dead}")),
    ]);
    let router_config = ServerConfig {
        max_body: 1 << 20,
        ..ServerConfig::default()
    };
    let router = run(router_config, Arc::new(Router::new(routes))).await;
    let via_router = client(&router.url);

    // The server core answers /health for a router as for an agent: no
    // role sees it, and the router does not forward it.
    assert_eq!(
        via_router.health().await.expect("router health")["status"],
        "ok"
    );
    assert_eq!(
        client(&bob.url).health().await.expect("agent health")["status"],
        "ok"
    );

    // Routed by metadata, arrives byte for byte; h2c to the router works too.
    let sent = message("bob", 300_000);
    let answer = via_router.transmit(sent.clone()).await.expect("routed");
    let (_, stored) = store
        .get(answer["request_id"].as_str().expect("id"))
        .expect("read")
        .expect("stored");
    assert_eq!(stored, sent);
    let h2 = AvpClient::new(
        &router.url,
        ClientConfig {
            http2: true,
            retries: 0,
            ..ClientConfig::default()
        },
    )
    .expect("client");
    h2.transmit(message("bob", 1000))
        .await
        .expect("routed over h2c");

    // Unknown target: 404, nothing forwarded.
    assert_eq!(
        status_of(via_router.transmit(message("carol", 10)).await),
        (404, "unknown_target".into())
    );
    // Over the router's limit: refused from the header, before streaming.
    assert_eq!(
        status_of(via_router.transmit(message("bob", 2 << 20)).await),
        (413, "body_too_large".into())
    );
    // Not AVP at all: the codec's kind.
    assert_eq!(
        status_of(
            via_router
                .transmit(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"))
                .await
        ),
        (400, "bad_magic".into())
    );
    // Destination down: 502, the router's problem, not the client's.
    assert_eq!(
        status_of(via_router.transmit(message("ghost", 10)).await),
        (502, "upstream_unavailable".into())
    );
    // With two routes a hello has nowhere to go.
    assert_eq!(
        status_of(
            via_router
                .handshake(&ModelIdentity::default())
                .await
                .map(|result| result.answer)
        ),
        (404, "unknown_target".into())
    );
    // A chunked body that keeps going past the limit after a small header:
    // cut off while streaming through (AVP-HTTP-51), answered 413.
    let (status, body) = endless_chunked(&router.url, message("bob", 100)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    assert_eq!(
        store.list().len(),
        2,
        "only the two routed messages arrived"
    );
    router.shutdown().await;
    bob.shutdown().await;
}

/// Sends `first`, then 16 KiB chunks until the peer answers; returns (status, body).
async fn endless_chunked(url: &str, first: Bytes) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = "POST /avp/v2/transmit HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\
                Content-Type: application/avp+binary\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut chunk = format!("{:x}\r\n", first.len()).into_bytes();
    chunk.extend_from_slice(&first);
    chunk.extend_from_slice(b"\r\n");
    stream.write_all(&chunk).await.expect("first chunk");
    let filler = vec![0u8; 16 * 1024];
    let mut frame = format!("{:x}\r\n", filler.len()).into_bytes();
    frame.extend_from_slice(&filler);
    frame.extend_from_slice(b"\r\n");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        for _ in 0..256 {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    writing.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// AVP-HTTP-52: `Authorization` is end-to-end: a router without a token of its
/// own passes the sender's bearer token on, and the destination checks it.
#[tokio::test]
async fn http_52_the_bearer_token_passes_through_the_router() {
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let agent = Agent::new("bob", ModelIdentity::default(), Arc::clone(&store));
    let bob_config = ServerConfig {
        token: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let bob = run(bob_config, Arc::new(agent)).await;
    let routes = HashMap::from([("bob".to_owned(), bob.url.clone())]);
    let router = run(ServerConfig::default(), Arc::new(Router::new(routes))).await;
    let with_token = AvpClient::new(
        &router.url,
        ClientConfig {
            token: Some("s3cret".into()),
            retries: 0,
            ..ClientConfig::default()
        },
    )
    .expect("client");
    let answer = with_token
        .transmit(message("bob", 100))
        .await
        .expect("the token reached bob");
    assert!(
        store
            .get(answer["request_id"].as_str().expect("id"))
            .expect("read")
            .is_some()
    );
    // Without the token the destination refuses: the router added nothing.
    assert_eq!(
        status_of(client(&router.url).transmit(message("bob", 100)).await),
        (401, "unauthorized".into())
    );
    router.shutdown().await;
    bob.shutdown().await;
}

/// Issue 13, defect 2: an upstream that accepts and reads but never answers
/// gets the client a 504 `upstream_timeout` within the upstream timeout,
/// for transmits and for text (AVP-HTTP-56).
#[tokio::test]
async fn http_56_a_silent_upstream_gets_504_within_the_upstream_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let sink = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut stream, _)) = silent.accept().await {
            // Reads everything, answers nothing.
            open.push(tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut stream, &mut sink).await;
                std::future::pending::<()>().await;
            }));
        }
    });
    let routes = HashMap::from([("agent-b".to_owned(), silent_url)]);
    let router = Router::new(routes).with_upstream_timeout(Duration::from_millis(300));
    let router = run(ServerConfig::default(), Arc::new(router)).await;
    let via_router = AvpClient::new(
        &router.url,
        ClientConfig {
            retries: 0,
            timeout: Duration::from_secs(60),
            ..ClientConfig::default()
        },
    )
    .expect("client");
    // A 504 is the router's answer; the client's own 60 s timeout would be an
    // error, not a status, so no clock is needed to tell the two apart.
    assert_eq!(
        status_of(via_router.transmit(message("agent-b", 1 << 20)).await),
        (504, "upstream_timeout".into())
    );
    assert_eq!(
        status_of(
            via_router
                .send_text(&serde_json::json!({"target_agent_id": "agent-b", "content": "x"}))
                .await
        ),
        (504, "upstream_timeout".into())
    );
    router.shutdown().await;
    sink.abort();
}

/// A router speaks TLS on both sides (AVP-HTTP-75): HTTPS from the client,
/// HTTPS with the router's client certificate to an mTLS agent, which
/// records the router's certificate identity.
#[tokio::test]
async fn http_75_a_router_speaks_tls_on_both_sides() {
    use avp_transport::tls::{ClientTlsFiles, ServerTlsFiles, client_config, server_config};
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("avp-route-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let [ca, cert, key, client_cert, client_key] = pki::test_pki(&dir);
    let server_tls = |client_ca: Option<std::path::PathBuf>| {
        server_config(&ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca,
        })
        .expect("server TLS")
    };
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let agent = Agent::new("bob", ModelIdentity::default(), Arc::clone(&store));
    let bob_config = ServerConfig {
        tls: Some(server_tls(Some(ca.clone()))),
        ..ServerConfig::default()
    };
    let bob = run(bob_config, Arc::new(agent)).await;
    let bob_url = bob.url.replace("http://", "https://");
    let upstream_tls = client_config(&ClientTlsFiles {
        ca: Some(ca.clone()),
        client_cert: Some((client_cert, client_key)),
    })
    .expect("router's client TLS");
    let router =
        Router::new(HashMap::from([("bob".to_owned(), bob_url)])).with_upstream_tls(upstream_tls);
    let router_config = ServerConfig {
        tls: Some(server_tls(None)),
        ..ServerConfig::default()
    };
    let router = run(router_config, Arc::new(router)).await;
    let client = AvpClient::new(
        &router.url.replace("http://", "https://"),
        pki::client_trusting(Some(ca)),
    )
    .expect("client");
    let answer = client
        .transmit(message("bob", 4096))
        .await
        .expect("through two TLS hops");
    let (stored, _) = store
        .get(answer["request_id"].as_str().expect("id"))
        .expect("read")
        .expect("stored");
    let identity = stored
        .client_identity
        .expect("the router's certificate identity");
    assert!(identity.starts_with("sha256:"), "{identity}");
    router.shutdown().await;
    bob.shutdown().await;
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// What Python's `json.dumps` writes (`NaN`, `Infinity`, `-Infinity`) and
/// `json.loads` reads (`1e400`) is JSON to the agent and to the router: the
/// SDK's text messages are accepted and stored as sent (AVP-JSON-6; the SDK's
/// own client drives the same through `avp route` in
/// cli/tests/transport_nonfinite.rs).
#[tokio::test]
async fn http_33_text_with_python_nonfinite_numbers_is_accepted_and_routed() {
    let store = Arc::new(ContextStore::in_memory(Duration::from_secs(60)));
    let agent = Agent::new("bob", ModelIdentity::default(), Arc::clone(&store));
    let bob = run(ServerConfig::default(), Arc::new(agent)).await;
    let routes = HashMap::from([("bob".to_owned(), bob.url.clone())]);
    let router = run(ServerConfig::default(), Arc::new(Router::new(routes))).await;
    for url in [&bob.url, &router.url] {
        for number in ["NaN", "Infinity", "-Infinity", "1e400"] {
            let body = format!(
                r#"{{"avp_version": "0.6.2", "session_id": "s", "source_agent_id": "a", "target_agent_id": "bob", "content": "hi", "extra": {{"score": {number}}}}}"#
            );
            let answer = client(url)
                .send_text_bytes(Bytes::from(body.clone()))
                .await
                .unwrap_or_else(|err| panic!("{number} via {url}: {err}"));
            let (_, stored) = store
                .get(answer["request_id"].as_str().expect("id"))
                .expect("read")
                .expect("stored");
            assert_eq!(stored, body.as_bytes(), "{number} stored as sent");
        }
        // Still not JSON in any dialect: 400 invalid_json from either.
        assert_eq!(
            status_of(
                client(url)
                    .send_text_bytes(Bytes::from_static(br#"{"target_agent_id": nan}"#))
                    .await
            ),
            (400, "invalid_json".into())
        );
        // Nested past any parser's depth: both say AVP-LIM-7's kind.
        let deep = format!(
            r#"{{"target_agent_id": "bob", "extra": {}{}}}"#,
            "[".repeat(600),
            "]".repeat(600)
        );
        assert_eq!(
            status_of(client(url).send_text_bytes(Bytes::from(deep)).await),
            (413, "limit_exceeded".into()),
            "via {url}"
        );
    }
    router.shutdown().await;
    bob.shutdown().await;
}

//! Interoperability of `avp serve`, `avp send` and `avp route` with the Python
//! SDK (avp==0.6.2): real servers on loopback, started here, on free ports.
//! Rule IDs are in spec/protocol/http.md.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
// The transport crate's test PKI (rcgen, made at run time); its client helper is not used here.
#[allow(dead_code)]
#[path = "../../transport/tests/pki/mod.rs"]
mod pki;
use common::{Running, Scratch, avp, start, workspace};

fn python() -> PathBuf {
    workspace().join(".venv/bin/python")
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transport_py/sdk_peer.py")
}

fn serve(extra: &[&str]) -> Running {
    let mut command = avp();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
        .args(extra)
        .stderr(Stdio::null());
    start(command)
}

/// `avp serve` over HTTPS with the test PKI's server certificate, storing into `store`.
fn serve_tls(store: &Path, cert: &Path, key: &Path) -> Running {
    serve(&[
        "--store",
        s(store),
        "--tls-cert",
        s(cert),
        "--tls-key",
        s(key),
    ])
}

/// `avp serve` with its progress lines going to `log`.
fn serve_logged(extra: &[&str], log: &Path) -> Running {
    let mut command = avp();
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stderr(std::fs::File::create(log).expect("log file"));
    start(command)
}

fn sdk(args: &[&str]) -> Vec<Value> {
    let output = Command::new(python())
        .arg(peer_script())
        .args(args)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "sdk_peer.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect()
}

/// Every file in the store except the metadata sidecars (`<id>.meta`,
/// AVP-HTTP-63), each of which belongs to exactly one message file.
fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    let (sidecars, rest): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|p| p.extension().is_some_and(|e| e == "meta"));
    for sidecar in &sidecars {
        assert!(
            rest.iter().any(|p| p.file_stem() == sidecar.file_stem()),
            "sidecar without its message: {}",
            sidecar.display()
        );
    }
    rest
}

/// Checks every transmit line: 200, and the stored file equals what the SDK encoded.
fn assert_stored_identically(lines: &[Value], store: &Path, expected_count: usize) {
    let transmits: Vec<_> = lines.iter().filter(|l| l.get("name").is_some()).collect();
    assert_eq!(transmits.len(), expected_count);
    for line in transmits {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["response"]["success"], true);
        let id = line["response"]["request_id"].as_str().expect("request_id");
        let sent = std::fs::read(line["file"].as_str().expect("file")).expect("sent bytes");
        let stored = std::fs::read(store.join(format!("{id}.avp"))).expect("stored bytes");
        assert_eq!(line["response"]["bytes"], sent.len());
        assert!(sent == stored, "{} stored differently", line["name"]);
    }
}

#[test]
fn http_30_31_60_sdk_client_handshakes_and_transmits_to_avp_serve_byte_identically() {
    let scratch = Scratch::new("transport", "sdk-client");
    let store = scratch.path("store");
    let identity = scratch.path("identity.json");
    std::fs::write(
        &identity,
        r#"{"model_family":"qwen2","model_id":"x","model_hash":"other","hidden_dim":896,"num_layers":24}"#,
    )
    .expect("identity");
    let server = serve(&[
        "--store",
        store.to_str().expect("utf-8"),
        "--identity",
        identity.to_str().expect("utf-8"),
    ]);
    let out = scratch.path("sent");
    std::fs::create_dir_all(&out).expect("out dir");
    let lines = sdk(&[
        "client",
        &server.url,
        out.to_str().expect("utf-8"),
        "--kv-mib",
        "64",
    ]);
    // The SDK resolves on its side from our identity: same family and shape.
    assert_eq!(lines[0]["handshake"]["resolution_path"], "structural_match");
    assert_eq!(
        lines[0]["handshake"]["session_id"].as_str().map(str::len),
        Some(32)
    );
    assert_stored_identically(&lines, &store, 5);
    // The SDK's send_text: stored as the exact JSON it sent (AVP-HTTP-33).
    let text = lines.last().expect("text line");
    assert_eq!(text["status"], 200);
    let id = text["response"]["request_id"].as_str().expect("request_id");
    let stored = std::fs::read_to_string(store.join(format!("{id}.json"))).expect("stored text");
    assert_eq!(stored, text["text"].as_str().expect("sent text"));
    assert_eq!(stored_files(&store).len(), 6, "no temp files left behind");
}

#[test]
fn http_30_serve_with_model_dir_hash_matches_the_sdk_identity_of_the_same_config() {
    let model = workspace().join("conformance/vectors/handshake/models/qwen2-7b-bpe");
    let scratch = Scratch::new("transport", "model-dir");
    let server = serve(&["--model", model.to_str().expect("utf-8")]);
    let out = scratch.path("sent");
    std::fs::create_dir_all(&out).expect("out dir");
    let lines = sdk(&[
        "client",
        &server.url,
        out.to_str().expect("utf-8"),
        "--model-dir",
        model.to_str().expect("utf-8"),
    ]);
    assert_eq!(lines[0]["handshake"]["resolution_path"], "hash_match");
    assert_eq!(lines[0]["handshake"]["mode"], "LATENT");
}

#[test]
fn http_40_avp_send_reaches_the_sdk_create_app() {
    let scratch = Scratch::new("transport", "send");
    let record = scratch.path("record.jsonl");
    let mut command = Command::new(python());
    command
        .arg(peer_script())
        .args(["server", record.to_str().expect("utf-8"), "--text"])
        .stderr(Stdio::null());
    let server = start(command);
    let message = scratch.path("msg.avp");
    let expected = sdk(&["encode", message.to_str().expect("utf-8")]).remove(0);

    let output = avp()
        .args([
            "send",
            message.to_str().expect("utf-8"),
            "--to",
            &server.url,
        ])
        .output()
        .expect("run avp send");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("answer JSON");
    assert_eq!(answer["success"], true);
    assert_eq!(
        answer["received"],
        std::fs::metadata(&message).expect("size").len()
    );

    let text = scratch.path("text.json");
    std::fs::write(&text, r#"{"avp_version":"0.6.2","session_id":"t","source_agent_id":"rust","target_agent_id":"py","content":"hello ✓"}"#)
        .expect("text");
    let output = avp()
        .args([
            "send",
            "--text",
            text.to_str().expect("utf-8"),
            "--to",
            &server.url,
        ])
        .output()
        .expect("run avp send --text");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let mut recorded = String::new();
    std::fs::File::open(&record)
        .expect("record")
        .read_to_string(&mut recorded)
        .expect("read");
    let seen: Vec<Value> = recorded
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(seen.len(), 2);
    for key in [
        "session_id",
        "source_agent_id",
        "target_agent_id",
        "model_id",
        "hidden_dim",
        "tensor_shape",
        "extra",
        "payload_sha256",
        "payload_len",
    ] {
        assert_eq!(seen[0][key], expected[key], "{key}");
    }
    assert_eq!(seen[0]["compression"], "zstd");
    assert_eq!(seen[1]["kind"], "text");
    assert_eq!(seen[1]["content"], "hello ✓");
}

/// AVP-HTTP-51, AVP-HTTP-53: streamed through the router; unknown targets get 404.
#[test]
fn http_51_53_sdk_client_through_avp_route_arrives_intact_and_unknown_targets_get_404() {
    let scratch = Scratch::new("transport", "route");
    let store = scratch.path("store");
    let agent = serve(&["--store", store.to_str().expect("utf-8")]);
    let mut command = avp();
    command.args([
        "route",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("bob={}", agent.url),
    ]);
    command.stderr(Stdio::null());
    let router = start(command);
    let out = scratch.path("sent");
    std::fs::create_dir_all(&out).expect("out dir");
    let lines = sdk(&[
        "client",
        &router.url,
        out.to_str().expect("utf-8"),
        "--target",
        "bob",
        "--kv-mib",
        "8",
    ]);
    assert_stored_identically(&lines, &store, 5);

    let refused = sdk(&["expect-error", &router.url, "--target", "nobody"]);
    assert_eq!(refused[0]["status"], 404);
    // 5 messages and the SDK's text message, routed by its target_agent_id.
    assert_eq!(stored_files(&store).len(), 6);

    // JSON fallback messages are routed by their target_agent_id too.
    let text = scratch.path("text.json");
    std::fs::write(
        &text,
        r#"{"session_id":"t","source_agent_id":"a","target_agent_id":"bob","content":"hi"}"#,
    )
    .expect("text");
    let output = avp()
        .args([
            "send",
            "--text",
            text.to_str().expect("utf-8"),
            "--to",
            &router.url,
        ])
        .output()
        .expect("avp send --text");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("answer");
    let stored = std::fs::read(store.join(format!(
        "{}.json",
        answer["request_id"].as_str().expect("id")
    )))
    .expect("stored text");
    assert_eq!(
        stored,
        std::fs::read(&text).expect("sent"),
        "forwarded byte for byte"
    );
}

#[test]
fn http_13_missing_or_wrong_token_gets_401_and_nothing_is_stored() {
    let scratch = Scratch::new("transport", "auth");
    let store = scratch.path("store");
    let token = scratch.path("token");
    std::fs::write(&token, "s3cret-token\n").expect("token");
    let server = serve(&[
        "--store",
        store.to_str().expect("utf-8"),
        "--token-file",
        token.to_str().expect("utf-8"),
    ]);

    assert_eq!(sdk(&["expect-error", &server.url])[0]["status"], 401);
    assert_eq!(
        sdk(&["expect-error", &server.url, "--token", "s3cret-tokeN"])[0]["status"],
        401
    );
    assert_eq!(stored_files(&store).len(), 0);

    let wrong = scratch.path("wrong");
    std::fs::write(&wrong, "nope").expect("token");
    let message = scratch.path("msg.avp");
    sdk(&["encode", message.to_str().expect("utf-8")]);
    let output = avp()
        .args([
            "send",
            message.to_str().expect("utf-8"),
            "--to",
            &server.url,
        ])
        .args(["--token-file", wrong.to_str().expect("utf-8")])
        .output()
        .expect("avp send");
    assert_eq!(output.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&output.stdout).expect("error JSON");
    assert_eq!(error["error"]["status"], 401);
    assert_eq!(error["error"]["kind"], "unauthorized");
    assert_eq!(stored_files(&store).len(), 0);

    let output = avp()
        .args([
            "send",
            message.to_str().expect("utf-8"),
            "--to",
            &server.url,
            "--http2",
        ])
        .args(["--token-file", token.to_str().expect("utf-8")])
        .output()
        .expect("avp send");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stored = stored_files(&store);
    assert_eq!(stored.len(), 1);
    assert!(std::fs::read(&stored[0]).expect("stored") == std::fs::read(&message).expect("sent"));
}

/// AVP-HTTP-40: a refused connection is retried, then reported as JSON.
#[test]
fn http_40_avp_send_reports_connection_failure_as_json_after_retrying() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let scratch = Scratch::new("transport", "refused");
    let message = scratch.path("m.avp");
    std::fs::write(&message, b"AV").expect("file");
    let output = avp()
        .args([
            "send",
            message.to_str().expect("utf-8"),
            "--to",
            &format!("http://127.0.0.1:{port}"),
            "--retries",
            "1",
        ])
        .output()
        .expect("avp send");
    assert_eq!(output.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&output.stdout).expect("error JSON");
    assert_eq!(error["error"]["kind"], "connect");
}

#[test]
fn http_12_sdk_client_over_the_body_limit_gets_413_and_nothing_is_stored() {
    let scratch = Scratch::new("transport", "limit");
    let store = scratch.path("store");
    let server = serve(&[
        "--store",
        store.to_str().expect("utf-8"),
        "--max-body",
        "100000",
    ]);
    // 20 MB: refused from the declared length, long before the upload ends.
    assert_eq!(
        sdk(&["expect-error", &server.url, "--size", "20000000"])[0]["status"],
        413
    );
    assert_eq!(
        sdk(&["expect-error", &server.url, "--size", "99000"])[0]["status"],
        200
    );
    assert_eq!(stored_files(&store).len(), 1);
}

/// AVP-HTTP-60, AVP-HTTP-61: acknowledged messages survive a kill; no half files.
#[test]
fn http_60_61_a_killed_agent_restarts_with_every_acknowledged_message_and_no_half_files() {
    let scratch = Scratch::new("transport", "restart");
    let store = scratch.path("store");
    let message = scratch.path("msg.avp");
    sdk(&["encode", message.to_str().expect("utf-8")]);
    let log = scratch.path("serve.log");
    let server = serve_logged(&["--store", store.to_str().expect("utf-8")], &log);
    let output = avp()
        .args([
            "send",
            message.to_str().expect("utf-8"),
            "--to",
            &server.url,
        ])
        .output()
        .expect("avp send");
    assert!(output.status.success());
    drop(server); // SIGKILL: no graceful anything
    // One progress line per transfer.
    let progress = std::fs::read_to_string(&log).expect("log");
    assert_eq!(progress.lines().count(), 1, "{progress}");
    assert!(
        progress.starts_with("received transmit ")
            && progress.contains(" KiB from \"rust\" for \"py-server\""),
        "{progress}"
    );
    // What a crash mid-write leaves behind.
    std::fs::write(store.join(".incoming-0123abcd"), b"AV half a message").expect("temp file");

    let restarted = serve(&["--store", store.to_str().expect("utf-8")]);
    let files = stored_files(&store);
    assert_eq!(
        files.len(),
        1,
        "temp file removed, acknowledged message kept: {files:?}"
    );
    assert!(std::fs::read(&files[0]).expect("stored") == std::fs::read(&message).expect("sent"));
    drop(restarted);

    // A TTL of 0 s expires it at the next start, file included.
    let expired = serve(&["--store", store.to_str().expect("utf-8"), "--ttl", "0"]);
    assert!(stored_files(&store).is_empty());
    drop(expired);
}

#[test]
fn http_2_sdk_httpx_over_h2c_prior_knowledge_reaches_avp_serve() {
    let scratch = Scratch::new("transport", "h2c");
    let store = scratch.path("store");
    let server = serve(&["--store", store.to_str().expect("utf-8")]);
    let out = scratch.path("sent");
    std::fs::create_dir_all(&out).expect("out dir");
    let lines = sdk(&["client", &server.url, out.to_str().expect("utf-8"), "--h2c"]);
    assert_stored_identically(&lines, &store, 4);
    for line in lines.iter().filter(|l| l.get("name").is_some()) {
        assert_eq!(line["http_version"], "HTTP/2", "{line}");
    }
}

/// AVP-HTTP-42: `avp send` prints the answer (exit 0), the error JSON (exit 1)
/// or fails locally (exit 2).
#[test]
fn http_42_avp_send_exit_codes_separate_peer_answers_from_local_problems() {
    let scratch = Scratch::new("transport", "exit");
    let missing = scratch.path("missing.avp");
    let output = avp()
        .args([
            "send",
            missing.to_str().expect("utf-8"),
            "--to",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("avp send");
    assert_eq!(
        output.status.code(),
        Some(2),
        "a file that is not there is a local problem"
    );
    assert!(output.stdout.is_empty());

    let present = scratch.path("m.avp");
    std::fs::write(&present, b"AV").expect("file");
    let output = avp()
        .args([
            "send",
            present.to_str().expect("utf-8"),
            "--to",
            "ftp://example",
        ])
        .output()
        .expect("avp send");
    assert_eq!(output.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&output.stdout).expect("error JSON");
    assert_eq!(error["error"]["kind"], "invalid_url");

    // Text that is not JSON never leaves the machine.
    let output = avp()
        .args([
            "send",
            "--text",
            present.to_str().expect("utf-8"),
            "--to",
            "http://127.0.0.1:9",
        ])
        .output()
        .expect("avp send --text");
    assert_eq!(output.status.code(), Some(2));
}

/// AVP-HTTP-16: SIGTERM lets the request in flight finish.
#[test]
fn http_16_sigterm_lets_the_upload_in_flight_finish_then_exits_cleanly() {
    use std::io::Write;
    let scratch = Scratch::new("transport", "sigterm");
    let store = scratch.path("store");
    let message_path = scratch.path("msg.avp");
    sdk(&["encode", message_path.to_str().expect("utf-8")]);
    let message = std::fs::read(&message_path).expect("message");
    let mut server = serve(&["--store", store.to_str().expect("utf-8")]);
    let addr = server.url.trim_start_matches("http://").to_owned();

    let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // `Expect: 100-continue`: the interim answer proves the server has parsed
    // the head and is reading the body, i.e. the request is in flight (no
    // guess at how long the server takes to get there).
    let head = format!(
        "POST /avp/v2/transmit HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Expect: 100-continue\r\n\
         Content-Type: application/avp+binary\r\nContent-Length: {}\r\n\r\n",
        message.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let half = message.len() / 2;
    stream.write_all(&message[..half]).expect("first half");
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // The server has taken the signal once its listener refuses connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener never closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.write_all(&message[half..]).expect("second half");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let exit = server.child.wait().expect("exit");
    assert!(exit.success(), "graceful exit, got {exit:?}");
    let stored = stored_files(&store);
    assert_eq!(stored.len(), 1);
    assert!(std::fs::read(&stored[0]).expect("stored") == message);
}

/// `avp handshake URL --identity FILE` (AVP-CLI-106's remote form): our own
/// identity of the same model directory resolves to `hash_match` at `avp serve`.
#[test]
fn http_30_avp_handshake_url_against_avp_serve_resolves_hash_match() {
    let model = workspace().join("conformance/vectors/handshake/models/qwen2-7b-bpe");
    let scratch = Scratch::new("transport", "handshake-url");
    let server = serve(&["--model", model.to_str().expect("utf-8")]);
    let identity = avp()
        .arg("identity")
        .arg(&model)
        .output()
        .expect("avp identity");
    assert!(identity.status.success(), "avp identity failed");
    let identity_file = scratch.path("identity.json");
    std::fs::write(&identity_file, &identity.stdout).expect("write identity");
    let answer = avp()
        .args(["handshake", &server.url, "--identity"])
        .arg(&identity_file)
        .output()
        .expect("avp handshake URL");
    assert!(
        answer.status.success(),
        "avp handshake URL failed: {}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let answer: Value = serde_json::from_slice(&answer.stdout).expect("one JSON answer");
    assert_eq!(answer["resolution_path"], "hash_match", "{answer}");
    assert_eq!(answer["mode"], "LATENT", "{answer}");
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// AVP-HTTP-70, AVP-HTTP-71, AVP-HTTP-76: the SDK's httpx client, trusting the test CA through
/// SSL_CERT_FILE, handshakes, transmits and sends text to `avp serve` over
/// HTTPS, negotiating HTTP/2 by ALPN, and every message is stored as sent.
#[test]
fn http_70_71_sdk_httpx_client_over_https_reaches_avp_serve() {
    let scratch = Scratch::new("transport", "https-sdk");
    let [ca, cert, key, _, _] = pki::test_pki(&scratch.0);
    let store = scratch.path("store");
    let server = serve_tls(&store, &cert, &key);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let out = scratch.path("sent");
    std::fs::create_dir_all(&out).expect("out dir");
    let output = Command::new(python())
        .arg(peer_script())
        .args(["client", &server.url, s(&out)])
        .env("SSL_CERT_FILE", &ca)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "sdk over https failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert!(
        lines[0]["handshake"]["session_id"].is_string(),
        "{}",
        lines[0]
    );
    let transmits = lines.iter().filter(|l| l.get("name").is_some()).count();
    assert_stored_identically(&lines, &store, transmits);
    for line in lines.iter().filter(|l| l.get("name").is_some()) {
        assert_eq!(line["http_version"], "HTTP/2", "ALPN h2: {line}");
    }
    let text = lines
        .iter()
        .find(|l| l.get("text").is_some())
        .expect("text line");
    assert_eq!(text["status"], 200, "{text}");
}

/// AVP-HTTP-73, AVP-HTTP-74 and AVP-HTTP-63: `avp send` with a client certificate
/// reaches an mTLS `avp serve`; without one it is refused; `avp store ls`
/// shows the sender, the session and the certificate identity, also after
/// the server was restarted.
#[test]
fn http_63_73_mtls_send_and_store_ls_show_who_sent_what() {
    let scratch = Scratch::new("transport", "mtls");
    let [ca, cert, key, client_cert, client_key] = pki::test_pki(&scratch.0);
    let store = scratch.path("store");
    let tls = [
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&key),
        "--tls-client-ca",
        s(&ca),
    ];
    let mut args = vec!["--store", s(&store)];
    args.extend(tls);
    let server = serve(&args);
    let message = scratch.path("m.avp");
    let sdk_lines = sdk(&["encode", s(&message)]);
    assert!(!sdk_lines.is_empty());
    let sent = avp()
        .args(["send", s(&message), "--to", &server.url, "--ca", s(&ca)])
        .args([
            "--client-cert",
            s(&client_cert),
            "--client-key",
            s(&client_key),
        ])
        .output()
        .expect("avp send");
    assert!(
        sent.status.success(),
        "{} {}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    let refused = avp()
        .args(["send", s(&message), "--to", &server.url, "--ca", s(&ca)])
        .args(["--retries", "0"])
        .output()
        .expect("avp send");
    assert_eq!(refused.status.code(), Some(1), "no client certificate");
    drop(server);
    // A restarted server keeps what it knew; `ls` reads the directory itself.
    let _again = serve(&args);
    let listed = avp()
        .args(["store", "ls", s(&store), "--json"])
        .output()
        .expect("avp store ls");
    assert!(listed.status.success());
    let rows: Value = serde_json::from_slice(&listed.stdout).expect("JSON array");
    let rows = rows.as_array().expect("array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["kind"], "avp");
    assert!(
        !row["source_agent_id"].as_str().unwrap_or("").is_empty(),
        "{row}"
    );
    assert!(
        !row["session_id"].as_str().unwrap_or("").is_empty(),
        "{row}"
    );
    let identity = row["client_identity"].as_str().expect("client identity");
    assert!(
        identity.starts_with("sha256:") && identity.len() == 71,
        "{row}"
    );
    let table = avp()
        .args(["store", "ls", s(&store)])
        .output()
        .expect("avp store ls");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(identity), "{table}");
}

/// Issue 13, defect 5: a configuration error is found before the store
/// directory is created.
#[test]
fn http_13_serve_with_a_missing_token_file_leaves_no_store_behind() {
    let scratch = Scratch::new("transport", "no-leftovers");
    let inbox = scratch.path("inbox");
    let status = avp()
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(scratch.path("missing"))
        .args(["--store", s(&inbox)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("avp serve");
    assert_eq!(status.code(), Some(2));
    assert!(!inbox.exists(), "inbox/ was created");
}

/// Issue 13, defect 5: `avp send` of a body over the server's --max-body
/// reports `body_too_large` every time, not a broken pipe (AVP-HTTP-12).
#[test]
fn http_12_avp_send_over_max_body_reports_body_too_large_every_time() {
    let scratch = Scratch::new("transport", "send-413");
    let server = serve(&["--max-body", "100000"]);
    let big = scratch.path("big.avp");
    let mut bytes = b"AV\x01\x00".to_vec();
    bytes.extend_from_slice(&(8u32 << 20).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.resize(12 + (8 << 20), 0);
    std::fs::write(&big, bytes).expect("write");
    for round in 0..6 {
        let out = avp()
            .args(["send", s(&big), "--to", &server.url])
            .output()
            .expect("avp send");
        let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            answer["error"]["kind"], "body_too_large",
            "round {round}: {answer}"
        );
        assert_eq!(answer["error"]["status"], 413, "round {round}");
    }
}

/// Issue 14: `avp serve --model DIR` answers with the directory's identity
/// and the weights digest `avp hash weights DIR` prints (AVP-HTTP-34), with
/// no engine involved; `avp handshake URL` resolves on its side too and
/// reports `client_resolution` (AVP-HTTP-43).
#[test]
fn http_34_serve_with_model_dir_sends_its_weights_digest() {
    let scratch = Scratch::new("transport", "weights");
    let model = scratch.path("model");
    std::fs::create_dir_all(&model).expect("model dir");
    let config = workspace().join("conformance/vectors/handshake/models/qwen2-7b-bpe/config.json");
    std::fs::copy(&config, model.join("config.json")).expect("config");
    // One 2-element F32 tensor.
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    std::fs::write(model.join("model.safetensors"), st).expect("safetensors");
    let digest = avp()
        .args(["hash", "weights", s(&model)])
        .output()
        .expect("avp hash weights");
    assert!(digest.status.success());
    let digest = String::from_utf8_lossy(&digest.stdout).trim().to_owned();
    let server = serve(&["--model", s(&model)]);
    let identity = avp()
        .arg("identity")
        .arg(&model)
        .output()
        .expect("identity");
    let identity_file = scratch.path("identity.json");
    std::fs::write(&identity_file, &identity.stdout).expect("write identity");
    let answer = avp()
        .args(["handshake", &server.url, "--identity", s(&identity_file)])
        .output()
        .expect("avp handshake URL");
    let answer: Value = serde_json::from_slice(&answer.stdout).expect("JSON");
    assert_eq!(answer["capabilities"]["weights_digest"], digest, "{answer}");
    assert_eq!(answer["resolution_path"], "hash_match", "{answer}");
    assert_eq!(answer["client_resolution"]["agrees"], true, "{answer}");
}

/// AVP-HTTP-56, AVP-HTTP-75 through the binaries: `avp route` serves HTTPS, reaches an
/// HTTPS `avp serve` with `--ca`, and answers 504 `upstream_timeout` for a
/// route whose agent reads everything and never answers; `avp handshake`
/// speaks HTTPS too.
#[test]
fn http_56_75_avp_route_over_tls_and_a_silent_upstream() {
    let scratch = Scratch::new("transport", "route-tls");
    let [ca, cert, key, _, _] = pki::test_pki(&scratch.0);
    let store = scratch.path("store");
    let agent = serve_tls(&store, &cert, &key);
    // Accepts, reads, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            let Ok(stream) = stream else { break };
            let mut reader = stream.try_clone().expect("clone");
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
            // Kept open, never written to.
            held.push(stream);
        }
    });
    let mut command = avp();
    command
        .args([
            "route",
            "--listen",
            "127.0.0.1:0",
            "--upstream-timeout",
            "1",
        ])
        .args(["--route", &format!("py-server={}", agent.url)])
        .args(["--route", &format!("ghost={silent_url}")])
        .args(["--tls-cert", s(&cert), "--tls-key", s(&key), "--ca", s(&ca)])
        .stderr(Stdio::null());
    let router = common::start(command);
    assert!(router.url.starts_with("https://"), "{}", router.url);
    let message = scratch.path("m.avp");
    sdk(&["encode", s(&message)]);
    let sent = avp()
        .args(["send", s(&message), "--to", &router.url, "--ca", s(&ca)])
        .output()
        .expect("avp send");
    let answer: Value = serde_json::from_slice(&sent.stdout).expect("JSON");
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(stored_files(&store).len(), 1);
    // A message for the silent agent: header and metadata are all the router reads.
    let mut ghost = b"AV\x01\x00".to_vec();
    let meta = [&[0x1a, 5][..], b"ghost"].concat();
    let payload = 4096usize;
    ghost.extend_from_slice(&((meta.len() + payload) as u32).to_le_bytes());
    ghost.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    ghost.extend_from_slice(&meta);
    ghost.resize(ghost.len() + payload, 0);
    let ghost_file = scratch.path("ghost.avp");
    std::fs::write(&ghost_file, ghost).expect("write");
    // The 504 envelope is the router's answer (the client's own timeout
    // would be kind "timeout" with no status), so no clock is needed.
    let sent = avp()
        .args(["send", s(&ghost_file), "--to", &router.url, "--ca", s(&ca)])
        .args(["--timeout", "120"])
        .output()
        .expect("avp send");
    let answer: Value = serde_json::from_slice(&sent.stdout).expect("JSON");
    assert_eq!(answer["error"]["kind"], "upstream_timeout", "{answer}");
    assert_eq!(answer["error"]["status"], 504, "{answer}");
    // `avp handshake` over HTTPS, straight to the agent.
    let identity_file = scratch.path("identity.json");
    std::fs::write(&identity_file, "{}").expect("identity");
    let hello = avp()
        .args([
            "handshake",
            &agent.url,
            "--identity",
            s(&identity_file),
            "--ca",
            s(&ca),
        ])
        .output()
        .expect("avp handshake");
    let hello: Value = serde_json::from_slice(&hello.stdout).expect("JSON");
    assert_eq!(hello["success"], true, "{hello}");
}

/// AVP-HTTP-34: `--identity` may be a hello file; its weights digest is the
/// server's, and a malformed one is a configuration error (exit 2).
#[test]
fn http_34_serve_identity_from_a_hello_file_carries_its_digest() {
    let scratch = Scratch::new("transport", "hello-identity");
    let digest = "ab".repeat(32);
    let hello = scratch.path("hello.json");
    std::fs::write(
        &hello,
        format!(
            r#"{{"agent_id":"me","identity":{{"model_hash":"h"}},"capabilities":{{"weights_digest":"{digest}"}}}}"#
        ),
    )
    .expect("hello");
    let server = serve(&["--identity", s(&hello)]);
    let identity = scratch.path("identity.json");
    std::fs::write(&identity, r#"{"model_hash":"h"}"#).expect("identity");
    let answer = avp()
        .args(["handshake", &server.url, "--identity", s(&identity)])
        .output()
        .expect("avp handshake URL");
    let answer: Value = serde_json::from_slice(&answer.stdout).expect("JSON");
    assert_eq!(answer["capabilities"]["weights_digest"], digest, "{answer}");
    assert_eq!(answer["resolution_path"], "hash_match", "{answer}");
    std::fs::write(
        &hello,
        r#"{"identity":{"model_hash":"h"},"capabilities":{"weights_digest":"AB"}}"#,
    )
    .expect("bad hello");
    let status = avp()
        .args(["serve", "--listen", "127.0.0.1:0", "--identity", s(&hello)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("avp serve");
    assert_eq!(status.code(), Some(2));
}

//! Interoperability of `avp serve`, `avp send` and `avp route` with the Python
//! SDK (avp==0.6.2): real servers on loopback, started here, on free ports.
//! Rule IDs are in spec/http.md.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
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

fn stored_files(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    }
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
    let head = format!(
        "POST /avp/v2/transmit HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/avp+binary\r\nContent-Length: {}\r\n\r\n",
        message.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    let half = message.len() / 2;
    stream.write_all(&message[..half]).expect("first half");
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(200));
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

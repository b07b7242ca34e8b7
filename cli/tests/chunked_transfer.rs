//! Chunked contexts over HTTP (issue 18; spec/protocol/http.md section 8,
//! spec/impl/transport.md AVP-HTTP-90..93): `avp send` to `avp serve`,
//! directly and through `avp route`, a receiver killed mid-transfer and
//! resumed, expiry, limits, and a stalled upload beside a good one. Real
//! processes on loopback; the contexts are a few MiB in small chunks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{Running, Scratch, avp, start};

const HEADS: u32 = 2;
const HEAD_DIM: u32 = 64;
const TOKENS: u32 = 256;

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A float16 KV_CACHE message of `num_layers` layers (128 KiB each; 7 fit
/// a 1 MiB chunk) with bytes from `seed`, written with `avp encode`;
/// returns its layer bytes.
fn kv_message(dir: &Scratch, name: &str, seed: u64, num_layers: u32) -> (PathBuf, Vec<u8>) {
    let layer = 2 * HEADS * HEAD_DIM * TOKENS * 2;
    let mut layers = vec![0u8; (num_layers * layer) as usize];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for byte in &mut layers {
        // xorshift: deterministic, and no two layers alike.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut payload = Vec::new();
    for field in [num_layers, HEADS, HEAD_DIM, TOKENS] {
        payload.extend_from_slice(&field.to_le_bytes());
    }
    payload.push(1); // float16
    payload.extend_from_slice(&layers);
    let payload_path = dir.path(&format!("{name}.payload"));
    std::fs::write(&payload_path, &payload).expect("payload");
    let meta = dir.path(&format!("{name}.json"));
    std::fs::write(
        &meta,
        format!(
            r#"{{"session_id":"s","source_agent_id":"a","target_agent_id":"b","model_id":"m",
            "hidden_dim":128,"num_layers":{num_layers},"payload_type":"KV_CACHE","dtype":"FLOAT16",
            "tensor_shape":[],"mode":"LATENT","avp_map_id":"","extra":{{}}}}"#
        ),
    )
    .expect("metadata");
    let out = dir.path(&format!("{name}.avp"));
    let done = avp()
        .args(["encode", "--metadata", s(&meta), "--payload"])
        .arg(&payload_path)
        .args(["-o", s(&out)])
        .stdout(Stdio::null())
        .status()
        .expect("avp encode");
    assert!(done.success());
    (out, layers)
}

/// The messages of a file, back to back: (message bytes, payload after the metadata).
fn messages(bytes: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let word = |i: usize| {
            u32::from_le_bytes(bytes[at + i..at + i + 4].try_into().expect("4 bytes")) as usize
        };
        let (payload_len, meta_len) = (word(4), word(8));
        let message = &bytes[at..at + 12 + payload_len];
        out.push((message, &message[12 + meta_len..]));
        at += 12 + payload_len;
    }
    out
}

/// The layer bytes of a stored chunked context, chunk after chunk: what
/// the original message held, if the context arrived intact.
fn layers_of_chunked_file(path: &Path) -> (usize, Vec<u8>) {
    let bytes = std::fs::read(path).expect("stored file");
    let chunks = messages(&bytes);
    let mut layers = Vec::new();
    for (_, payload) in &chunks {
        layers.extend_from_slice(&payload[17..]);
    }
    (chunks.len(), layers)
}

fn serve(store: Option<&Path>, extra: &[&str]) -> Running {
    let mut command = avp();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--quiet"])
        .args(extra)
        .stderr(Stdio::null());
    if let Some(store) = store {
        command.args(["--store", s(store)]);
    }
    start(command)
}

fn send(file: &Path, url: &str, extra: &[&str]) -> (Output, Value) {
    let output = avp()
        .arg("send")
        .arg(file)
        .args(["--to", url])
        .args(extra)
        .output()
        .expect("avp send");
    let answer = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, answer)
}

/// The `.avp` files of a store directory (stored contexts; never a part of one).
fn stored(store: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(store)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "avp"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// One HTTP/1.1 POST by hand (the tests need no HTTP client): status and JSON answer.
fn post(url: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let host = url.strip_prefix("http://").expect("http URL");
    let mut stream = TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn chunk_status(url: &str, context_id: &str) -> Value {
    let query = format!(r#"{{"context_id":"{context_id}","target_agent_id":"b"}}"#);
    let (status, answer) = post(
        url,
        "/avp/v2/chunk-status",
        "application/json",
        query.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    answer
}

fn held(status: &Value) -> Vec<u64> {
    status["held"]
        .as_array()
        .expect("held")
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// AVP-HTTP-80, AVP-HTTP-81, AVP-HTTP-82, AVP-HTTP-86, AVP-HTTP-87,
/// AVP-HTTP-91, AVP-HTTP-93: a 4 MiB context cut into 1 MiB chunks
/// reaches `avp serve` intact and is stored as one chunked file; that file,
/// sent through `avp route` to a second agent, arrives byte for byte.
#[test]
fn http_80_81_82_86_87_91_chunked_context_arrives_intact_directly_and_through_route() {
    let dir = Scratch::new("chunked", "intact");
    let (message, layers) = kv_message(&dir, "ctx", 1, 32);
    let (store_a, store_b) = (dir.path("a"), dir.path("b"));
    let a = serve(Some(&store_a), &[]);
    let (output, answer) = send(&message, &a.url, &["--chunk-mib", "1"]);
    assert!(output.status.success(), "{answer} {output:?}");
    assert_eq!(answer["complete"], true);
    assert_eq!(
        (answer["chunks"].as_u64(), answer["sent_chunks"].as_u64()),
        (Some(5), Some(5))
    );
    let files = stored(&store_a);
    assert_eq!(files.len(), 1, "one stored context");
    let id = answer["request_id"].as_str().expect("request_id");
    assert_eq!(files[0], store_a.join(format!("{id}.avp")));
    let (count, got) = layers_of_chunked_file(&files[0]);
    assert_eq!(count, 5);
    assert!(
        got == layers,
        "the stored chunks hold the context's layer bytes"
    );
    // The same context again: the receiver already has it, nothing travels.
    let (_, again) = send(&message, &a.url, &["--chunk-mib", "1"]);
    assert_eq!(
        (again["sent_chunks"].as_u64(), again["request_id"].as_str()),
        (Some(0), Some(id))
    );

    // The stored file is a chunked file: through a router to agent b.
    let b = serve(Some(&store_b), &[]);
    let mut route = avp();
    route
        .args(["route", "--listen", "127.0.0.1:0", "--route"])
        .arg(format!("b={}", b.url))
        .stderr(Stdio::null());
    let router = start(route);
    let (output, answer) = send(&files[0], &router.url, &[]);
    assert!(output.status.success(), "{answer}");
    assert_eq!(answer["complete"], true);
    let routed = stored(&store_b);
    assert_eq!(routed.len(), 1);
    assert!(
        std::fs::read(&routed[0]).expect("b's file") == std::fs::read(&files[0]).expect("a's"),
        "the routed context is stored byte for byte"
    );
}

/// AVP-HTTP-83, AVP-HTTP-86, AVP-HTTP-90, AVP-HTTP-92, AVP-HTTP-93: the
/// receiver is killed (SIGKILL) once half the chunks are held; no context
/// is visible before it is whole; after a restart the same `avp send`
/// sends only the chunks that were missing.
#[test]
fn http_83_86_92_killed_receiver_restarts_and_the_sender_sends_only_what_is_missing() {
    let dir = Scratch::new("chunked", "resume");
    let (message, layers) = kv_message(&dir, "ctx", 2, 64);
    let store = dir.path("store");
    let mut server = serve(Some(&store), &[]);
    // 10 chunks of about 1 MiB at 2 MiB/s: about 4 s, so the test sees it half-way.
    let mut sender = avp()
        .arg("send")
        .arg(&message)
        .args(["--to", &server.url, "--chunk-mib", "1", "--retries", "0"])
        .args(["--limit-rate", &(2 << 20).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("avp send");
    let context_id = loop {
        // The context id is the digest's first half; learn it from the store.
        if let Some(id) = std::fs::read_dir(store.join(".chunks"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .and_then(|e| e.file_name().to_str().map(str::to_owned))
        {
            break id;
        }
        assert!(
            sender.try_wait().expect("poll").is_none(),
            "sender ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let held_before = loop {
        let status = chunk_status(&server.url, &context_id);
        assert!(stored(&store).is_empty(), "no half context is ever visible");
        let count = status["count"].as_u64().unwrap_or(u64::MAX);
        let now = held(&status);
        if now.len() as u64 * 2 >= count && count != u64::MAX {
            break now;
        }
        assert!(Instant::now() < deadline, "the transfer never got half-way");
        std::thread::sleep(Duration::from_millis(10));
    };
    server.child.kill().expect("kill -9");
    let _ = server.child.wait();
    let failed = sender.wait_with_output().expect("sender");
    assert!(!failed.status.success(), "the sender lost its receiver");
    assert!(stored(&store).is_empty(), "no half context after the crash");

    let server = serve(Some(&store), &[]);
    let recovered = held(&chunk_status(&server.url, &context_id));
    assert!(
        recovered.len() >= held_before.len(),
        "acknowledged chunks survive the crash: {recovered:?} vs {held_before:?}"
    );
    let (output, answer) = send(&message, &server.url, &["--chunk-mib", "1"]);
    assert!(output.status.success(), "{answer}");
    let count = answer["chunks"].as_u64().expect("chunks");
    assert_eq!(
        answer["skipped_chunks"].as_u64(),
        Some(recovered.len() as u64)
    );
    assert_eq!(
        answer["sent_chunks"].as_u64(),
        Some(count - recovered.len() as u64),
        "only the missing chunks travelled"
    );
    let files = stored(&store);
    assert_eq!(files.len(), 1);
    let (_, got) = layers_of_chunked_file(&files[0]);
    assert!(got == layers, "the resumed context is intact");
}

/// The chunk messages of the context `message` cut into 1 MiB chunks, as
/// the receiver stored them (sent once to a scratch agent).
fn chunks_of(dir: &Scratch, message: &Path, tag: &str) -> Vec<Vec<u8>> {
    let store = dir.path(tag);
    let agent = serve(Some(&store), &[]);
    let (output, answer) = send(message, &agent.url, &["--chunk-mib", "1"]);
    assert!(output.status.success(), "{answer}");
    let bytes = std::fs::read(&stored(&store)[0]).expect("stored");
    messages(&bytes).iter().map(|(m, _)| m.to_vec()).collect()
}

/// AVP-HTTP-82, AVP-HTTP-85, AVP-HTTP-92: a context whose sender went away is deleted after the
/// chunk TTL; too many contexts at once get 503 `server_busy`; a plain
/// message at the chunk endpoint is 400 `bad_chunk`; without a required
/// session 409 (AVP-HTTP-35); a chunk of a context
/// already stored is an idempotent duplicate.
#[test]
fn http_85_92_limits_typed_answers_and_expiry() {
    let dir = Scratch::new("chunked", "limits");
    let (first, _) = kv_message(&dir, "one", 3, 16);
    let (second, _) = kv_message(&dir, "two", 4, 16);
    let one = chunks_of(&dir, &first, "s1");
    let two = chunks_of(&dir, &second, "s2");
    let store = dir.path("store");
    let agent = serve(Some(&store), &["--max-assemblies", "1", "--chunk-ttl", "1"]);
    let binary = "application/avp+binary";
    let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, &one[0]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["held"].as_u64(), answer["complete"].as_bool()),
        (Some(1), Some(false))
    );
    let context_id = answer["context_id"]
        .as_str()
        .expect("context_id")
        .to_owned();
    // The same chunk again: idempotent.
    let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, &one[0]);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    // A second context while the first is assembled: over --max-assemblies.
    let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, &two[0]);
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (503, Some("server_busy"))
    );
    // A plain message is not a chunk.
    let plain = std::fs::read(&first).expect("message");
    let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, &plain);
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (400, Some("bad_chunk"))
    );
    let (status, answer) = post(
        &agent.url,
        "/avp/v2/chunk-status",
        "application/json",
        br#"{"context_id":"../x","target_agent_id":"b"}"#,
    );
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (400, Some("invalid_request"))
    );
    // Sessions apply to chunks as to transmits (AVP-HTTP-35).
    let strict = serve(Some(&dir.path("strict")), &["--require-session"]);
    let (status, answer) = post(&strict.url, "/avp/v2/chunk", binary, &one[0]);
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (409, Some("unknown_session"))
    );
    // The first sender never comes back: after the TTL the server's sweep
    // deletes its files without any request arriving.
    let folder = store.join(".chunks").join(&context_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    while folder.exists() {
        assert!(Instant::now() < deadline, "the assembly never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(held(&chunk_status(&agent.url, &context_id)).is_empty());
    assert!(stored(&store).is_empty());
    // With the slot free, the second context is accepted and completes.
    for chunk in &two {
        let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, chunk);
        assert_eq!(status, 200, "{answer}");
    }
    let status = chunk_status(&agent.url, &hex_id_of(&two[0]));
    assert_eq!(status["complete"], true);
    // A chunk of a stored context: a duplicate, answered with its id.
    let (status, answer) = post(&agent.url, "/avp/v2/chunk", binary, &two[1]);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    assert_eq!(answer["request_id"], status_request_id(&agent.url, &two[0]));
}

fn hex_id_of(chunk: &[u8]) -> String {
    // "avp.chunk" = "1:<context id hex>:...": found in the metadata as text.
    let text = String::from_utf8_lossy(chunk);
    let at = text.find("1:").expect("descriptor");
    let rest = &text[at + 2..];
    let start = text[at + 2..]
        .find(|c: char| c.is_ascii_hexdigit())
        .unwrap_or(0);
    rest[start..start + 32].to_owned()
}

fn status_request_id(url: &str, chunk: &[u8]) -> Value {
    chunk_status(url, &hex_id_of(chunk))["request_id"].clone()
}

/// AVP-HTTP-80 (AVP-CHK-9): an agent that does not assemble chunks (like an
/// SDK agent) announces no `kv_chunked`: a chunked file goes to it as the
/// one message it joins into (byte for byte the message it was cut from),
/// a single message goes whole even with --chunk-mib, and the chunk
/// endpoint answers 404.
#[test]
fn http_80_a_peer_without_kv_chunked_never_gets_chunks() {
    let dir = Scratch::new("chunked", "sdk");
    let (message, _) = kv_message(&dir, "ctx", 5, 16);
    let chunked_store = dir.path("chunked");
    let chunked_agent = serve(Some(&chunked_store), &[]);
    let (_, answer) = send(&message, &chunked_agent.url, &["--chunk-mib", "1"]);
    assert_eq!(answer["complete"], true);
    let chunked_file = stored(&chunked_store)[0].clone();

    // --max-assemblies 0: a store, but no chunk assembly and no kv_chunked.
    let plain_store = dir.path("plain");
    let plain = serve(Some(&plain_store), &["--max-assemblies", "0"]);
    let (output, answer) = send(&chunked_file, &plain.url, &[]);
    assert!(output.status.success(), "{answer}");
    let joined = std::fs::read(&stored(&plain_store)[0]).expect("joined");
    assert!(
        joined == std::fs::read(&message).expect("message"),
        "joined back into exactly the message that was cut"
    );
    let (output, answer) = send(&message, &plain.url, &["--chunk-mib", "1"]);
    assert!(output.status.success(), "{answer}");
    assert_eq!(
        answer["bytes"].as_u64(),
        Some(std::fs::metadata(&message).expect("size").len()),
        "sent as one transmit"
    );
    assert_eq!(stored(&plain_store).len(), 2);
    let bytes = std::fs::read(&chunked_file).expect("chunked file");
    let first = messages(&bytes)[0].0.to_vec();
    let (status, answer) = post(
        &plain.url,
        "/avp/v2/chunk",
        "application/avp+binary",
        &first,
    );
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (404, Some("not_found"))
    );
}

/// AVP-HTTP-84, AVP-HTTP-18: an upload that stalls mid-chunk holds no one else up:
/// another sender's context completes meanwhile (the server's deadlines
/// and budget shares apply to chunks as to transmits).
#[test]
fn http_84_a_stalled_chunk_upload_does_not_block_another_sender() {
    let dir = Scratch::new("chunked", "stall");
    let (message, _) = kv_message(&dir, "ctx", 6, 16);
    let store = dir.path("store");
    let agent = serve(Some(&store), &["--idle-timeout", "5"]);
    let host = agent.url.strip_prefix("http://").expect("http");
    let mut stalled = TcpStream::connect(host).expect("connect");
    stalled
        .write_all(
            format!(
                "POST /avp/v2/chunk HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/avp+binary\r\ncontent-length: 1000000\r\n\r\nAV"
            )
            .as_bytes(),
        )
        .expect("a few bytes, then nothing");
    let (output, answer) = send(&message, &agent.url, &["--chunk-mib", "1"]);
    assert!(output.status.success(), "{answer}");
    assert_eq!(answer["complete"], true);
    assert_eq!(stored(&store).len(), 1);
    // The stalled upload is answered 408 once its idle deadline passes.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

fn kv(args: &[&str]) -> Value {
    let output = avp().arg("kv").args(args).output().expect("avp kv");
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// AVP-HTTP-81, AVP-HTTP-91, AVP-HTTP-93: what `avp kv synth` writes (a
/// chunked file, or one message cut by `avp send --chunk-mib`) is stored as
/// a chunked file that `avp kv verify` accepts with the same digest.
#[test]
fn http_91_93_avp_kv_synth_contexts_are_stored_as_files_avp_kv_verify_accepts() {
    let dir = Scratch::new("chunked", "synth");
    let store = dir.path("store");
    let agent = serve(Some(&store), &[]);
    let shape = [
        "--layers",
        "12",
        "--heads",
        "2",
        "--head-dim",
        "64",
        "--tokens",
        "256",
    ];
    let chunked = dir.path("ctx.avpc");
    let single = dir.path("ctx.avp");
    let written = kv(&[
        &["synth", "--chunk-mib", "1", "-o", s(&chunked)][..],
        &shape,
    ]
    .concat());
    kv(&[&["synth", "-o", s(&single)][..], &shape].concat());
    for (file, extra) in [(&chunked, &[][..]), (&single, &["--chunk-mib", "1"][..])] {
        let (output, answer) = send(file, &agent.url, extra);
        assert!(output.status.success(), "{answer}");
        let id = answer["request_id"].as_str().expect("stored");
        let verified = kv(&["verify", s(&store.join(format!("{id}.avp")))]);
        assert_eq!(verified["context_digest"], written["context_digest"]);
        assert_eq!(verified["layers"], 12);
    }
}

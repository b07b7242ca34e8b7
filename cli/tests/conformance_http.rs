//! `avp conformance http` against the Python SDK's own server
//! (`avp.transport.create_app` under uvicorn on loopback), its divergences
//! recorded in conformance/expectations/avp-python-http.txt (AVP-CONF-40..45).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The SDK server; killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sdk_server() -> Server {
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the pinned venv is missing: run scripts/setup-venv.sh"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(py)
        .arg(root().join("conformance/tests/sdk_http_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the SDK server");
    let url = format!("http://127.0.0.1:{port}");
    let server = Server { child, url };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "SDK server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn avp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_avp"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run avp")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn verdicts(json: &Path) -> Vec<(String, String)> {
    let r: Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    r["subjects"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn sdk_server_conforms_with_recorded_divergences() {
    let server = sdk_server();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("http.json");
    let out = avp(&[
        "conformance",
        "http",
        &server.url,
        "--token",
        "s3cret",
        "--oversize",
        "8388608",
        "--name",
        "avp-python-http",
        "--strict",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = verdicts(&json);
    let of = |id: &str| {
        v.iter()
            .find(|(i, _)| i == id)
            .map(|(_, v)| v.as_str())
            .unwrap_or("missing")
    };
    // What the SDK server gets right...
    assert_eq!(of("http/health/get"), "PASS");
    assert_eq!(of("http/handshake/hello"), "PASS");
    assert_eq!(of("http/handshake/malformed-json"), "PASS");
    assert_eq!(of("http/transmit/wire-valid-hidden-f32"), "PASS");
    assert_eq!(of("http/transmit/wire-header-bad-magic"), "PASS");
    assert_eq!(of("http/transmit/wire-checksum-flipped-tensor-bit"), "PASS");
    // ...and what it does not (each with its reason in the expectations file).
    assert_eq!(of("http/auth/missing-token"), "XFAIL");
    assert_eq!(of("http/auth/wrong-token"), "XFAIL");
    assert_eq!(of("http/transmit/wrong-content-type"), "XFAIL");
    assert_eq!(of("http/transmit/oversized-body"), "XFAIL");
    assert_eq!(of("http/versions/h2c-prior-knowledge"), "XFAIL");
    // Every valid vector accepted, every invalid one refused with 4xx, no 5xx, server alive.
    let passed = v.iter().filter(|(_, verdict)| verdict == "PASS").count();
    assert!(passed >= 80, "{passed} PASS: {v:?}");
    assert!(
        v.iter()
            .all(|(_, verdict)| verdict == "PASS" || verdict == "XFAIL"),
        "{v:?}"
    );
}

/// Without the expectations file the same run fails: the suite sees the SDK
/// server ignore the token and the Content-Type.
#[test]
fn sdk_server_without_expectations_is_not_conformant() {
    let server = sdk_server();
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.txt");
    std::fs::write(&none, "# none\n").unwrap();
    let json = dir.path().join("http.json");
    let out = avp(&[
        "conformance",
        "http",
        &server.url,
        "--token",
        "t",
        "--oversize",
        "1048576",
        "--only",
        "http/auth/",
        "--only",
        "http/transmit/wrong-content-type",
        "--only",
        "http/health/",
        "--expectations",
        none.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let failing: Vec<String> = verdicts(&json)
        .into_iter()
        .filter(|(_, v)| v == "FAIL")
        .map(|(id, _)| id)
        .collect();
    for id in [
        "http/auth/missing-token",
        "http/auth/wrong-token",
        "http/transmit/wrong-content-type",
    ] {
        assert!(failing.contains(&id.to_string()), "{id}: {failing:?}");
    }
}

#[test]
fn unreachable_server_is_a_harness_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = avp(&[
        "conformance",
        "http",
        &format!("http://127.0.0.1:{port}"),
        "--timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("is not answering /health"),
        "{}",
        text(&out)
    );
}

/// `avp serve` (our HTTP binding, branch transport) with a token and a small
/// body limit: conformant under --strict, its compatible decoder's NON-STRICT
/// answers being the only entries of conformance/expectations/avp-serve.txt.
#[test]
fn avp_serve_conforms() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_avp"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-body",
            "8388608",
            "--quiet",
            "--token-file",
        ])
        .arg(&token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start avp serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let server = Server { child, url };
    let json = dir.path().join("serve.json");
    let out = avp(&[
        "conformance",
        "http",
        &server.url,
        "--token",
        "s3cret",
        "--oversize",
        "8388609",
        "--name",
        "avp-serve",
        "--strict",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = verdicts(&json);
    let of = |id: &str| {
        v.iter()
            .find(|(i, _)| i == id)
            .map(|(_, v)| v.as_str())
            .unwrap_or("missing")
    };
    for id in [
        "http/versions/h2c-prior-knowledge",
        "http/auth/missing-token",
        "http/auth/wrong-token",
        "http/transmit/wrong-content-type",
        "http/transmit/oversized-body",
        "http/transmit/wire-limits-zstd-bomb-2gib",
    ] {
        assert_eq!(of(id), "PASS", "{id}");
    }
    assert!(
        v.iter().all(|(id, verdict)| verdict == "PASS"
            || (verdict == "XFAIL" && id.starts_with("http/transmit/wire-non-strict-"))),
        "{v:?}"
    );
}

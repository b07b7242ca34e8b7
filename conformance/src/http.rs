//! Live HTTP mode (AVP-CONF-40..45): checks a running AVP HTTP endpoint.
//!
//! The client is a few dozen lines over `std::net::TcpStream` on purpose: the
//! suite must send requests a polite client never would (wrong types, lying
//! `Content-Length`, no token) and see exactly what comes back. One fresh
//! connection per request (`Connection: close`); after every request that
//! should be refused, `/health` is asked again, so a request that kills the
//! server fails the case that killed it.
//!
//! The cases are built from the corpus (every wire `decode` vector goes
//! through `POST /avp/v2/transmit`) plus protocol cases of our own; they run
//! through the same runner, expectations and reports as `avp conformance run`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::corpus::{Case, Corpus, ExpectedResult, Level};
use crate::error::ConformanceError;
use crate::subject::{HarnessFailure, Request, Subject};
use crate::verdict::Verdict;

/// Default oversized body: one byte over the reference server's 1 GiB limit.
pub const DEFAULT_OVERSIZE: u64 = (1 << 30) + 1;
/// `Content-Type` of AVP binary messages.
pub const CONTENT_TYPE_AVP: &str = "application/avp+binary";
/// Responses larger than this are cut (we only look at status and a JSON envelope).
const MAX_RESPONSE: usize = 1 << 20;

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    pub base: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]`. `https` is refused (no TLS here).
    pub fn parse(url: &str) -> Result<Self, ConformanceError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ConformanceError::Usage(format!("{url}: only http:// URLs are supported"))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| ConformanceError::Usage(format!("{url}: bad port")))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(ConformanceError::Usage(format!("{url}: no host")));
        }
        Ok(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            base: path.to_string(),
        })
    }
}

/// Options of an HTTP run.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Token the server requires; enables the auth cases.
    pub token: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Declared size of the oversized body.
    pub oversize: u64,
    /// Report name for the server.
    pub name: Option<String>,
}

/// A raw HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

/// What to send as the body.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// Declare this many bytes and send zeros until the server answers or
    /// they are all sent.
    Oversize(u64),
}

/// A fresh connection to `target` with read and write timeouts set.
fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, String> {
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("resolve {}: no address", target.host))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends one request on a fresh connection and reads the whole response.
pub fn send(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
    timeout: Duration,
) -> Result<Response, String> {
    let mut stream = connect(target, timeout)?;
    let length = match body {
        Body::Bytes(b) => b.len() as u64,
        Body::Oversize(n) => n,
    };
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n",
        target.base, target.host, target.port
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" || length > 0 {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("send headers: {e}"))?;
    match body {
        Body::Bytes(b) => stream.write_all(b).map_err(|e| format!("send body: {e}"))?,
        Body::Oversize(n) => send_until_answered(&mut stream, n)?,
    }
    let _ = stream.flush();
    let mut raw = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                raw.extend_from_slice(&buf[..k]);
                if raw.len() > MAX_RESPONSE || response_complete(&raw) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A server that answers and then resets the connection (common
            // after refusing a large body) still answered.
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(format!("read response: {e}")),
        }
        if Instant::now() > deadline {
            return Err("read response: timed out".into());
        }
    }
    parse_response(&raw)
}

/// Sends the HTTP/2 client preface and an empty SETTINGS frame (RFC 9113
/// §3.4) and expects the server's first frame to be SETTINGS (type 4).
fn h2c_probe(target: &Target, timeout: Duration) -> Result<(), String> {
    let mut stream = connect(target, timeout)?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream
        .write_all(&hello)
        .map_err(|e| format!("send preface: {e}"))?;
    let mut frame = [0u8; 9];
    stream
        .read_exact(&mut frame)
        .map_err(|e| format!("no HTTP/2 frame after the preface: {e}"))?;
    if frame[3] == 4 {
        Ok(())
    } else {
        let head = String::from_utf8_lossy(&frame);
        Err(format!(
            "first answer to the HTTP/2 preface is not a SETTINGS frame: {head:?}"
        ))
    }
}

/// Streams zeros; stops as soon as the server has something to say.
fn send_until_answered(stream: &mut TcpStream, total: u64) -> Result<(), String> {
    let chunk = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    let mut probe = [0u8; 1];
    while sent < total {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let answered = matches!(stream.peek(&mut probe), Ok(n) if n > 0);
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        if answered {
            return Ok(());
        }
        let n = (total - sent).min(chunk.len() as u64) as usize;
        if stream.write_all(&chunk[..n]).is_err() {
            // The server closed its side: its answer (if any) is read next.
            return Ok(());
        }
        sent += n as u64;
    }
    Ok(())
}

fn header_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn response_complete(raw: &[u8]) -> bool {
    let Some(end) = header_end(raw) else {
        return false;
    };
    let Ok(parsed) = parse_head(&raw[..end]) else {
        return false;
    };
    match header(&parsed.1, "content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) => raw.len() >= end + n,
        None => {
            header(&parsed.1, "transfer-encoding").is_some_and(|t| t.contains("chunked"))
                && raw.ends_with(b"0\r\n\r\n")
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    Ok((status, headers))
}

/// Parses a complete HTTP/1.x response (status line, headers, body with
/// `Content-Length`, chunked, or up to the close).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = header_end(raw).ok_or_else(|| {
        if raw.is_empty() {
            "connection closed without a response".to_string()
        } else {
            "response headers incomplete".to_string()
        }
    })?;
    let (status, headers) = parse_head(&raw[..end])?;
    let rest = &raw[end..];
    let body = if header(&headers, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(rest)
    } else if let Some(n) =
        header(&headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok())
    {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..i]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        data = &data[i + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
    out
}

fn http_case(
    id: &str,
    rules: &[&str],
    level: Level,
    result: ExpectedResult,
    input: Value,
    expect: Value,
    description: &str,
) -> Case {
    let mut expect = expect;
    expect["result"] = serde_json::to_value(result).unwrap_or(Value::Null);
    Case {
        id: id.to_string(),
        rules: rules.iter().map(|r| r.to_string()).collect(),
        level,
        op: "http".into(),
        input_raw: input.to_string(),
        input,
        expect,
        result,
        description: Some(description.to_string()),
        input_file: None,
        source: "(built into the http mode)".into(),
        encode: None,
    }
}

/// The HTTP cases: protocol cases plus every wire `decode` vector of the corpus.
pub fn cases(corpus: &Corpus, options: &HttpOptions) -> Vec<Case> {
    use ExpectedResult::{Invalid, Valid};
    use Level::{Must, Should};
    let avp = CONTENT_TYPE_AVP;
    let mut out = vec![
        http_case(
            "http/health/get",
            &["AVP-HTTP-1"],
            Must,
            Valid,
            json!({"method": "GET", "path": "/health"}),
            json!({"status": [200]}),
            "GET /health answers 200",
        ),
        http_case(
            "http/versions/h2c-prior-knowledge",
            &["AVP-HTTP-2"],
            Must,
            Valid,
            json!({"h2c_preface": true}),
            json!({}),
            "the HTTP/2 connection preface (prior knowledge, no TLS) is answered with a SETTINGS frame",
        ),
        http_case(
            "http/handshake/hello",
            &["AVP-HTTP-1", "AVP-HTTP-30"],
            Must,
            Valid,
            json!({"method": "POST", "path": "/avp/v2/handshake", "content_type": "application/json",
                   "json": {"agent_id": "conformance", "avp_version": "0.6.2", "capabilities": {},
                            "identity": {"model_family": "llama", "model_id": "conformance/probe", "model_hash": "00",
                                         "hidden_dim": 8, "num_layers": 2, "num_kv_heads": 2, "head_dim": 4}}}),
            json!({"status": [200]}),
            "a well-formed hello is accepted",
        ),
        http_case(
            "http/handshake/malformed-json",
            &["AVP-HTTP-14", "AVP-HTTP-20"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/handshake", "content_type": "application/json", "text": "{\"agent_id\": "}),
            json!({"status": [400]}),
            "a hello that is not JSON is refused with 400",
        ),
        http_case(
            "http/text/message",
            &["AVP-HTTP-1", "AVP-HTTP-33"],
            Must,
            Valid,
            json!({"method": "POST", "path": "/avp/v2/text", "content_type": "application/json",
                   "json": {"avp_version": "0.6.2", "session_id": "conformance", "source_agent_id": "conformance",
                            "target_agent_id": "server", "content": "a JSON fallback message"}}),
            json!({"status": [200]}),
            "a JSON fallback message is accepted on /avp/v2/text",
        ),
        http_case(
            "http/text/content-not-a-string",
            &["AVP-HTTP-14", "AVP-HTTP-33"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/text", "content_type": "application/json",
                   "json": {"session_id": "conformance", "content": 5}}),
            json!({"status": [400]}),
            "a text message whose content is not a string is refused with 400",
        ),
        http_case(
            "http/transmit/wrong-content-type",
            &["AVP-HTTP-4", "AVP-HTTP-11"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": "text/plain", "vector": "valid"}),
            json!({"status": [415]}),
            "a valid message sent as text/plain is refused (415 preferred)",
        ),
        http_case(
            "http/transmit/oversized-body",
            &["AVP-HTTP-12"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": avp, "oversize": options.oversize}),
            json!({"status": [413]}),
            "a body over the server's limit is refused (413) without reading it all",
        ),
        http_case(
            "http/transmit/get-not-allowed",
            &["AVP-HTTP-15"],
            Should,
            Invalid,
            json!({"method": "GET", "path": "/avp/v2/transmit"}),
            json!({"status": [405]}),
            "GET on the transmit endpoint is refused",
        ),
        http_case(
            "http/headers/unsupported-avp-version",
            &["AVP-HTTP-3", "AVP-HTTP-10"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": avp, "vector": "valid", "avp_version": "9.9"}),
            json!({"status": [400]}),
            "a valid message under AVP-Version 9.9 is refused with 400",
        ),
        http_case(
            "http/paths/unknown",
            &["AVP-HTTP-15"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/no-such-endpoint", "content_type": avp, "vector": "valid"}),
            json!({"status": [404]}),
            "an unknown path gets 404",
        ),
    ];
    if options.token.is_some() {
        out.push(http_case(
            "http/auth/missing-token",
            &["AVP-HTTP-13"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": avp, "vector": "valid", "auth": "none"}),
            json!({"status": [401]}),
            "no Authorization header when the server requires a token",
        ));
        out.push(http_case(
            "http/auth/wrong-token",
            &["AVP-HTTP-13"],
            Must,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": avp, "vector": "valid", "auth": "wrong"}),
            json!({"status": [401]}),
            "a wrong bearer token",
        ));
        out.push(http_case(
            "http/auth/checked-first",
            &["AVP-HTTP-10", "AVP-HTTP-13"],
            Should,
            Invalid,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": "text/plain", "vector": "valid", "auth": "wrong"}),
            json!({"status": [401]}),
            "wrong token and wrong Content-Type: authentication is checked first (401, not 415)",
        ));
    }
    for case in corpus
        .cases
        .iter()
        .filter(|c| c.op == "decode" && c.input_file.is_some())
    {
        let slug = case.id.replace('/', "-");
        let (result, expect, what) = match case.result {
            ExpectedResult::Valid => (Valid, json!({}), "accepted with 2xx"),
            // 413 is as right as 400 when a declared or decoded size breaks a limit.
            ExpectedResult::Invalid => (
                Invalid,
                json!({"status": [400, 413]}),
                "refused with 400 or 413",
            ),
            ExpectedResult::NonStrict => (
                ExpectedResult::NonStrict,
                json!({}),
                "refused by a strict server",
            ),
            ExpectedResult::Acceptable => (
                ExpectedResult::Acceptable,
                json!({}),
                "either answer, never 5xx",
            ),
        };
        let mut c = http_case(
            &format!("http/transmit/{slug}"),
            &case.rules.iter().map(String::as_str).collect::<Vec<_>>(),
            case.level,
            result,
            json!({"method": "POST", "path": "/avp/v2/transmit", "content_type": avp, "vector": case.id}),
            expect,
            &format!("wire vector {} through /avp/v2/transmit: {what}", case.id),
        );
        c.rules.push(
            if case.result == ExpectedResult::Valid {
                "AVP-HTTP-21"
            } else {
                "AVP-HTTP-14"
            }
            .into(),
        );
        // The whole message is decoded before it is accepted (AVP-HTTP-31).
        c.rules.push("AVP-HTTP-31".into());
        c.input_file.clone_from(&case.input_file);
        out.push(c);
    }
    out
}

/// A live server as a [`Subject`].
pub struct HttpSubject {
    target: Target,
    options: HttpOptions,
    valid_message: Vec<u8>,
    log: String,
}

impl HttpSubject {
    /// `valid_message` is sent by cases that need any valid message (set from
    /// the first valid wire vector when the cases are run).
    pub fn new(target: Target, options: HttpOptions) -> Self {
        HttpSubject {
            target,
            options,
            valid_message: Vec::new(),
            log: String::new(),
        }
    }

    /// Uses this message for cases that need "a valid message".
    pub fn set_valid_message(&mut self, message: Vec<u8>) {
        self.valid_message = message;
    }

    fn health(&self) -> Result<Response, String> {
        let auth = self.options.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        send(
            &self.target,
            "GET",
            "/health",
            &headers,
            Body::Bytes(&[]),
            self.options.timeout,
        )
    }
}

impl Subject for HttpSubject {
    fn hello(&mut self) -> Result<Value, ConformanceError> {
        let r = self.health().map_err(|e| {
            ConformanceError::Subject(format!(
                "{}:{} is not answering /health: {e}",
                self.target.host, self.target.port
            ))
        })?;
        let name = self
            .options
            .name
            .clone()
            .unwrap_or_else(|| "http-server".into());
        Ok(json!({
            "implementation": {"name": name, "version": format!("{}:{}{}", self.target.host, self.target.port, self.target.base)},
            "health": {"status": r.status, "body": String::from_utf8_lossy(&r.body)},
        }))
    }

    fn call(&mut self, request: &Request<'_>) -> Result<Value, HarnessFailure> {
        let input = request.input;
        if input.get("h2c_preface").and_then(Value::as_bool) == Some(true) {
            let answer = h2c_probe(&self.target, self.options.timeout);
            let alive = self.health().is_ok_and(|r| r.status == 200);
            return Ok(match answer {
                Ok(()) => {
                    json!({"outcome": "http", "status": 200, "content_type": null, "body": "SETTINGS", "alive": alive})
                }
                Err(e) => {
                    json!({"outcome": "http", "status": null, "transport_error": e, "alive": alive})
                }
            });
        }
        let method = input.get("method").and_then(Value::as_str).unwrap_or("GET");
        let path = input.get("path").and_then(Value::as_str).unwrap_or("/");
        let token = self.options.token.clone();
        let auth = match (input.get("auth").and_then(Value::as_str), &token) {
            (Some("none"), _) | (_, None) => None,
            (Some("wrong"), Some(t)) => Some(format!("Bearer {t}-wrong")),
            (_, Some(t)) => Some(format!("Bearer {t}")),
        };
        let body_owned: Vec<u8> = if let Some(data) = request.data {
            data.to_vec()
        } else if input.get("vector").and_then(Value::as_str) == Some("valid") {
            self.valid_message.clone()
        } else if let Some(v) = input.get("json") {
            v.to_string().into_bytes()
        } else if let Some(t) = input.get("text").and_then(Value::as_str) {
            t.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        let body = match input.get("oversize").and_then(Value::as_u64) {
            Some(n) => Body::Oversize(n),
            None => Body::Bytes(&body_owned),
        };
        let version = input
            .get("avp_version")
            .and_then(Value::as_str)
            .unwrap_or("0.4");
        let mut headers: Vec<(&str, &str)> = vec![
            ("AVP-Version", version),
            ("AVP-Agent-ID", "avp-conformance"),
        ];
        if let Some(ct) = input.get("content_type").and_then(Value::as_str) {
            headers.push(("Content-Type", ct));
        }
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let started = Instant::now();
        let answer = send(
            &self.target,
            method,
            path,
            &headers,
            body,
            self.options.timeout,
        );
        let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        // Liveness after every request: "never a dead server" (AVP-CONF-42).
        let alive = match self.health() {
            Ok(r) => r.status == 200,
            Err(e) => {
                self.log
                    .push_str(&format!("health check after {}: {e}\n", request.case_id));
                false
            }
        };
        Ok(match answer {
            Ok(r) => {
                let body_text =
                    String::from_utf8_lossy(&r.body[..r.body.len().min(2048)]).into_owned();
                json!({
                    "outcome": "http",
                    "status": r.status,
                    "content_type": header(&r.headers, "content-type"),
                    "body": serde_json::from_str::<Value>(&body_text).unwrap_or(Value::String(body_text)),
                    "alive": alive,
                    "ms": elapsed_ms,
                })
            }
            Err(e) => {
                json!({"outcome": "http", "status": Value::Null, "transport_error": e, "alive": alive, "ms": elapsed_ms})
            }
        })
    }

    fn take_log(&mut self) -> String {
        std::mem::take(&mut self.log)
    }

    fn finish(&mut self) {}
}

/// The SHOULD-level envelope aspect of a refusal (AVP-HTTP-20): a JSON body
/// with `"success": false`. Only `success` is checked: it is what SDK
/// clients rely on; `error.kind` is ours.
fn envelope_problem(answer: &Value, success: bool) -> Option<String> {
    let json_type = answer
        .get("content_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"));
    if !json_type {
        return Some("the answer is not application/json (AVP-HTTP-20)".into());
    }
    match answer.pointer("/body/success").and_then(Value::as_bool) {
        Some(s) if s == success => None,
        _ => Some(format!(
            "the body has no `\"success\": {success}` (AVP-HTTP-20)"
        )),
    }
}

/// Judges an HTTP answer (AVP-CONF-41): 5xx, no answer, or a server that no
/// longer answers `/health` afterwards is a violation whatever the case;
/// valid inputs need 2xx, invalid ones 4xx (a 4xx outside `expect.status`
/// is NON-STRICT, e.g. 422 for 400).
pub fn judge_http(case: &Case, answer: &Value) -> (Verdict, String) {
    let violated = match case.level {
        Level::Must => Verdict::Fail,
        Level::Should => Verdict::NonStrict,
        Level::Info => Verdict::Info,
    };
    let alive = answer
        .get("alive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(status) = answer.get("status").and_then(Value::as_u64) else {
        let e = answer
            .get("transport_error")
            .and_then(Value::as_str)
            .unwrap_or("no response");
        let dead = if alive {
            ""
        } else {
            "; server no longer answers /health"
        };
        let verdict = if case.level == Level::Info {
            Verdict::Info
        } else {
            Verdict::Fail
        };
        return (verdict, format!("no HTTP response ({e}){dead}"));
    };
    if !alive {
        return (
            Verdict::Fail,
            format!("answered {status}, then stopped answering /health"),
        );
    }
    let listed = |s: u64| {
        case.expect
            .get("status")
            .and_then(Value::as_array)
            .is_none_or(|l| l.iter().any(|v| v.as_u64() == Some(s)))
    };
    match (case.result, status / 100) {
        (_, 5) => (
            violated,
            format!("{status}: a server error for a client's request"),
        ),
        (ExpectedResult::Valid, 2) if listed(status) => (Verdict::Pass, format!("{status}")),
        (ExpectedResult::Valid, _) => (
            violated,
            format!(
                "{status}, expected {}",
                case.expect.get("status").unwrap_or(&json!("2xx"))
            ),
        ),
        (ExpectedResult::Invalid, 4) if listed(status) => match envelope_problem(answer, false) {
            None => (Verdict::Pass, format!("refused with {status}")),
            Some(p) => (
                Verdict::NonStrict,
                format!("refused with {status}, but {p}"),
            ),
        },
        (ExpectedResult::Invalid, 4) => (
            Verdict::NonStrict,
            format!("refused with {status}, {} preferred", case.expect["status"]),
        ),
        (ExpectedResult::Invalid, _) => (
            violated,
            format!("{status}: accepted a request that must be refused"),
        ),
        (ExpectedResult::NonStrict, 4) => (
            Verdict::Pass,
            format!("refused with {status}, as a strict server does"),
        ),
        (ExpectedResult::NonStrict, _) => (
            Verdict::NonStrict,
            format!("{status}: accepted what a strict server refuses"),
        ),
        (ExpectedResult::Acceptable, _) => (
            Verdict::Pass,
            format!("{status} (either answer is acceptable)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid_case() -> Case {
        http_case(
            "http/t/x",
            &["AVP-HTTP-14"],
            Level::Must,
            ExpectedResult::Invalid,
            json!({}),
            json!({"status": [400]}),
            "x",
        )
    }

    #[test]
    fn judges_status_liveness_and_envelope() {
        let case = invalid_case();
        let envelope = json!({"success": false, "message": "bad magic"});
        let answer = |status: Value, ct: &str, body: Value, alive: bool| json!({"outcome": "http", "status": status, "content_type": ct, "body": body, "alive": alive});
        let j = |a: Value| judge_http(&case, &a).0;
        assert_eq!(
            j(answer(
                json!(400),
                "application/json",
                envelope.clone(),
                true
            )),
            Verdict::Pass
        );
        assert_eq!(
            j(answer(json!(400), "text/plain", json!("no"), true)),
            Verdict::NonStrict
        );
        assert_eq!(
            j(answer(
                json!(422),
                "application/json",
                envelope.clone(),
                true
            )),
            Verdict::NonStrict
        );
        assert_eq!(
            j(answer(
                json!(500),
                "application/json",
                envelope.clone(),
                true
            )),
            Verdict::Fail
        );
        assert_eq!(
            j(answer(
                json!(200),
                "application/json",
                json!({"success": true}),
                true
            )),
            Verdict::Fail
        );
        assert_eq!(
            j(answer(json!(400), "application/json", envelope, false)),
            Verdict::Fail
        );
        assert_eq!(
            j(
                json!({"outcome": "http", "status": null, "transport_error": "reset", "alive": true})
            ),
            Verdict::Fail
        );
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/agent/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base.as_str()),
            ("127.0.0.1", 8080, "/agent")
        );
        let t = Target::parse("http://[::1]:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(Target::parse("http://example.test").unwrap().port, 80);
        assert!(Target::parse("https://x").is_err());
        assert!(Target::parse("http://x:notaport").is_err());
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = parse_response(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokEXTRA",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (413, &b"ok"[..]));
        assert_eq!(header(&r.headers, "x-a"), Some("b"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }
}

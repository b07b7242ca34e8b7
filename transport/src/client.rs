//! The client: handshake, transmit (bytes or a file, streamed), send_text and
//! health, over HTTP/1.1 or HTTP/2 prior knowledge, or HTTPS with rustls
//! (ALPN h2/http1.1, AVP-HTTP-70). Retries with exponential backoff only when
//! the connection could not be made, never after the peer answered
//! (AVP-HTTP-40, AVP-HTTP-41).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use avp_handshake::{ModelIdentity, WeightsDigest};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::body::{FileBody, OutgoingBody};
use crate::endpoint::{
    AVP_VERSION_HEADER, CONTENT_TYPE_AVP, PATH_CHUNK, PATH_CHUNK_STATUS, PATH_HANDSHAKE,
    PATH_HEALTH, PATH_TEXT, PATH_TRANSMIT,
};
use crate::error::TransportError;
use crate::hello::HandshakeResult;

/// Largest response body the client reads (answers are small JSON objects).
const MAX_RESPONSE: usize = 4 << 20;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent as `AVP-Agent-ID`.
    pub agent_id: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    /// Limit for one whole exchange (connect, upload, answer).
    pub timeout: Duration,
    /// Limit for establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Extra attempts after a connection error.
    pub retries: u32,
    /// Wait before the first retry; doubles each time.
    pub backoff: Duration,
    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1; over
    /// HTTPS, offer only `h2` in ALPN.
    pub http2: bool,
    /// TLS settings for `https://` URLs (trusted CAs, client certificate);
    /// without them an `https://` server cannot be verified.
    pub tls: Option<rustls::ClientConfig>,
    /// Our weights digest, sent in the hello (AVP-HS-20).
    pub weights_digest: Option<WeightsDigest>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            agent_id: "default".to_owned(),
            token: None,
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(200),
            http2: false,
            tls: None,
            weights_digest: None,
        }
    }
}

/// What a request carries.
#[derive(Debug, Clone)]
enum Payload {
    None,
    Bytes(Bytes),
    File(PathBuf),
}

/// A client for one AVP endpoint (`http://host:port[/prefix]`).
#[derive(Debug, Clone)]
pub struct AvpClient {
    base: String,
    config: ClientConfig,
    inner: HttpClient,
}

/// The hyper client of [`AvpClient`] and the router: plain or TLS per URL.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, OutgoingBody>;

/// Builds the hyper client used by [`AvpClient`] and the router.
pub(crate) fn http_client(
    http2: bool,
    connect_timeout: Duration,
    tls: Option<rustls::ClientConfig>,
) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    // https:// URLs go through the TLS layer below.
    http.enforce_http(false);
    let tls = match tls {
        Some(tls) => tls,
        // No trusted CA: https:// fails verification, plain http:// works.
        None => crate::tls::client_config(&crate::tls::ClientTlsFiles::default())
            .unwrap_or_else(|_| empty_client_config()),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .http2_only(http2)
        .http2_adaptive_window(true)
        .pool_idle_timeout(Duration::from_secs(30));
    builder.build(connector)
}

fn empty_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        #[allow(deprecated)] // see tls.rs: ring is chosen for build cost
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
    .unwrap_or_else(|_| unreachable_config())
}

/// ring supports the default protocol versions; kept total rather than panicking.
fn unreachable_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

impl AvpClient {
    /// A client for `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str, config: ClientConfig) -> Result<Self, TransportError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| TransportError::InvalidUrl(url.to_owned()))?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
            return Err(TransportError::InvalidUrl(url.to_owned()));
        }
        let base = url.trim_end_matches('/').to_owned();
        let inner = http_client(config.http2, config.connect_timeout, config.tls.clone());
        Ok(Self {
            base,
            config,
            inner,
        })
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Value, TransportError> {
        self.send(Method::GET, PATH_HEALTH, None, &Payload::None)
            .await
    }

    /// `POST /avp/v2/handshake` with our hello (`agent_id` and weights
    /// digest from the config, written exactly as the SDK's
    /// `json.dumps(hello.to_dict())`); the answer is resolved on our side by
    /// the handshake crate's state machine (AVP-HTTP-30).
    pub async fn handshake(
        &self,
        identity: &ModelIdentity,
    ) -> Result<HandshakeResult, TransportError> {
        let hello = crate::hello::hello_message(
            &self.config.agent_id,
            identity,
            self.config.weights_digest.as_ref(),
        );
        let body = Bytes::from(hello.to_wire().map_err(|err| {
            TransportError::Io(io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))
        })?);
        let answer = self
            .send_raw(
                Method::POST,
                PATH_HANDSHAKE,
                Some("application/json"),
                &Payload::Bytes(body),
            )
            .await?;
        HandshakeResult::from_answer(hello, &answer).map_err(TransportError::BadHandshake)
    }

    /// `POST /avp/v2/transmit` with an encoded message held in memory.
    pub async fn transmit(&self, message: Bytes) -> Result<Value, TransportError> {
        self.send(
            Method::POST,
            PATH_TRANSMIT,
            Some(CONTENT_TYPE_AVP),
            &Payload::Bytes(message),
        )
        .await
    }

    /// `POST /avp/v2/transmit` streaming an encoded message from a file,
    /// without reading it whole into memory.
    pub async fn transmit_file(&self, path: &Path) -> Result<Value, TransportError> {
        self.send(
            Method::POST,
            PATH_TRANSMIT,
            Some(CONTENT_TYPE_AVP),
            &Payload::File(path.to_path_buf()),
        )
        .await
    }

    /// `POST /avp/v2/chunk` with one chunk message (AVP-HTTP-81); no retry here: the chunk client resumes after asking
    /// the receiver what it holds (AVP-HTTP-83).
    pub async fn send_chunk(&self, chunk: OutgoingBody) -> Result<Value, TransportError> {
        let request = self
            .build(
                Method::POST,
                PATH_CHUNK,
                Some(CONTENT_TYPE_AVP),
                &Payload::None,
            )
            .await?
            .map(|_| chunk);
        let (status, body) =
            tokio::time::timeout(self.config.timeout, exchange(&self.inner, request))
                .await
                .map_err(|_| TransportError::Timeout)??;
        interpret(status, &body)
    }

    /// `POST /avp/v2/chunk-status`: which chunks of `context_id` (32 hex
    /// digits) the agent `target_agent_id` holds (AVP-HTTP-83).
    pub async fn chunk_status(
        &self,
        context_id: &str,
        target_agent_id: &str,
    ) -> Result<Value, TransportError> {
        let query = serde_json::json!({
            "context_id": context_id,
            "target_agent_id": target_agent_id,
        });
        self.send(
            Method::POST,
            PATH_CHUNK_STATUS,
            Some("application/json"),
            &Payload::Bytes(Bytes::from(query.to_string())),
        )
        .await
    }

    /// `POST /avp/v2/transmit` with a streamed body (one message, e.g. a
    /// chunked context joined as it is read); not retried: a body is sent once.
    pub async fn transmit_body(&self, body: OutgoingBody) -> Result<Value, TransportError> {
        let request = self
            .build(
                Method::POST,
                PATH_TRANSMIT,
                Some(CONTENT_TYPE_AVP),
                &Payload::None,
            )
            .await?
            .map(|_| body);
        let (status, answer) =
            tokio::time::timeout(self.config.timeout, exchange(&self.inner, request))
                .await
                .map_err(|_| TransportError::Timeout)??;
        interpret(status, &answer)
    }

    /// `POST /avp/v2/text` with a JSON fallback message.
    pub async fn send_text(&self, message: &Value) -> Result<Value, TransportError> {
        self.send_text_bytes(Bytes::from(serde_json::to_vec(message).unwrap_or_default()))
            .await
    }

    /// `POST /avp/v2/text` with a JSON fallback message already serialised
    /// (sent byte for byte; the server checks it is JSON).
    pub async fn send_text_bytes(&self, body: Bytes) -> Result<Value, TransportError> {
        self.send(
            Method::POST,
            PATH_TEXT,
            Some("application/json"),
            &Payload::Bytes(body),
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        payload: &Payload,
    ) -> Result<Value, TransportError> {
        let body = self.send_raw(method, path, content_type, payload).await?;
        serde_json::from_slice(&body)
            .map_err(|_| TransportError::BadResponse("the answer is not JSON".to_owned()))
    }

    /// The 2xx answer's bytes, or the error of [`interpret`].
    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        payload: &Payload,
    ) -> Result<Bytes, TransportError> {
        let mut attempt = 0u32;
        loop {
            let request = self
                .build(method.clone(), path, content_type, payload)
                .await?;
            let outcome =
                match tokio::time::timeout(self.config.timeout, exchange(&self.inner, request))
                    .await
                {
                    Err(_) => Err(TransportError::Timeout),
                    Ok(outcome) => outcome,
                };
            match outcome {
                Err(TransportError::Connect(_)) if attempt < self.config.retries => {
                    let wait = self.config.backoff.saturating_mul(1u32 << attempt.min(16));
                    tokio::time::sleep(wait).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(err) => return Err(err),
                Ok((status, body)) => {
                    interpret(status, &body)?;
                    return Ok(body);
                }
            }
        }
    }

    async fn build(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        payload: &Payload,
    ) -> Result<Request<OutgoingBody>, TransportError> {
        let body: OutgoingBody = match payload {
            Payload::None => Empty::new().map_err(|never| match never {}).boxed(),
            Payload::Bytes(bytes) => Full::new(bytes.clone())
                .map_err(|never| match never {})
                .boxed(),
            Payload::File(path) => {
                let file = tokio::fs::File::open(path).await?;
                let len = file.metadata().await?.len();
                FileBody::new(file.into_std().await, len).boxed()
            }
        };
        let uri = format!("{}{path}", self.base);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri.as_str())
            .header("AVP-Version", AVP_VERSION_HEADER)
            .header("AVP-Agent-ID", header_value(&self.config.agent_id)?);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(token) = &self.config.token {
            builder = builder.header(
                header::AUTHORIZATION,
                header_value(&format!("Bearer {token}"))?,
            );
        }
        builder
            .body(body)
            .map_err(|_| TransportError::InvalidUrl(uri))
    }
}

fn header_value(text: &str) -> Result<HeaderValue, TransportError> {
    HeaderValue::from_str(text).map_err(|_| {
        TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "header value has invalid characters",
        ))
    })
}

/// Sends one request and reads the (bounded) answer.
pub(crate) async fn exchange(
    client: &HttpClient,
    request: Request<OutgoingBody>,
) -> Result<(StatusCode, Bytes), TransportError> {
    let response = client.request(request).await.map_err(|err| {
        let why = error_chain(&err);
        if err.is_connect() {
            TransportError::Connect(why)
        } else {
            TransportError::Connection(why)
        }
    })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|err| TransportError::Connection(format!("reading the answer: {err}")))?
        .to_bytes();
    Ok((status, body))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// 2xx → the JSON body; otherwise a `Status` error with the envelope's kind and message.
fn interpret(status: StatusCode, body: &[u8]) -> Result<Value, TransportError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if status.is_success() {
        return parsed
            .ok_or_else(|| TransportError::BadResponse("the answer is not JSON".to_owned()));
    }
    let kind = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/kind"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("detail")))
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    Err(TransportError::Status {
        status: status.as_u16(),
        kind,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(AvpClient::new("http://127.0.0.1:1", ClientConfig::default()).is_ok());
        assert!(AvpClient::new("https://x:1", ClientConfig::default()).is_ok());
        assert!(AvpClient::new("ftp://x:1", ClientConfig::default()).is_err());
        assert!(AvpClient::new("127.0.0.1:1", ClientConfig::default()).is_err());
        assert!(AvpClient::new("http://x:1/?q", ClientConfig::default()).is_err());
    }

    #[test]
    fn error_answers_keep_kind_and_message() {
        let body = br#"{"success":false,"message":"nope","error":{"kind":"unauthorized","message":"nope"}}"#;
        match interpret(StatusCode::UNAUTHORIZED, body) {
            Err(TransportError::Status {
                status: 401,
                kind: Some(kind),
                message,
            }) => {
                assert_eq!((kind.as_str(), message.as_str()), ("unauthorized", "nope"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            interpret(StatusCode::OK, b"not json"),
            Err(TransportError::BadResponse(_))
        ));
        assert_eq!(
            interpret(StatusCode::OK, br#"{"a":1}"#).ok(),
            Some(serde_json::json!({"a":1}))
        );
    }

    #[tokio::test]
    async fn a_silent_peer_is_a_timeout_and_not_retried() {
        // Accepts connections, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&accepts);
        let holder = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        });
        let config = ClientConfig {
            timeout: Duration::from_millis(200),
            retries: 3,
            ..ClientConfig::default()
        };
        let client = AvpClient::new(&format!("http://{addr}"), config).expect("client");
        let err = client.health().await.expect_err("no answer");
        assert!(matches!(err, TransportError::Timeout), "{err}");
        assert_eq!(
            accepts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "AVP-HTTP-40: no retry"
        );
        holder.abort();
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported() {
        // Bind then drop a listener: the port is (almost certainly) closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port());
        let port = port.expect("free port");
        let config = ClientConfig {
            retries: 2,
            backoff: Duration::from_millis(10),
            ..ClientConfig::default()
        };
        let client = AvpClient::new(&format!("http://127.0.0.1:{port}"), config).expect("client");
        let started = std::time::Instant::now();
        let err = client.health().await.expect_err("nothing listens");
        assert!(matches!(err, TransportError::Connect(_)), "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(30),
            "two backoffs of 10 and 20 ms"
        );
    }
}

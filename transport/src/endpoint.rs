//! The HTTP plumbing every role shares, so the server core, the agent, the
//! router and the client depend on it and never on each other: endpoint
//! paths and headers (AVP-HTTP-3/11), the server settings, who sent a
//! request, the [`Handler`] trait a role implements, and the answers to a
//! body that could not be read or a message the codec refused
//! (AVP-HTTP-12..18).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{LimitedReader, Pace, ReadError, ResponseBody, error_response};
use crate::budget::{Held, Starved};
use crate::wire::{Status, WireError, status_for};

/// `Content-Type` of AVP binary messages (AVP-HTTP-11).
pub const CONTENT_TYPE_AVP: &str = "application/avp+binary";
/// Value of the `AVP-Version` header we send and accept (AVP-HTTP-3).
pub const AVP_VERSION_HEADER: &str = "0.4";
/// Path of the handshake endpoint.
pub const PATH_HANDSHAKE: &str = "/avp/v2/handshake";
/// Path of the binary transmit endpoint.
pub const PATH_TRANSMIT: &str = "/avp/v2/transmit";
/// Path of the JSON fallback endpoint.
pub const PATH_TEXT: &str = "/avp/v2/text";
/// Path of the chunk endpoint: one chunk of a chunked context (AVP-HTTP-81).
pub const PATH_CHUNK: &str = "/avp/v2/chunk";
/// Path of the chunk status endpoint: which chunks a receiver holds (AVP-HTTP-83).
pub const PATH_CHUNK_STATUS: &str = "/avp/v2/chunk-status";
/// Path of the health endpoint (answered by the server core for every role).
pub const PATH_HEALTH: &str = "/health";

/// Settings shared by agents and routers.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, every `/avp/v2/*` request must carry `Authorization: Bearer <token>` (AVP-HTTP-13).
    pub token: Option<String>,
    /// Largest accepted transmit body in bytes (AVP-HTTP-12).
    pub max_body: u64,
    /// Largest accepted JSON body (handshake, text) in bytes.
    pub max_json: u64,
    /// A request body that sends nothing for this long is answered 408; an
    /// HTTP/2 connection is PINGed after this long without traffic and closed
    /// if the PING is not answered within it again (AVP-HTTP-18).
    pub idle_timeout: Duration,
    /// TLS handshake plus the first request head must arrive within this;
    /// later heads on a kept-alive connection too (AVP-HTTP-18).
    pub header_timeout: Duration,
    /// Minimum average body rate in bytes per second after `rate_grace`;
    /// 0 turns the floor off (AVP-HTTP-18).
    pub min_rate: u64,
    /// Time a request has before the rate floor applies.
    pub rate_grace: Duration,
    /// Largest first request head of a connection (AVP-HTTP-19).
    pub max_head: usize,
    /// Serve HTTPS with this rustls configuration (AVP-HTTP-70).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// Default of [`ServerConfig::min_rate`]: 256 KiB/s (about 2 Mbit/s).
pub const DEFAULT_MIN_RATE: u64 = 256 << 10;
/// Default of [`ServerConfig::max_head`]: 64 KiB.
pub const DEFAULT_MAX_HEAD: usize = 64 << 10;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_body: 1 << 30,
            max_json: 4 << 20,
            idle_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            min_rate: DEFAULT_MIN_RATE,
            rate_grace: Duration::from_secs(10),
            max_head: DEFAULT_MAX_HEAD,
            tls: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// The deadlines of a request that started at `started`.
    pub(crate) fn pace(&self, started: Instant) -> Pace {
        Pace::new(started, self.idle_timeout, self.rate_grace, self.min_rate)
    }
}

/// Who sent a request: the peer address and, under mutual TLS, its
/// certificate identity (AVP-HTTP-74); the latter, else the former, is the
/// unit of the budget share (AVP-HTTP-17).
#[derive(Debug, Clone)]
pub struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) client_identity: Option<String>,
}

impl Peer {
    /// The peer's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The SHA-256 identity of its mTLS certificate, when it sent one.
    pub fn client_identity(&self) -> Option<&str> {
        self.client_identity.as_deref()
    }
}

/// An AVP endpoint a [`Handler`] answers. `/health` is not one: the server
/// core answers it the same way for every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /avp/v2/handshake`.
    Handshake,
    /// `POST /avp/v2/transmit`.
    Transmit,
    /// `POST /avp/v2/text`.
    Text,
    /// `POST /avp/v2/chunk` (AVP-HTTP-81).
    Chunk,
    /// `POST /avp/v2/chunk-status` (AVP-HTTP-83).
    ChunkStatus,
}

impl Endpoint {
    /// Whether the body is an AVP binary message (else JSON): decides the
    /// content type and the body limit (AVP-HTTP-4, AVP-HTTP-12).
    pub fn takes_binary(self) -> bool {
        matches!(self, Self::Transmit | Self::Chunk)
    }
}

/// The answer a [`Handler`] is working on.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + 'a>>;

/// What a server does with a request that passed the checks every request
/// goes through (auth, version, content type, declared size; AVP-HTTP-10..15).
/// The agent and the router are the two implementations; the server core
/// knows only this trait.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request to `endpoint`; the body has not been read yet.
    fn handle<'a>(
        &'a self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &'a ServerConfig,
        peer: &'a Peer,
    ) -> HandlerFuture<'a>;
}

/// 413 with the limit that was crossed (AVP-HTTP-12).
pub(crate) fn too_large(limit: u64) -> Response<ResponseBody> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// Reads a whole body bounded by `limit`, taking budget for it when given.
pub(crate) async fn read_bytes(
    body: Incoming,
    limit: u64,
    config: &ServerConfig,
    held: Option<Held>,
) -> Result<bytes::Bytes, Box<Response<ResponseBody>>> {
    let mut reader = LimitedReader::new(body, limit, config.pace(Instant::now()));
    if let Some(held) = held {
        reader = reader.with_budget(held);
    }
    let mut buf = BytesMut::new();
    match reader.read_to_end(&mut buf).await {
        Ok(()) => Ok(buf.freeze()),
        Err(err) => Err(Box::new(read_error_draining(reader, err, limit))),
    }
}

/// Reads the body into `buf` until `parse` completes (the codec's header or
/// routing prefix) and hands the reader back with the result. Every other
/// outcome is already the answer: a stopped body ([`read_error_draining`]), a
/// codec error ([`wire_error`]), or `short(bytes held)` when the body ended first.
pub(crate) async fn read_prefix<T>(
    mut reader: LimitedReader,
    buf: &mut BytesMut,
    parse: impl FnMut(&[u8]) -> Result<Status<T>, WireError>,
    limit: u64,
    short: impl FnOnce(usize) -> Response<ResponseBody>,
) -> Result<(LimitedReader, T), Box<Response<ResponseBody>>> {
    match reader.read_until(buf, parse).await {
        Err(err) => Err(Box::new(read_error_draining(reader, err, limit))),
        Ok(Err(err)) => Err(Box::new(wire_error(&err))),
        Ok(Ok(Status::NeedMore(_))) => Err(Box::new(short(buf.len()))),
        Ok(Ok(Status::Complete(value))) => Ok((reader, value)),
    }
}

/// [`read_error`], and a 413 keeps reading the rest (bounded) so the client
/// sees the answer instead of a reset.
pub(crate) fn read_error_draining(
    reader: LimitedReader,
    err: ReadError,
    limit: u64,
) -> Response<ResponseBody> {
    if matches!(err, ReadError::TooLarge) {
        reader.drain_later();
    }
    read_error(err, limit)
}

/// The answer to a body that stopped: 413, 408, 503 or 400 (AVP-HTTP-12/17/18).
pub(crate) fn read_error(err: ReadError, limit: u64) -> Response<ResponseBody> {
    match err {
        ReadError::TooLarge => too_large(limit),
        ReadError::Idle => error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body stalled",
        ),
        ReadError::TooSlow => error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request body arrived slower than the server's minimum rate",
        ),
        ReadError::Starved(Starved::PeerShare) => error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "this peer's other requests held its whole share of the memory budget until the deadline",
        ),
        ReadError::Starved(Starved::Budget) => {
            let mut response = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the server's memory budget stayed full until the request's deadline",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            response
        }
        ReadError::Broken(why) => error_response(
            StatusCode::BAD_REQUEST,
            "truncated",
            &format!("the request body broke off: {why}"),
        ),
    }
}

/// A codec error as an answer: its kind and message, 400 or 413 (AVP-HTTP-14).
pub(crate) fn wire_error(err: &WireError) -> Response<ResponseBody> {
    error_response(status_for(err), err.kind().as_str(), err.message())
}

//! A router: forwards each transmit to the agent named by the message's
//! `target_agent_id`, reading only the header and metadata; the tensor bytes
//! stream through frame by frame and are never buffered whole or decoded
//! (AVP-HTTP-50..56). An upstream that has the whole request and does not
//! answer within the upstream timeout gets the client a 504 (AVP-HTTP-56).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use avp_json as py_json;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::{
    BodySignals, LimitedReader, OutgoingBody, PrefixedBody, ResponseBody, error_response,
};
use crate::client::{HttpClient, exchange, http_client};
use crate::endpoint::{
    Endpoint, Handler, HandlerFuture, PATH_CHUNK, PATH_CHUNK_STATUS, PATH_HANDSHAKE, PATH_TEXT,
    PATH_TRANSMIT, Peer, ServerConfig, read_bytes, read_prefix, too_large,
};
use crate::error::TransportError;
use crate::wire::{MAX_METADATA, header_status, routing_status};

/// Largest metadata block the router reads before choosing a route.
pub const MAX_ROUTED_METADATA: u32 = MAX_METADATA;

/// Request headers passed on to the destination unchanged (AVP-HTTP-52).
const FORWARDED: [&str; 5] = [
    "content-type",
    "content-length",
    "avp-version",
    "avp-agent-id",
    "authorization",
];

/// Forwards messages to agents by id.
pub struct Router {
    routes: HashMap<String, String>,
    client: HttpClient,
    upstream_timeout: Duration,
}

/// Default of [`Router::with_upstream_timeout`]: 60 s.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

impl Router {
    /// A router with `agent id → base URL` routes (`http://host:port[/prefix]`).
    pub fn new(routes: HashMap<String, String>) -> Self {
        let routes = routes
            .into_iter()
            .map(|(id, url)| (id, url.trim_end_matches('/').to_owned()))
            .collect();
        Self {
            routes,
            client: http_client(false, Duration::from_secs(10), None),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }

    /// Speaks HTTPS to `https://` routes with this client configuration
    /// (trusted CAs and, for mTLS upstreams, the router's own certificate).
    pub fn with_upstream_tls(mut self, tls: rustls::ClientConfig) -> Self {
        self.client = http_client(false, Duration::from_secs(10), Some(tls));
        self
    }

    /// How long an upstream may take to answer once it has the whole
    /// request (for JSON bodies: from the start) before the client gets
    /// 504 `upstream_timeout` (AVP-HTTP-56).
    pub fn with_upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    /// A transmit, or a chunk (AVP-HTTP-87): both are AVP messages routed by
    /// their metadata and forwarded to the same `path` upstream.
    async fn transmit(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
        path: &'static str,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let reader = LimitedReader::new(body, config.max_body, config.pace(Instant::now()));
        let mut prefix = BytesMut::new();
        let short = |_| {
            error_response(
                StatusCode::BAD_REQUEST,
                "truncated",
                "body shorter than the 12-byte header",
            )
        };
        // A codec error includes metadata over MAX_ROUTED_METADATA (limit_exceeded, 413).
        let (reader, header) =
            match read_prefix(reader, &mut prefix, header_status, config.max_body, short).await {
                Ok(read) => read,
                Err(answer) => return *answer,
            };
        if header.message_len() > config.max_body {
            reader.drain_later();
            return too_large(config.max_body);
        }
        // The prefix the codec needs is the header and metadata; the tensor
        // bytes stream on without being held (AVP-HTTP-51).
        let short = |_| {
            error_response(
                StatusCode::BAD_REQUEST,
                "truncated",
                "body ends inside the metadata",
            )
        };
        let (reader, routing) =
            match read_prefix(reader, &mut prefix, routing_status, config.max_body, short).await {
                Ok(read) => read,
                Err(answer) => return *answer,
            };
        let Some(base) = self.routes.get(&routing.target_agent_id) else {
            return unknown_target(&routing.target_agent_id);
        };
        let signals = Arc::new(BodySignals::default());
        let (rest, received, pace) = reader.into_parts();
        let body = PrefixedBody::new(
            prefix.freeze(),
            rest,
            received,
            config.max_body,
            pace,
            Arc::clone(&signals),
        );
        let forward = self.forward(&parts, base, path, body.boxed());
        // The upstream's time starts once it has the whole body: before that
        // the client's own deadlines apply (AVP-HTTP-18, AVP-HTTP-56).
        let upstream_silent = async {
            signals.done.notified().await;
            tokio::time::sleep(self.upstream_timeout).await;
        };
        let outcome = tokio::select! {
            outcome = forward => outcome,
            () = upstream_silent => Err(TransportError::Timeout),
        };
        if signals.over_limit.load(Ordering::SeqCst) {
            return too_large(config.max_body);
        }
        if signals.too_slow.load(Ordering::SeqCst) {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body arrived slower than the minimum rate or stalled",
            );
        }
        relay(outcome, &routing.target_agent_id)
    }

    /// A JSON fallback message, or a chunk status query (AVP-HTTP-87): both
    /// name their destination in a `target_agent_id` member.
    async fn text(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
        path: &'static str,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = match read_bytes(body, config.max_json, config, None).await {
            Ok(bytes) => bytes,
            Err(response) => return *response,
        };
        // Python's JSON grammar, as the agent reads it: NaN, Infinity and
        // 1e400 from the SDK pass through (issue 15).
        let value = match py_json::parse(&bytes) {
            Ok(value) => value,
            // The agent would refuse it too (AVP-LIM-7), with this kind.
            Err(err) if err.kind == py_json::JsonErrorKind::TooDeep => {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "limit_exceeded",
                    &format!("body is nested deeper than {} levels", py_json::MAX_DEPTH),
                );
            }
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "invalid_json", "body is not JSON");
            }
        };
        let target = value
            .as_object()
            .and_then(|members| members.get("target_agent_id"))
            .and_then(py_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(base) = self.routes.get(&target) else {
            return unknown_target(&target);
        };
        // The original bytes go on, not a re-serialisation.
        let body = Full::new(bytes).map_err(|never| match never {}).boxed();
        relay(self.forward_timed(&parts, base, path, body).await, &target)
    }

    /// A hello names its sender, not its destination: with exactly one route
    /// the router forwards it there, otherwise there is nothing to answer with.
    async fn handshake(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = match read_bytes(body, config.max_json, config, None).await {
            Ok(bytes) => bytes,
            Err(response) => return *response,
        };
        let mut only = self.routes.iter();
        let (Some((target, base)), None) = (only.next(), only.next()) else {
            return error_response(
                StatusCode::NOT_FOUND,
                "unknown_target",
                "a router with several routes cannot answer a handshake; handshake with the agent directly",
            );
        };
        let body = Full::new(bytes).map_err(|never| match never {}).boxed();
        relay(
            self.forward_timed(&parts, base, PATH_HANDSHAKE, body).await,
            target,
        )
    }

    /// [`Router::forward`] of a small body that is sent at once: the whole
    /// exchange is bounded by the upstream timeout.
    async fn forward_timed(
        &self,
        parts: &http::request::Parts,
        base: &str,
        path: &str,
        body: OutgoingBody,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        tokio::time::timeout(self.upstream_timeout, self.forward(parts, base, path, body))
            .await
            .unwrap_or(Err(TransportError::Timeout))
    }

    async fn forward(
        &self,
        parts: &http::request::Parts,
        base: &str,
        path: &str,
        body: OutgoingBody,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(format!("{base}{path}"));
        for name in FORWARDED {
            if let Some(value) = parts.headers.get(name) {
                builder = builder.header(name, value.clone());
            }
        }
        let request = builder
            .body(body)
            .map_err(|_| TransportError::InvalidUrl(base.to_owned()))?;
        exchange(&self.client, request).await
    }
}

impl Handler for Router {
    fn handle<'a>(
        &'a self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &'a ServerConfig,
        _peer: &'a Peer,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            match endpoint {
                Endpoint::Transmit => self.transmit(request, config, PATH_TRANSMIT).await,
                Endpoint::Chunk => self.transmit(request, config, PATH_CHUNK).await,
                Endpoint::Text => self.text(request, config, PATH_TEXT).await,
                Endpoint::ChunkStatus => self.text(request, config, PATH_CHUNK_STATUS).await,
                Endpoint::Handshake => self.handshake(request, config).await,
            }
        })
    }
}

fn unknown_target(target: &str) -> Response<ResponseBody> {
    error_response(
        StatusCode::NOT_FOUND,
        "unknown_target",
        &format!("no route to agent {target:?}"),
    )
}

/// The destination's answer goes back unchanged; a destination we cannot
/// reach is a 502 (our side's problem, not the client's input).
fn relay(
    outcome: Result<(StatusCode, Bytes), TransportError>,
    target: &str,
) -> Response<ResponseBody> {
    match outcome {
        Ok((status, body)) => {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(TransportError::Timeout) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            &format!("agent {target:?} did not answer in time"),
        ),
        Err(err) => error_response(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            &format!("forwarding to {target:?} failed: {err}"),
        ),
    }
}

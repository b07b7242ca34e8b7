//! A router: forwards each transmit to the agent named by the message's
//! `target_agent_id`, reading only the header and metadata; the tensor bytes
//! stream through frame by frame and are never buffered whole or decoded
//! (AVP-HTTP-50..54).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use crate::agent::{read_bytes, read_error, wire_error};
use crate::body::{LimitedReader, OutgoingBody, PrefixedBody, ResponseBody, error_response};
use crate::client::{exchange, http_client};
use crate::error::TransportError;
use crate::server::{Endpoint, PATH_HANDSHAKE, PATH_TEXT, PATH_TRANSMIT, ServerConfig, too_large};
use crate::wire::{HEADER_LEN, MAX_METADATA, peek_header, peek_routing};

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
    client: Client<HttpConnector, OutgoingBody>,
}

impl Router {
    /// A router with `agent id → base URL` routes (`http://host:port[/prefix]`).
    pub fn new(routes: HashMap<String, String>) -> Self {
        let routes = routes
            .into_iter()
            .map(|(id, url)| (id, url.trim_end_matches('/').to_owned()))
            .collect();
        Self {
            routes,
            client: http_client(false, Duration::from_secs(10)),
        }
    }

    pub(crate) async fn handle(
        &self,
        endpoint: Endpoint,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        match endpoint {
            Endpoint::Transmit => self.transmit(request, config).await,
            Endpoint::Text => self.text(request, config).await,
            Endpoint::Handshake => self.handshake(request, config).await,
            Endpoint::Health => {
                error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
            }
        }
    }

    async fn transmit(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let mut reader = LimitedReader::new(body, config.max_body, config.idle_timeout);
        let mut prefix = BytesMut::new();
        if let Err(err) = reader.fill_to(&mut prefix, HEADER_LEN).await {
            return read_error(err, config.max_body);
        }
        let header = match peek_header(&prefix) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "truncated",
                    "body shorter than the 12-byte header",
                );
            }
            // Includes metadata over MAX_ROUTED_METADATA (limit_exceeded, 413).
            Err(err) => return wire_error(&err),
        };
        if header.message_len() > config.max_body {
            return too_large(config.max_body);
        }
        let meta_end = header.metadata_end();
        if let Err(err) = reader.fill_to(&mut prefix, meta_end).await {
            return read_error(err, config.max_body);
        }
        if prefix.len() < meta_end {
            return error_response(
                StatusCode::BAD_REQUEST,
                "truncated",
                "body ends inside the metadata",
            );
        }
        let routing = match peek_routing(&prefix) {
            Ok(routing) => routing,
            Err(err) => return wire_error(&err),
        };
        let Some(base) = self.routes.get(&routing.target_agent_id) else {
            return unknown_target(&routing.target_agent_id);
        };
        let over_limit = Arc::new(AtomicBool::new(false));
        let (rest, received) = reader.into_parts();
        let body = PrefixedBody::new(
            prefix.freeze(),
            rest,
            received,
            config.max_body,
            Arc::clone(&over_limit),
        );
        let outcome = self
            .forward(&parts, base, PATH_TRANSMIT, body.boxed())
            .await;
        if over_limit.load(Ordering::SeqCst) {
            return too_large(config.max_body);
        }
        relay(outcome, &routing.target_agent_id)
    }

    async fn text(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = match read_bytes(body, config.max_json, config).await {
            Ok(bytes) => bytes,
            Err(response) => return *response,
        };
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            return error_response(StatusCode::BAD_REQUEST, "invalid_json", "body is not JSON");
        };
        let target = value
            .get("target_agent_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let Some(base) = self.routes.get(&target) else {
            return unknown_target(&target);
        };
        // The original bytes go on, not a re-serialisation.
        let body = Full::new(bytes).map_err(|never| match never {}).boxed();
        relay(self.forward(&parts, base, PATH_TEXT, body).await, &target)
    }

    /// A hello names its sender, not its destination: with exactly one route
    /// the router forwards it there, otherwise there is nothing to answer with.
    async fn handshake(
        &self,
        request: Request<Incoming>,
        config: &ServerConfig,
    ) -> Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let bytes = match read_bytes(body, config.max_json, config).await {
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
            self.forward(&parts, base, PATH_HANDSHAKE, body).await,
            target,
        )
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
        Err(err) => error_response(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            &format!("forwarding to {target:?} failed: {err}"),
        ),
    }
}

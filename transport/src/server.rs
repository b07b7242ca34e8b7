//! The HTTP server shared by agents and routers: one port for HTTP/1.1 and
//! HTTP/2 prior knowledge (AVP-HTTP-2), endpoint routing and the checks every
//! request goes through before its body is read (AVP-HTTP-10..15), and a
//! graceful shutdown that lets in-flight requests finish (AVP-HTTP-16).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::body::{ResponseBody, error_response, json_response};
use crate::router::Router;

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
/// Path of the health endpoint.
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
    /// A request body that sends nothing for this long is answered 408.
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_body: 1 << 30,
            max_json: 4 << 20,
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What the server does with authorised requests.
#[derive(Clone)]
pub enum Role {
    /// An agent endpoint that stores what it receives.
    Agent(Arc<Agent>),
    /// A router that forwards transmits to other agents.
    Router(Arc<Router>),
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    role: Role,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(addr: SocketAddr, config: ServerConfig, role: Role) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared { config, role }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and waits (up
    /// to the grace period) for in-flight requests to finish.
    pub async fn run<F: Future<Output = ()>>(self, shutdown: F) -> io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder.http2().max_concurrent_streams(256);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        // Out of descriptors and the like: back off, keep serving.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = Arc::clone(&self.shared);
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(request, &shared).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        // A connection error is the peer's business (reset, bad framing).
                        let _ = connection.await;
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = tokio::time::timeout(self.shared.config.shutdown_grace, graceful.shutdown()).await;
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Health,
    Handshake,
    Transmit,
    Text,
}

async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<ResponseBody> {
    let endpoint = match request.uri().path() {
        PATH_HEALTH => Endpoint::Health,
        PATH_HANDSHAKE => Endpoint::Handshake,
        PATH_TRANSMIT => Endpoint::Transmit,
        PATH_TEXT => Endpoint::Text,
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no endpoint at {other}"),
            );
        }
    };
    let allowed = if endpoint == Endpoint::Health {
        Method::GET
    } else {
        Method::POST
    };
    if request.method() != allowed {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!(
                "{} {} is not allowed; use {allowed}",
                request.method(),
                request.uri().path()
            ),
        );
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static(if endpoint == Endpoint::Health {
                "GET"
            } else {
                "POST"
            }),
        );
        return response;
    }
    if endpoint == Endpoint::Health {
        return json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    if let Err(response) = check_request(request.headers(), endpoint, &shared.config) {
        return *response;
    }
    match &shared.role {
        Role::Agent(agent) => agent.handle(endpoint, request, &shared.config).await,
        Role::Router(router) => router.handle(endpoint, request, &shared.config).await,
    }
}

/// Auth, version, content type and declared length, in that order: an
/// unauthenticated client learns nothing else (AVP-HTTP-13).
fn check_request(
    headers: &HeaderMap,
    endpoint: Endpoint,
    config: &ServerConfig,
) -> Result<(), Box<Response<ResponseBody>>> {
    if let Some(token) = &config.token {
        if !bearer_matches(headers, token) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(Box::new(response));
        }
    }
    if let Some(version) = headers.get("avp-version") {
        if version.as_bytes().trim_ascii() != AVP_VERSION_HEADER.as_bytes() {
            return Err(Box::new(error_response(
                StatusCode::BAD_REQUEST,
                "unsupported_version",
                &format!(
                    "AVP-Version {:?} is not supported; this server speaks {AVP_VERSION_HEADER}",
                    String::from_utf8_lossy(version.as_bytes())
                ),
            )));
        }
    }
    let wanted = if endpoint == Endpoint::Transmit {
        CONTENT_TYPE_AVP
    } else {
        "application/json"
    };
    if !media_type_is(headers, wanted) {
        return Err(Box::new(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!("Content-Type must be {wanted}"),
        )));
    }
    let limit = if endpoint == Endpoint::Transmit {
        config.max_body
    } else {
        config.max_json
    };
    if let Some(declared) = content_length(headers) {
        if declared > limit {
            return Err(Box::new(too_large(limit)));
        }
    }
    Ok(())
}

pub(crate) fn too_large(limit: u64) -> Response<ResponseBody> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("request body exceeds the limit of {limit} bytes"),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `type/subtype` compared case-insensitively, parameters ignored.
fn media_type_is(headers: &HeaderMap, wanted: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let (scheme, rest) = value.split_at(value.len().min(7));
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(rest.trim_ascii(), token.as_bytes())
}

/// Compares without an early exit, so the time taken does not reveal how
/// many leading bytes were right (only whether the lengths differ).
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        assert!(bearer_matches(
            &headers(&[("authorization", "Bearer s3cret")]),
            "s3cret"
        ));
        assert!(bearer_matches(
            &headers(&[("authorization", "bearer s3cret ")]),
            "s3cret"
        ));
        assert!(!bearer_matches(
            &headers(&[("authorization", "Bearer s3cres")]),
            "s3cret"
        ));
        assert!(!bearer_matches(
            &headers(&[("authorization", "Basic s3cret")]),
            "s3cret"
        ));
        assert!(!bearer_matches(&headers(&[]), "s3cret"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn media_types_ignore_case_and_parameters() {
        assert!(media_type_is(
            &headers(&[("content-type", "Application/AVP+binary; x=1")]),
            CONTENT_TYPE_AVP
        ));
        assert!(!media_type_is(
            &headers(&[("content-type", "text/plain")]),
            CONTENT_TYPE_AVP
        ));
        assert!(!media_type_is(&headers(&[]), "application/json"));
    }
}

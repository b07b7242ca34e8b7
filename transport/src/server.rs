//! The HTTP server core shared by agents and routers (it knows only the
//! [`Handler`] trait, not the roles): one port for HTTP/1.1 and
//! HTTP/2 prior knowledge (AVP-HTTP-2), endpoint routing and the checks every
//! request goes through before its body is read (AVP-HTTP-10..15), and a
//! graceful shutdown that lets in-flight requests finish (AVP-HTTP-16).
//!
//! Each connection first passes TLS (when configured, AVP-HTTP-70) and a
//! bounded read of its first request head (AVP-HTTP-18/19) before hyper sees
//! it, so neither a silent peer nor a huge head costs more than the header
//! timeout and the head limit.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::body::{
    LINGER_BYTES, LINGER_TIME, ResponseBody, drain_later, error_json, error_response, json_bytes,
    json_response,
};
use crate::endpoint::{
    AVP_VERSION_HEADER, CONTENT_TYPE_AVP, Endpoint, Handler, PATH_CHUNK, PATH_CHUNK_STATUS,
    PATH_HANDSHAKE, PATH_HEALTH, PATH_TEXT, PATH_TRANSMIT, Peer, ServerConfig, too_large,
};
use crate::framing::{HeadScan, scan_head};

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    config: ServerConfig,
    handler: Arc<dyn Handler>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]);
    /// `handler` (an [`Agent`](crate::Agent) or a [`Router`](crate::Router))
    /// answers the requests that pass the common checks.
    pub async fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared { config, handler }),
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
            .header_read_timeout(self.shared.config.header_timeout);
        // Large messages: let flow-control windows grow with the measured
        // bandwidth-delay product instead of the 64 KiB default.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(self.shared.config.max_head).unwrap_or(u32::MAX))
            .adaptive_window(true)
            // An HTTP/2 connection outlives its requests; a peer that stops
            // answering PINGs (silent after the preface, or gone) is closed
            // after two idle timeouts, so no phase of a connection is unbounded.
            .keep_alive_interval(Some(self.shared.config.idle_timeout))
            .keep_alive_timeout(self.shared.config.idle_timeout);
        let tls = self
            .shared
            .config
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, addr) = match accepted {
                        Ok(accepted) => accepted,
                        // Out of descriptors and the like: back off, keep serving.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    tokio::spawn(serve_connection(
                        stream,
                        addr,
                        Arc::clone(&self.shared),
                        builder.clone(),
                        tls.clone(),
                        graceful.watcher(),
                    ));
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = tokio::time::timeout(self.shared.config.shutdown_grace, graceful.shutdown()).await;
        Ok(())
    }
}

/// Any byte stream a connection can run over (plain TCP or TLS).
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// TLS, then the first head, then hyper; a peer that fails the first two
/// within the header timeout is dropped without costing anything else.
async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + shared.config.header_timeout;
    let (io, client_identity): (Box<dyn Io>, Option<String>) = match tls {
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(|leaf| crate::tls::client_identity(leaf));
                (Box::new(tls), identity)
            }
            // A failed or slow TLS handshake is the peer's problem.
            _ => return,
        },
        None => (Box::new(stream), None),
    };
    let Some((io, head)) = read_first_head(io, shared.config.max_head, deadline).await else {
        return;
    };
    let peer = Arc::new(Peer {
        ip: addr.ip(),
        client_identity,
    });
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let peer = Arc::clone(&peer);
        async move { Ok::<_, Infallible>(handle(request, &shared, &peer).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(Rewind { head, io }), service);
    // A connection error is the peer's business (reset, bad framing).
    let _ = watcher.watch(connection.into_owned()).await;
}

/// Reads until the first request head is complete (AVP-HTTP-19): a head
/// over `limit` is answered 431 with the JSON envelope; a peer that stays
/// silent past `deadline` or closes is dropped. Returns the bytes read, to
/// be replayed to hyper.
async fn read_first_head(
    mut io: Box<dyn Io>,
    limit: usize,
    deadline: Instant,
) -> Option<(Box<dyn Io>, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        match scan_head(&buf, limit) {
            HeadScan::Complete(_) => return Some((io, buf.freeze())),
            HeadScan::TooLarge => {
                refuse_head(io, limit).await;
                return None;
            }
            HeadScan::Partial => {}
        }
        let room = limit
            .saturating_add(1)
            .saturating_sub(buf.len())
            .min(chunk.len());
        let window = chunk.get_mut(..room).unwrap_or_default();
        match tokio::time::timeout_at(deadline, io.read(window)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(window.get(..n).unwrap_or_default()),
            // Closed, broken or silent before a whole head: nothing to answer.
            _ => return None,
        }
    }
}

/// Writes the 431 answer, then reads and discards (bounded) what the peer is
/// still sending, so closing does not reset the connection before the
/// client has read the answer.
async fn refuse_head(mut io: Box<dyn Io>, limit: usize) {
    let body = json_bytes(&error_json(
        "header_too_large",
        &format!("the request head exceeds {limit} bytes"),
    ));
    let head = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let written = async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(&body).await?;
        io.flush().await?;
        io.shutdown().await
    };
    if tokio::time::timeout(LINGER_TIME, written).await.is_err() {
        return;
    }
    linger(&mut io).await;
}

async fn linger(io: &mut Box<dyn Io>) {
    let mut sink = tokio::io::sink();
    let mut limited = (&mut *io).take(LINGER_BYTES);
    let _ = tokio::time::timeout(LINGER_TIME, tokio::io::copy(&mut limited, &mut sink)).await;
}

/// The first head's bytes, then the connection.
struct Rewind {
    head: Bytes,
    io: Box<dyn Io>,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.has_remaining() {
            let n = self.head.len().min(buf.remaining());
            let part = self.head.split_to(n);
            buf.put_slice(&part);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Where a request goes: the health probe the core answers itself, or an
/// AVP endpoint the role's handler answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Avp(Endpoint),
}

async fn handle(
    request: Request<Incoming>,
    shared: &Shared,
    peer: &Peer,
) -> Response<ResponseBody> {
    // Later heads on a kept-alive connection skip read_first_head; within
    // hyper's own buffer they still get the JSON 431 (AVP-HTTP-19).
    let head_len: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + request.uri().to_string().len();
    if head_len > shared.config.max_head {
        drain_later(request.into_body());
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
            &format!("the request head exceeds {} bytes", shared.config.max_head),
        );
    }
    let route = match request.uri().path() {
        PATH_HEALTH => Route::Health,
        PATH_HANDSHAKE => Route::Avp(Endpoint::Handshake),
        PATH_TRANSMIT => Route::Avp(Endpoint::Transmit),
        PATH_TEXT => Route::Avp(Endpoint::Text),
        PATH_CHUNK => Route::Avp(Endpoint::Chunk),
        PATH_CHUNK_STATUS => Route::Avp(Endpoint::ChunkStatus),
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no endpoint at {other}"),
            );
        }
    };
    let (allowed, allow_header) = match route {
        Route::Health => (Method::GET, "GET"),
        Route::Avp(_) => (Method::POST, "POST"),
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
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow_header));
        return response;
    }
    // Health stays open for liveness probes, whatever the role (AVP-HTTP-13).
    let Route::Avp(endpoint) = route else {
        let ok = avp_json::Object::new().with("status", "ok");
        return json_response(StatusCode::OK, &ok.into());
    };
    if let Err(response) = check_request(request.headers(), endpoint, &shared.config) {
        drain_later(request.into_body());
        return *response;
    }
    shared
        .handler
        .handle(endpoint, request, &shared.config, peer)
        .await
}

/// Auth, version, content type and declared length, in that order: an
/// unauthenticated client learns nothing else (AVP-HTTP-13).
fn check_request(
    headers: &HeaderMap,
    endpoint: Endpoint,
    config: &ServerConfig,
) -> Result<(), Box<Response<ResponseBody>>> {
    if let Some(token) = &config.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !crate::framing::bearer_matches(given, token) {
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
    let wanted = if endpoint.takes_binary() {
        CONTENT_TYPE_AVP
    } else {
        "application/json"
    };
    let given = headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    if !crate::framing::media_type_is(given, wanted) {
        return Err(Box::new(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &format!("Content-Type must be {wanted}"),
        )));
    }
    let limit = if endpoint.takes_binary() {
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

fn content_length(headers: &HeaderMap) -> Option<u64> {
    crate::framing::content_length(headers.get(header::CONTENT_LENGTH)?.as_bytes())
}

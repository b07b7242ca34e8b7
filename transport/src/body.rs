//! Request and response bodies: bounded reading with an idle timeout, a body
//! that replays a peeked prefix then streams the rest (the router), a body that
//! streams a file (the client), and the JSON envelopes (AVP-HTTP-20).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, ReadBuf};

/// The body type of every response the server writes.
pub type ResponseBody = Full<Bytes>;
/// The body type of every request the client and the router send.
pub type OutgoingBody = BoxBody<Bytes, io::Error>;

/// Why reading a request body stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// More bytes than the limit arrived (AVP-HTTP-12).
    TooLarge,
    /// No bytes for longer than the idle timeout.
    Idle,
    /// The connection broke or the framing was invalid (client went away).
    Broken(String),
}

/// Reads a request body frame by frame, counting every byte against a limit
/// before keeping it, so memory never exceeds the limit whatever the client
/// claims (AVP-HTTP-12).
pub(crate) struct LimitedReader {
    body: Incoming,
    limit: u64,
    received: u64,
    idle: Duration,
}

impl LimitedReader {
    pub(crate) fn new(body: Incoming, limit: u64, idle: Duration) -> Self {
        Self {
            body,
            limit,
            received: 0,
            idle,
        }
    }

    /// The next data chunk, or `None` at the end of the body.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(ReadError::Idle),
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) => return Err(ReadError::Broken(err.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.received = self.received.saturating_add(data.len() as u64);
            if self.received > self.limit {
                return Err(ReadError::TooLarge);
            }
            return Ok(Some(data));
        }
    }

    /// Appends chunks to `buf` until it holds at least `want` bytes or the body ends.
    pub(crate) async fn fill_to(
        &mut self,
        buf: &mut BytesMut,
        want: usize,
    ) -> Result<(), ReadError> {
        while buf.len() < want {
            match self.next_chunk().await? {
                Some(chunk) => buf.extend_from_slice(&chunk),
                None => break,
            }
        }
        Ok(())
    }

    /// Reads the rest of the body into `buf`.
    pub(crate) async fn read_to_end(&mut self, buf: &mut BytesMut) -> Result<(), ReadError> {
        while let Some(chunk) = self.next_chunk().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// Gives back the unread part of the body, with the bytes already counted.
    pub(crate) fn into_parts(self) -> (Incoming, u64) {
        (self.body, self.received)
    }
}

/// A request body for the router: first the bytes it peeked at, then the rest
/// of the incoming body, frame by frame, never buffered whole (AVP-HTTP-51).
/// Counts bytes against the limit and raises `over_limit` when it is crossed.
pub(crate) struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: Incoming,
    received: u64,
    limit: u64,
    over_limit: Arc<AtomicBool>,
}

impl PrefixedBody {
    pub(crate) fn new(
        prefix: Bytes,
        rest: Incoming,
        received: u64,
        limit: u64,
        over_limit: Arc<AtomicBool>,
    ) -> Self {
        Self {
            prefix: Some(prefix),
            rest,
            received,
            limit,
            over_limit,
        }
    }
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            if !prefix.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
        }
        match ready!(Pin::new(&mut self.rest).poll_frame(cx)) {
            None => Poll::Ready(None),
            Some(Err(err)) => Poll::Ready(Some(Err(io::Error::other(err)))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    if self.received > self.limit {
                        self.over_limit.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(io::Error::other(
                            "request body over the limit",
                        ))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        // Upper first: SizeHint asserts lower <= upper on every setter.
        let mut hint = SizeHint::new();
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(rest.lower().saturating_add(extra));
        hint
    }
}

/// Streams an open file as a request body in 256 KiB frames, with an exact
/// size hint (so HTTP/1.1 sends a Content-Length).
pub(crate) struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Box<[u8]>,
}

const FILE_CHUNK: usize = 256 * 1024;

impl FileBody {
    pub(crate) fn new(file: tokio::fs::File, len: u64) -> Self {
        Self {
            file,
            remaining: len,
            buf: vec![0u8; FILE_CHUNK].into_boxed_slice(),
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut read_buf = ReadBuf::new(&mut this.buf);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut read_buf))?;
        let filled = read_buf.filled();
        if filled.is_empty() {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            ))));
        }
        let take = filled
            .len()
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        let chunk = Bytes::copy_from_slice(filled.get(..take).unwrap_or(filled));
        this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A JSON response with the given status.
pub(crate) fn json_response(
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The error envelope (AVP-HTTP-20): the SDK's `{"success": false, "message"}`
/// plus a machine-readable `error.kind`.
pub(crate) fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<ResponseBody> {
    json_response(
        status,
        &serde_json::json!({
            "success": false,
            "message": message,
            "error": {"kind": kind, "message": message},
        }),
    )
}

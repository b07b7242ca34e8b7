//! Request and response bodies: bounded reading with an idle timeout, a body
//! that replays a peeked prefix then streams the rest (the router), a body that
//! streams a file (the client), and the JSON envelopes (AVP-HTTP-20).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use avp_codec::Status;
use avp_json::{Object, Value, WriteOptions};

use crate::budget::{Held, Starved};

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
    /// The body arrived slower than the minimum rate (AVP-HTTP-18).
    TooSlow,
    /// No budget for the bytes before the deadline (AVP-HTTP-17).
    Starved(Starved),
    /// The connection broke or the framing was invalid (client went away).
    Broken(String),
}

/// The deadlines of one request (AVP-HTTP-18): each read waits at most the
/// idle time, and by `started + grace + n / min_rate` at least `n` bytes must
/// have arrived, so a whole body of `N` bytes has `grace + N / min_rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    started: Instant,
    idle: Duration,
    grace: Duration,
    /// Bytes per second; 0 turns the rate floor off.
    min_rate: u64,
}

impl Pace {
    pub(crate) fn new(started: Instant, idle: Duration, grace: Duration, min_rate: u64) -> Self {
        Self {
            started,
            idle,
            grace,
            min_rate,
        }
    }

    /// When the byte after the first `received` must have arrived, and the
    /// error to report if it has not.
    pub(crate) fn next_deadline(&self, received: u64) -> (Instant, ReadError) {
        let idle = Instant::now() + self.idle;
        if self.min_rate == 0 {
            return (idle, ReadError::Idle);
        }
        let allowed = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        let floor = self
            .started
            .checked_add(self.grace.saturating_add(allowed))
            .unwrap_or(idle);
        if floor < idle {
            (floor, ReadError::TooSlow)
        } else {
            (idle, ReadError::Idle)
        }
    }
}

/// Reads a request body frame by frame, counting every byte against a limit
/// before keeping it, so memory never exceeds the limit whatever the client
/// claims (AVP-HTTP-12), taking budget for bytes as they arrive
/// (AVP-HTTP-17) and holding the client to its deadlines (AVP-HTTP-18).
pub(crate) struct LimitedReader {
    body: Incoming,
    limit: u64,
    received: u64,
    pace: Pace,
    budget: Option<Held>,
}

impl LimitedReader {
    pub(crate) fn new(body: Incoming, limit: u64, pace: Pace) -> Self {
        Self {
            body,
            limit,
            received: 0,
            pace,
            budget: None,
        }
    }

    /// Takes budget for every byte kept (given back when the reader is dropped).
    pub(crate) fn with_budget(mut self, held: Held) -> Self {
        self.budget = Some(held);
        self
    }

    /// The next data chunk, or `None` at the end of the body.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            let (deadline, late) = self.pace.next_deadline(self.received);
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Err(late),
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
            if let Some(held) = &mut self.budget {
                // Waiting here stops reading: TCP pushes back on the sender.
                let (deadline, _) = self.pace.next_deadline(self.received);
                held.take(data.len() as u64, deadline)
                    .await
                    .map_err(ReadError::Starved)?;
            }
            return Ok(Some(data));
        }
    }

    /// Reads until `parse` over `buf` is complete or fails: each
    /// `NeedMore(n)` the codec answers reads at least `n` more bytes, so the
    /// codec, not the caller, knows how much a header or metadata takes. A
    /// body that ends first gives back the last `NeedMore` (truncated).
    pub(crate) async fn read_until<T, E>(
        &mut self,
        buf: &mut BytesMut,
        mut parse: impl FnMut(&[u8]) -> Result<Status<T>, E>,
    ) -> Result<Result<Status<T>, E>, ReadError> {
        loop {
            let need = match parse(buf) {
                Ok(Status::NeedMore(n)) => n,
                done => return Ok(done),
            };
            let want = buf.len().saturating_add(need.max(1));
            self.fill_to(buf, want).await?;
            if buf.len() < want {
                return Ok(Ok(Status::NeedMore(want - buf.len())));
            }
        }
    }

    /// Appends chunks to `buf` until it holds at least `want` bytes or the body ends.
    async fn fill_to(&mut self, buf: &mut BytesMut, want: usize) -> Result<(), ReadError> {
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

    /// Answered early (413): keep reading and dropping the rest, bounded, so
    /// the client reads the answer rather than a reset.
    pub(crate) fn drain_later(self) {
        drain_later(self.body);
    }

    /// Gives back the unread part of the body, the bytes already counted and
    /// the deadlines.
    pub(crate) fn into_parts(self) -> (Incoming, u64, Pace) {
        (self.body, self.received, self.pace)
    }
}

/// How long and how much an answered-early peer is read from before closing.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
pub(crate) const LINGER_BYTES: u64 = 64 << 20;

/// Keeps reading (and dropping) a request body the server already answered,
/// bounded in bytes and time, so a client still uploading reads the early
/// answer instead of a reset (AVP-HTTP-12; the `Broken pipe` of issue 13).
pub(crate) fn drain_later(mut body: Incoming) {
    tokio::spawn(async move {
        let drained = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.len() as u64);
                    if seen > LINGER_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drained).await;
    });
}

/// What happened to a [`PrefixedBody`] while the router forwarded it.
#[derive(Default)]
pub(crate) struct BodySignals {
    /// The bytes crossed the body limit (the answer is 413).
    pub(crate) over_limit: AtomicBool,
    /// The client missed its deadline (the answer is 408).
    pub(crate) too_slow: AtomicBool,
    /// The whole body went upstream; from now on the upstream's answer is
    /// what we wait for (AVP-HTTP-56).
    pub(crate) done: tokio::sync::Notify,
}

/// A request body for the router: first the bytes it peeked at, then the rest
/// of the incoming body, frame by frame, never buffered whole (AVP-HTTP-51).
/// Counts bytes against the limit and holds the client to its deadlines
/// (AVP-HTTP-18), reporting either through `signals`.
pub(crate) struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: Incoming,
    received: u64,
    limit: u64,
    pace: Pace,
    timer: Pin<Box<tokio::time::Sleep>>,
    signals: Arc<BodySignals>,
}

impl PrefixedBody {
    pub(crate) fn new(
        prefix: Bytes,
        rest: Incoming,
        received: u64,
        limit: u64,
        pace: Pace,
        signals: Arc<BodySignals>,
    ) -> Self {
        let (deadline, _) = pace.next_deadline(received);
        Self {
            prefix: Some(prefix),
            rest,
            received,
            limit,
            pace,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            signals,
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
            if self.rest.is_end_stream() {
                // The whole body was in the prefix.
                self.signals.done.notify_one();
            }
            if !prefix.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
        }
        let polled = Pin::new(&mut self.rest).poll_frame(cx);
        let Poll::Ready(polled) = polled else {
            if self.timer.as_mut().poll(cx).is_ready() {
                self.signals.too_slow.store(true, Ordering::SeqCst);
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client missed its deadline",
                ))));
            }
            return Poll::Pending;
        };
        match polled {
            None => {
                self.signals.done.notify_one();
                Poll::Ready(None)
            }
            Some(Err(err)) => Poll::Ready(Some(Err(io::Error::other(err)))),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.received = self.received.saturating_add(data.len() as u64);
                    if self.received > self.limit {
                        self.signals.over_limit.store(true, Ordering::SeqCst);
                        return Poll::Ready(Some(Err(io::Error::other(
                            "request body over the limit",
                        ))));
                    }
                    let (deadline, _) = self.pace.next_deadline(self.received);
                    self.timer.as_mut().reset(deadline);
                }
                // hyper stops polling a body of known length after its last
                // byte, so the end is noticed here rather than at `None`.
                if self.rest.is_end_stream() {
                    self.signals.done.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty) && self.rest.is_end_stream()
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

/// Streams an open file as a request body, with an exact size hint (so
/// HTTP/1.1 sends a Content-Length). A blocking thread reads the file
/// straight into each frame's own buffer, at most [`FILE_FRAMES_AHEAD`]
/// frames ahead of the connection (AVP-HTTP-112, AVP-HTTP-113): one copy
/// from the page cache, no async file shim copying through a buffer of its
/// own.
pub(crate) struct FileBody {
    /// Until the first frame is asked for: a request that never starts
    /// reads nothing.
    source: Option<FileAt>,
    remaining: u64,
    frames: Option<tokio::sync::mpsc::Receiver<io::Result<Bytes>>>,
    pool: FramePool,
}

/// Frame buffers given back once the connection is done with a frame, and
/// taken again for the next one: a fresh 1 MiB buffer per frame costs a
/// page fault and a zeroed page per 4 KiB whenever the allocator has given
/// the last one back to the kernel (AVP-HTTP-113). Clones share the pool
/// (the chunk requests of one transfer).
#[derive(Clone, Default)]
pub(crate) struct FramePool(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// Buffers a pool keeps: the frames read ahead and those the connections
/// hold for two requests; a buffer given back beyond this is freed.
const POOLED_FRAMES: usize = 8;

impl FramePool {
    /// An empty buffer of [`FILE_FRAME`] bytes' capacity.
    fn take(&self) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut free| free.pop());
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve_exact(FILE_FRAME);
        buf
    }

    /// `buf` as a frame that comes back to the pool when dropped.
    fn frame(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledFrame {
            buf,
            pool: self.clone(),
        })
    }
}

/// A frame's buffer on its way through the connection.
struct PooledFrame {
    buf: Vec<u8>,
    pool: FramePool,
}

impl AsRef<[u8]> for PooledFrame {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut free) = self.pool.0.lock() {
            if free.len() < POOLED_FRAMES {
                free.push(buf);
            }
        }
    }
}

/// Where a [`FileBody`] reads its bytes.
enum FileAt {
    /// From the file's own position on (a file sent whole).
    Position(std::fs::File),
    /// From `offset` of a file that other bodies read too (the chunks of one
    /// file in flight at once): each frame seeks under the lock first.
    Shared {
        file: Arc<std::sync::Mutex<std::fs::File>>,
        offset: u64,
    },
}

impl FileAt {
    /// Appends `want` bytes at `done` bytes into the body to `buf`; the
    /// count read (short only at the end of the file).
    fn read(&mut self, done: u64, want: u64, buf: &mut Vec<u8>) -> io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        // read_to_end fills the spare capacity without zeroing it first.
        match self {
            Self::Position(file) => file.take(want).read_to_end(buf),
            Self::Shared { file, offset } => {
                let mut file = file
                    .lock()
                    .map_err(|_| io::Error::other("another reader of the file panicked"))?;
                file.seek(SeekFrom::Start(offset.saturating_add(done)))?;
                (&mut *file).take(want).read_to_end(buf)
            }
        }
    }
}

/// Bytes per frame read from the file.
const FILE_FRAME: usize = 1 << 20;
/// Frames read ahead of the connection: memory is bounded by this many frames.
const FILE_FRAMES_AHEAD: usize = 2;

impl FileBody {
    /// The `len` bytes of `file` from its position on.
    pub(crate) fn new(file: std::fs::File, len: u64) -> Self {
        Self {
            source: Some(FileAt::Position(file)),
            remaining: len,
            frames: None,
            pool: FramePool::default(),
        }
    }

    /// The `len` bytes of a shared `file` from `offset` on, in buffers of
    /// `pool`.
    pub(crate) fn range(
        file: Arc<std::sync::Mutex<std::fs::File>>,
        offset: u64,
        len: u64,
        pool: FramePool,
    ) -> Self {
        Self {
            source: Some(FileAt::Shared { file, offset }),
            remaining: len,
            frames: None,
            pool,
        }
    }
}

/// The reading thread of a [`FileBody`]: `len` bytes in frames, then done;
/// stops early once the body is dropped (the receiver is gone).
fn read_frames(
    mut source: FileAt,
    len: u64,
    pool: &FramePool,
    frames: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
) {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(FILE_FRAME as u64);
        let mut buf = pool.take();
        let frame = match source.read(done, want, &mut buf) {
            Ok(got) if got as u64 == want => Ok(pool.frame(buf)),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being sent",
            )),
            Err(err) => Err(err),
        };
        let failed = frame.is_err();
        if frames.blocking_send(frame).is_err() || failed {
            return;
        }
        done += want;
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
        if let Some(source) = this.source.take() {
            let (sender, receiver) = tokio::sync::mpsc::channel(FILE_FRAMES_AHEAD);
            let len = this.remaining;
            let pool = this.pool.clone();
            tokio::task::spawn_blocking(move || read_frames(source, len, &pool, &sender));
            this.frames = Some(receiver);
        }
        let Some(frames) = this.frames.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(frames.poll_recv(cx)) {
            Some(Ok(chunk)) => {
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(err)) => {
                this.remaining = 0;
                Poll::Ready(Some(Err(err)))
            }
            // The reading thread ended without its last frame (it panicked).
            None => {
                this.remaining = 0;
                Poll::Ready(Some(Err(io::Error::other("the file reader stopped"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Where a [`ChunkBody`] leaves the error that stopped reading its file, so
/// the sender tells a local read error from a lost connection (AVP-HTTP-113).
pub(crate) type ReadFailure = Arc<std::sync::Mutex<Option<io::Error>>>;

/// One chunk message as a request body: the head made in memory (empty when
/// the file holds the whole message), then a range of the file streamed in
/// frames of [`FILE_FRAME`] bytes ([`FileBody`]). It says when the
/// connection took its last frame: the next chunk's request starts then, so
/// a receiver sees the chunks of a context in index order (AVP-HTTP-84,
/// AVP-HTTP-111); frames that size make hyper take the last one only once
/// the rest is nearly all written (it buffers under half a MiB before
/// asking again).
pub(crate) struct ChunkBody {
    head: Bytes,
    rest: FileBody,
    taken: Option<tokio::sync::oneshot::Sender<()>>,
    failure: ReadFailure,
}

impl ChunkBody {
    /// The body; what resolves once its last frame was taken (or the body
    /// was dropped unsent: the request failed); where a read error is left.
    pub(crate) fn new(
        head: Bytes,
        rest: FileBody,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>, ReadFailure) {
        let (taken, rx) = tokio::sync::oneshot::channel();
        let failure = ReadFailure::default();
        (
            Self {
                head,
                rest,
                taken: Some(taken),
                failure: Arc::clone(&failure),
            },
            rx,
            failure,
        )
    }

    fn signal_taken(&mut self) {
        if let Some(taken) = self.taken.take() {
            let _ = taken.send(());
        }
    }
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if !this.head.is_empty() {
            let head = std::mem::take(&mut this.head);
            if this.rest.is_end_stream() {
                this.signal_taken();
            }
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        match ready!(Pin::new(&mut this.rest).poll_frame(cx)) {
            None => {
                this.signal_taken();
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if this.rest.is_end_stream() {
                    this.signal_taken();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                if let Ok(mut slot) = this.failure.lock() {
                    *slot = Some(io::Error::new(err.kind(), err.to_string()));
                }
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint().exact().unwrap_or(0);
        SizeHint::with_exact(rest.saturating_add(self.head.len() as u64))
    }
}

/// `value` as an answer body: Python's JSON (the SDK reads it with
/// `json.loads`), keys sorted and compact as the server always wrote them.
pub(crate) fn json_bytes(value: &Value) -> Vec<u8> {
    // Only a value nested past avp-json's depth limit fails; ours are flat.
    avp_json::to_string(value, WriteOptions::CANONICAL)
        .unwrap_or_else(|_| "{}".to_owned())
        .into_bytes()
}

/// A JSON response with the given status.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let body = json_bytes(value);
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
pub(crate) fn error_json(kind: &str, message: &str) -> Value {
    Object::new()
        .with("success", false)
        .with("message", message)
        .with(
            "error",
            Object::new().with("kind", kind).with("message", message),
        )
        .into()
}

/// An error answer with the envelope of [`error_json`].
pub(crate) fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
) -> Response<ResponseBody> {
    json_response(status, &error_json(kind, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in the temp dir, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn with(name: &str, bytes: &[u8]) -> Self {
            let path = std::env::temp_dir().join(format!("avp-{name}-{}", std::process::id()));
            std::fs::write(&path, bytes).expect("write the test file");
            Self(path)
        }

        fn open(&self) -> std::fs::File {
            std::fs::File::open(&self.0).expect("open the test file")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn http_112_a_file_body_streams_the_file_in_frames_read_straight_from_it() {
        let bytes = pattern(2 * FILE_FRAME + 12_345);
        let file = TempFile::with("file-body", &bytes);
        let mut body = FileBody::new(file.open(), bytes.len() as u64);
        assert_eq!(body.size_hint().exact(), Some(bytes.len() as u64));
        let mut sent = Vec::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("frame").into_data().expect("data frame");
            assert!(
                data.len() <= FILE_FRAME,
                "a frame is at most FILE_FRAME bytes"
            );
            sent.extend_from_slice(&data);
            frames += 1;
        }
        assert_eq!(frames, 3);
        assert!(sent == bytes, "the body is the file, byte for byte");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn http_112_a_file_shorter_than_declared_ends_the_body_with_an_error() {
        let bytes = pattern(FILE_FRAME + 100);
        let file = TempFile::with("file-body-short", &bytes);
        let mut body = FileBody::new(file.open(), bytes.len() as u64 + 10);
        let first = body.frame().await.expect("a frame").expect("whole frame");
        assert_eq!(first.into_data().expect("data").len(), FILE_FRAME);
        let err = body
            .frame()
            .await
            .expect("an answer")
            .expect_err("the file is 10 bytes short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(body.frame().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn http_112_only_the_declared_length_is_sent() {
        let bytes = pattern(5000);
        let file = TempFile::with("file-body-long", &bytes);
        let mut body = FileBody::new(file.open(), 4000);
        let data = body
            .frame()
            .await
            .expect("a frame")
            .expect("whole frame")
            .into_data()
            .expect("data");
        assert!(data[..] == bytes[..4000]);
        assert!(body.frame().await.is_none());
    }

    /// AVP-HTTP-113: a chunk body is its head, then exactly its range of
    /// the shared file in frames of at most FILE_FRAME bytes; it says
    /// "taken" with its last frame, not before.
    #[tokio::test]
    async fn http_113_a_chunk_body_is_its_head_then_its_file_range_in_frames() {
        let bytes = pattern(3 * FILE_FRAME);
        let file = TempFile::with("chunk-body", &bytes);
        let shared = Arc::new(std::sync::Mutex::new(file.open()));
        let (offset, len) = (1000u64, 2 * FILE_FRAME as u64 + 7);
        let head = Bytes::from_static(b"head bytes");
        let (mut body, mut taken, failure) = ChunkBody::new(
            head.clone(),
            FileBody::range(Arc::clone(&shared), offset, len, FramePool::default()),
        );
        assert_eq!(body.size_hint().exact(), Some(len + head.len() as u64));
        let mut sent = Vec::new();
        let mut frames = 0;
        loop {
            assert!(taken.try_recv().is_err(), "taken only with the last frame");
            let Some(frame) = body.frame().await else {
                panic!("the body ended before its last frame");
            };
            let data = frame.expect("frame").into_data().expect("data frame");
            assert!(data.len() <= FILE_FRAME);
            sent.extend_from_slice(&data);
            frames += 1;
            if body.is_end_stream() {
                assert!(taken.try_recv().is_ok(), "taken with the last frame");
                break;
            }
        }
        assert_eq!(frames, 4, "the head, then three frames");
        let range = &bytes[offset as usize..(offset + len) as usize];
        assert!(sent == [&head[..], range].concat(), "head, then the range");
        assert!(failure.lock().expect("lock").is_none());
    }

    /// AVP-HTTP-113: a chunk whose file ends inside its range ends the body
    /// with the read error and leaves the error for the sender, so it is
    /// reported as a local I/O error, not a lost connection.
    #[tokio::test]
    async fn http_113_a_read_error_mid_chunk_is_left_for_the_sender() {
        let bytes = pattern(FILE_FRAME + 10);
        let file = TempFile::with("chunk-body-short", &bytes);
        let shared = Arc::new(std::sync::Mutex::new(file.open()));
        let (mut body, _taken, failure) = ChunkBody::new(
            Bytes::new(),
            FileBody::range(shared, 0, 2 * FILE_FRAME as u64, FramePool::default()),
        );
        let first = body.frame().await.expect("a frame").expect("whole frame");
        assert_eq!(first.into_data().expect("data").len(), FILE_FRAME);
        let err = body
            .frame()
            .await
            .expect("an answer")
            .expect_err("the file ends inside the range");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let left = failure.lock().expect("lock").take().expect("error left");
        assert_eq!(left.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// AVP-HTTP-113: a frame's buffer goes back to its pool once the
    /// connection drops the frame, and the next frame reuses it (the same
    /// memory, no new allocation); a pool keeps at most POOLED_FRAMES.
    #[test]
    fn http_113_frame_buffers_come_back_to_their_pool() {
        let pool = FramePool::default();
        let mut buf = pool.take();
        assert!(buf.capacity() >= FILE_FRAME && buf.is_empty());
        buf.extend_from_slice(b"frame");
        let at = buf.as_ptr();
        let frame = pool.frame(buf);
        assert_eq!(&frame[..], b"frame");
        let shared = frame.slice(1..3);
        drop(frame);
        assert!(pool.0.lock().expect("lock").is_empty(), "still in use");
        drop(shared);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the same buffer");
        assert!(again.is_empty());
        let frames: Vec<Bytes> = (0..POOLED_FRAMES + 3)
            .map(|_| pool.frame(pool.take()))
            .collect();
        drop(frames);
        assert_eq!(pool.0.lock().expect("lock").len(), POOLED_FRAMES);
    }
}

//! Sending a chunked context (spec/protocol/http.md section 8, spec/impl/transport.md
//! AVP-HTTP-93): the chunks come from a [`ChunkSource`] (a chunked file, or
//! one large KV_CACHE message cut on the fly), go in index order with at most
//! two requests in flight, the next started once the previous body is on the
//! wire (AVP-HTTP-84, AVP-HTTP-111), each body streamed from the file in
//! frames, never a whole chunk in memory (AVP-HTTP-113). Before sending, and
//! after a lost connection, the receiver is asked which chunks it holds
//! (AVP-HTTP-83), so only the missing ones travel.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avp_codec::chunk::{ChunkPlan, ChunkSummer, ChunkSums, descriptor_of};
use avp_codec::kv::{KV_HEADER_LEN, KvHeader};
use avp_codec::{DecodeOptions, PayloadType, Status, parse_prefix, peek};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::body::{ChunkBody, FileBody, FramePool};
use crate::client::AvpClient;
use crate::error::TransportError;

/// Where the chunk messages of one context come from: each is a head made
/// in memory and a range of one file, read as the chunk's request streams
/// (AVP-HTTP-113).
pub trait ChunkSource: Send + Sync + 'static {
    /// The context's id.
    fn context_id(&self) -> [u8; 16];
    /// The agent the chunks are for (their `target_agent_id`).
    fn target_agent_id(&self) -> &str;
    /// Number of chunks.
    fn count(&self) -> u32;
    /// Bytes of chunk message `index`.
    fn chunk_len(&self, index: u32) -> u64;
    /// Where chunk message `index` comes from (reads nothing).
    fn chunk_parts(&self, index: u32) -> io::Result<ChunkParts>;
    /// A handle of the file the chunks' ranges are read from.
    fn open_file(&self) -> io::Result<fs::File>;
}

/// One chunk message: `head`, then `len` bytes of the source's file from
/// `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkParts {
    /// The bytes made in memory that start the message (empty when the
    /// file holds the whole message).
    pub head: Vec<u8>,
    /// Where the rest starts in the file.
    pub offset: u64,
    /// Bytes of the rest.
    pub len: u64,
}

/// How [`send_chunks`] behaves.
#[derive(Debug, Clone)]
pub struct ChunkSendOptions {
    /// Times a transfer that lost its connection (or found the server busy)
    /// asks what is held and goes on.
    pub retries: u32,
    /// Wait before the first retry; doubles each time.
    pub backoff: Duration,
    /// Average upload rate cap in bytes per second (`None`: no cap).
    pub limit_rate: Option<u64>,
}

impl Default for ChunkSendOptions {
    fn default() -> Self {
        Self {
            retries: 3,
            backoff: Duration::from_millis(500),
            limit_rate: None,
        }
    }
}

/// Where a transfer stands, after each chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkProgress {
    /// Chunks in the context.
    pub count: u32,
    /// Chunks the receiver holds now.
    pub held: u32,
    /// Bytes of all chunk messages.
    pub total_bytes: u64,
    /// Bytes of the chunks the receiver holds.
    pub held_bytes: u64,
    /// Bytes sent by this transfer.
    pub sent_bytes: u64,
}

/// Sends every chunk of `source` the receiver lacks; the answer is the
/// completing chunk's (or the status, when the receiver had everything)
/// plus `chunks`, `sent_chunks`, `skipped_chunks`, `bytes_sent`, `attempts`.
pub async fn send_chunks<S: ChunkSource>(
    client: &AvpClient,
    source: S,
    options: &ChunkSendOptions,
    mut progress: impl FnMut(&ChunkProgress) + Send,
) -> Result<Value, TransportError> {
    let context_id = hex(&source.context_id());
    let target = source.target_agent_id().to_owned();
    let count = source.count();
    let lens: Vec<u64> = (0..count).map(|i| source.chunk_len(i)).collect();
    // One handle for every request: each frame seeks under its lock.
    let file = Arc::new(Mutex::new(source.open_file()?));
    let started = Instant::now();
    let mut sent_chunks = 0u32;
    let mut sent_bytes = 0u64;
    let mut skipped = None;
    let mut attempt = 0u32;
    loop {
        let outcome = attempt_once(
            client,
            (&source, &file),
            &context_id,
            &target,
            &lens,
            options,
            started,
            (&mut sent_chunks, &mut sent_bytes, &mut skipped),
            &mut progress,
        )
        .await;
        let retry = matches!(
            &outcome,
            Err(TransportError::Connect(_)
                | TransportError::Connection(_)
                | TransportError::Timeout
                | TransportError::Status { status: 503, .. })
        );
        match outcome {
            Ok(mut answer) => {
                if let Some(object) = answer.as_object_mut() {
                    object.insert("chunks".into(), json!(count));
                    object.insert("sent_chunks".into(), json!(sent_chunks));
                    object.insert("skipped_chunks".into(), json!(skipped.unwrap_or(0)));
                    object.insert("bytes_sent".into(), json!(sent_bytes));
                    object.insert("attempts".into(), json!(attempt + 1));
                }
                return Ok(answer);
            }
            Err(err) if !retry || attempt >= options.retries => return Err(err),
            Err(_) => {
                let wait = options.backoff.saturating_mul(1u32 << attempt.min(16));
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// One pass: ask what is held, then send the rest in order.
#[allow(clippy::too_many_arguments)]
async fn attempt_once<S: ChunkSource>(
    client: &AvpClient,
    (source, file): (&S, &Arc<Mutex<fs::File>>),
    context_id: &str,
    target: &str,
    lens: &[u64],
    options: &ChunkSendOptions,
    started: Instant,
    (sent_chunks, sent_bytes, skipped): (&mut u32, &mut u64, &mut Option<u32>),
    progress: &mut (impl FnMut(&ChunkProgress) + Send),
) -> Result<Value, TransportError> {
    let count = lens.len() as u32;
    let status = client.chunk_status(context_id, target).await?;
    if status.get("complete").and_then(Value::as_bool) == Some(true) {
        skipped.get_or_insert(count);
        return Ok(status);
    }
    let mut held = vec![false; lens.len()];
    for index in status
        .get("held")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
    {
        if let Some(slot) = usize::try_from(index).ok().and_then(|i| held.get_mut(i)) {
            *slot = true;
        }
    }
    let held_now = held.iter().filter(|h| **h).count() as u32;
    // The first answer says what this transfer did not have to send.
    skipped.get_or_insert(held_now);
    let missing: Vec<u32> = (0..count).filter(|&i| !held[i as usize]).collect();
    let mut state = ChunkProgress {
        count,
        held: held_now,
        total_bytes: lens.iter().sum(),
        held_bytes: lens
            .iter()
            .zip(&held)
            .filter(|(_, h)| **h)
            .map(|(l, _)| l)
            .sum(),
        sent_bytes: *sent_bytes,
    };
    progress(&state);
    let mut next = missing.into_iter();
    // The frame buffers of every chunk of this pass (a few MiB in all).
    let pool = FramePool::default();
    let mut in_flight = InFlight::default();
    // Resolves once the connection took the last frame of the newest request.
    let mut newest_taken = None;
    let mut complete = None;
    loop {
        if in_flight.0.len() < MAX_IN_FLIGHT {
            // The next request starts once the previous body is on the wire
            // (AVP-HTTP-84): in index order at the receiver, and the two
            // uploads never split the link between them.
            if let Some(taken) = newest_taken.take() {
                let _ = taken.await;
            }
            // A body that could not read its file starts nothing more: its
            // answer reports the read error.
            let stopped = in_flight
                .0
                .back()
                .is_some_and(|(_, failure, _)| failure.lock().map_or(true, |f| f.is_some()));
            if let Some(index) = next.next().filter(|_| !stopped) {
                let parts = source.chunk_parts(index)?;
                let rest = FileBody::range(Arc::clone(file), parts.offset, parts.len, pool.clone());
                let (body, taken, failure) = ChunkBody::new(Bytes::from(parts.head), rest);
                newest_taken = Some(taken);
                let client = client.clone();
                let task = tokio::spawn(async move { client.send_chunk(body.boxed()).await });
                in_flight.0.push_back((index, failure, task));
                continue;
            }
        }
        // No room, or nothing left to send: wait for the oldest answer.
        let Some((index, failure, task)) = in_flight.0.pop_front() else {
            break;
        };
        let answer = task
            .await
            .map_err(|_| TransportError::Connection("the chunk request task failed".into()));
        // A read error is ours, not the connection's: reported as I/O, never
        // retried (AVP-HTTP-113, AVP-HTTP-40).
        if let Some(err) = failure.lock().ok().and_then(|mut f| f.take()) {
            return Err(TransportError::Io(err));
        }
        let answer = answer??;
        let len = lens.get(index as usize).copied().unwrap_or(0);
        *sent_chunks += 1;
        *sent_bytes += len;
        state.held += 1;
        state.held_bytes += len;
        state.sent_bytes = *sent_bytes;
        progress(&state);
        if answer.get("complete").and_then(Value::as_bool) == Some(true) {
            complete = Some(answer);
        }
        if let Some(rate) = options.limit_rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(*sent_bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    match complete {
        Some(answer) => Ok(answer),
        // Everything was held but not complete (another sender is finishing
        // it), or no answer said complete: what the receiver says now.
        None => client.chunk_status(context_id, target).await,
    }
}

/// Chunk requests of a context at once: the one whose answer is awaited
/// (the receiver checks and writes it) and the next one uploading
/// (AVP-HTTP-84, AVP-HTTP-111).
const MAX_IN_FLIGHT: usize = 2;

/// One chunk request in flight: its index, where its body leaves a read
/// error, the request.
type ChunkRequest = (
    u32,
    crate::body::ReadFailure,
    tokio::task::JoinHandle<Result<Value, TransportError>>,
);

/// The chunk requests in flight, oldest first; a transfer that stops
/// early (an error) cancels the rest.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<ChunkRequest>);

impl Drop for InFlight {
    fn drop(&mut self) {
        for (_, _, task) in &self.0 {
            task.abort();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad(why: impl Into<String>) -> TransportError {
    TransportError::BadInput(why.into())
}

/// Reads the header and metadata of the message at `offset` (bounded by
/// the codec's metadata limit); leaves the position after them.
pub fn read_prefix_at(file: &mut fs::File, offset: u64) -> Result<Vec<u8>, TransportError> {
    file.seek(SeekFrom::Start(offset))?;
    let mut prefix = Vec::new();
    loop {
        match parse_prefix(&prefix, &DecodeOptions::DEFAULT)
            .map_err(|err| bad(format!("at byte {offset}: {err}")))?
        {
            Status::Complete(_) => return Ok(prefix),
            Status::NeedMore(n) => {
                let got = (&mut *file).take(n as u64).read_to_end(&mut prefix)?;
                if got < n {
                    return Err(bad(format!(
                        "the file ends inside the message that starts at byte {offset}"
                    )));
                }
            }
        }
    }
}

/// A chunked file: chunk messages back to back (AVP-CHK), in any order.
pub struct ChunkedFile {
    file: fs::File,
    context_id: [u8; 16],
    target: String,
    /// (offset, length, header + metadata length) of chunk `index`.
    chunks: Vec<(u64, u64, u64)>,
}

impl ChunkedFile {
    /// Opens `path` and reads every message's header and metadata (not the
    /// tensors): `Ok(None)` when the first message has no chunk descriptor
    /// (a plain message); `bad_input` when the chunks do not make one
    /// context (another context, an index twice or missing, trailing bytes).
    pub fn open(path: &Path) -> Result<Option<Self>, TransportError> {
        let mut file = fs::File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut offset = 0u64;
        let mut found: Vec<Option<(u64, u64, u64)>> = Vec::new();
        let mut context: Option<([u8; 16], u32, String)> = None;
        while offset < file_len {
            let prefix = match read_prefix_at(&mut file, offset) {
                Ok(prefix) => prefix,
                // Not an AVP message at all: not ours to judge, the
                // receiver answers it with the codec's error.
                Err(TransportError::BadInput(_)) if offset == 0 => return Ok(None),
                Err(err) => return Err(err),
            };
            let peeked = peek(&prefix).map_err(|err| bad(err.to_string()))?;
            let len = peeked.message_len();
            let descriptor = match descriptor_of(&peeked.metadata) {
                Ok(Some(d)) => d,
                Ok(None) if offset == 0 => return Ok(None),
                Ok(None) => {
                    return Err(bad(format!(
                        "the message at byte {offset} is not a chunk (no avp.chunk descriptor)"
                    )));
                }
                Err(err) => return Err(bad(format!("at byte {offset}: {err}"))),
            };
            if offset.saturating_add(len) > file_len {
                return Err(bad(format!(
                    "the chunk at byte {offset} declares {len} bytes; the file ends first"
                )));
            }
            let (id, count, _) = context.get_or_insert_with(|| {
                (
                    descriptor.context_id,
                    descriptor.count,
                    peeked.metadata.target_agent_id.to_string(),
                )
            });
            if descriptor.context_id != *id || descriptor.count != *count {
                return Err(bad(format!(
                    "the chunk at byte {offset} belongs to another context"
                )));
            }
            if found.is_empty() {
                found = vec![None; *count as usize];
            }
            match found.get_mut(descriptor.index as usize) {
                Some(slot @ None) => *slot = Some((offset, len, prefix.len() as u64)),
                Some(Some(_)) => {
                    return Err(bad(format!("chunk {} appears twice", descriptor.index)));
                }
                None => return Err(bad(format!("chunk index {} >= count", descriptor.index))),
            }
            offset = offset.saturating_add(len);
        }
        let Some((context_id, _, target)) = context else {
            return Err(bad("the file is empty"));
        };
        let chunks = found
            .iter()
            .enumerate()
            .map(|(i, c)| c.ok_or_else(|| bad(format!("chunk {i} is missing from the file"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            file,
            context_id,
            target,
            chunks,
        }))
    }

    /// Bytes of all chunk messages.
    pub fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.1).sum()
    }

    /// The context as one KV_CACHE message, for a peer that does not take
    /// chunks (AVP-CHK-9, AVP-HTTP-80): chunk 0's metadata without its
    /// `avp.chunk` entry, the whole context's KV header, then every chunk's
    /// layer bytes in order. A first pass over the file computes the
    /// payload checksum; the body is then streamed from the file (4 MiB
    /// blocks), never held. `chunking_unsupported` when the context is over
    /// the 4 GiB of one message (AVP-WIRE-5), known from chunk 0's
    /// descriptor and KV header before any layer byte is read.
    pub fn into_single_message(self) -> Result<SingleMessage, TransportError> {
        self.join_within(u64::from(u32::MAX))
    }

    /// [`Self::into_single_message`] for a message payload of at most
    /// `max_payload` bytes (a test's stand-in for the 4 GiB of u32 lengths).
    fn join_within(mut self, max_payload: u64) -> Result<SingleMessage, TransportError> {
        let prefix = read_prefix_at(&mut self.file, 0)?;
        let mut kv = [0u8; KV_HEADER_LEN];
        self.file.read_exact(&mut kv)?;
        let peeked = peek(&prefix).map_err(|err| bad(err.to_string()))?;
        let descriptor = descriptor_of(&peeked.metadata)
            .map_err(|err| bad(err.to_string()))?
            .ok_or_else(|| bad("chunk 0 has no descriptor"))?;
        let chunk_header = KvHeader::parse(&kv).map_err(|err| bad(err.to_string()))?;
        let header = descriptor.context_header(&chunk_header);
        let payload_len = header
            .total_bytes()
            .ok_or_else(|| bad("KV dimensions overflow 64 bits"))?;
        let too_large = || {
            TransportError::ChunkingUnsupported(format!(
                "the context's KV payload is {payload_len} bytes: over the {max_payload} bytes \
                 one message carries (AVP-WIRE-5: 4 GiB), and the peer did not announce kv_chunked"
            ))
        };
        if payload_len > max_payload {
            return Err(too_large());
        }
        let ranges: Vec<(u64, u64)> = self
            .chunks
            .iter()
            .map(|&(offset, len, prefix)| {
                let skip = prefix + KV_HEADER_LEN as u64;
                (offset + skip, len.saturating_sub(skip))
            })
            .collect();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header.to_bytes());
        let mut buf = vec![0u8; BLOCK];
        for &(offset, len) in &ranges {
            self.file.seek(SeekFrom::Start(offset))?;
            let mut rest = len;
            while rest > 0 {
                let part = buf
                    .get_mut(..rest.min(BLOCK as u64) as usize)
                    .unwrap_or_default();
                self.file.read_exact(part)?;
                crc.update(part);
                rest -= part.len() as u64;
            }
        }
        let mut metadata = peeked.metadata.clone();
        metadata.extra.remove(avp_codec::chunk::CHUNK_EXTRA_KEY);
        let metadata = metadata
            .with_payload_checksum(Some(crc.finalize()))
            .with_compression(None::<&str>);
        let meta_len = metadata.encoded_len() as u64;
        if meta_len + payload_len > max_payload {
            return Err(too_large());
        }
        let body = u32::try_from(meta_len + payload_len).map_err(|_| too_large())?;
        let mut head = avp_codec::Header {
            version: avp_codec::VERSION,
            flags: avp_codec::flags_for(&metadata, avp_codec::Compression::None),
            payload_length: body,
            metadata_length: meta_len as u32,
        }
        .to_bytes()
        .to_vec();
        metadata.write(&mut head);
        head.extend_from_slice(&header.to_bytes());
        Ok(SingleMessage {
            file: self.file,
            head,
            ranges,
        })
    }
}

/// Bytes read from a file at a time when streaming a joined context.
const BLOCK: usize = 4 << 20;

/// A chunked context joined into one message as it is sent
/// ([`ChunkedFile::into_single_message`]).
pub struct SingleMessage {
    file: fs::File,
    /// Wire header, metadata and the context's KV header.
    head: Vec<u8>,
    /// (offset, length) of each chunk's layer bytes, in index order.
    ranges: Vec<(u64, u64)>,
}

impl SingleMessage {
    /// Bytes of the message.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.ranges.iter().map(|r| r.1).sum::<u64>()
    }

    /// Whether the message is empty (never: it has a header).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The message as a request body, read from the file on a blocking
    /// thread a few blocks ahead of the socket.
    pub fn into_body(self) -> crate::body::OutgoingBody {
        use http_body_util::BodyExt;
        let len = self.len();
        let (tx, rx) = mpsc::channel(4);
        let Self {
            mut file,
            head,
            ranges,
        } = self;
        tokio::task::spawn_blocking(move || {
            if tx.blocking_send(Ok(Bytes::from(head))).is_err() {
                return;
            }
            for (offset, len) in ranges {
                if let Err(err) = file.seek(SeekFrom::Start(offset)) {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
                let mut rest = len;
                while rest > 0 {
                    let mut block = vec![0u8; rest.min(BLOCK as u64) as usize];
                    let read = file.read_exact(&mut block).map(|()| Bytes::from(block));
                    let failed = read.is_err();
                    rest = rest.saturating_sub(BLOCK as u64);
                    if tx.blocking_send(read).is_err() || failed {
                        return;
                    }
                }
            }
        });
        ChannelBody { rx, remaining: len }.boxed()
    }
}

/// A request body fed by a channel, with its exact length (so the request
/// carries `Content-Length`).
struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|item| {
            item.map(|read| {
                read.map(|bytes| {
                    self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                    http_body::Frame::data(bytes)
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

impl ChunkSource for ChunkedFile {
    fn context_id(&self) -> [u8; 16] {
        self.context_id
    }

    fn target_agent_id(&self) -> &str {
        &self.target
    }

    fn count(&self) -> u32 {
        self.chunks.len() as u32
    }

    fn chunk_len(&self, index: u32) -> u64 {
        self.chunks.get(index as usize).map_or(0, |c| c.1)
    }

    fn chunk_parts(&self, index: u32) -> io::Result<ChunkParts> {
        let (offset, len, _) = self
            .chunks
            .get(index as usize)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such chunk"))?;
        Ok(ChunkParts {
            head: Vec::new(),
            offset,
            len,
        })
    }

    fn open_file(&self) -> io::Result<fs::File> {
        self.file.try_clone()
    }
}

/// One KV_CACHE message cut into chunks as they are sent (AVP-CHK-1): a
/// first pass over its layer bytes computes the context digest and each
/// chunk's checksum ([`ChunkSummer`]); each chunk is then its prefix plus
/// its layer bytes read from the file. The context id is the first 16
/// bytes of the digest, so sending the same context again resumes it.
pub struct SplitMessage {
    file: fs::File,
    /// The original header and metadata (the chunks' base metadata).
    prefix: Vec<u8>,
    /// Where the layer bytes start in the file.
    layers_at: u64,
    plan: ChunkPlan,
    sums: ChunkSums,
    context_id: [u8; 16],
    target: String,
}

impl SplitMessage {
    /// Plans `path` (one uncompressed KV_CACHE message with a v1 KV payload)
    /// as chunks of at most `max_chunk` bytes of KV payload, and runs the
    /// first pass (reads the file once).
    pub fn open(path: &Path, max_chunk: u64) -> Result<Self, TransportError> {
        let mut file = fs::File::open(path)?;
        let prefix = read_prefix_at(&mut file, 0)?;
        let peeked = peek(&prefix).map_err(|err| bad(err.to_string()))?;
        if peeked.metadata.payload_type != PayloadType::KvCache {
            return Err(bad("only a KV_CACHE message can be cut into chunks"));
        }
        if peeked.header.flags.compressed() {
            return Err(bad(
                "the message is compressed; chunks are not (decompress it first)",
            ));
        }
        let target = peeked.metadata.target_agent_id.to_string();
        let payload_at = prefix.len() as u64;
        let mut kv = [0u8; KV_HEADER_LEN];
        file.read_exact(&mut kv)?;
        let header = KvHeader::parse(&kv).map_err(|err| bad(err.to_string()))?;
        let payload_len = peeked
            .header
            .payload_length
            .saturating_sub(peeked.header.metadata_length);
        if header.total_bytes() != Some(u64::from(payload_len)) {
            return Err(bad("the KV payload is not exactly one v1 context"));
        }
        let file_len = file.metadata()?.len();
        if file_len < peeked.message_len() {
            return Err(bad("the file is shorter than the message it holds"));
        }
        let plan = ChunkPlan::new(&header, max_chunk).map_err(|err| bad(err.to_string()))?;
        let mut summer = ChunkSummer::new(&plan);
        let mut rest = u64::from(payload_len).saturating_sub(KV_HEADER_LEN as u64);
        let mut buf = vec![0u8; 4 << 20];
        while rest > 0 {
            let want = rest.min(buf.len() as u64) as usize;
            let part = buf.get_mut(..want).unwrap_or_default();
            file.read_exact(part)?;
            summer.update(part).map_err(|err| bad(err.to_string()))?;
            rest -= want as u64;
        }
        let sums = summer.finish().map_err(|err| bad(err.to_string()))?;
        let mut context_id = [0u8; 16];
        context_id.copy_from_slice(sums.context_digest.get(..16).unwrap_or(&[0u8; 16]));
        Ok(Self {
            file,
            prefix,
            layers_at: payload_at + KV_HEADER_LEN as u64,
            plan,
            sums,
            context_id,
            target,
        })
    }

    fn chunk_prefix(&self, index: u32) -> Result<Vec<u8>, avp_codec::Error> {
        let peeked = peek(&self.prefix)?;
        let base = peeked
            .metadata
            .with_payload_checksum(None)
            .with_compression(None::<&str>);
        self.plan
            .chunk_prefix(&base, self.context_id, &self.sums, index)
    }

    /// Bytes of chunk `index`'s layers.
    fn layer_range(&self, index: u32) -> (u64, u64) {
        let layer = self.plan.layer_bytes();
        let range = self
            .plan
            .ranges()
            .get(index as usize)
            .cloned()
            .unwrap_or(0..0);
        (
            self.layers_at + layer * u64::from(range.start),
            layer * u64::from(range.end - range.start),
        )
    }
}

impl ChunkSource for SplitMessage {
    fn context_id(&self) -> [u8; 16] {
        self.context_id
    }

    fn target_agent_id(&self) -> &str {
        &self.target
    }

    fn count(&self) -> u32 {
        self.plan.count()
    }

    fn chunk_len(&self, index: u32) -> u64 {
        let prefix = self.chunk_prefix(index).map_or(0, |p| p.len() as u64);
        prefix + self.layer_range(index).1
    }

    fn chunk_parts(&self, index: u32) -> io::Result<ChunkParts> {
        let head = self
            .chunk_prefix(index)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        let (offset, len) = self.layer_range(index);
        Ok(ChunkParts { head, offset, len })
    }

    fn open_file(&self) -> io::Result<fs::File> {
        self.file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use avp_codec::Metadata;
    use avp_codec::chunk::split_payload;
    use avp_codec::kv::KvDtype;

    fn chunks(context_id: [u8; 16], salt: u8) -> Vec<Vec<u8>> {
        let header = KvHeader {
            num_layers: 4,
            num_kv_heads: 1,
            head_dim: 4,
            seq_len: 2,
            dtype: KvDtype::Float32,
        };
        let mut payload = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        payload.extend((0..n).map(|i| i as u8 ^ salt));
        let base = Metadata::new().with_target_agent_id("b");
        split_payload(&payload, 2, &base, context_id).expect("split")
    }

    fn open(tag: &str, parts: &[&[u8]]) -> Result<Option<ChunkedFile>, TransportError> {
        let path =
            std::env::temp_dir().join(format!("avp-chunk-client-{tag}-{}", crate::store::new_id()));
        fs::write(&path, parts.concat()).expect("write");
        let opened = ChunkedFile::open(&path);
        fs::remove_file(&path).expect("cleanup");
        opened
    }

    fn refusal(opened: Result<Option<ChunkedFile>, TransportError>) -> String {
        match opened {
            Err(TransportError::BadInput(why)) => why,
            Err(other) => panic!("expected bad_input, got {other}"),
            Ok(_) => panic!("expected bad_input, got a file"),
        }
    }

    /// AVP-HTTP-93: a chunked file is checked whole before anything is
    /// sent: chunks in any order are fine; a missing chunk, a chunk twice,
    /// another context's chunk or a cut-off last chunk are `bad_input`; a
    /// plain message or a non-AVP file is left to the single-message path.
    #[test]
    fn http_93_chunked_files_are_checked_before_sending() {
        let ours = chunks([1; 16], 0);
        let theirs = chunks([2; 16], 9);
        let file = open("order", &[&ours[1], &ours[0]])
            .expect("valid")
            .expect("chunked");
        assert_eq!((file.count(), file.target_agent_id()), (2, "b"));
        assert_eq!(file.total_bytes(), (ours[0].len() + ours[1].len()) as u64);
        assert!(refusal(open("missing", &[&ours[0]])).contains("chunk 1 is missing"));
        assert!(refusal(open("twice", &[&ours[0], &ours[0]])).contains("twice"));
        assert!(refusal(open("mixed", &[&ours[0], &theirs[1]])).contains("another context"));
        let cut = &ours[1][..ours[1].len() - 3];
        assert!(refusal(open("cut", &[&ours[0], cut])).contains("the file ends first"));
        assert!(
            open("garbage", &[b"not an AVP message at all"])
                .expect("left")
                .is_none()
        );
    }

    /// AVP-HTTP-110 (sender half), AVP-HTTP-113: a chunked file's chunks
    /// are ranges of the file (no head made in memory, no chunk buffer),
    /// exactly each chunk message's bytes; asking reads nothing.
    #[test]
    fn http_113_a_chunked_files_chunks_are_exact_ranges_of_it() {
        let parts = chunks([3; 16], 1);
        let path = std::env::temp_dir().join(format!("avp-chunk-parts-{}", crate::store::new_id()));
        fs::write(&path, [parts[1].as_slice(), &parts[0]].concat()).expect("write");
        let file = ChunkedFile::open(&path).expect("valid").expect("chunked");
        let bytes = fs::read(&path).expect("read");
        fs::remove_file(&path).expect("cleanup");
        for (index, part) in parts.iter().enumerate() {
            let at = file.chunk_parts(index as u32).expect("parts");
            assert!(at.head.is_empty());
            assert_eq!(at.len, file.chunk_len(index as u32));
            let range = &bytes[at.offset as usize..(at.offset + at.len) as usize];
            assert_eq!(range, part.as_slice(), "chunk {index}");
        }
        assert!(file.chunk_parts(2).is_err(), "no chunk 2");
    }

    /// AVP-HTTP-84, AVP-HTTP-111: the sender has two chunk requests in
    /// flight and never more. The receiver here holds the answer to the
    /// first chunk until a second request is open (a sender that waited
    /// for each answer would never get there); every chunk arrives once
    /// and the completing chunk's answer is the result.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_84_111_two_chunk_requests_in_flight_and_never_more() {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const COUNT: usize = 4;
        let header = KvHeader {
            num_layers: COUNT as u32,
            num_kv_heads: 1,
            head_dim: 4,
            seq_len: 2,
            dtype: KvDtype::Float32,
        };
        let mut payload = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        payload.extend((0..n).map(|i| i as u8));
        let base = Metadata::new().with_target_agent_id("b");
        let parts = split_payload(&payload, COUNT as u32, &base, [4; 16]).expect("split");
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let file = open("inflight", &refs).expect("valid").expect("chunked");

        #[derive(Default)]
        struct Seen {
            open: AtomicUsize,
            most: AtomicUsize,
            bodies: Mutex<Vec<Vec<u8>>>,
        }
        let seen = Arc::new(Seen::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serving = Arc::clone(&seen);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&serving);
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let answer = if request.uri().path() == crate::PATH_CHUNK {
                            let open = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
                            seen.most.fetch_max(open, Ordering::SeqCst);
                            let body = request.into_body().collect().await?.to_bytes().to_vec();
                            let arrived = {
                                let mut bodies = seen.bodies.lock().expect("lock");
                                bodies.push(body);
                                bodies.len()
                            };
                            if arrived == 1 {
                                // Bounded: a stop-and-wait sender fails the
                                // assertion below instead of hanging.
                                for _ in 0..2000 {
                                    if seen.most.load(Ordering::SeqCst) >= 2 {
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                            seen.open.fetch_sub(1, Ordering::SeqCst);
                            let complete = arrived == COUNT;
                            json!({"success": true, "complete": complete,
                                   "request_id": if complete { json!("r1") } else { Value::Null }})
                        } else {
                            json!({"success": true, "count": COUNT, "held": [], "complete": false})
                        };
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let client = AvpClient::new(
            &format!("http://{addr}"),
            crate::client::ClientConfig::default(),
        )
        .expect("client");
        let answer = send_chunks(&client, file, &ChunkSendOptions::default(), |_| {})
            .await
            .expect("sent");
        server.abort();
        assert_eq!(answer["request_id"], "r1");
        assert_eq!(answer["sent_chunks"], COUNT);
        assert_eq!(
            seen.most.load(Ordering::SeqCst),
            2,
            "two in flight, never more"
        );
        let mut bodies = seen.bodies.lock().expect("lock").clone();
        bodies.sort();
        let mut expected = parts.clone();
        expected.sort();
        assert_eq!(bodies, expected, "every chunk once");
    }

    /// AVP-HTTP-80, AVP-CHK-9: a chunked context too large for one message
    /// is refused with `chunking_unsupported` for a peer without
    /// `kv_chunked`, the size known from chunk 0's descriptor and KV header
    /// alone (the limit is lowered here instead of writing 4 GiB): the
    /// refusal comes before any layer byte is read, so before any is sent.
    #[test]
    fn http_80_chk_9_a_context_over_one_message_is_refused_before_reading_it() {
        let parts = chunks([5; 16], 2);
        // 4 layers of K and V, 1 x 4 x 2 float32 each, plus the KV header.
        let payload = 4 * 2 * 4 * 2 * 4 + KV_HEADER_LEN as u64;
        let file = open("join-small", &[&parts[0], &parts[1]])
            .expect("valid")
            .expect("chunked");
        match file.join_within(payload - 1) {
            Err(TransportError::ChunkingUnsupported(why)) => {
                assert!(why.contains(&format!("{payload} bytes")), "{why}");
                assert!(why.contains("kv_chunked"), "{why}");
            }
            Err(other) => panic!("expected chunking_unsupported, got {other}"),
            Ok(_) => panic!("a context over the limit was joined"),
        }
        // Only the first message's prefix and KV header are read: the rest
        // of the file may be anything (here: cut off) when the answer is no.
        let cut = &parts[1][..parts[1].len() / 2];
        let path = std::env::temp_dir().join(format!("avp-join-cut-{}", crate::store::new_id()));
        fs::write(&path, [parts[0].as_slice(), &parts[1]].concat()).expect("write");
        let file = ChunkedFile::open(&path).expect("valid").expect("chunked");
        fs::write(&path, [parts[0].as_slice(), cut].concat()).expect("cut");
        let refused = file.join_within(payload - 1);
        fs::remove_file(&path).expect("cleanup");
        assert!(matches!(
            refused,
            Err(TransportError::ChunkingUnsupported(_))
        ));
        // Within the limit it joins: header, metadata, the whole KV payload.
        let file = open("join-fits", &[&parts[0], &parts[1]])
            .expect("valid")
            .expect("chunked");
        let joined = file.into_single_message().expect("fits");
        assert!(joined.len() > payload + avp_codec::HEADER_LEN as u64);
    }

    /// AVP-HTTP-111, AVP-HTTP-83: an error answer to one of the two
    /// requests in flight ends the pass; the transfer asks what is held and
    /// sends only the rest, and the context completes with every chunk held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_83_111_an_error_in_flight_ends_the_pass_and_the_transfer_resumes() {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use std::collections::BTreeSet;
        use std::sync::atomic::{AtomicBool, Ordering};

        const COUNT: u32 = 4;
        let header = KvHeader {
            num_layers: COUNT,
            num_kv_heads: 1,
            head_dim: 4,
            seq_len: 2,
            dtype: KvDtype::Float32,
        };
        let mut payload = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        payload.extend((0..n).map(|i| i as u8));
        let base = Metadata::new().with_target_agent_id("b");
        let parts = split_payload(&payload, COUNT, &base, [6; 16]).expect("split");
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let file = open("resume", &refs).expect("valid").expect("chunked");

        #[derive(Default)]
        struct Receiver {
            held: Mutex<BTreeSet<u32>>,
            refused_once: AtomicBool,
        }
        let receiver = Arc::new(Receiver::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let serving = Arc::clone(&receiver);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = Arc::clone(&serving);
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let receiver = Arc::clone(&receiver);
                    async move {
                        let chunk = request.uri().path() == crate::PATH_CHUNK;
                        let body = request.into_body().collect().await?.to_bytes();
                        let (status, answer) = if chunk {
                            let (info, _) = crate::wire::check_chunk(&body, None)
                                .expect("valid")
                                .expect("a chunk");
                            let index = info.descriptor.index;
                            if index == 1 && !receiver.refused_once.swap(true, Ordering::SeqCst) {
                                (503, json!({"success": false, "message": "busy"}))
                            } else {
                                let mut held = receiver.held.lock().expect("lock");
                                held.insert(index);
                                let complete = held.len() == COUNT as usize;
                                (
                                    200,
                                    json!({"success": true, "complete": complete,
                                             "request_id": if complete { json!("r2") } else { Value::Null }}),
                                )
                            }
                        } else {
                            let held: Vec<u32> = receiver
                                .held
                                .lock()
                                .expect("lock")
                                .iter()
                                .copied()
                                .collect();
                            (
                                200,
                                json!({"success": true, "count": COUNT, "held": held,
                                         "complete": false}),
                            )
                        };
                        let mut response =
                            http::Response::new(Full::new(Bytes::from(answer.to_string())));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let client = AvpClient::new(
            &format!("http://{addr}"),
            crate::client::ClientConfig::default(),
        )
        .expect("client");
        let options = ChunkSendOptions {
            retries: 2,
            backoff: Duration::from_millis(10),
            ..ChunkSendOptions::default()
        };
        let answer = send_chunks(&client, file, &options, |_| {})
            .await
            .expect("completed after a resume");
        server.abort();
        assert_eq!(answer["request_id"], "r2");
        assert_eq!(
            answer["attempts"], 2,
            "one pass ended by the 503, one resumed"
        );
        assert!(receiver.refused_once.load(Ordering::SeqCst));
        let held: Vec<u32> = receiver
            .held
            .lock()
            .expect("lock")
            .iter()
            .copied()
            .collect();
        assert_eq!(held, (0..COUNT).collect::<Vec<_>>());
    }

    /// AVP-HTTP-113, AVP-HTTP-40: a file that can no longer be read in the
    /// middle of a chunk ends the transfer with a local I/O error at once:
    /// not a lost connection, so nothing is retried (the receiver is asked
    /// what it holds once, not again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_113_a_read_error_mid_chunk_is_io_and_not_retried() {
        use http_body_util::Full;
        use hyper::service::service_fn;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const COUNT: u32 = 4;
        let header = KvHeader {
            num_layers: COUNT,
            num_kv_heads: 1,
            head_dim: 4,
            seq_len: 2,
            dtype: KvDtype::Float32,
        };
        let mut payload = header.to_bytes().to_vec();
        let n = header.total_bytes().expect("size") as usize - KV_HEADER_LEN;
        payload.extend((0..n).map(|i| i as u8));
        let base = Metadata::new().with_target_agent_id("b");
        let parts = split_payload(&payload, COUNT, &base, [7; 16]).expect("split");
        let path =
            std::env::temp_dir().join(format!("avp-chunk-shrinks-{}", crate::store::new_id()));
        fs::write(&path, parts.concat()).expect("write");
        let file = ChunkedFile::open(&path).expect("valid").expect("chunked");
        // The file shrinks after it was checked: chunk 2 ends early.
        let keep = (parts[0].len() + parts[1].len() + parts[2].len() / 2) as u64;
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(keep))
            .expect("truncate");
        fs::remove_file(&path).expect("cleanup");

        let statuses = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = Arc::clone(&statuses);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let counted = Arc::clone(&counted);
                    async move {
                        let answer = if request.uri().path() == crate::PATH_CHUNK {
                            request.into_body().collect().await?;
                            json!({"success": true, "complete": false})
                        } else {
                            counted.fetch_add(1, Ordering::SeqCst);
                            json!({"success": true, "count": COUNT, "held": [], "complete": false})
                        };
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(
                            answer.to_string(),
                        ))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let client = AvpClient::new(
            &format!("http://{addr}"),
            crate::client::ClientConfig::default(),
        )
        .expect("client");
        let options = ChunkSendOptions {
            retries: 3,
            backoff: Duration::from_millis(10),
            ..ChunkSendOptions::default()
        };
        let outcome = send_chunks(&client, file, &options, |_| {}).await;
        server.abort();
        match outcome {
            Err(TransportError::Io(err)) => {
                assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
            }
            other => panic!("expected a local I/O error, got {other:?}"),
        }
        assert_eq!(statuses.load(Ordering::SeqCst), 1, "no retry");
    }
}

//! `avp send` of a chunked context (spec/impl/transport.md AVP-HTTP-93): a
//! chunked file, or with `--chunk-mib N` one large KV_CACHE message cut on
//! the fly. Handshakes first: only a peer announcing `kv_chunked`
//! (AVP-HTTP-80) gets chunks. A progress bar goes to stderr when it is a
//! terminal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use avp_handshake::ModelIdentity;
use avp_transport::chunk_client::{
    ChunkProgress, ChunkSendOptions, ChunkSource, ChunkedFile, SplitMessage, send_chunks,
};
use avp_transport::hello::KV_CHUNKED_CAPABILITY;
use avp_transport::{AvpClient, TransportError};
use serde_json::Value;

/// What `avp send` asked of a chunked transfer.
pub(crate) struct ChunkedSend<'a> {
    pub(crate) file: &'a Path,
    /// Cut a single message into chunks of at most this many MiB.
    pub(crate) chunk_mib: Option<u64>,
    /// Upload rate cap in bytes per second.
    pub(crate) limit_rate: Option<u64>,
    /// Resumptions after a lost connection.
    pub(crate) retries: u32,
}

/// Sends `file` in chunks when it is a chunked file or `--chunk-mib` was
/// given; `None` when it is a plain message to send as one transmit.
pub(crate) async fn send_if_chunked(
    client: &AvpClient,
    request: &ChunkedSend<'_>,
) -> anyhow::Result<Option<Result<Value, TransportError>>> {
    let file = match ChunkedFile::open(request.file) {
        Ok(file) => file,
        Err(err) => return Ok(Some(Err(err))),
    };
    if file.is_none() && request.chunk_mib.is_none() {
        return Ok(None);
    }
    // AVP-HTTP-80: chunks only for a peer that announced it assembles them.
    // A peer without a full handshake (no endpoint, or the SDK's `create_app`,
    // which echoes the hello without a session) announced nothing (AVP-CHK-9).
    let chunked = match client.handshake(&ModelIdentity::default()).await {
        Ok(result) => result
            .answer
            .pointer(&format!("/capabilities/{KV_CHUNKED_CAPABILITY}"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Err(TransportError::Status {
            status: 404 | 405 | 501,
            ..
        })
        | Err(TransportError::BadHandshake(_)) => false,
        Err(err) => return Ok(Some(Err(err))),
    };
    let options = ChunkSendOptions {
        retries: request.retries,
        limit_rate: request.limit_rate,
        ..ChunkSendOptions::default()
    };
    let outcome = match (file, chunked) {
        (Some(file), true) => send_with_progress(client, file, &options).await,
        // AVP-CHK-9: one message when the context fits, else a clear refusal.
        (Some(file), false) => {
            match tokio::task::spawn_blocking(move || file.into_single_message()).await? {
                Ok(message) => client.transmit_body(message.into_body()).await,
                Err(err) => Err(err),
            }
        }
        // A single message: the peer gets it whole (it fits, being one message).
        (None, false) => return Ok(None),
        (None, true) => {
            let mib = request.chunk_mib.unwrap_or(64);
            let max_chunk = mib.saturating_mul(1 << 20);
            let path = request.file.to_path_buf();
            let split =
                tokio::task::spawn_blocking(move || SplitMessage::open(&path, max_chunk)).await?;
            match split {
                Ok(split) => send_with_progress(client, split, &options).await,
                Err(err) => Err(err),
            }
        }
    };
    Ok(Some(outcome))
}

async fn send_with_progress<S: ChunkSource>(
    client: &AvpClient,
    source: S,
    options: &ChunkSendOptions,
) -> Result<Value, TransportError> {
    let mut bar = ProgressBar::new(std::io::stderr().is_terminal());
    let outcome = send_chunks(client, source, options, |p| bar.show(p)).await;
    bar.finish();
    outcome
}

/// One redrawn stderr line: `[#####.....] 12/64 chunks 384.0/2048.0 MiB 950.3 MiB/s`.
struct ProgressBar {
    on: bool,
    started: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressBar {
    fn new(on: bool) -> Self {
        Self {
            on,
            started: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: &ChunkProgress) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        let done = p.held == p.count;
        if !done
            && self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        const WIDTH: u64 = 30;
        let filled = (p.held_bytes.saturating_mul(WIDTH))
            .checked_div(p.total_bytes)
            .unwrap_or(WIDTH)
            .min(WIDTH) as usize;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            mib(p.sent_bytes) / secs
        } else {
            0.0
        };
        let mut err = std::io::stderr().lock();
        // A closed stderr only loses the bar.
        let _ = write!(
            err,
            "\r[{}{}] {}/{} chunks {:.1}/{:.1} MiB {:.1} MiB/s ",
            "#".repeat(filled),
            ".".repeat(WIDTH as usize - filled),
            p.held,
            p.count,
            mib(p.held_bytes),
            mib(p.total_bytes),
            rate
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&self) {
        if self.drawn {
            eprintln!();
        }
    }
}

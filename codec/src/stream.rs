//! Incremental decoding (AVP-WIRE-23): "need N more bytes" instead of
//! `truncated`, over the caller's buffer, without copying.
//!
//! Modelled on httparse: every function answers [`Status::Complete`],
//! [`Status::NeedMore`] (the least number of further bytes known to be
//! needed) or `Err`, and fails as early as the bytes allow with the same
//! error the one-shot [`decode_with`] gives for the same bytes (a bad header
//! after 12 bytes, bad metadata once the metadata is in).
//!
//! - [`parse_header`]: the 12-byte header, checked against the limits;
//! - [`parse_prefix`]: header and metadata, the tensor not needed: what a
//!   forwarding router needs;
//! - [`parse_message`]: one whole message, decoded (zero-copy unless
//!   compressed), and how many bytes of the buffer it used;
//! - [`StreamDecoder`]: for callers that get chunks they cannot keep; it
//!   buffers exactly the declared message and checks with the functions above.
//!
//! # A router
//!
//! A router reads the body into its own buffer and routes by metadata
//! without decoding the tensor:
//!
//! ```
//! # use avp_codec::{DecodeOptions, Metadata, Status, encode, Compression, parse_prefix};
//! # let msg = encode(&Metadata::new().with_target_agent_id("b"), &[0u8; 64], Compression::None).unwrap();
//! let opts = DecodeOptions::default();
//! let mut buf = Vec::new();
//! for chunk in msg.chunks(7) {
//!     buf.extend_from_slice(chunk); // what arrived from the socket
//!     match parse_prefix(&buf, &opts) {
//!         // Read at least `n` more bytes (the header first, then the metadata).
//!         Ok(Status::NeedMore(_n)) => continue,
//!         Ok(Status::Complete((peeked, prefix_len))) => {
//!             // Route by `peeked.metadata.target_agent_id`; forward
//!             // `buf[..prefix_len]`, then the remaining
//!             // `peeked.message_len() - prefix_len` body bytes as they come,
//!             // without holding or decoding them.
//!             assert_eq!(peeked.metadata.target_agent_id, "b");
//!             assert_eq!(prefix_len, peeked.header.metadata_end());
//!             break;
//!         }
//!         // Refuse the body: the error's kind says why (AVP-ERR-1).
//!         Err(e) => panic!("{e}"),
//!     }
//! }
//! ```
//!
//! A server that keeps the whole body calls [`parse_message`] on its buffer
//! as bytes arrive (it answers `NeedMore` until the declared message is in),
//! so it never copies the bytes into a second buffer. A caller should bound
//! its reads by the declared length: `NeedMore` never asks for more than the
//! header declares, and the header is checked against the limits first.

use crate::decode::{DecodeOptions, Message, Peeked, check_header, decode_with, peek_with};
use crate::error::Error;
use crate::header::{HEADER_LEN, Header};
use crate::limits::Limits;
use crate::warning::{Warning, Warnings};

/// Most bytes reserved when the header arrives; beyond it the buffer grows
/// with the bytes actually received.
const UPFRONT_RESERVE: usize = 64 << 20;

/// Grows `buf` for `n` more bytes, failing with `limit_exceeded` instead of
/// aborting when memory runs out.
fn try_reserve(buf: &mut Vec<u8>, n: usize) -> Result<(), Error> {
    buf.try_reserve(n).map_err(|_| {
        Error::new(
            crate::ErrorKind::LimitExceeded,
            format!("cannot allocate {n} more bytes for the message"),
        )
    })
}

/// The outcome of an incremental step, when the bytes so far are not wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// Done; what was parsed.
    Complete(T),
    /// At least this many more bytes are needed before anything more can be
    /// said (never more than the message the header declares).
    NeedMore(usize),
}

impl<T> Status<T> {
    /// True for [`Status::Complete`].
    pub fn is_complete(&self) -> bool {
        matches!(self, Status::Complete(_))
    }
}

/// `declared - have`, as the count of more bytes needed.
fn short_by(declared: u64, have: usize) -> usize {
    usize::try_from(declared.saturating_sub(have as u64)).unwrap_or(usize::MAX)
}

/// The header, once its 12 bytes are in `buf` (checked as
/// [`check_header`] does: magic, version, limits).
pub fn parse_header(buf: &[u8], limits: &Limits) -> Result<Status<Header>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(Status::NeedMore(HEADER_LEN.saturating_sub(buf.len())));
    }
    check_header(buf, limits).map(Status::Complete)
}

/// Header and metadata, once `12 + metadata_length` bytes are in `buf`, with
/// that length (the tensor starts there). The tensor is neither needed nor
/// read: its checks (presence, checksum, strict mode) are [`parse_message`]'s.
pub fn parse_prefix<'a>(
    buf: &'a [u8],
    opts: &DecodeOptions,
) -> Result<Status<(Peeked<'a>, usize)>, Error> {
    let header = match parse_header(buf, &opts.limits)? {
        Status::Complete(header) => header,
        Status::NeedMore(n) => return Ok(Status::NeedMore(n)),
    };
    let prefix_len = header.metadata_end();
    if buf.len() < prefix_len {
        return Ok(Status::NeedMore(prefix_len.saturating_sub(buf.len())));
    }
    let peeked = peek_with(buf, opts)?;
    Ok(Status::Complete((peeked, prefix_len)))
}

/// One whole message from the start of `buf`, decoded as [`decode_with`]
/// decodes exactly its declared bytes, with that count. Bytes after it are
/// not looked at (the next message, or trailing bytes the caller may report).
pub fn parse_message<'a>(
    buf: &'a [u8],
    opts: &DecodeOptions,
) -> Result<Status<(Message<'a>, usize)>, Error> {
    let header = match parse_prefix(buf, opts)? {
        Status::Complete((peeked, _)) => peeked.header,
        Status::NeedMore(n) => return Ok(Status::NeedMore(n)),
    };
    let declared = header.message_len();
    let Some(message) = usize::try_from(declared).ok().and_then(|n| buf.get(..n)) else {
        return Ok(Status::NeedMore(short_by(declared, buf.len())));
    };
    let decoded = decode_with(message, opts)?;
    Ok(Status::Complete((decoded, message.len())))
}

/// Buffers one message from a byte stream whose chunks the caller does not
/// keep (a caller that keeps its buffer uses [`parse_message`] and copies nothing).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    opts: DecodeOptions,
    buf: Vec<u8>,
    header: Option<Header>,
    metadata_checked: bool,
    trailing: u64,
}

impl StreamDecoder {
    /// A decoder with these options.
    pub fn new(opts: DecodeOptions) -> Self {
        StreamDecoder {
            opts,
            buf: Vec::new(),
            header: None,
            metadata_checked: false,
            trailing: 0,
        }
    }

    /// The header, once 12 valid bytes have arrived.
    pub fn header(&self) -> Option<Header> {
        self.header
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes `chunk` and reports progress, or the first error these bytes
    /// prove: before the header is in, `NeedMore` counts the bytes that
    /// finish the header; after it, exactly the bytes that finish the
    /// declared message (so a reader can ask for precisely that much).
    /// `Complete` carries the message length. Only the declared message is
    /// buffered (at most `12 + payload_length` bytes, within the limits);
    /// bytes after its end are counted, not kept (AVP-WIRE-20a reports them
    /// at [`Self::finish`]).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Status<usize>, Error> {
        let mut chunk = chunk;
        let header = match self.header {
            Some(h) => h,
            None => {
                let want = HEADER_LEN.saturating_sub(self.buf.len());
                let (head, rest) = chunk.split_at(want.min(chunk.len()));
                self.buf.extend_from_slice(head);
                chunk = rest;
                let h = match parse_header(&self.buf, &self.opts.limits)? {
                    Status::Complete(h) => h,
                    Status::NeedMore(n) => return Ok(Status::NeedMore(n)),
                };
                // Reserve up front only a bounded amount: a 12-byte header must not
                // make us allocate gigabytes the peer may never send (AVP-LIM-8).
                let total = usize::try_from(h.message_len()).unwrap_or(usize::MAX);
                let upfront = total.min(UPFRONT_RESERVE).saturating_sub(self.buf.len());
                try_reserve(&mut self.buf, upfront)?;
                self.header = Some(h);
                h
            }
        };
        let total = usize::try_from(header.message_len()).unwrap_or(usize::MAX);
        let want = total.saturating_sub(self.buf.len());
        let (body, rest) = chunk.split_at(want.min(chunk.len()));
        try_reserve(&mut self.buf, body.len())?;
        self.buf.extend_from_slice(body);
        self.trailing = self.trailing.saturating_add(rest.len() as u64);
        if !self.metadata_checked {
            match parse_prefix(&self.buf, &self.opts)? {
                Status::Complete(_) => self.metadata_checked = true,
                Status::NeedMore(_) => {
                    return Ok(Status::NeedMore(total.saturating_sub(self.buf.len())));
                }
            }
        }
        if self.buf.len() < total {
            Ok(Status::NeedMore(total.saturating_sub(self.buf.len())))
        } else {
            Ok(Status::Complete(total))
        }
    }

    /// Bytes currently allocated for the buffer (for memory accounting).
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes received after the declared end of the message.
    pub fn trailing_bytes(&self) -> u64 {
        self.trailing
    }

    /// Header and metadata, once they have arrived.
    pub fn peek(&self) -> Option<Result<Peeked<'_>, Error>> {
        self.metadata_checked
            .then(|| peek_with(&self.buf, &self.opts))
    }

    /// Decodes the message: exactly what [`decode_with`] returns for the
    /// concatenation of all fed chunks (trailing bytes included).
    pub fn finish(&self) -> Result<Message<'_>, Error> {
        if self.trailing == 0 {
            return decode_with(&self.buf, &self.opts);
        }
        // Trailing bytes are only counted once the whole message is buffered and
        // its metadata checked, so the one-shot decoder would reach its trailing
        // check next: fail there in strict mode, warn first otherwise.
        let mut warnings = Warnings::new(self.opts.strict);
        warnings.push(Warning::TrailingBytes {
            count: self.trailing,
        })?;
        let mut msg = decode_with(&self.buf, &self.opts)?;
        warnings.list.append(&mut msg.warnings);
        msg.warnings = warnings.list;
        Ok(msg)
    }

    /// The buffered message bytes (bytes after its declared end are not kept).
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Hands back the buffered message bytes without copying them (bytes
    /// after its declared end are not included), e.g. to store a message
    /// once [`Self::finish`] has checked it.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

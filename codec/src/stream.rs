//! Incremental decoding for streams (AVP-WIRE-23).
//!
//! Feed bytes as they arrive; the decoder answers how many more it needs and
//! fails as early as the bytes allow (a bad header after 12 bytes, bad
//! metadata once the metadata is in), with the same error the one-shot
//! [`decode_with`](crate::decode_with) gives for the same bytes.

use crate::decode::{
    DecodeOptions, Message, Peeked, Warning, Warnings, check_header, decode_with, peek_with,
};
use crate::error::Error;
use crate::header::{HEADER_LEN, Header};

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

/// Progress after [`StreamDecoder::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// At least this many more bytes are needed: before the header is in, the
    /// count to finish the header; after it, exactly the count to finish the
    /// declared message (so a reader can ask for precisely that much).
    NeedMore(usize),
    /// The whole declared message is buffered; call [`StreamDecoder::finish`].
    Complete,
}

/// Buffers one message from a byte stream.
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
    /// prove. Only the declared message is buffered (at most
    /// `12 + payload_length` bytes, within the limits); bytes after its end
    /// are counted, not kept (AVP-WIRE-20a reports them at [`Self::finish`]).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        let mut chunk = chunk;
        let header = match self.header {
            Some(h) => h,
            None => {
                let want = HEADER_LEN.saturating_sub(self.buf.len());
                let (head, rest) = chunk.split_at(want.min(chunk.len()));
                self.buf.extend_from_slice(head);
                chunk = rest;
                if self.buf.len() < HEADER_LEN {
                    return Ok(Status::NeedMore(HEADER_LEN.saturating_sub(self.buf.len())));
                }
                let h = check_header(&self.buf, &self.opts.limits)?;
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
            let meta_end = header.metadata_end();
            if self.buf.len() < meta_end {
                return Ok(Status::NeedMore(total.saturating_sub(self.buf.len())));
            }
            peek_with(&self.buf, &self.opts)?;
            self.metadata_checked = true;
        }
        if self.buf.len() < total {
            Ok(Status::NeedMore(total.saturating_sub(self.buf.len())))
        } else {
            Ok(Status::Complete)
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

//! Incremental decoding for streams (AVP-WIRE-23).
//!
//! Feed bytes as they arrive; the decoder answers how many more it needs and
//! fails as early as the bytes allow (a bad header after 12 bytes, bad
//! metadata once the metadata is in), with the same error the one-shot
//! [`decode_with`](crate::decode_with) gives for the same bytes.

use crate::decode::{DecodeOptions, Message, Peeked, check_header, decode_with, peek_with};
use crate::error::Error;
use crate::header::{HEADER_LEN, Header};

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
}

impl StreamDecoder {
    /// A decoder with these options.
    pub fn new(opts: DecodeOptions) -> Self {
        StreamDecoder {
            opts,
            buf: Vec::new(),
            header: None,
            metadata_checked: false,
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

    /// Appends `chunk` and reports progress, or the first error these bytes prove.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        self.buf.extend_from_slice(chunk);
        let header = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(Status::NeedMore(HEADER_LEN.saturating_sub(self.buf.len())));
                }
                let h = check_header(&self.buf, &self.opts.limits)?;
                // Reserve once, up to the declared size (already within the limits).
                let total = usize::try_from(h.message_len()).unwrap_or(usize::MAX);
                self.buf.reserve(total.saturating_sub(self.buf.len()));
                self.header = Some(h);
                h
            }
        };
        let total = usize::try_from(header.message_len()).unwrap_or(usize::MAX);
        if !self.metadata_checked {
            let meta_end = HEADER_LEN.saturating_add(header.metadata_length as usize);
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

    /// Header and metadata, once they have arrived.
    pub fn peek(&self) -> Option<Result<Peeked<'_>, Error>> {
        self.metadata_checked
            .then(|| peek_with(&self.buf, &self.opts))
    }

    /// Decodes everything buffered as one message: exactly what
    /// [`decode_with`] returns for the concatenation of all fed chunks.
    pub fn finish(&self) -> Result<Message<'_>, Error> {
        decode_with(&self.buf, &self.opts)
    }

    /// The buffered bytes.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }
}

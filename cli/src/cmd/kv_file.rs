//! Reading KV context files: one message, read header first, or a chunked
//! file (spec/protocol/chunked.md: chunk messages back to back), and the
//! context they hold as a plain KV v1 payload whatever its form (quantized,
//! delta on a base, chunked). Shared by `convert`, `decode` and `inspect`;
//! it prints nothing (decode.rs turns a [`Stop`] into the error line).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use avp_codec::chunk::{
    Assembler, AssemblyLimits, CHUNK_EXTRA_KEY, ChunkDescriptor, ChunkInfo, assemble_messages,
    descriptor_of,
};
use avp_codec::kv::{KV_HEADER_LEN, KvCache, KvHeader};
use avp_codec::kv_delta::assemble;
use avp_codec::kv_quant::KvExt;
use avp_codec::mac::MacKey;
use avp_codec::{DecodeOptions, Error, ErrorKind, Limits, Message, Metadata, PayloadType};

use super::stream_in::{Decoded, Want, summarise};

/// Why bytes or a request are invalid: a codec error kind and its
/// explanation (the CLI cannot make codec `Error`s, and some checks are its own).
pub(crate) struct Invalid {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl From<Error> for Invalid {
    fn from(e: Error) -> Self {
        Invalid {
            kind: e.kind(),
            message: e.message().to_owned(),
        }
    }
}

/// Why reading (or converting) stopped: the exit status and the error line differ.
pub(crate) enum Stop {
    /// A file could not be read or written (exit 2, kind `io`).
    Io(PathBuf, std::io::Error),
    /// The input or the request is invalid (exit 1, a codec error kind).
    Invalid(Invalid),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Invalid(e.into())
    }
}

/// A [`Stop`] for invalid input or an invalid request.
pub(crate) fn invalid(kind: ErrorKind, message: String) -> Stop {
    Stop::Invalid(Invalid { kind, message })
}

/// A context read from a file: the metadata it came with and the KV v1
/// payload of its positions, whatever form it was stored in.
pub(crate) struct Context {
    pub(crate) metadata: Metadata<'static>,
    /// A KV v1 payload (AVP-KV-1..3) without trailing bytes.
    pub(crate) payload: Vec<u8>,
    /// How many chunk messages it came in (0: not a chunked file).
    pub(crate) chunks: u32,
}

impl Context {
    /// The parsed payload (checked when the context was made).
    pub(crate) fn kv(&self) -> Result<KvCache<'_>, Error> {
        KvCache::parse(&self.payload)
    }
}

/// Reads the messages of a file one after the other, each header first and
/// then only the length it declares, so `/dev/zero` or a stray file is
/// refused after 12 bytes and nothing is read whole for nothing (as
/// AVP-CLI-4). `-` is stdin.
pub(crate) struct MessageReader {
    file: File,
    path: PathBuf,
    offset: u64,
}

impl MessageReader {
    pub(crate) fn open(path: &Path) -> Result<MessageReader, Stop> {
        let file = if path.as_os_str() == "-" {
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
        } else {
            File::open(path)
        };
        Ok(MessageReader {
            file: file.map_err(|e| Stop::Io(path.to_owned(), e))?,
            path: path.to_owned(),
            offset: 0,
        })
    }

    fn io(&self, e: std::io::Error) -> Stop {
        Stop::Io(self.path.clone(), e)
    }

    /// The next message's offset in the file and its bytes (fewer than it
    /// declares when the file ends early: decoding says `truncated`), or
    /// `None` at the end of the file.
    pub(crate) fn next_message(&mut self) -> Result<Option<(u64, Vec<u8>)>, Stop> {
        let at = self.offset;
        let mut bytes = Vec::with_capacity(avp_codec::HEADER_LEN);
        (&mut self.file)
            .take(avp_codec::HEADER_LEN as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io(e))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let parsed = avp_codec::parse_header(&bytes, &Limits::DEFAULT)
            .map_err(|e| with_path(&self.path, &e))?;
        if let avp_codec::Status::Complete(header) = parsed {
            (&mut self.file)
                .take(
                    header
                        .message_len()
                        .saturating_sub(avp_codec::HEADER_LEN as u64),
                )
                .read_to_end(&mut bytes)
                .map_err(|e| self.io(e))?;
        }
        self.offset = self.offset.saturating_add(bytes.len() as u64);
        Ok(Some((at, bytes)))
    }

    /// Goes back (or on) to the message at `offset` (a seekable file only).
    fn seek(&mut self, offset: u64) -> Result<(), Stop> {
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| {
            self.io(std::io::Error::new(
                e.kind(),
                format!("{e}: a chunked file is read twice, so it must be a file, not a pipe"),
            ))
        })?;
        self.offset = offset;
        Ok(())
    }
}

/// The first message of a file, without its tensor.
pub(crate) struct FirstMessage {
    pub(crate) header: avp_codec::Header,
    pub(crate) metadata: Metadata<'static>,
    /// The KV v1 header its tensor starts with, if it reads as one.
    pub(crate) kv: Option<KvHeader>,
}

/// The header, metadata and KV header of the first message in `path`, read
/// alone (whatever the tensor's size), or `None` when they do not decode:
/// the caller's full read then reports why.
pub(crate) fn peek_first(path: &Path) -> Result<Option<FirstMessage>, Stop> {
    let mut reader = MessageReader::open(path)?;
    let mut bytes = Vec::with_capacity(avp_codec::HEADER_LEN);
    (&mut reader.file)
        .take(avp_codec::HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| reader.io(e))?;
    let Ok(header) = avp_codec::check_header(&bytes, &Limits::DEFAULT) else {
        return Ok(None);
    };
    (&mut reader.file)
        .take(u64::from(header.metadata_length) + KV_HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| reader.io(e))?;
    let kv = bytes
        .get(header.metadata_end()..)
        .and_then(|t| KvHeader::parse(t).ok());
    Ok(avp_codec::peek(&bytes).ok().map(|p| FirstMessage {
        header,
        metadata: p.metadata.into_owned(),
        kv,
    }))
}

/// The first message in `path` (an empty file gives no bytes: `truncated`).
pub(crate) fn read_message_bytes(path: &Path) -> Result<Vec<u8>, Stop> {
    Ok(MessageReader::open(path)?
        .next_message()?
        .map(|(_, bytes)| bytes)
        .unwrap_or_default())
}

/// The first message in `path`, decoded (compatible mode), owning its bytes.
pub(crate) fn read_message(path: &Path) -> Result<Message<'static>, Stop> {
    let bytes = read_message_bytes(path)?;
    let msg = avp_codec::decode(&bytes).map_err(|e| with_path(path, &e))?;
    Ok(msg.into_owned())
}

/// `e` with the file it came from in its message.
fn with_path(path: &Path, e: &Error) -> Stop {
    invalid(e.kind(), format!("{}: {}", path.display(), e.message()))
}

/// The model hash that prefix addresses use: `--model-hash`, else the
/// message's extra `model_hash` (what `avp think` writes).
pub(crate) fn model_hash_of<'m>(
    given: Option<&'m str>,
    metadata: &'m Metadata<'_>,
) -> Result<&'m str, Stop> {
    given
        .or_else(|| metadata.extra.get("model_hash"))
        .ok_or_else(|| {
            invalid(
                ErrorKind::InvalidArgument,
                "a prefix address needs the model hash: the input has no extra \"model_hash\"; give --model-hash".into(),
            )
        })
}

/// Reads the context in `path` as a KV v1 payload: a KV_CACHE as it is, a
/// quantized KV_CACHE_EXT dequantized (AVP-KVQ-8), a delta assembled on
/// `base` (AVP-KVD-4; `model_hash` names the model for its address).
pub(crate) fn load_context(
    path: &Path,
    base: Option<&Path>,
    model_hash: Option<&str>,
) -> Result<Context, Stop> {
    let msg = read_message(path)?;
    let mut metadata = msg.metadata;
    let refuse = |m: String| {
        invalid(
            ErrorKind::InvalidArgument,
            format!("{}: {m}", path.display()),
        )
    };
    let descriptor = descriptor_of(&metadata).map_err(|e| with_path(path, &e))?;
    let mut chunks = 0;
    let payload = match metadata.payload_type {
        PayloadType::KvCache if descriptor.is_some() => {
            if base.is_some() {
                return Err(refuse(
                    "a chunked context, not a delta: --base applies to deltas".into(),
                ));
            }
            if let (Some(d), Ok(h)) = (descriptor, KvHeader::parse(&msg.payload)) {
                // Checked before reading on: what cannot be one message is not assembled in memory.
                let total = d.context_header(&h).total_bytes().unwrap_or(u64::MAX);
                if total > u64::from(u32::MAX) {
                    return Err(refuse(format!(
                        "a chunked context of {total} bytes, more than one message carries; convert reads contexts that fit in one"
                    )));
                }
            }
            let (count, payload) = assemble_file(path)?;
            chunks = count;
            // The chunks' descriptor describes them, not what is made of the context.
            metadata.extra.remove(CHUNK_EXTRA_KEY);
            payload
        }
        PayloadType::KvCache => {
            if base.is_some() {
                return Err(refuse(
                    "a full KV_CACHE message, not a delta: --base applies to deltas".into(),
                ));
            }
            let mut kv = KvCache::parse(&msg.payload).map_err(|e| with_path(path, &e))?;
            kv.check_metadata_dtype(metadata.dtype, false)
                .map_err(|e| with_path(path, &e))?;
            // Trailing bytes after the last layer (a compatible-mode warning) are dropped.
            let total = kv.header.total_bytes().unwrap_or(0) as usize;
            msg.payload.get(..total).unwrap_or_default().to_vec()
        }
        PayloadType::KvCacheExt => {
            let ext = KvExt::parse(&msg.payload).map_err(|e| with_path(path, &e))?;
            match (ext.prefix, base) {
                (None, None) => ext.dequantize().map_err(|e| with_path(path, &e))?,
                (None, Some(_)) => {
                    return Err(refuse(
                        "a full context (seq_start 0), not a delta: --base applies to deltas"
                            .into(),
                    ));
                }
                (Some(prefix), None) => {
                    return Err(refuse(format!(
                        "a delta (positions [{}, {}) on the prefix {}): give --base BASE, a context that starts with that prefix",
                        ext.header.seq_start,
                        ext.header.seq_len,
                        prefix.to_hex()
                    )));
                }
                (Some(_), Some(base)) => {
                    let hash = model_hash_of(model_hash, &metadata)?;
                    let base = load_context(base, None, None)?;
                    assemble(&base.kv()?, hash, &ext).map_err(|e| with_path(path, &e))?
                }
            }
        }
        other => {
            return Err(refuse(format!(
                "a {} message, not a KV cache",
                other.name()
            )));
        }
    };
    Ok(Context {
        metadata,
        payload,
        chunks,
    })
}

/// Every message of the chunked file `path` assembled in memory into the
/// context's KV v1 payload (AVP-CHK-4..7, default limits), with the chunk count.
fn assemble_file(path: &Path) -> Result<(u32, Vec<u8>), Stop> {
    let mut reader = MessageReader::open(path)?;
    // Stdin (`-`) was read from already: back to its first message.
    reader.seek(0)?;
    let mut messages = Vec::new();
    while let Some((_, bytes)) = reader.next_message()? {
        messages.push(bytes);
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let payload = assemble_messages(&refs, &AssemblyLimits::DEFAULT, &DecodeOptions::default())
        .map_err(|e| with_path(path, &e))?;
    Ok((u32::try_from(messages.len()).unwrap_or(u32::MAX), payload))
}

/// One chunk message of a chunked file, as `decode` and `inspect` report it.
pub(crate) struct ScannedChunk {
    /// Where the message starts in the file.
    pub(crate) offset: u64,
    pub(crate) descriptor: ChunkDescriptor,
    /// The message summarised as for a single message (stream_in).
    pub(crate) decoded: Decoded,
}

/// A chunked file that assembled and whose digest matched (AVP-CHK-5).
pub(crate) struct ChunkedFile {
    /// The messages in file order (an identical duplicate appears twice).
    pub(crate) chunks: Vec<ScannedChunk>,
    /// The whole context's KV header.
    pub(crate) context: KvHeader,
    pub(crate) context_id: [u8; 16],
    pub(crate) context_digest: [u8; 32],
}

/// Whether `metadata` is a chunk's (it has an `avp.chunk` descriptor).
pub(crate) fn is_chunk(metadata: &Metadata<'_>) -> bool {
    metadata.extra.contains_key(CHUNK_EXTRA_KEY)
}

/// Reads the chunked file `path`: each message in turn (one in memory at a
/// time), decoded with `opts`, summarised for `want` and added to an
/// [`Assembler`] (default limits); then, once complete, a second pass
/// streams the layer bytes in index order through the digest check
/// (AVP-CHK-5). Errors name the message's offset.
pub(crate) fn scan_chunked(
    path: &Path,
    opts: &DecodeOptions,
    want: Want,
    mac: Option<&MacKey>,
) -> Result<ChunkedFile, Stop> {
    let mut reader = MessageReader::open(path)?;
    // Stdin (`-`) was read from already: back to its first message (a pipe cannot be).
    reader.seek(0)?;
    let mut assembler = Assembler::new(AssemblyLimits::DEFAULT);
    let mut chunks = Vec::new();
    let at = |offset: u64, e: &Error| {
        invalid(
            e.kind(),
            format!(
                "{}: the message at byte {offset}: {}",
                path.display(),
                e.message()
            ),
        )
    };
    let mut first_offset = std::collections::BTreeMap::new();
    while let Some((offset, bytes)) = reader.next_message()? {
        if let Some(key) = mac {
            // Each chunk is a message and carries its own tag (AVP-MAC-5).
            avp_codec::mac::verify(&bytes, key, &opts.limits).map_err(|e| at(offset, &e))?;
        }
        let msg = avp_codec::decode_with(&bytes, opts).map_err(|e| at(offset, &e))?;
        let info = ChunkInfo::of_message(&msg)
            .map_err(|e| at(offset, &e))?
            .ok_or_else(|| {
                invalid(
                    ErrorKind::BadChunk,
                    format!(
                        "{}: the message at byte {offset} has no {CHUNK_EXTRA_KEY} descriptor: not a chunk",
                        path.display()
                    ),
                )
            })?;
        assembler.add(&info).map_err(|e| at(offset, &e))?;
        first_offset.entry(info.descriptor.index).or_insert(offset);
        chunks.push(ScannedChunk {
            offset,
            descriptor: info.descriptor,
            decoded: summarise(&msg, bytes.len() as u64, want),
        });
    }
    let with_file = |e: &Error| with_path(path, e);
    assembler.check_complete().map_err(|e| with_file(&e))?;
    let mut verifier = assembler.verifier().map_err(|e| with_file(&e))?;
    for offset in first_offset.values() {
        reader.seek(*offset)?;
        let (_, bytes) = reader.next_message()?.unwrap_or_default();
        let msg = avp_codec::decode_with(&bytes, opts).map_err(|e| at(*offset, &e))?;
        verifier
            .update(ChunkInfo::layer_bytes(&msg.payload))
            .map_err(|e| with_file(&e))?;
    }
    verifier.finish().map_err(|e| with_file(&e))?;
    let (Some(context), Some(context_id), Some(context_digest)) = (
        assembler.context_header(),
        assembler.context_id(),
        assembler.context_digest(),
    ) else {
        return Err(invalid(
            ErrorKind::Internal,
            "a complete assembly without its context".into(),
        ));
    };
    Ok(ChunkedFile {
        chunks,
        context,
        context_id,
        context_digest,
    })
}

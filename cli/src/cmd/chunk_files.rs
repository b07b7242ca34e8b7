//! Chunked context files (spec/protocol/chunked.md): chunk messages back to
//! back in one file. Writing streams the layer bytes twice from a
//! [`LayerSource`] (sums, then bytes), reading keeps one chunk in memory at a
//! time, so a context of any size costs constant memory. Used by `avp kv
//! synth` and by the commands that convert between one message and chunks.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use avp_codec::chunk::{
    Added, Assembler, AssemblyLimits, CHUNK_EXTRA_KEY, ChunkInfo, ChunkPlan, ChunkSummer,
    descriptor_of,
};
use avp_codec::kv::{KV_HEADER_LEN, KvHeader};
use avp_codec::{DecodeOptions, HEADER_LEN, Header, Metadata, PayloadType};

/// Bytes handed to a sink at a time when streaming layers.
pub(crate) const WINDOW: usize = 1 << 20;

/// Where the layer bytes of a context come from; asked twice per layer
/// (first the sums, then the bytes), so it must give the same bytes each time.
pub(crate) trait LayerSource {
    /// Feeds the layer bytes of `layers` (K then V of each, in order) to
    /// `sink`, in windows of any size.
    fn layers(
        &mut self,
        layers: Range<u32>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()>;
}

/// What was written or read.
#[derive(Debug, Clone)]
pub(crate) struct ContextSummary {
    /// Messages in the file (1 for a plain message).
    pub messages: u32,
    /// The whole context's KV header.
    pub header: KvHeader,
    /// Bytes of the whole context's KV v1 payload.
    pub context_bytes: u64,
    /// BLAKE3 of that payload (AVP-CHK-5).
    pub context_digest: [u8; 32],
}

/// A temporary file beside `path` that becomes `path` on [`Staged::commit`]
/// and is removed otherwise, so an output is never half-written; or stdout
/// when `path` is `-` (AVP-CLI-14), where a stream has no such guarantee.
struct Staged {
    target: Target,
}

enum Target {
    File {
        tmp: PathBuf,
        path: PathBuf,
        file: Option<BufWriter<File>>,
    },
    Stdout(BufWriter<std::io::Stdout>),
}

impl Staged {
    fn create(path: &Path) -> Result<Staged> {
        if crate::out::names_stdout(path) {
            let out = BufWriter::with_capacity(WINDOW, std::io::stdout());
            return Ok(Staged {
                target: Target::Stdout(out),
            });
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp-avp");
        let tmp = PathBuf::from(tmp);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Staged {
            target: Target::File {
                tmp,
                path: path.to_owned(),
                file: Some(BufWriter::with_capacity(WINDOW, file)),
            },
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.write_all(bytes).context("cannot write to stdout"),
            Target::File { tmp, file, .. } => {
                let file = file.as_mut().ok_or_else(|| anyhow!("output closed"))?;
                file.write_all(bytes)
                    .with_context(|| format!("cannot write {}", tmp.display()))
            }
        }
    }

    fn commit(mut self) -> Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.flush().context("cannot write to stdout"),
            Target::File { tmp, path, file } => {
                let file = file.take().ok_or_else(|| anyhow!("output closed"))?;
                let file = file
                    .into_inner()
                    .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
                file.sync_all()
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&*tmp, &*path)
                    .with_context(|| format!("cannot rename into {}", path.display()))
            }
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Target::File { tmp, file, .. } = &mut self.target {
            if file.take().is_some() {
                let _ = std::fs::remove_file(&*tmp);
            }
        }
    }
}

/// The codec error inside `e`, if any: its kind is what the CLI prints.
pub(crate) fn codec_kind(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|c| c.downcast_ref::<avp_codec::Error>())
        .map(|c| c.kind().as_str())
}

/// Writes the context of `header` from `source` as chunks of at most
/// `max_chunk_payload` KV payload bytes each (AVP-CHK-1, AVP-CHK-2), back to
/// back in `out`, with `base` as every chunk's metadata.
pub(crate) fn write_chunked(
    out: &Path,
    header: &KvHeader,
    max_chunk_payload: u64,
    base: &Metadata<'_>,
    context_id: [u8; 16],
    source: &mut dyn LayerSource,
) -> Result<ContextSummary> {
    let plan = ChunkPlan::new(header, max_chunk_payload)?;
    let mut summer = ChunkSummer::new(&plan);
    source.layers(0..header.num_layers, &mut |b| Ok(summer.update(b)?))?;
    let sums = summer.finish()?;
    let mut staged = Staged::create(out)?;
    for (index, range) in plan.ranges().iter().enumerate() {
        let prefix = plan.chunk_prefix(base, context_id, &sums, index as u32)?;
        staged.write(&prefix)?;
        source.layers(range.clone(), &mut |b| staged.write(b))?;
    }
    staged.commit()?;
    Ok(ContextSummary {
        messages: plan.count(),
        header: *header,
        context_bytes: header.total_bytes().unwrap_or(u64::MAX),
        context_digest: sums.context_digest,
    })
}

/// Bytes of the whole KV payload of `header`, or an error when it is not
/// representable.
fn payload_len(header: &KvHeader) -> Result<u64> {
    header
        .total_bytes()
        .ok_or_else(|| anyhow!("KV dimensions overflow 64 bits"))
}

/// Whether a context of `header` fits one message with `base` metadata
/// (AVP-WIRE-5: `payload_length` is a u32).
pub(crate) fn fits_one_message(header: &KvHeader, base: &Metadata<'_>) -> bool {
    let meta = base
        .clone()
        .with_payload_checksum(Some(u32::MAX))
        .encoded_len() as u64;
    header
        .total_bytes()
        .and_then(|n| n.checked_add(meta))
        .is_some_and(|n| n <= u64::from(u32::MAX))
}

/// Writes the context as one plain KV_CACHE message (no descriptor),
/// streaming: a CRC pass then the bytes. Refuses a context over 4 GiB.
pub(crate) fn write_single(
    out: &Path,
    header: &KvHeader,
    base: &Metadata<'_>,
    source: &mut dyn LayerSource,
) -> Result<ContextSummary> {
    let total = payload_len(header)?;
    if !fits_one_message(header, base) {
        bail!(
            "the context is {total} bytes: over the 4 GiB of one message (AVP-WIRE-5); write it as chunks"
        );
    }
    let mut crc = crc32fast::Hasher::new();
    let mut digest = blake3::Hasher::new();
    crc.update(&header.to_bytes());
    digest.update(&header.to_bytes());
    source.layers(0..header.num_layers, &mut |b| {
        crc.update(b);
        digest.update(b);
        Ok(())
    })?;
    let metadata = base
        .clone()
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(header.dtype.data_type())
        .with_payload_checksum(Some(crc.finalize()));
    let meta_len = metadata.encoded_len() as u64;
    let wire = Header {
        version: avp_codec::VERSION,
        flags: avp_codec::flags_for(&metadata, avp_codec::Compression::None),
        payload_length: u32::try_from(meta_len + total)?,
        metadata_length: u32::try_from(meta_len)?,
    };
    let mut staged = Staged::create(out)?;
    staged.write(&wire.to_bytes())?;
    let mut meta_bytes = Vec::with_capacity(meta_len as usize);
    metadata.write(&mut meta_bytes);
    staged.write(&meta_bytes)?;
    staged.write(&header.to_bytes())?;
    source.layers(0..header.num_layers, &mut |b| staged.write(b))?;
    staged.commit()?;
    Ok(ContextSummary {
        messages: 1,
        header: *header,
        context_bytes: total,
        context_digest: *digest.finalize().as_bytes(),
    })
}

/// Reads the next whole message of `file` into `buf`; `false` at a clean end.
/// Bounded by the header's declared length (checked against `limits`).
fn read_message(
    file: &mut BufReader<File>,
    buf: &mut Vec<u8>,
    options: &DecodeOptions,
) -> Result<bool> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = file.read(head.get_mut(got..).unwrap_or_default())?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(avp_codec::decode(head.get(..got).unwrap_or_default())
                .err()
                .map_or_else(|| anyhow!("truncated message header"), anyhow::Error::from));
        }
        got += n;
    }
    let header = avp_codec::check_header(&head, &options.limits)?;
    let len = usize::try_from(header.message_len())?;
    buf.clear();
    // Exactly one message: read_to_end would otherwise double the capacity.
    buf.reserve_exact(len);
    buf.extend_from_slice(&head);
    let rest = (len - HEADER_LEN) as u64;
    let read = file.by_ref().take(rest).read_to_end(buf)?;
    if (read as u64) < rest {
        // Let the codec name the fault (truncated).
        avp_codec::decode_with(buf, options)?;
        bail!("truncated message");
    }
    Ok(true)
}

/// A chunked context file, checked: every chunk decoded, the assembly
/// complete and the digest verified (AVP-CHK-3..8).
pub(crate) struct ChunkedFile {
    path: PathBuf,
    /// The whole context's KV header.
    pub header: KvHeader,
    /// Chunk 0's metadata without `avp.chunk` and `payload_checksum`.
    pub metadata: Metadata<'static>,
    /// The context id.
    pub context_id: [u8; 16],
    /// The verified digest.
    pub context_digest: [u8; 32],
    /// File offset of each chunk's message, in index order.
    offsets: Vec<u64>,
    /// Messages in the file, duplicates included.
    pub messages: u32,
    options: DecodeOptions,
}

/// Whether `path` starts with a chunk message: reads the first message's
/// header and metadata only, whatever its size.
pub(crate) fn is_chunked_file(path: &Path) -> Result<bool> {
    let at = || format!("{}: message at byte 0", path.display());
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut prefix = Vec::new();
    Read::by_ref(&mut file)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut prefix)?;
    if prefix.is_empty() {
        return Ok(false);
    }
    let header = avp_codec::check_header(&prefix, &avp_codec::Limits::DEFAULT).with_context(at)?;
    file.take(u64::from(header.metadata_length))
        .read_to_end(&mut prefix)?;
    let peeked = avp_codec::peek(&prefix).with_context(at)?;
    Ok(descriptor_of(&peeked.metadata).with_context(at)?.is_some())
}

/// Reads and checks a chunked file: a first pass adds every chunk to an
/// [`Assembler`] (any order, identical duplicates dropped), a second
/// streams the layer bytes in index order through the digest verifier.
/// Errors carry the codec's kind ([`codec_kind`]).
pub(crate) fn read_chunked_file(
    path: &Path,
    limits: &AssemblyLimits,
    options: &DecodeOptions,
) -> Result<ChunkedFile> {
    let mut file = BufReader::with_capacity(
        WINDOW,
        File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    let mut assembler = Assembler::new(*limits);
    let mut offsets = std::collections::BTreeMap::new();
    let mut metadata = None;
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut messages = 0u32;
    while read_message(&mut file, &mut buf, options)
        .with_context(|| format!("{}: message at byte {offset}", path.display()))?
    {
        let message = avp_codec::decode_with(&buf, options)
            .with_context(|| format!("{}: message at byte {offset}", path.display()))?;
        let chunk = ChunkInfo::of_chunk_message(&message)
            .with_context(|| format!("{}: message at byte {offset}", path.display()))?;
        if assembler.add(&chunk)? == Added::New {
            offsets.insert(chunk.descriptor.index, offset);
            if chunk.descriptor.index == 0 {
                let mut extra = message.metadata.extra.clone();
                extra.remove(CHUNK_EXTRA_KEY);
                metadata = Some(
                    message
                        .metadata
                        .clone()
                        .with_extra(extra)
                        .with_payload_checksum(None)
                        .with_compression(None::<String>)
                        .into_owned(),
                );
            }
        }
        offset += buf.len() as u64;
        messages += 1;
    }
    drop(buf); // the verifying pass below holds its own chunk
    assembler.check_complete()?;
    let (Some(header), Some(context_id), Some(context_digest), Some(metadata)) = (
        assembler.context_header(),
        assembler.context_id(),
        assembler.context_digest(),
        metadata,
    ) else {
        bail!("{}: no chunk", path.display());
    };
    let checked = ChunkedFile {
        path: path.to_owned(),
        header,
        metadata,
        context_id,
        context_digest,
        offsets: offsets.into_values().collect(),
        messages,
        options: *options,
    };
    let mut verifier = assembler.verifier()?;
    checked.for_each_layer_bytes(&mut |b| Ok(verifier.update(b)?))?;
    verifier.finish()?;
    Ok(checked)
}

impl ChunkedFile {
    /// Streams the context's layer bytes in layer order, one chunk in memory
    /// at a time.
    pub(crate) fn for_each_layer_bytes(
        &self,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut file = BufReader::with_capacity(
            WINDOW,
            File::open(&self.path)
                .with_context(|| format!("cannot open {}", self.path.display()))?,
        );
        let mut buf = Vec::new();
        for &offset in &self.offsets {
            file.seek(SeekFrom::Start(offset))?;
            if !read_message(&mut file, &mut buf, &self.options)? {
                bail!("{}: changed while reading", self.path.display());
            }
            let message = avp_codec::decode_with(&buf, &self.options)?;
            for window in ChunkInfo::layer_bytes(&message.payload).chunks(WINDOW) {
                sink(window)?;
            }
        }
        Ok(())
    }

    /// Number of chunks.
    pub(crate) fn count(&self) -> u32 {
        self.offsets.len() as u32
    }

    /// Bytes of the whole context's KV payload.
    pub(crate) fn context_bytes(&self) -> u64 {
        self.header.total_bytes().unwrap_or(u64::MAX)
    }
}

impl LayerSource for ChunkedFile {
    fn layers(
        &mut self,
        layers: Range<u32>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        // Whole-context reads only; per-range reads go through a KvFileSource.
        if layers != (0..self.header.num_layers) {
            bail!("a chunked file is read whole");
        }
        self.for_each_layer_bytes(sink)
    }
}

/// The layers of one plain KV_CACHE message file, read by offset.
struct KvFileSource {
    file: BufReader<File>,
    /// Offset of the first layer byte in the file.
    layers_at: u64,
    layer_bytes: u64,
}

impl LayerSource for KvFileSource {
    fn layers(
        &mut self,
        layers: Range<u32>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let from = self.layers_at + u64::from(layers.start) * self.layer_bytes;
        let mut left = u64::from(layers.end - layers.start) * self.layer_bytes;
        self.file.seek(SeekFrom::Start(from))?;
        let mut window = vec![0u8; WINDOW];
        while left > 0 {
            let n = usize::try_from(left.min(WINDOW as u64))?;
            let part = window.get_mut(..n).unwrap_or_default();
            self.file.read_exact(part)?;
            sink(part)?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// Splits the plain KV_CACHE message in `input` into chunks of at most
/// `chunk_mib` MiB of KV payload each, in `output`, in constant memory: the
/// header and metadata are peeked, a first pass checks the payload's CRC
/// (as a strict decode would, `avp_codec::check_streamed`), the chunks are
/// then read by offset. A compressed or already chunked input is refused.
pub(crate) fn split_file(
    input: &Path,
    output: &Path,
    chunk_mib: u64,
    context_id: [u8; 16],
) -> Result<ContextSummary> {
    let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    let input_len = file.metadata()?.len();
    let mut file = BufReader::with_capacity(WINDOW, file);
    let options = DecodeOptions::strict();
    let mut head = [0u8; HEADER_LEN];
    file.read_exact(&mut head).map_err(|_| {
        avp_codec::decode(&[])
            .err()
            .map_or_else(|| anyhow!("empty"), Into::into)
    })?;
    let wire = avp_codec::check_header(&head, &options.limits)?;
    let mut prefix = head.to_vec();
    let want = (wire.metadata_end() + KV_HEADER_LEN).min(usize::try_from(wire.message_len())?);
    file.by_ref()
        .take((want - HEADER_LEN) as u64)
        .read_to_end(&mut prefix)?;
    let peeked = avp_codec::peek(&prefix)?;
    if descriptor_of(&peeked.metadata)?.is_some() {
        bail!("{}: already a chunked context", input.display());
    }
    if peeked.metadata.payload_type != PayloadType::KvCache || wire.flags.compressed() {
        bail!("{}: not an uncompressed KV_CACHE message", input.display());
    }
    let payload_len = u64::from(wire.payload_length) - u64::from(wire.metadata_length);
    let kv_head = prefix.get(wire.metadata_end()..).unwrap_or_default();
    let (header, _) = KvHeader::check_payload(kv_head, payload_len, true, &options.limits)?;
    let layers_at = (wire.metadata_end() + KV_HEADER_LEN) as u64;
    let mut source = KvFileSource {
        file,
        layers_at,
        layer_bytes: header.tensor_bytes().unwrap_or(0) * 2,
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(kv_head);
    source.layers(0..header.num_layers, &mut |b| {
        crc.update(b);
        Ok(())
    })?;
    avp_codec::check_streamed(&peeked, input_len, crc.finalize(), &options)?;
    let base = peeked
        .metadata
        .clone()
        .with_payload_checksum(None)
        .into_owned();
    write_chunked(
        output,
        &header,
        chunk_mib.saturating_mul(1 << 20),
        &base,
        context_id,
        &mut source,
    )
}

/// Joins the chunked context in `input` into one plain KV_CACHE message in
/// `output` (checked first: complete, digest verified); refused when the
/// context does not fit one message.
pub(crate) fn join_file(input: &Path, output: &Path) -> Result<ContextSummary> {
    let mut chunked = read_chunked_file(input, &AssemblyLimits::DEFAULT, &DecodeOptions::strict())?;
    let header = chunked.header;
    let base = chunked.metadata.clone();
    let mut summary = write_single(output, &header, &base, &mut chunked)?;
    summary.messages = 1;
    Ok(summary)
}

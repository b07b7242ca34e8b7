//! `decode`, `peek`, `encode`, the streaming decoder and the `Message`
//! object they return. Decoding borrows the caller's buffer: the payload of
//! an uncompressed message is a `memoryview` slice of the input, which keeps
//! the input alive (AVP-PY-3); metadata fields become Python objects only
//! when read, so a small decode costs little more than the call itself.

use std::borrow::Cow;

use avp_codec::{
    Compression, DataType, DecodeOptions, EncodeOptions, Extra, Header, Metadata, Mode,
    PayloadType, Shape,
};
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyDict, PyMemoryView, PySlice, PyTuple};

use crate::buffer::InputBuffer;
use crate::errors;

/// Where a decoded payload lives.
enum Payload {
    /// `peek`: not read.
    Absent,
    /// `source[start..end]`, not copied.
    Borrowed { start: usize, end: usize },
    /// Decompressed bytes, owned by Python.
    Owned(Py<PyBytes>),
}

/// A decoded (or peeked) AVP message. Read-only.
///
/// Small on purpose: a small message's decode costs about as much as the
/// call, so the object holds plain copies of the numeric fields and only
/// the positions of the strings (allocating nothing per string); strings,
/// the payload view and `extra` become Python objects when read.
#[pyclass(frozen, module = "avp_rs", name = "Message")]
pub(crate) struct PyMessage {
    source: Source,
    header: Header,
    fields: Fields,
    text: MetaText,
    /// The `extra` map, owned; `None` when empty (nearly always).
    extra: Option<Box<Extra<'static>>>,
    payload: Payload,
    payload_view: GILOnceCell<PyObject>,
    warnings: Vec<(&'static str, String)>,
}

/// The input object (bytes) or a memoryview over it (other buffers).
pub(crate) enum Source {
    Bytes(Py<PyBytes>),
    View(Py<PyAny>),
}

impl Source {
    fn bind<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        match self {
            Source::Bytes(b) => b.bind(py).as_any(),
            Source::View(v) => v.bind(py),
        }
    }
}

/// The metadata's numeric fields.
struct Fields {
    hidden_dim: u32,
    num_layers: u32,
    payload_type: PayloadType,
    dtype: DataType,
    mode: Mode,
    tensor_shape: Shape,
    payload_checksum: Option<u32>,
}

/// The metadata's strings, as spans of the source `bytes` (immutable, and
/// kept alive by the message) or, for other buffers (whose bytes may
/// change later), of one owned copy of all of them.
struct MetaText {
    copy: Option<Box<[u8]>>,
    spans: [Span; TEXT_FIELDS],
    has_compression: bool,
}

#[derive(Clone, Copy, Default)]
struct Span {
    start: usize,
    len: usize,
}

/// The string fields, in the order of `MetaText::spans`.
const TEXT_FIELDS: usize = 6;
const SESSION: usize = 0;
const SOURCE: usize = 1;
const TARGET: usize = 2;
const MODEL: usize = 3;
const MAP_ID: usize = 4;
const COMPRESSION: usize = 5;

fn text_fields<'m>(m: &'m Metadata<'_>) -> [&'m str; TEXT_FIELDS] {
    [
        &m.session_id,
        &m.source_agent_id,
        &m.target_agent_id,
        &m.model_id,
        &m.avp_map_id,
        m.compression.as_deref().unwrap_or(""),
    ]
}

impl MetaText {
    /// Spans of `data` when `borrow` and every string lies inside it, else
    /// one copy of all the strings.
    #[inline(always)]
    fn new(m: &Metadata<'_>, data: &[u8], borrow: bool) -> MetaText {
        let strings = text_fields(m);
        let has_compression = m.compression.is_some();
        let base = data.as_ptr() as usize;
        let mut spans = [Span::default(); TEXT_FIELDS];
        let mut inside = borrow;
        for (span, s) in spans.iter_mut().zip(strings) {
            // Address arithmetic: a borrowed string is part of `data`.
            let start = (s.as_ptr() as usize).wrapping_sub(base);
            if s.is_empty() {
                continue;
            }
            if start
                .checked_add(s.len())
                .is_none_or(|end| end > data.len())
            {
                inside = false;
                break;
            }
            *span = Span {
                start,
                len: s.len(),
            };
        }
        if inside {
            return MetaText {
                copy: None,
                spans,
                has_compression,
            };
        }
        let mut copy = Vec::with_capacity(strings.iter().map(|s| s.len()).sum());
        for (span, s) in spans.iter_mut().zip(strings) {
            *span = Span {
                start: copy.len(),
                len: s.len(),
            };
            copy.extend_from_slice(s.as_bytes());
        }
        MetaText {
            copy: Some(copy.into_boxed_slice()),
            spans,
            has_compression,
        }
    }
}

fn decode_options(strict: bool, verify_checksum: bool, threads: usize) -> DecodeOptions {
    DecodeOptions::DEFAULT
        .with_strict(strict)
        .with_verify_checksum(verify_checksum)
        .with_checksum_threads(threads)
}

/// Runs `f` over the bytes of `obj` without copying them; for large inputs
/// with the GIL released. Returns the object to keep alive and `f`'s result.
/// `f` learns whether the bytes are immutable (a `bytes` object), i.e.
/// may be read again later through the returned object.
#[inline(always)]
fn with_input<R: Send>(
    obj: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8], bool) -> R + Send,
) -> PyResult<(Source, R)> {
    let py = obj.py();
    if let Ok(bytes) = obj.downcast::<PyBytes>() {
        // bytes are immutable: borrow them directly (no export, no view).
        let data = bytes.as_bytes();
        let r = release_if_large(py, data.len(), || f(data, true));
        return Ok((Source::Bytes(bytes.clone().unbind()), r));
    }
    // Anything else: hold a memoryview (it pins the memory: a bytearray
    // cannot be resized, an mmap not closed, while a view exists).
    let view = PyMemoryView::from(obj)?;
    let buffer = InputBuffer::get(view.as_any())?;
    let data = buffer.as_slice();
    let r = release_if_large(py, data.len(), || f(data, false));
    drop(buffer);
    Ok((Source::View(view.into_any().unbind()), r))
}

/// Inputs from this size up are decoded with the GIL released; below it
/// releasing and re-taking the GIL would cost more than the work.
const RELEASE_GIL_FROM: usize = 64 << 10;

#[inline(always)]
fn release_if_large<R: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> R + Send) -> R {
    if len >= RELEASE_GIL_FROM {
        py.allow_threads(f)
    } else {
        f()
    }
}

/// What a decode produced, free of borrows so it can leave `with_input`.
struct Decoded {
    header: Header,
    fields: Fields,
    text: MetaText,
    extra: Option<Box<Extra<'static>>>,
    payload: DecodedPayload,
    warnings: Vec<(&'static str, String)>,
}

impl Decoded {
    /// `metadata` of a message read from `data`; its strings borrowed from
    /// `data` when `borrow` (an immutable `bytes` input).
    #[inline(always)]
    fn new(
        header: Header,
        metadata: Metadata<'_>,
        data: &[u8],
        borrow: bool,
        payload: DecodedPayload,
        warnings: Vec<(&'static str, String)>,
    ) -> Decoded {
        let text = MetaText::new(&metadata, data, borrow);
        let extra = if metadata.extra.is_empty() {
            None
        } else {
            Some(Box::new(metadata.extra.into_owned()))
        };
        Decoded {
            header,
            fields: Fields {
                hidden_dim: metadata.hidden_dim,
                num_layers: metadata.num_layers,
                payload_type: metadata.payload_type,
                dtype: metadata.dtype,
                mode: metadata.mode,
                tensor_shape: metadata.tensor_shape,
                payload_checksum: metadata.payload_checksum,
            },
            text,
            extra,
            payload,
            warnings,
        }
    }
}

enum DecodedPayload {
    Absent,
    Range(usize, usize),
    Owned(Vec<u8>),
}

#[inline(always)]
fn owned_warnings(ws: &[avp_codec::Warning]) -> Vec<(&'static str, String)> {
    if ws.is_empty() {
        return Vec::new();
    }
    ws.iter().map(|w| (w.code(), w.to_string())).collect()
}

#[inline(always)]
fn decode_slice(
    data: &[u8],
    borrow: bool,
    opts: &DecodeOptions,
) -> Result<Decoded, avp_codec::Error> {
    let avp_codec::Message {
        header,
        metadata,
        payload,
        warnings,
        ..
    } = avp_codec::decode_with(data, opts)?;
    let payload = match payload {
        Cow::Borrowed(slice) => {
            // Offset of the borrowed payload inside the input: both are the
            // same allocation, so plain address arithmetic is exact.
            let start = (slice.as_ptr() as usize).saturating_sub(data.as_ptr() as usize);
            DecodedPayload::Range(start, start.saturating_add(slice.len()))
        }
        Cow::Owned(v) => DecodedPayload::Owned(v),
    };
    Ok(Decoded::new(
        header,
        metadata,
        data,
        borrow,
        payload,
        owned_warnings(&warnings),
    ))
}

#[inline(always)]
fn into_message(py: Python<'_>, source: Source, d: Decoded) -> PyMessage {
    let payload = match d.payload {
        DecodedPayload::Absent => Payload::Absent,
        DecodedPayload::Range(start, end) => Payload::Borrowed { start, end },
        DecodedPayload::Owned(v) => Payload::Owned(PyBytes::new(py, &v).unbind()),
    };
    PyMessage {
        source,
        header: d.header,
        fields: d.fields,
        text: d.text,
        extra: d.extra,
        payload,
        payload_view: GILOnceCell::new(),
        warnings: d.warnings,
    }
}

/// decode(buf, strict=False, verify_checksum=True, threads=0) -> Message
///
/// Decodes one AVP message from any buffer (bytes, bytearray, memoryview,
/// mmap, numpy array) without copying the tensor bytes: `Message.payload`
/// is a memoryview into `buf` (kept alive by it) unless the message was
/// compressed. The checksum of large payloads is verified on `threads`
/// threads (0 = automatic, 1 = this thread only) with the GIL released.
/// Compatible mode returns what it tolerated in `Message.warnings`; strict
/// mode raises instead. Raises `PeerError` (a subclass of `AvpError`) with
/// `.kind` such as "truncated" or "checksum_mismatch".
#[pyfunction]
#[pyo3(signature = (buf, strict=false, verify_checksum=true, threads=0))]
pub(crate) fn decode(
    buf: &Bound<'_, PyAny>,
    strict: bool,
    verify_checksum: bool,
    threads: usize,
) -> PyResult<PyMessage> {
    let py = buf.py();
    let opts = decode_options(strict, verify_checksum, threads);
    let (source, result) = with_input(buf, |data, immutable| decode_slice(data, immutable, &opts))?;
    let decoded = result.map_err(|e| errors::codec(py, &e))?;
    Ok(into_message(py, source, decoded))
}

/// peek(buf, strict=False) -> Message
///
/// Header and metadata only (the tensor bytes are neither read nor
/// checksummed); `Message.payload` is None.
#[pyfunction]
#[pyo3(signature = (buf, strict=false))]
pub(crate) fn peek(buf: &Bound<'_, PyAny>, strict: bool) -> PyResult<PyMessage> {
    let py = buf.py();
    let opts = decode_options(strict, true, 1);
    let (source, result) = with_input(buf, |data, immutable| {
        avp_codec::peek_with(data, &opts).map(|p| {
            let header = p.header;
            Decoded::new(
                header,
                p.metadata,
                data,
                immutable,
                DecodedPayload::Absent,
                Vec::new(),
            )
        })
    })?;
    let decoded = result.map_err(|e| errors::codec(py, &e))?;
    Ok(into_message(py, source, decoded))
}

#[pymethods]
impl PyMessage {
    /// Protocol version byte (1).
    #[getter]
    fn version(&self) -> u8 {
        self.header.version
    }
    /// The header flags byte.
    #[getter]
    fn flags(&self) -> u8 {
        self.header.flags.0
    }
    /// Header `payload_length`: metadata plus stored tensor bytes.
    #[getter]
    fn payload_length(&self) -> u32 {
        self.header.payload_length
    }
    /// Header `metadata_length`.
    #[getter]
    fn metadata_length(&self) -> u32 {
        self.header.metadata_length
    }
    /// Bytes the message occupies on the wire (12 + payload_length).
    #[getter]
    fn message_len(&self) -> u64 {
        self.header.message_len()
    }
    /// Whether the tensor bytes were zstd-compressed on the wire.
    #[getter]
    fn compressed(&self) -> bool {
        self.header.flags.compressed()
    }
    #[getter]
    fn session_id(&self, py: Python<'_>) -> &str {
        self.text(py, SESSION)
    }
    #[getter]
    fn source_agent_id(&self, py: Python<'_>) -> &str {
        self.text(py, SOURCE)
    }
    #[getter]
    fn target_agent_id(&self, py: Python<'_>) -> &str {
        self.text(py, TARGET)
    }
    #[getter]
    fn model_id(&self, py: Python<'_>) -> &str {
        self.text(py, MODEL)
    }
    #[getter]
    fn hidden_dim(&self) -> u32 {
        self.fields.hidden_dim
    }
    #[getter]
    fn num_layers(&self) -> u32 {
        self.fields.num_layers
    }
    /// "HIDDEN_STATE" or "KV_CACHE".
    #[getter]
    fn payload_type(&self) -> &'static str {
        self.fields.payload_type.name()
    }
    /// "FLOAT32", "FLOAT16", "BFLOAT16" or "INT8".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.fields.dtype.name()
    }
    #[getter]
    fn tensor_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.fields.tensor_shape.as_slice())
    }
    /// "LATENT" or "JSON".
    #[getter]
    fn mode(&self) -> &'static str {
        self.fields.mode.name()
    }
    /// The metadata `compression` field as sent (None when absent).
    #[getter]
    fn compression(&self, py: Python<'_>) -> Option<&str> {
        self.text
            .has_compression
            .then(|| self.text(py, COMPRESSION))
    }
    #[getter]
    fn avp_map_id(&self, py: Python<'_>) -> &str {
        self.text(py, MAP_ID)
    }
    /// The `extra` map as a new dict.
    #[getter]
    fn extra<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.extra.iter().flat_map(|e| e.iter()) {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
    /// `payload_checksum` (CRC-32 of the uncompressed tensor), None when absent.
    #[getter]
    fn payload_checksum(&self) -> Option<u32> {
        self.fields.payload_checksum
    }
    /// What compatible mode tolerated: a list of (code, description).
    #[getter]
    fn warnings(&self) -> Vec<(&'static str, String)> {
        self.warnings.clone()
    }
    /// The tensor bytes: a read-only memoryview into the input (bytes when
    /// the message was compressed; None after `peek`). It keeps the input
    /// object alive on its own.
    #[getter]
    fn payload(&self, py: Python<'_>) -> PyResult<PyObject> {
        self.payload_view
            .get_or_try_init(py, || match &self.payload {
                Payload::Absent => Ok(py.None()),
                Payload::Owned(b) => Ok(b.clone_ref(py).into_any()),
                Payload::Borrowed { start, end } => {
                    let view = PyMemoryView::from(self.source.bind(py))?;
                    let start = isize::try_from(*start).unwrap_or(isize::MAX);
                    let end = isize::try_from(*end).unwrap_or(isize::MAX);
                    Ok(view.get_item(PySlice::new(py, start, end, 1))?.unbind())
                }
            })
            .map(|v| v.clone_ref(py))
    }
    fn __len__(&self) -> usize {
        usize::try_from(self.header.message_len()).unwrap_or(usize::MAX)
    }
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "avp_rs.Message(payload_type={}, dtype={}, tensor_shape={:?}, model_id={:?}, message_len={})",
            self.fields.payload_type.name(),
            self.fields.dtype.name(),
            self.fields.tensor_shape.as_slice(),
            self.text(py, MODEL),
            self.header.message_len()
        )
    }
}

impl PyMessage {
    /// String field `field` (one of SESSION..COMPRESSION).
    fn text(&self, py: Python<'_>, field: usize) -> &str {
        let bytes = match &self.text.copy {
            Some(copy) => copy.as_ref(),
            None => match &self.source {
                Source::Bytes(b) => b.as_bytes(py),
                Source::View(_) => &[],
            },
        };
        let span = self.text.spans.get(field).copied().unwrap_or_default();
        // Checked as UTF-8 when decoded, and bytes do not change: this
        // re-check of a short string never fails.
        bytes
            .get(span.start..span.start.saturating_add(span.len))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

fn parse_enum<T>(
    py: Python<'_>,
    what: &str,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> PyResult<T> {
    parse(&name.to_ascii_uppercase())
        .ok_or_else(|| errors::usage(py, format!("unknown {what} {name:?}")))
}

/// Builds Metadata from the keyword arguments of `encode`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_metadata(
    py: Python<'_>,
    session_id: String,
    source_agent_id: String,
    target_agent_id: String,
    model_id: String,
    hidden_dim: u32,
    num_layers: u32,
    payload_type: &str,
    dtype: &str,
    tensor_shape: Vec<u32>,
    mode: &str,
    avp_map_id: String,
    extra: Option<&Bound<'_, PyDict>>,
) -> PyResult<Metadata<'static>> {
    let mut m = Metadata::new()
        .with_session_id(session_id)
        .with_source_agent_id(source_agent_id)
        .with_target_agent_id(target_agent_id)
        .with_model_id(model_id)
        .with_hidden_dim(hidden_dim)
        .with_num_layers(num_layers)
        .with_payload_type(parse_enum(
            py,
            "payload_type",
            payload_type,
            PayloadType::from_name,
        )?)
        .with_dtype(parse_enum(py, "dtype", dtype, DataType::from_name)?)
        .with_mode(parse_enum(py, "mode", mode, |s| {
            Mode::from_name(s).or_else(|| (s == "JSON_MODE").then_some(Mode::Json))
        })?)
        .with_avp_map_id(avp_map_id);
    for d in tensor_shape {
        m.tensor_shape.push(d);
    }
    if let Some(extra) = extra {
        for (k, v) in extra.iter() {
            m.extra
                .insert(k.extract::<String>()?, v.extract::<String>()?);
        }
    }
    Ok(m)
}

pub(crate) fn parse_compression(py: Python<'_>, name: Option<&str>) -> PyResult<Compression> {
    match name {
        None => Ok(Compression::None),
        Some(n) => Compression::from_name(&n.to_ascii_lowercase()).ok_or_else(|| {
            errors::usage(
                py,
                format!("unknown compression {n:?} (none, fast, balanced, max)"),
            )
        }),
    }
}

/// encode(payload, *, session_id="", ..., compression=None, threads=0) -> bytes
///
/// Encodes one message byte-identical to the SDK's `encode()`; `payload`
/// is any buffer. `payload_type`, `dtype` and `mode` take the wire names
/// ("KV_CACHE", "FLOAT16", "LATENT"); `compression` is None, "fast",
/// "balanced" or "max". The checksum and copy of large tensors run on
/// `threads` threads with the GIL released.
#[pyfunction]
#[pyo3(signature = (payload, *, session_id=String::new(), source_agent_id=String::new(),
    target_agent_id=String::new(), model_id=String::new(), hidden_dim=0, num_layers=0,
    payload_type="HIDDEN_STATE", dtype="FLOAT32", tensor_shape=Vec::new(), mode="LATENT",
    avp_map_id=String::new(), extra=None, compression=None, threads=0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode<'py>(
    payload: &Bound<'py, PyAny>,
    session_id: String,
    source_agent_id: String,
    target_agent_id: String,
    model_id: String,
    hidden_dim: u32,
    num_layers: u32,
    payload_type: &str,
    dtype: &str,
    tensor_shape: Vec<u32>,
    mode: &str,
    avp_map_id: String,
    extra: Option<&Bound<'py, PyDict>>,
    compression: Option<&str>,
    threads: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = payload.py();
    let metadata = build_metadata(
        py,
        session_id,
        source_agent_id,
        target_agent_id,
        model_id,
        hidden_dim,
        num_layers,
        payload_type,
        dtype,
        tensor_shape,
        mode,
        avp_map_id,
        extra,
    )?;
    let opts = EncodeOptions::DEFAULT
        .with_compression(parse_compression(py, compression)?)
        .with_threads(threads);
    encode_buffer(payload, &metadata, &opts)
}

/// Encodes `metadata` with the bytes of `payload` into a new `bytes`.
pub(crate) fn encode_buffer<'py>(
    payload: &Bound<'py, PyAny>,
    metadata: &Metadata<'_>,
    opts: &EncodeOptions,
) -> PyResult<Bound<'py, PyBytes>> {
    let input = Borrowed::get(payload)?;
    encode_slice(payload.py(), input.as_slice(), metadata, opts)
}

/// Encodes into a new `bytes`. Uncompressed tensors are copied once, straight
/// into the `bytes` object (header and metadata first), on `opts.threads`
/// threads with the GIL released.
pub(crate) fn encode_slice<'py>(
    py: Python<'py>,
    data: &[u8],
    metadata: &Metadata<'_>,
    opts: &EncodeOptions,
) -> PyResult<Bound<'py, PyBytes>> {
    if opts.compression != Compression::None || data.len() < RELEASE_GIL_FROM {
        let out = release_if_large(py, data.len(), || {
            avp_codec::encode_with(metadata, data, opts)
        })
        .map_err(|e| errors::codec(py, &e))?;
        return Ok(PyBytes::new(py, &out));
    }
    let prefix = py
        .allow_threads(|| avp_codec::encode_prefix(metadata, data))
        .map_err(|e| errors::codec(py, &e))?;
    let threads = opts.threads;
    crate::buffer::new_bytes_with(py, prefix.len().saturating_add(data.len()), |out| {
        let (head, tail) = out.split_at_mut(prefix.len());
        head.copy_from_slice(&prefix);
        crate::parts::copy(
            tail,
            &[data],
            crate::parts::threads_for(data.len(), threads),
        );
    })
}

/// The bytes of a Python buffer object, borrowed without a copy.
pub(crate) enum Borrowed<'a> {
    /// A `bytes` object (immutable, no export needed).
    Bytes(&'a [u8]),
    /// Any other exporter.
    Buffer(InputBuffer),
}

impl<'a> Borrowed<'a> {
    pub(crate) fn get(obj: &'a Bound<'_, PyAny>) -> PyResult<Borrowed<'a>> {
        match obj.downcast::<PyBytes>() {
            Ok(b) => Ok(Borrowed::Bytes(b.as_bytes())),
            Err(_) => Ok(Borrowed::Buffer(InputBuffer::get(obj)?)),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Borrowed::Bytes(b) => b,
            Borrowed::Buffer(b) => b.as_slice(),
        }
    }
}

/// StreamDecoder(strict=False): feed bytes as they arrive; `feed` returns
/// how many more bytes are needed (0 once the message is complete), then
/// `finish()` returns the Message. Never allocates more than a bounded
/// amount ahead of the bytes actually received.
#[pyclass(module = "avp_rs", name = "StreamDecoder")]
pub(crate) struct PyStreamDecoder {
    inner: avp_codec::StreamDecoder,
}

#[pymethods]
impl PyStreamDecoder {
    #[new]
    #[pyo3(signature = (strict=false))]
    fn new(strict: bool) -> Self {
        let opts = decode_options(strict, true, 0);
        PyStreamDecoder {
            inner: avp_codec::StreamDecoder::new(opts),
        }
    }

    /// Feeds a chunk (any buffer); returns the number of bytes still needed
    /// (0 when complete). Raises AvpError as soon as the header or metadata
    /// is known to be bad.
    fn feed(&mut self, chunk: &Bound<'_, PyAny>) -> PyResult<usize> {
        let py = chunk.py();
        let input = Borrowed::get(chunk)?;
        match self.inner.feed(input.as_slice()) {
            Ok(avp_codec::Status::NeedMore(n)) => Ok(n.max(1)),
            Ok(avp_codec::Status::Complete(_)) => Ok(0),
            Err(e) => Err(errors::codec(py, &e)),
        }
    }

    /// Bytes buffered so far.
    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    /// Decodes the buffered message (as `decode` would the concatenation).
    fn finish(&self, py: Python<'_>) -> PyResult<PyMessage> {
        let m = self.inner.finish().map_err(|e| errors::codec(py, &e))?;
        let payload = PyBytes::new(py, &m.payload);
        let warnings = owned_warnings(&m.warnings);
        let decoded = Decoded::new(
            m.header,
            m.metadata,
            &[],
            false,
            DecodedPayload::Absent,
            warnings,
        );
        let mut message = into_message(py, Source::Bytes(payload.clone().unbind()), decoded);
        message.payload = Payload::Owned(payload.unbind());
        Ok(message)
    }
}

//! The KV-cache inner format (spec/protocol/kv-cache.md) from Python: the layout of a
//! payload (so `avp_rs.kv_arrays` can make zero-copy numpy views) and
//! `encode_kv`, which writes header, layers and message in one pass.

use avp_codec::kv::{KvCache, KvDtype, KvHeader};
use avp_codec::{Compression, EncodeOptions, HEADER_LEN, Header, Metadata, VERSION};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PySequence};

use crate::errors;
use crate::message::{Borrowed, build_metadata, encode_slice, parse_compression};

/// kv_layout(payload, strict=False) -> (num_layers, num_kv_heads, head_dim, seq_len, dtype, tensor_bytes, warnings)
///
/// Validates a KV-cache payload (inner header, sizes; an unknown dtype byte
/// is an error, never read as float16) and returns its layout. Layer `i`'s
/// K starts at `17 + 2*i*tensor_bytes`, its V `tensor_bytes` later.
#[pyfunction]
#[pyo3(signature = (payload, strict=false))]
#[allow(clippy::type_complexity)]
pub(crate) fn kv_layout(
    payload: &Bound<'_, PyAny>,
    strict: bool,
) -> PyResult<(
    u32,
    u32,
    u32,
    u32,
    &'static str,
    usize,
    Vec<(&'static str, String)>,
)> {
    let py = payload.py();
    let input = Borrowed::get(payload)?;
    let kv = KvCache::parse_with(input.as_slice(), strict).map_err(|e| errors::codec(py, &e))?;
    let h = kv.header;
    let tensor_bytes = usize::try_from(h.tensor_bytes().unwrap_or(0)).unwrap_or(usize::MAX);
    let warnings = kv
        .warnings
        .iter()
        .map(|w| (w.code(), w.to_string()))
        .collect();
    Ok((
        h.num_layers,
        h.num_kv_heads,
        h.head_dim,
        h.seq_len,
        h.dtype.name(),
        tensor_bytes,
        warnings,
    ))
}

fn kv_dtype(py: Python<'_>, name: &str) -> PyResult<KvDtype> {
    match name {
        "float32" => Ok(KvDtype::Float32),
        "float16" => Ok(KvDtype::Float16),
        "bfloat16" => Ok(KvDtype::Bfloat16),
        other => Err(errors::usage(
            py,
            format!("KV dtype {other:?}: expected float32, float16 or bfloat16"),
        )),
    }
}

/// encode_kv(layers, *, num_kv_heads, head_dim, seq_len, dtype, ...metadata..., compression=None, threads=0) -> bytes
///
/// `layers` is a sequence of (K, V) buffers, each `num_kv_heads*seq_len*head_dim`
/// elements of `dtype` ("float32", "float16", "bfloat16"). Writes the KV
/// inner payload and encodes it as a KV_CACHE message (payload_type is
/// forced, metadata dtype follows `dtype`), with the GIL released.
#[pyfunction]
#[pyo3(signature = (layers, *, num_kv_heads, head_dim, seq_len, dtype, session_id=String::new(),
    source_agent_id=String::new(), target_agent_id=String::new(), model_id=String::new(),
    hidden_dim=0, num_layers=0, tensor_shape=Vec::new(), mode="LATENT", avp_map_id=String::new(),
    extra=None, metadata_dtype=None, compression=None, threads=0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_kv<'py>(
    layers: &Bound<'py, PySequence>,
    num_kv_heads: u32,
    head_dim: u32,
    seq_len: u32,
    dtype: &str,
    session_id: String,
    source_agent_id: String,
    target_agent_id: String,
    model_id: String,
    hidden_dim: u32,
    num_layers: u32,
    tensor_shape: Vec<u32>,
    mode: &str,
    avp_map_id: String,
    extra: Option<&Bound<'py, PyDict>>,
    metadata_dtype: Option<&str>,
    compression: Option<&str>,
    threads: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = layers.py();
    let kv_dt = kv_dtype(py, dtype)?;
    let meta_dt = metadata_dtype.unwrap_or(kv_dt.data_type().name());
    let metadata = build_metadata(
        py,
        session_id,
        source_agent_id,
        target_agent_id,
        model_id,
        hidden_dim,
        num_layers,
        "KV_CACHE",
        meta_dt,
        tensor_shape,
        mode,
        avp_map_id,
        extra,
    )?;
    let count = layers.len()?;
    let header = KvHeader {
        num_layers: u32::try_from(count).map_err(|_| errors::usage(py, "too many layers"))?,
        num_kv_heads,
        head_dim,
        seq_len,
        dtype: kv_dt,
    };
    let compression = parse_compression(py, compression)?;
    // Objects first (they own the exports), then the borrows.
    let objects = layer_objects(layers)?;
    let borrowed = objects
        .iter()
        .map(Borrowed::get)
        .collect::<PyResult<Vec<_>>>()?;
    let slices: Vec<&[u8]> = borrowed.iter().map(Borrowed::as_slice).collect();
    if compression != Compression::None {
        // zstd needs the whole payload in one piece anyway.
        let payload = py
            .allow_threads(|| {
                avp_codec::kv::write_kv_cache(
                    &header,
                    slices.chunks_exact(2).filter_map(|p| match p {
                        [k, v] => Some((*k, *v)),
                        _ => None,
                    }),
                )
            })
            .map_err(|e| errors::codec(py, &e))?;
        let opts = EncodeOptions::DEFAULT
            .with_compression(compression)
            .with_threads(threads);
        return encode_slice(py, &payload, &metadata, &opts);
    }
    let payload_len = checked_payload_len(py, &header, &slices)?;
    // One pass over the tensors for the checksum, one copy into the message:
    // the payload never exists on its own (AVP-PY-6).
    let head_bytes = header.to_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(slices.len().saturating_add(1));
    parts.push(&head_bytes);
    parts.extend(slices.iter().copied());
    let threads = crate::parts::threads_for(payload_len, threads);
    let checksum = py.allow_threads(|| crate::parts::crc32(&parts, threads));
    let prefix =
        message_prefix(&metadata, payload_len, checksum).map_err(|e| errors::usage(py, e))?;
    crate::buffer::new_bytes_with(py, prefix.len().saturating_add(payload_len), |out| {
        let (head, body) = out.split_at_mut(prefix.len().min(out.len()));
        head.copy_from_slice(prefix.get(..head.len()).unwrap_or_default());
        crate::parts::copy(body, &parts, threads);
    })
}

/// The payload length (KV header plus every tensor), after checking that
/// each K/V buffer has exactly the size the header declares.
fn checked_payload_len(py: Python<'_>, header: &KvHeader, slices: &[&[u8]]) -> PyResult<usize> {
    let total = header
        .total_bytes()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| errors::usage(py, "KV-cache dimensions overflow"))?;
    let per = usize::try_from(header.tensor_bytes().unwrap_or(0)).unwrap_or(usize::MAX);
    if let Some((i, s)) = slices.iter().enumerate().find(|(_, s)| s.len() != per) {
        return Err(errors::usage(
            py,
            format!("layer {}: K/V must be {per} bytes, got {}", i / 2, s.len()),
        ));
    }
    Ok(total)
}

/// Header and metadata of an uncompressed message whose payload is
/// `payload_len` bytes with CRC-32 `checksum`: the bytes `encode_prefix`
/// writes, without needing the payload in one piece.
fn message_prefix(
    metadata: &Metadata<'_>,
    payload_len: usize,
    checksum: u32,
) -> Result<Vec<u8>, String> {
    let mut metadata = metadata.clone().with_payload_checksum(Some(checksum));
    metadata.compression = None;
    let meta_len = metadata.encoded_len();
    let too_long = || {
        format!(
            "metadata ({meta_len} bytes) plus KV payload ({payload_len} bytes) exceed the u32 payload_length"
        )
    };
    let header = Header {
        version: VERSION,
        flags: avp_codec::flags_for(&metadata, Compression::None),
        payload_length: meta_len
            .checked_add(payload_len)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(too_long)?,
        metadata_length: u32::try_from(meta_len).map_err(|_| too_long())?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(meta_len));
    out.extend_from_slice(&header.to_bytes());
    metadata.write(&mut out);
    Ok(out)
}

/// kv_payload(layers, *, num_kv_heads, head_dim, seq_len, dtype) -> bytes
///
/// The KV inner payload alone (header, then K0 V0 K1 V1 ...), written in one
/// pass with the GIL released: what the SDK's `serialize_kv_cache` returns.
#[pyfunction]
#[pyo3(signature = (layers, *, num_kv_heads, head_dim, seq_len, dtype))]
pub(crate) fn kv_payload<'py>(
    layers: &Bound<'py, PySequence>,
    num_kv_heads: u32,
    head_dim: u32,
    seq_len: u32,
    dtype: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = layers.py();
    let header = KvHeader {
        num_layers: u32::try_from(layers.len()?)
            .map_err(|_| errors::usage(py, "too many layers"))?,
        num_kv_heads,
        head_dim,
        seq_len,
        dtype: kv_dtype(py, dtype)?,
    };
    let total = header
        .total_bytes()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| errors::usage(py, "KV-cache dimensions overflow"))?;
    let per = usize::try_from(header.tensor_bytes().unwrap_or(0)).unwrap_or(usize::MAX);
    let objects = layer_objects(layers)?;
    let borrowed = objects
        .iter()
        .map(Borrowed::get)
        .collect::<PyResult<Vec<_>>>()?;
    let slices: Vec<&[u8]> = borrowed.iter().map(Borrowed::as_slice).collect();
    if let Some((i, s)) = slices.iter().enumerate().find(|(_, s)| s.len() != per) {
        return Err(errors::usage(
            py,
            format!("layer {}: K/V must be {per} bytes, got {}", i / 2, s.len()),
        ));
    }
    // Written straight into the bytes object: one copy of the tensors.
    let head_bytes = header.to_bytes();
    crate::buffer::new_bytes_with(py, total, |out| {
        let (head, mut rest) = out.split_at_mut(head_bytes.len().min(out.len()));
        head.copy_from_slice(head_bytes.get(..head.len()).unwrap_or_default());
        for s in &slices {
            let n = s.len().min(rest.len());
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(n);
            let src = s.get(..dst.len()).unwrap_or_default();
            crate::parts::copy(dst, &[src], crate::parts::threads_for(src.len(), 0));
            rest = tail;
        }
    })
}

/// The K and V objects of every layer, in wire order.
fn layer_objects<'py>(layers: &Bound<'py, PySequence>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let mut objects = Vec::new();
    for layer in layers.try_iter()? {
        let (k, v): (Bound<'py, PyAny>, Bound<'py, PyAny>) = layer?.extract()?;
        objects.push(k);
        objects.push(v);
    }
    Ok(objects)
}

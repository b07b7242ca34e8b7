//! zstd for the SDK drop-in (`avp.compression.compress` / `decompress`),
//! with the decoder's limits: the SDK's `decompress` allocates whatever a
//! frame header declares (a "zstd bomb"); ours stops at the cap of
//! spec/protocol/limits.md and raises `limit_exceeded` (AVP-PY-5).

use std::io::Read;

use avp_codec::Limits;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{self, Party};
use crate::message::Borrowed;

/// zstd_compress(data, level) -> bytes: one zstd frame, as python-zstandard writes.
#[pyfunction]
pub(crate) fn zstd_compress<'py>(
    data: &Bound<'py, PyAny>,
    level: i32,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = data.py();
    let input = Borrowed::get(data)?;
    let slice = input.as_slice();
    let out = py
        .allow_threads(|| zstd::bulk::compress(slice, level))
        .map_err(|e| {
            errors::raise(
                py,
                Party::Us,
                "internal",
                &format!("zstd compression failed: {e}"),
            )
        })?;
    Ok(PyBytes::new(py, &out))
}

/// zstd_decompress(data, max_len=None) -> bytes: the first frame's content,
/// refused with `limit_exceeded` beyond `max_len` (default: the decoder's
/// cap for this many compressed bytes).
#[pyfunction]
#[pyo3(signature = (data, max_len=None))]
pub(crate) fn zstd_decompress<'py>(
    data: &Bound<'py, PyAny>,
    max_len: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = data.py();
    let input = Borrowed::get(data)?;
    let slice = input.as_slice();
    let cap = max_len.unwrap_or_else(|| Limits::DEFAULT.decompressed_cap(slice.len()));
    let result = py.allow_threads(|| -> Result<Vec<u8>, (&'static str, String)> {
        let mut decoder = zstd::stream::read::Decoder::with_buffer(slice)
            .map_err(|e| ("decompression", e.to_string()))?
            .single_frame();
        let mut out = Vec::new();
        // Read at most cap + 1 bytes: one more than allowed proves the bomb
        // without ever holding more than the cap.
        (&mut decoder)
            .take(cap.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| ("decompression", e.to_string()))?;
        if out.len() as u64 > cap {
            return Err((
                "limit_exceeded",
                format!("zstd frame decompresses to more than {cap} bytes"),
            ));
        }
        Ok(out)
    });
    match result {
        Ok(out) => Ok(PyBytes::new(py, &out)),
        Err((kind, message)) => Err(errors::raise(py, Party::Peer, kind, &message)),
    }
}

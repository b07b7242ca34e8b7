//! `avp_rs._native`: the Rust half of the `avp_rs` Python package
//! (python/avp_rs/ is the Python half: numpy views, the SDK drop-in, stubs).
//!
//! Thin glue over the workspace crates; no protocol logic lives here, so the
//! package and the CLI give the same answers (spec/python.md, AVP-PY-*).
//! - [`message`]: decode / peek / encode / streaming, zero-copy over any buffer;
//! - [`kv`]: KV-cache layout and one-pass KV encoding;
//! - [`hashing`]: model, tokenizer and weights hashes, identities;
//! - [`mac`]: keyed MAC sign / verify;
//! - [`zstd_compat`]: bounded zstd for the SDK drop-in;
//! - [`conformance`]: the conformance runner;
//! - [`errors`]: the exception hierarchy;
//! - [`buffer`]: the C API pyo3's abi3-py39 lacks (the crate's only `unsafe`).
// `deny`, not `forbid`: `buffer` must opt back in (the C buffer API), and
// pyo3's macros expand to code that carries its own `allow(unsafe_code)`.
#![deny(unsafe_code)]

mod buffer;
mod conformance;
mod errors;
mod hashing;
mod kv;
mod mac;
mod message;
mod zstd_compat;

use pyo3::prelude::*;

/// The native module. Import `avp_rs`, not this.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<message::PyMessage>()?;
    m.add_class::<message::PyStreamDecoder>()?;
    m.add_function(wrap_pyfunction!(message::decode, m)?)?;
    m.add_function(wrap_pyfunction!(message::peek, m)?)?;
    m.add_function(wrap_pyfunction!(message::encode, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_layout, m)?)?;
    m.add_function(wrap_pyfunction!(kv::encode_kv, m)?)?;
    m.add_function(wrap_pyfunction!(kv::kv_payload, m)?)?;
    m.add_function(wrap_pyfunction!(zstd_compat::zstd_compress, m)?)?;
    m.add_function(wrap_pyfunction!(zstd_compat::zstd_decompress, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::model_hash_json, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::tokenizer_hash_json, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::tokenizer_hash_file, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::weights_digest, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::identity_json, m)?)?;
    m.add_function(wrap_pyfunction!(mac::mac_sign, m)?)?;
    m.add_function(wrap_pyfunction!(mac::mac_verify, m)?)?;
    m.add_function(wrap_pyfunction!(conformance::run_json, m)?)?;
    m.add("crc32", wrap_pyfunction!(crc32, m)?)?;
    m.add_function(wrap_pyfunction!(copy_into, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::tokenizer_hash_dict, m)?)?;
    Ok(())
}

/// crc32(buf, threads=0) -> int: the AVP payload checksum (zlib's CRC-32)
/// of any buffer, in parallel for large inputs, with the GIL released.
#[pyfunction]
#[pyo3(signature = (buf, threads=0))]
fn crc32(buf: &Bound<'_, PyAny>, threads: usize) -> PyResult<u32> {
    let input = message::Borrowed::get(buf)?;
    let data = input.as_slice();
    Ok(buf
        .py()
        .allow_threads(|| avp_codec::checksum::crc32_with_threads(data, threads)))
}

/// copy_into(dst, src, offset=0, threads=0) -> None: copies all of `src` into
/// the writable buffer `dst` from `offset` (a torch tensor's numpy view, a
/// bytearray), on `threads` threads with the GIL released. Lets the SDK
/// drop-in hand torch one buffer it owns with a single parallel copy.
#[pyfunction]
#[pyo3(signature = (dst, src, offset=0, threads=0))]
fn copy_into(
    dst: &Bound<'_, PyAny>,
    src: &Bound<'_, PyAny>,
    offset: usize,
    threads: usize,
) -> PyResult<()> {
    let py = dst.py();
    let mut out = buffer::InputBuffer::get_writable(dst)?;
    let input = message::Borrowed::get(src)?;
    let data = input.as_slice();
    let target = out
        .as_mut_slice()
        .ok_or_else(|| errors::usage(py, "copy_into: destination is read-only"))?;
    let end = offset
        .checked_add(data.len())
        .filter(|&e| e <= target.len())
        .ok_or_else(|| {
            errors::usage(
                py,
                format!(
                    "copy_into: {} bytes at {offset} exceed the destination ({} bytes)",
                    data.len(),
                    target.len()
                ),
            )
        })?;
    let dst_slice = target.get_mut(offset..end).unwrap_or_default();
    py.allow_threads(|| avp_codec::checksum::copy_with_threads(dst_slice, data, threads));
    Ok(())
}

//! `avp_rs._native`: the Rust half of the `avp_rs` Python package
//! (python/avp_rs/ is the Python half: numpy views, the SDK drop-in, stubs).
//!
//! Thin glue over the workspace crates; no protocol logic lives here, so the
//! package and the CLI give the same answers (spec/impl/python.md, AVP-PY-*).
//! - [`message`]: decode / peek / encode / streaming, zero-copy over any buffer;
//! - [`kv`]: KV-cache layout and one-pass KV encoding;
//! - [`hashing`]: model, tokenizer and weights hashes, identities, resolution;
//! - [`mac`]: keyed MAC sign / verify;
//! - [`parts`]: checksum and copy of a payload given in pieces (KV layers);
//! - [`zstd_compat`]: bounded zstd for the SDK drop-in;
//! - [`conformance`]: the conformance runner;
//! - [`errors`]: the exception hierarchy;
//! - [`buffer`]: the C API pyo3's abi3-py39 lacks (the crate's only `unsafe`).
// `deny`, not `forbid`: `buffer` must opt back in (the C buffer API), and
// pyo3's macros expand to code that carries its own `allow(unsafe_code)`.
#![deny(unsafe_code)]

mod buffer; // the one unsafe module: buffer protocol and UTF-8 C API
mod conformance; // the conformance runner in process
mod errors; // one exception hierarchy with the CLI's kinds
mod hashing; // model, tokenizer and weights hashes
mod kv; // KV-cache payloads as numpy views
mod mac; // MAC sign and verify
mod message; // decode, peek, encode, streaming decoder
mod parts; // checksum and copy of a payload in pieces (KV layers)
mod zstd_compat; // zstd for the SDK drop-in

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
    m.add_function(wrap_pyfunction!(hashing::tokenizer_hash_dict, m)?)?;
    m.add_function(wrap_pyfunction!(hashing::resolve_json, m)?)?;
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

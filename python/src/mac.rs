//! Keyed BLAKE3 message authentication (spec/protocol/mac.md, AVP-MAC-*).

use avp_codec::Limits;
use avp_codec::mac::MacKey;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;
use crate::message::Borrowed;

fn key(py: Python<'_>, key: &[u8]) -> PyResult<MacKey> {
    MacKey::from_key_file_bytes(key).map_err(|e| errors::codec(py, &e))
}

/// mac_sign(message, key) -> bytes: `message` (an unsigned AVP message
/// carrying the placeholder tag, as `encode(..., extra={"avp.mac": "0"*64})`
/// writes) with its tag filled in. `key` is the key file's bytes.
#[pyfunction]
pub(crate) fn mac_sign<'py>(
    message: &Bound<'py, PyAny>,
    key_bytes: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let py = message.py();
    let k = key(py, key_bytes)?;
    let input = Borrowed::get(message)?;
    let mut out = input.as_slice().to_vec();
    py.allow_threads(|| avp_codec::mac::sign_in_place(&mut out, &k, &Limits::DEFAULT))
        .map_err(|e| errors::codec(py, &e))?;
    Ok(PyBytes::new(py, &out))
}

/// mac_verify(message, key) -> None: raises PeerError(kind="bad_mac") unless
/// the message carries exactly one valid tag for `key` (AVP-MAC-5).
#[pyfunction]
pub(crate) fn mac_verify(message: &Bound<'_, PyAny>, key_bytes: &[u8]) -> PyResult<()> {
    let py = message.py();
    let k = key(py, key_bytes)?;
    let input = Borrowed::get(message)?;
    let data = input.as_slice();
    py.allow_threads(|| avp_codec::mac::verify(data, &k, &Limits::DEFAULT))
        .map_err(|e| errors::codec(py, &e))
}

//! One exception hierarchy for everything the package raises (spec/impl/python.md,
//! AVP-PY-1): `AvpError` with a stable `.kind` string (the CLI's and the
//! conformance suite's vocabulary, AVP-ERR-1), and one subclass per party at
//! fault, so callers can tell "reject these bytes" from "fix the call".

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    avp_rs,
    AvpError,
    PyException,
    "Base of every avp_rs error; `.kind` is the stable kind string (e.g. \"checksum_mismatch\")."
);
create_exception!(
    avp_rs,
    PeerError,
    AvpError,
    "The input (bytes received, a file read) is at fault: reject it."
);
create_exception!(
    avp_rs,
    UsageError,
    AvpError,
    "The call is at fault (an impossible argument); never caused by received bytes."
);
create_exception!(
    avp_rs,
    InternalError,
    AvpError,
    "A bug in avp_rs (an invariant did not hold). Please report it."
);

/// Who is at fault, which picks the exception class.
#[derive(Clone, Copy)]
pub(crate) enum Party {
    Peer,
    Caller,
    Us,
}

/// Builds the exception of `party` with `.kind` set.
pub(crate) fn raise(py: Python<'_>, party: Party, kind: &str, message: &str) -> PyErr {
    let err = match party {
        Party::Peer => PeerError::new_err(message.to_owned()),
        Party::Caller => UsageError::new_err(message.to_owned()),
        Party::Us => InternalError::new_err(message.to_owned()),
    };
    // Setting an attribute on a fresh exception instance cannot fail in
    // practice; if it did, the exception is still raised, only without .kind.
    let _ = err.value(py).setattr("kind", kind);
    err
}

/// A codec error as a Python exception (same kind strings as the CLI).
pub(crate) fn codec(py: Python<'_>, e: &avp_codec::Error) -> PyErr {
    let kind = e.kind();
    let party = match kind {
        avp_codec::ErrorKind::InvalidArgument => Party::Caller,
        avp_codec::ErrorKind::Internal => Party::Us,
        _ => Party::Peer,
    };
    raise(py, party, kind.as_str(), &e.to_string())
}

/// A handshake error as a Python exception (AVP-PY-2 names the kinds).
pub(crate) fn handshake(py: Python<'_>, e: &avp_handshake::Error) -> PyErr {
    use avp_handshake::Error as E;
    let (party, kind) = match e {
        E::Json(_) => (Party::Peer, "invalid_json"),
        E::Field { .. } => (Party::Peer, "invalid_field"),
        E::Tokenizer(_) => (Party::Peer, "invalid_tokenizer"),
        E::Safetensors(_) => (Party::Peer, "invalid_safetensors"),
        E::DuplicateTensor(_) => (Party::Peer, "duplicate_tensor"),
        E::Io { .. } => (Party::Peer, "io"),
        E::TooDeepToWrite => (Party::Caller, "too_deep"),
        E::DuplicateSession(_) => (Party::Caller, "duplicate_session"),
        _ => (Party::Us, "internal"),
    };
    raise(py, party, kind, &e.to_string())
}

/// An API-misuse error with kind `invalid_argument`.
pub(crate) fn usage(py: Python<'_>, message: impl AsRef<str>) -> PyErr {
    raise(py, Party::Caller, "invalid_argument", message.as_ref())
}

/// Registers the classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("AvpError", py.get_type::<AvpError>())?;
    m.add("PeerError", py.get_type::<PeerError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

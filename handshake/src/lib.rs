//! AVP handshake (spec/handshake.md): model identities, Python-exact hashes,
//! mode negotiation and sessions. Sans-I/O.
#![forbid(unsafe_code)]

//! The AVP HTTP binding (spec/http.md): server, client and router.
#![forbid(unsafe_code)]

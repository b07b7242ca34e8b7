//! AVP conformance suite (spec/conformance.md): golden corpus, runner and the
//! adapter protocol that lets any implementation be checked.
#![forbid(unsafe_code)]

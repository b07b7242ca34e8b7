//! Canonical JSON (AVP-HASH-1): parse -> write -> parse -> write is stable (avp_handshake::fuzzing::check_canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_handshake::fuzzing::check_canonical(data));

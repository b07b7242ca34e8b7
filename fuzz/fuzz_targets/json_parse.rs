//! Handshake JSON parser: every writer form re-parses and re-writes identically (avp_handshake::fuzzing::check_json_parse).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    avp_handshake::fuzzing::check_json_parse(data);
});

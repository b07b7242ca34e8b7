//! JSON fallback parser and writer round trip (avp_codec::fuzzing::check_json).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_json(data));

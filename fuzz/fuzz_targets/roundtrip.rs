//! decode -> encode -> decode agrees (avp_codec::fuzzing::check_roundtrip).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    avp_codec::fuzzing::check_roundtrip(data);
});

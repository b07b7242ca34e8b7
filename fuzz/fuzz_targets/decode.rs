//! Whole-message decode in compatible and strict mode; peek agrees (avp_codec::fuzzing::check_decode_modes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    avp_codec::fuzzing::check_decode_modes(data);
});

//! peek needs only header + metadata and agrees with itself on that prefix (avp_codec::fuzzing::check_peek).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_peek(data));

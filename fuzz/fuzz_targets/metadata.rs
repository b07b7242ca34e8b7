//! Metadata protobuf parse -> write -> parse is stable (avp_codec::fuzzing::check_metadata).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_metadata(data));

//! StreamDecoder fed at input-chosen split points, and parse_message over the buffer, agree with one-shot decode (avp_codec::fuzzing::check_incremental_chunks).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_incremental_chunks(data));

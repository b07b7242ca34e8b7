//! Chunked contexts: assemble any bytes as chunks, and split + assemble a context the bytes shape (avp_codec::fuzzing::check_chunk_assembly).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_chunk_assembly(data));

//! Extended KV inner format (quantized/delta): parse, sections, dequantize (avp_codec::fuzzing::check_kv_ext).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_kv_ext(data));

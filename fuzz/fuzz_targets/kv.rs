//! KV-cache inner format: parse, layer views, rewrite (avp_codec::fuzzing::check_kv).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_kv(data));

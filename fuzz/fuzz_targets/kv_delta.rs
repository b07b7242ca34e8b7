//! Delta KV: split a KV v1 payload and assemble it back (avp_codec::fuzzing::check_kv_delta).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_kv_delta(data));

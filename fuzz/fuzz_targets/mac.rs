//! MAC verify never panics and the streamed verifier agrees with it; signing any decodable message verifies, a flipped byte does not (avp_codec::fuzzing::check_mac).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| avp_codec::fuzzing::check_mac(data));

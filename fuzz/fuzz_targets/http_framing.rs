//! The HTTP framing the server parses itself: the first-head scan and the
//! header values it interprets (avp_transport::framing::fuzzing::check).
//! framing.rs depends on std only, so it is compiled in directly: linking the
//! whole transport crate would build tokio, hyper and ring with coverage
//! instrumentation for a target that never touches them.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../transport/src/framing.rs"]
#[allow(dead_code, unreachable_pub)]
mod framing;

fuzz_target!(|data: &[u8]| framing::fuzzing::check(data));

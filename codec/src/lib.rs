//! The AVP v1 wire codec (spec/protocol/wire.md).
//!
//! Sans-I/O and dependency-light so that it can be embedded in a router that
//! never touches a GPU: no panics on any input, every declared length checked
//! before anything is sliced or allocated.
//!
//! - [`peek`]: header and metadata only, cost independent of the tensor size.
//! - [`decode`] / [`decode_with`]: zero-copy (the payload borrows the input
//!   unless it was compressed), checksum verified, limits enforced,
//!   compatible or strict mode ([`DecodeOptions`]), warnings returned.
//! - [`parse_header`] / [`parse_prefix`] / [`parse_message`]: incremental,
//!   over the caller's buffer, no copy: [`Status::Complete`] or
//!   [`Status::NeedMore`]`(n)` (the `stream` module docs show a router);
//!   [`StreamDecoder`] buffers chunks the caller cannot keep.
//! - [`encode`]: byte-identical to the SDK's `encode()`; [`encode_into`]
//!   reuses an output buffer, [`encode_prefix`] returns header + metadata only
//!   so a transport can send the tensor without copying it. Encoding and
//!   decoding stay on the caller's thread unless [`EncodeOptions::threads`] /
//!   [`DecodeOptions::checksum_threads`] opt in to more (AVP-API-4).
//! - [`Metadata`] borrows its strings from the input; its [`Shape`] and
//!   [`Extra`] fields keep a typical decode free of heap allocations.
//! - [`crc32`] / [`checksum`]: the payload checksum ([`checksum::crc32_with_threads`]
//!   splits large tensors across threads on request).
//! - [`kv`]: the KV-cache inner format; [`json`]: the JSON fallback message.
//! - [`kv_quant`]: quantized/delta KV (extended inner format); [`kv_delta`]:
//!   prefix addresses (feature `kv-delta`), split and assembly.
//! - [`chunk`]: a context as a sequence of layer-range messages: descriptor,
//!   splitter, assembler (digest with feature `kv-chunked`).
//! - `mac` (feature `mac`): the optional keyed BLAKE3 MAC of spec/protocol/mac.md.
#![forbid(unsafe_code)]
#![warn(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

pub mod checksum; // payload CRC-32, threads on request
mod compress; // zstd payload compression with bomb limits
mod decode; // peek and decode of whole messages
mod encode; // encode, byte-identical to the SDK
mod error; // the crate's one error type
mod extra; // the Metadata `extra` map
mod f16; // binary16/bfloat16 conversions, branch-free for vectorised loops
mod header; // the fixed 12-byte header
mod limits; // decoder limits and their defaults
mod metadata; // the Metadata protobuf: types, parser, writer
mod proto; // minimal proto3 wire reading/writing
mod shape; // the `tensor_shape` list
mod stream; // incremental parsing: Complete / NeedMore(n)
mod warning; // what compatible mode tolerates and strict refuses

pub mod json; // the JSON fallback message
pub mod kv; // the KV-cache inner format v1
pub mod tensor; // typed zero-copy views of tensor bytes

// KV extensions (spec/protocol/kv-quant.md, kv-delta.md): quantized and delta KV.
pub mod kv_delta; // shared-prefix addresses, split and assembly
pub mod kv_quant; // the extended (quantized/delta) KV inner format

// Chunked contexts (spec/protocol/chunked.md): one context as several messages.
pub mod chunk; // chunk descriptors, the splitter and the sans-I/O assembler

#[doc(hidden)]
pub mod fuzzing; // shared oracles for tests, proptest and fuzz

pub use compress::Compression;
pub use decode::{
    DecodeOptions, Message, Peeked, check_header, check_streamed, decode, decode_with, peek,
    peek_with,
};
pub use encode::{
    EncodeOptions, encode, encode_into, encode_into_with, encode_prefix, encode_with, encoded_len,
    flags_for,
};
pub use error::{Error, ErrorKind};
pub use extra::Extra;
pub use header::{Flags, HEADER_LEN, Header, MAGIC, VERSION};
pub use limits::Limits;
pub use metadata::{DataType, Metadata, Mode, PayloadType};
pub use shape::Shape;
pub use stream::{Status, StreamDecoder, parse_header, parse_message, parse_prefix};
pub use warning::Warning;

#[cfg(feature = "mac")]
pub mod mac; // the optional keyed BLAKE3 MAC

#[cfg(feature = "bytes")]
mod owned; // decoded messages that own `bytes::Bytes` payloads
#[cfg(feature = "bytes")]
pub use owned::{OwnedMessage, decode_bytes};

/// The AVP payload checksum (AVP-WIRE-15): CRC-32 (IEEE, as zlib's `crc32`),
/// SIMD-accelerated where the CPU allows, on the caller's thread (AVP-API-4).
pub fn crc32(bytes: &[u8]) -> u32 {
    checksum::crc32_with_threads(bytes, 1)
}

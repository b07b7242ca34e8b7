//! The AVP v1 wire codec (spec/wire.md).
//!
//! Sans-I/O and dependency-light so that it can be embedded in a router that
//! never touches a GPU: no panics on any input, every declared length checked
//! before anything is sliced or allocated.
#![forbid(unsafe_code)]

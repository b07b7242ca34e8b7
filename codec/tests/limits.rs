//! One test per decoder limit (spec/limits.md), each checked at the edge:
//! exactly at the limit decodes, one past it is `limit_exceeded`.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::borrow::Cow;

use avp_codec::{
    Compression, DecodeOptions, ErrorKind, Limits, Metadata, Status, StreamDecoder, decode_with,
    encode,
};

fn opts(l: Limits) -> DecodeOptions {
    DecodeOptions::default().with_limits(l)
}

fn kind(bytes: &[u8], l: Limits) -> Option<ErrorKind> {
    decode_with(bytes, &opts(l)).err().map(|e| e.kind())
}

#[test]
fn lim_1_metadata_length() {
    let m = Metadata {
        model_id: Cow::Borrowed("model"),
        ..Metadata::default()
    };
    let bytes = encode(&m, b"t", Compression::None).unwrap();
    let ml = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    assert_eq!(
        kind(&bytes, Limits::default().with_max_metadata_len(ml)),
        None
    );
    assert_eq!(
        kind(&bytes, Limits::default().with_max_metadata_len(ml - 1)),
        Some(ErrorKind::LimitExceeded)
    );
}

#[test]
fn lim_2_payload_length_is_checked_on_the_header_alone() {
    let bytes = encode(&Metadata::default(), &[0u8; 100], Compression::None).unwrap();
    let pl = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    assert_eq!(
        kind(&bytes, Limits::default().with_max_payload_len(pl)),
        None
    );
    let tight = Limits::default().with_max_payload_len(pl - 1);
    // Only the header is needed to refuse, in one shot and in a stream.
    assert_eq!(kind(&bytes[..12], tight), Some(ErrorKind::LimitExceeded));
    let mut s = StreamDecoder::new(opts(tight));
    assert_eq!(s.feed(&bytes[..11]).unwrap(), Status::NeedMore(1));
    assert_eq!(
        s.feed(&bytes[11..12]).unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
}

#[cfg(feature = "zstd")]
#[test]
fn lim_3_decompressed_size_checked_before_allocating() {
    let tensor = vec![7u8; 10_000];
    let bytes = encode(&Metadata::default(), &tensor, Compression::Fast).unwrap();
    assert!(bytes.len() < 200, "compressible");
    assert_eq!(
        kind(&bytes, Limits::default().with_max_decompressed_len(10_000)),
        None
    );
    assert_eq!(
        kind(&bytes, Limits::default().with_max_decompressed_len(9_999)),
        Some(ErrorKind::LimitExceeded)
    );
}

#[test]
fn lim_4_shape_rank() {
    let m = Metadata {
        tensor_shape: vec![1; 5],
        ..Metadata::default()
    };
    let bytes = encode(&m, &[0u8; 4], Compression::None).unwrap();
    assert_eq!(kind(&bytes, Limits::default().with_max_shape_rank(5)), None);
    assert_eq!(
        kind(&bytes, Limits::default().with_max_shape_rank(4)),
        Some(ErrorKind::LimitExceeded)
    );
}

#[test]
fn lim_5_extra_entries() {
    let mut m = Metadata::default();
    for k in ["a", "b", "c"] {
        m.extra.insert(Cow::Borrowed(k), Cow::Borrowed("v"));
    }
    let bytes = encode(&m, b"", Compression::None).unwrap();
    assert_eq!(
        kind(&bytes, Limits::default().with_max_extra_entries(3)),
        None
    );
    assert_eq!(
        kind(&bytes, Limits::default().with_max_extra_entries(2)),
        Some(ErrorKind::LimitExceeded)
    );
}

#[test]
fn lim_6_group_depth() {
    // Metadata = field 20 start-group x3, end-group x3 (unknown, skipped).
    let meta: Vec<u8> = [0xa3u8, 0x01]
        .repeat(3)
        .into_iter()
        .chain([0xa4u8, 0x01].repeat(3))
        .collect();
    let mut bytes = vec![0x41, 0x56, 1, 0];
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&meta);
    assert_eq!(
        kind(&bytes, Limits::default().with_max_group_depth(3)),
        None
    );
    assert_eq!(
        kind(&bytes, Limits::default().with_max_group_depth(2)),
        Some(ErrorKind::LimitExceeded)
    );
}

#[test]
fn lim_7_json_depth() {
    let ok = format!(
        "{{\"extra\": {{\"k\": {}1{}}}}}",
        "[".repeat(61),
        "]".repeat(61)
    );
    assert!(avp_codec::json::JsonMessage::from_json(&ok).is_ok());
    let deep = format!(
        "{{\"extra\": {{\"k\": {}1{}}}}}",
        "[".repeat(62),
        "]".repeat(62)
    );
    assert_eq!(
        avp_codec::json::JsonMessage::from_json(&deep)
            .unwrap_err()
            .kind(),
        ErrorKind::LimitExceeded
    );
}

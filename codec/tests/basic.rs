//! Behaviour tests for the public API that do not need the golden vectors.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::borrow::Cow;

use avp_codec::{
    Compression, DataType, DecodeOptions, ErrorKind, HEADER_LEN, Limits, Metadata, Mode,
    PayloadType, Status, StreamDecoder, Warning, decode, decode_with, encode, encoded_len, peek,
};

fn sample() -> (Metadata<'static>, Vec<u8>) {
    let mut m = Metadata {
        session_id: Cow::Borrowed("s"),
        model_id: Cow::Borrowed("m"),
        hidden_dim: 4,
        dtype: DataType::Float32,
        tensor_shape: vec![1, 4],
        mode: Mode::Latent,
        avp_map_id: Cow::Borrowed("map"),
        ..Metadata::default()
    };
    m.extra.insert(Cow::Borrowed("b"), Cow::Borrowed("2"));
    m.extra.insert(Cow::Borrowed("a"), Cow::Borrowed("1"));
    (m, (0u8..16).collect())
}

#[test]
fn wire_22_encode_then_decode_is_zero_copy_and_checked() {
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    assert_eq!(encoded_len(&m, &t).unwrap(), bytes.len());
    let msg = decode(&bytes).unwrap();
    assert!(matches!(msg.payload, Cow::Borrowed(_)));
    assert_eq!(&*msg.payload, &t[..]);
    assert_eq!(msg.metadata.payload_checksum, Some(crc32fast::hash(&t)));
    assert!(msg.warnings.is_empty());
    assert_eq!(msg.header.flags.0, 0x02);
    assert!(avp_codec::fuzzing::check_roundtrip(&bytes));
}

#[test]
fn wire_21_peek_needs_only_header_and_metadata() {
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    let meta_end = HEADER_LEN + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let p = peek(&bytes[..meta_end]).unwrap();
    assert_eq!(p.metadata.model_id, "m");
    assert_eq!(p.message_len(), bytes.len() as u64);
    assert_eq!(
        peek(&bytes[..meta_end - 1]).unwrap_err().kind(),
        ErrorKind::Truncated
    );
}

#[test]
fn wire_15_checksum_mismatch_is_detected() {
    let (m, t) = sample();
    let mut bytes = encode(&m, &t, Compression::None).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    assert_eq!(
        decode(&bytes).unwrap_err().kind(),
        ErrorKind::ChecksumMismatch
    );
}

#[test]
fn wire_20_trailing_bytes_warn_in_compatible_and_fail_in_strict() {
    let (m, t) = sample();
    let mut bytes = encode(&m, &t, Compression::None).unwrap();
    bytes.push(0);
    let msg = decode(&bytes).unwrap();
    assert_eq!(msg.warnings, vec![Warning::TrailingBytes { count: 1 }]);
    let e = decode_with(&bytes, &DecodeOptions::strict()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Inconsistent);
}

#[test]
fn lim_1_metadata_limit_is_checked_before_parsing() {
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    let opts = DecodeOptions::default().with_limits(Limits::default().with_max_metadata_len(4));
    assert_eq!(
        decode_with(&bytes, &opts).unwrap_err().kind(),
        ErrorKind::LimitExceeded
    );
}

#[test]
fn wire_23_stream_decoder_reports_need_more() {
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    let mut d = StreamDecoder::new(DecodeOptions::default());
    assert_eq!(
        d.feed(&bytes[..5]).unwrap(),
        Status::NeedMore(HEADER_LEN - 5)
    );
    assert_eq!(
        d.feed(&bytes[5..12]).unwrap(),
        Status::NeedMore(bytes.len() - 12)
    );
    assert_eq!(d.feed(&bytes[12..]).unwrap(), Status::Complete);
    assert_eq!(d.finish().unwrap().payload, decode(&bytes).unwrap().payload);
    for split in 0..=bytes.len() {
        avp_codec::fuzzing::check_incremental(&bytes, split);
    }
}

#[test]
fn wire_13_kv_flag_follows_payload_type() {
    let (mut m, t) = sample();
    m.payload_type = PayloadType::KvCache;
    let bytes = encode(&m, &t, Compression::None).unwrap();
    assert_eq!(bytes[3], 0x06);
}

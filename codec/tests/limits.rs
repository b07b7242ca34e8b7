//! One test per decoder limit (spec/protocol/limits.md), each checked at the edge:
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
    let m = Metadata::new().with_model_id(Cow::Borrowed("model"));
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
    let m = Metadata::new().with_tensor_shape(vec![1; 5]);
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

#[cfg(feature = "zstd")]
#[test]
fn lim_10_decompression_ratio_refuses_a_bomb_before_producing_anything() {
    // 4 MiB of zeros compress to a few hundred bytes: ratio far above 1024.
    let tensor = vec![0u8; 4 << 20];
    let bytes = encode(&Metadata::default(), &tensor, Compression::Fast).unwrap();
    let stored = bytes.len();
    assert!(stored < 4096, "compressible: {stored}");
    // Under the default 16 MiB ratio-free allowance it decodes.
    assert_eq!(kind(&bytes, Limits::default()), None);
    // With the allowance lowered, the ratio decides, at the edge.
    let free_1mib = Limits::default().with_ratio_free_len(1 << 20);
    assert_eq!(kind(&bytes, free_1mib), Some(ErrorKind::LimitExceeded));
    let e = decode_with(&bytes, &opts(free_1mib)).unwrap_err();
    assert!(e.message().contains("AVP-LIM-10"), "{e}");
    // The payload occupies stored - 12 - metadata bytes; find the ratio that just fits.
    let meta_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let frame = (stored - 12 - meta_len) as u32;
    let just = (4u32 << 20).div_ceil(frame);
    assert_eq!(
        kind(&bytes, free_1mib.with_max_decompression_ratio(just)),
        None
    );
    assert_eq!(
        kind(&bytes, free_1mib.with_max_decompression_ratio(just - 1)),
        Some(ErrorKind::LimitExceeded)
    );
    // 0 turns the ratio check off.
    assert_eq!(
        kind(&bytes, free_1mib.with_max_decompression_ratio(0)),
        None
    );
}

/// AVP-LIM-11: an `extra` key or value longer than the limit is refused.
#[test]
fn lim_11_extra_string_len() {
    let mut m = Metadata::default();
    m.extra
        .insert(Cow::Borrowed("k"), Cow::Owned("v".repeat(1000)));
    m.extra
        .insert(Cow::Owned("x".repeat(900)), Cow::Borrowed("short"));
    let bytes = encode(&m, b"", Compression::None).unwrap();
    assert_eq!(
        kind(&bytes, Limits::default().with_max_extra_string_len(1000)),
        None
    );
    assert_eq!(
        kind(&bytes, Limits::default().with_max_extra_string_len(999)),
        Some(ErrorKind::LimitExceeded)
    );
    // Keys count too.
    let mut keys = Metadata::default();
    keys.extra
        .insert(Cow::Owned("x".repeat(900)), Cow::Borrowed(""));
    let bytes = encode(&keys, b"", Compression::None).unwrap();
    assert_eq!(
        kind(&bytes, Limits::default().with_max_extra_string_len(899)),
        Some(ErrorKind::LimitExceeded)
    );
    // The default allows 64 KiB.
    assert_eq!(Limits::DEFAULT.max_extra_string_len, 64 << 10);
}

/// AVP-LIM-12: the KV layer count is bounded even when every tensor is empty.
#[test]
fn lim_12_kv_layers_bounded_even_when_tensors_are_empty() {
    use avp_codec::kv::{KvCache, KvDtype, KvHeader};
    // Zero-sized tensors: a 17-byte payload declaring 4 billion layers.
    let header = |num_layers| KvHeader {
        num_layers,
        num_kv_heads: 0,
        head_dim: 8,
        seq_len: 8,
        dtype: KvDtype::Float32,
    };
    let huge = header(u32::MAX).to_bytes();
    let e = KvCache::parse(&huge).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let at = header(4096).to_bytes();
    assert_eq!(KvCache::parse(&at).unwrap().layers().count(), 4096);
    let tight = Limits::default().with_max_kv_layers(4095);
    assert_eq!(
        KvCache::parse_with_limits(&at, false, &tight)
            .unwrap_err()
            .kind(),
        ErrorKind::LimitExceeded
    );
}

#[test]
fn kv_header_products_never_overflow_or_allocate() {
    use avp_codec::kv::{KvCache, KvDtype, KvHeader};
    // Each product overflows u64 or exceeds the payload: always `truncated`,
    // answered from the 17 header bytes alone.
    for (heads, dim, seq) in [
        (u32::MAX, u32::MAX, u32::MAX),
        (u32::MAX, u32::MAX, 1),
        (1, 1, u32::MAX),
    ] {
        let h = KvHeader {
            num_layers: 4096,
            num_kv_heads: heads,
            head_dim: dim,
            seq_len: seq,
            dtype: KvDtype::Float32,
        };
        let e = KvCache::parse(&h.to_bytes()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Truncated, "{heads} {dim} {seq}");
    }
}

/// AVP-LIM-13: `Limits::DEFAULT` holds the default column of the limits table.
#[test]
fn builder_sets_every_limit_and_defaults_are_the_spec_values() {
    let d = Limits::default();
    assert_eq!(d, Limits::DEFAULT);
    assert_eq!(d.max_metadata_len, 1 << 20);
    assert_eq!(d.max_decompressed_len, 1 << 30);
    assert_eq!(d.max_shape_rank, 32);
    assert_eq!(d.max_extra_entries, 4096);
    assert_eq!(d.max_decompression_ratio, 1024);
    assert_eq!(d.ratio_free_len, 16 << 20);
    assert_eq!(d.max_kv_layers, 4096);
    let l = d
        .with_max_metadata_len(1)
        .with_max_payload_len(2)
        .with_max_decompressed_len(3)
        .with_max_shape_rank(4)
        .with_max_extra_entries(5)
        .with_max_group_depth(6)
        .with_max_decompression_ratio(7)
        .with_ratio_free_len(8)
        .with_max_extra_string_len(9)
        .with_max_kv_layers(10);
    assert_eq!(
        (
            l.max_metadata_len,
            l.max_payload_len,
            l.max_decompressed_len,
            l.max_shape_rank,
            l.max_extra_entries,
            l.max_group_depth,
            l.max_decompression_ratio,
            l.ratio_free_len,
            l.max_extra_string_len,
            l.max_kv_layers
        ),
        (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    );
    // The cap is the smaller of the absolute limit and the ratio bound.
    assert_eq!(l.decompressed_cap(100), 3);
    assert_eq!(
        Limits::DEFAULT.decompressed_cap(1 << 20),
        1 << 30,
        "1 MiB * 1024"
    );
    assert_eq!(Limits::DEFAULT.decompressed_cap(10), 16 << 20);
}

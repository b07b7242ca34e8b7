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
    let mut m = Metadata::new()
        .with_session_id(Cow::Borrowed("s"))
        .with_model_id(Cow::Borrowed("m"))
        .with_hidden_dim(4)
        .with_dtype(DataType::Float32)
        .with_tensor_shape(vec![1, 4])
        .with_mode(Mode::Latent)
        .with_avp_map_id(Cow::Borrowed("map"));
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

/// AVP-WIRE-21: `peek` reads the header and metadata only.
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

/// AVP-WIRE-23: the stream decoder answers `NeedMore(n)` exactly.
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
    assert_eq!(d.feed(&bytes[12..]).unwrap(), Status::Complete(bytes.len()));
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

/// AVP-KV-3, AVP-KV-6: borrowed per-layer views; a writer given the wrong
/// layers fails with `invalid_argument`, a caller error (AVP-ERR-2).
#[test]
fn kv_3_write_then_read_layers_and_strictness() {
    use avp_codec::kv::{KvCache, KvDtype, KvHeader, write_kv_cache};
    let h = KvHeader {
        num_layers: 2,
        num_kv_heads: 1,
        head_dim: 2,
        seq_len: 1,
        dtype: KvDtype::Float32,
    };
    let k0: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let v0: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes = write_kv_cache(&h, [(&k0[..], &v0[..]), (&v0[..], &k0[..])]).unwrap();
    assert_eq!(bytes.len(), 17 + 4 * 8);
    let kv = KvCache::parse(&bytes).unwrap();
    let l1 = kv.layer(1).unwrap();
    assert_eq!(l1.key.iter_f32().collect::<Vec<_>>(), vec![3.0, 4.0]);
    assert_eq!(l1.value.stats().l2_norm, 5f64.sqrt());
    assert!(kv.layer(2).is_none());
    // Wrong layer count or size is the caller's mistake.
    let e = write_kv_cache(&h, [(&k0[..], &v0[..])]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // Trailing bytes: warning, or inconsistent when strict (AVP-KV-4).
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(KvCache::parse(&longer).unwrap().warnings.len(), 1);
    assert_eq!(
        KvCache::parse_with(&longer, true).unwrap_err().kind(),
        ErrorKind::Inconsistent
    );
    // dtype mismatch with the metadata (AVP-KV-5).
    let mut kv = KvCache::parse(&bytes).unwrap();
    assert_eq!(
        kv.check_metadata_dtype(DataType::Float16, true)
            .unwrap_err()
            .kind(),
        ErrorKind::Inconsistent
    );
    kv.check_metadata_dtype(DataType::Float16, false).unwrap();
    assert_eq!(kv.warnings.len(), 1);
    // Overflowing dimensions are refused without allocating.
    let huge = KvHeader {
        num_layers: u32::MAX,
        num_kv_heads: u32::MAX,
        head_dim: u32::MAX,
        seq_len: u32::MAX,
        dtype: KvDtype::Float32,
    };
    assert_eq!(
        KvCache::parse(&huge.to_bytes()).unwrap_err().kind(),
        ErrorKind::Truncated
    );
}

/// AVP-ERR-1: exact kind strings; AVP-ERR-2: caller kinds are not peer
/// faults; AVP-ERR-5: every error carries a human-readable message.
#[test]
fn err_1_kind_strings_are_exact_and_faults_are_classified() {
    let all = [
        (ErrorKind::BadMagic, "bad_magic", true),
        (ErrorKind::UnsupportedVersion, "unsupported_version", true),
        (ErrorKind::Truncated, "truncated", true),
        (ErrorKind::MalformedMetadata, "malformed_metadata", true),
        (ErrorKind::UnknownEnum, "unknown_enum", true),
        (ErrorKind::ChecksumMismatch, "checksum_mismatch", true),
        (ErrorKind::Decompression, "decompression", true),
        (ErrorKind::LimitExceeded, "limit_exceeded", true),
        (ErrorKind::Inconsistent, "inconsistent", true),
        (ErrorKind::InvalidArgument, "invalid_argument", false),
        (ErrorKind::Internal, "internal", false),
    ];
    for (k, s, peer) in all {
        assert_eq!(k.as_str(), s);
        assert_eq!(k.to_string(), s);
        assert_eq!(k.is_peer_fault(), peer, "{s}");
    }
    let e = decode(b"XX\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00").unwrap_err();
    assert_eq!(e.to_string(), format!("bad_magic: {}", e.message()));
    assert!(!e.message().is_empty());
}

#[cfg(feature = "bytes")]
#[test]
fn bytes_feature_shares_the_input_buffer() {
    let (m, t) = sample();
    let input = bytes::Bytes::from(encode(&m, &t, Compression::None).unwrap());
    let msg = avp_codec::decode_bytes(&input, &DecodeOptions::default()).unwrap();
    assert_eq!(&msg.payload[..], &t[..]);
    let start = input.as_ptr() as usize;
    let p = msg.payload.as_ptr() as usize;
    assert!(
        p >= start && p + msg.payload.len() <= start + input.len(),
        "payload was copied"
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_feature_gives_typed_views() {
    use avp_codec::tensor::{ElementType, TensorView};
    let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = TensorView::new(&bytes, ElementType::F32)
        .to_ndarray(&[2, 3])
        .unwrap();
    assert_eq!(a[[1, 2]], 6.0);
    assert!(
        TensorView::new(&bytes, ElementType::F32)
            .to_ndarray(&[4, 2])
            .is_none()
    );
}

#[test]
fn wire_22_encode_into_and_prefix_match_encode() {
    let (m, t) = sample();
    let whole = encode(&m, &t, Compression::None).unwrap();
    let mut buf = vec![9u8; 4096];
    let cap = buf.capacity();
    avp_codec::encode_into(&m, &t, Compression::None, &mut buf).unwrap();
    assert_eq!(buf, whole);
    assert_eq!(buf.capacity(), cap, "the buffer was reallocated");
    let mut prefix = avp_codec::encode_prefix(&m, &t).unwrap();
    prefix.extend_from_slice(&t);
    assert_eq!(prefix, whole);
}

#[cfg(not(feature = "zstd"))]
#[test]
fn wire_17_without_zstd_compression_is_refused_clearly() {
    let (m, t) = sample();
    assert_eq!(
        encode(&m, &t, Compression::Fast).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let mut bytes = encode(&m, &t, Compression::None).unwrap();
    bytes[3] |= 1; // claims compression
    assert_eq!(decode(&bytes).unwrap_err().kind(), ErrorKind::Decompression);
}

#[test]
fn wire_23_stream_decoder_keeps_only_the_message() {
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    let mut with_junk = bytes.clone();
    with_junk.extend_from_slice(&[0u8; 10_000]);
    let mut d = StreamDecoder::new(DecodeOptions::default());
    assert_eq!(d.feed(&with_junk).unwrap(), Status::Complete(bytes.len()));
    assert_eq!(d.buffer(), &bytes[..]);
    assert_eq!(d.trailing_bytes(), 10_000);
    assert_eq!(d.finish().unwrap(), decode(&with_junk).unwrap());
    let mut strict = StreamDecoder::new(DecodeOptions::strict());
    strict.feed(&with_junk).unwrap();
    assert_eq!(strict.finish().unwrap_err().kind(), ErrorKind::Inconsistent);
}

/// AVP-LIM-8: a header declaring 4 GiB reserves at most 64 MiB up front.
#[test]
fn lim_8_stream_header_declaring_4_gib_reserves_little() {
    let mut header = vec![0x41, 0x56, 1, 0];
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let mut d = StreamDecoder::new(DecodeOptions::default());
    assert_eq!(
        d.feed(&header).unwrap(),
        Status::NeedMore(u32::MAX as usize)
    );
    assert_eq!(d.buffer().len(), 12);
    assert!(
        d.allocated() <= 64 << 20,
        "{} bytes reserved for a bare header",
        d.allocated()
    );
}

/// AVP-WIRE-22, AVP-WIRE-25, AVP-WIRE-27: the multi-threaded path for large
/// tensors (checksum and copy split across threads from 8 MiB on, output
/// buffer sized without a memset) gives the
/// same bytes as the single-threaded one, into fresh, shorter and longer
/// reused buffers.
#[test]
fn wire_22_threaded_encode_is_byte_identical() {
    use avp_codec::{EncodeOptions, encode_into_with, encode_with};
    let (m, _) = sample();
    let tensor: Vec<u8> = (0..(9usize << 20) + 3)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let serial = encode_with(&m, &tensor, &EncodeOptions::DEFAULT.with_threads(1)).unwrap();
    assert_eq!(serial, encode(&m, &tensor, Compression::None).unwrap());
    for threads in [0, 2, 3] {
        let opts = EncodeOptions::DEFAULT.with_threads(threads);
        assert!(
            encode_with(&m, &tensor, &opts).unwrap() == serial,
            "{threads} threads"
        );
        for start_len in [0usize, 100, serial.len() - 1, serial.len() + 4096] {
            let mut out = vec![0xAA; start_len];
            encode_into_with(&m, &tensor, &opts, &mut out).unwrap();
            assert!(out == serial, "{threads} threads, buffer of {start_len}");
        }
    }
    let msg = decode(&serial).unwrap();
    assert_eq!(&*msg.payload, &tensor[..]);
}

/// AVP-WIRE-15, AVP-WIRE-22: the checksum's varint width (1 to 5 bytes)
/// moves where the tensor starts; with CRCs of 2, 3, 4 and 5 bytes the
/// threaded encoder's output is byte-identical to the single-threaded one.
#[test]
fn wire_22_threaded_encode_for_every_checksum_width() {
    use avp_codec::{EncodeOptions, encode_with};
    let (m, _) = sample();
    let base: Vec<u8> = (0..(8usize << 20) + 100)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let mut prefix = crc32fast::Hasher::new();
    prefix.update(&base);
    let varint_width = |crc: u32| (32 - (crc | 1).leading_zeros()).div_ceil(7);
    for width in [2u32, 3, 4, 5] {
        // Four trailing bytes chosen by search give a CRC of this width.
        let tail = (0u32..)
            .find(|t| {
                let mut h = prefix.clone();
                h.update(&t.to_le_bytes());
                varint_width(h.finalize()) == width
            })
            .unwrap();
        let mut tensor = base.clone();
        tensor.extend_from_slice(&tail.to_le_bytes());
        let serial = encode_with(&m, &tensor, &EncodeOptions::DEFAULT.with_threads(1)).unwrap();
        let threaded = encode_with(&m, &tensor, &EncodeOptions::DEFAULT.with_threads(2)).unwrap();
        assert!(threaded == serial, "checksum varint of {width} bytes");
        let msg = decode(&threaded).unwrap();
        assert_eq!(
            msg.metadata.payload_checksum,
            Some(crc32fast::hash(&tensor))
        );
    }
}

/// AVP-WIRE-23: the incremental API over the caller's buffer says how many
/// more bytes it needs (header, then metadata, then payload), decodes only
/// the declared message, and fails as early as the bytes allow.
#[test]
fn wire_23_parse_prefix_and_message_need_more_then_complete() {
    use avp_codec::{parse_header, parse_message, parse_prefix};
    let (m, t) = sample();
    let bytes = encode(&m, &t, Compression::None).unwrap();
    let opts = DecodeOptions::default();
    let header = avp_codec::Header::parse(&bytes).unwrap();
    let meta_end = header.metadata_end();
    assert_eq!(
        parse_header(&bytes[..3], &opts.limits).unwrap(),
        Status::NeedMore(HEADER_LEN - 3)
    );
    assert_eq!(
        parse_header(&bytes, &opts.limits).unwrap(),
        Status::Complete(header)
    );
    assert_eq!(
        parse_prefix(&bytes[..3], &opts).unwrap(),
        Status::NeedMore(HEADER_LEN - 3)
    );
    assert_eq!(
        parse_prefix(&bytes[..14], &opts).unwrap(),
        Status::NeedMore(meta_end - 14)
    );
    let Status::Complete((peeked, prefix_len)) = parse_prefix(&bytes[..meta_end], &opts).unwrap()
    else {
        panic!("prefix incomplete");
    };
    assert_eq!(
        (prefix_len, &peeked.metadata),
        (
            meta_end,
            &m.clone().with_payload_checksum(Some(crc32fast::hash(&t)))
        )
    );
    assert_eq!(
        parse_message(&bytes[..meta_end], &opts).unwrap(),
        Status::NeedMore(t.len())
    );
    assert_eq!(
        parse_message(&bytes[..bytes.len() - 1], &opts).unwrap(),
        Status::NeedMore(1)
    );
    // Two messages back to back: the first is decoded in place, the rest untouched.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    let Status::Complete((msg, used)) = parse_message(&two, &opts).unwrap() else {
        panic!("message incomplete");
    };
    assert_eq!(used, bytes.len());
    assert!(msg.warnings.is_empty());
    assert!(matches!(msg.payload, Cow::Borrowed(p) if p.as_ptr() == two[meta_end..].as_ptr()));
    assert_eq!(msg, decode(&bytes).unwrap());
    // Errors come as soon as the bytes prove them.
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(
        parse_prefix(&bad[..2], &opts).unwrap(),
        Status::NeedMore(HEADER_LEN - 2)
    );
    assert_eq!(
        parse_prefix(&bad[..12], &opts).unwrap_err().kind(),
        ErrorKind::BadMagic
    );
    let mut bad_meta = bytes.clone();
    bad_meta[HEADER_LEN] = 0x07; // field 0, wire type 7: not proto3
    assert_eq!(
        parse_message(&bad_meta[..meta_end - 1], &opts).unwrap(),
        Status::NeedMore(1)
    );
    assert_eq!(
        parse_message(&bad_meta[..meta_end], &opts)
            .unwrap_err()
            .kind(),
        ErrorKind::MalformedMetadata
    );
    // Every strict prefix asks for more, never past the declared end.
    for cut in 0..bytes.len() {
        match parse_message(&bytes[..cut], &opts).unwrap() {
            Status::NeedMore(n) => assert!(n >= 1 && cut + n <= bytes.len(), "cut {cut}: {n}"),
            Status::Complete(_) => panic!("complete at {cut}"),
        }
    }
}

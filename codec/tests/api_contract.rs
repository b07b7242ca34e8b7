//! The encoder's contract with its caller (spec/impl/codec.md, AVP-API-1..4): every
//! metadata field given is honoured or refused, and no threads unless asked.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use avp_codec::{
    Compression, DataType, DecodeOptions, EncodeOptions, ErrorKind, Metadata, Mode, PayloadType,
    decode, encode, encode_into, encode_prefix, encode_with, encoded_len,
};

fn every_field() -> Metadata<'static> {
    Metadata::new()
        .with_session_id("s")
        .with_source_agent_id("a")
        .with_target_agent_id("b")
        .with_model_id("m")
        .with_hidden_dim(2)
        .with_num_layers(3)
        .with_payload_type(PayloadType::KvCache)
        .with_dtype(DataType::Float16)
        .with_tensor_shape([2, 2])
        .with_mode(Mode::Json)
        .with_avp_map_id("map")
        .with_extra_entry("k", "v")
}

/// AVP-API-1: every field the caller sets comes back from the decoder as set.
#[test]
fn api_1_every_given_field_is_written() {
    let m = every_field();
    let tensor = [1u8, 2, 3, 4, 5, 6, 7, 8];
    let bytes = encode(&m, &tensor, Compression::None).unwrap();
    let back = decode(&bytes).unwrap();
    let want = m
        .clone()
        .with_payload_checksum(Some(avp_codec::crc32(&tensor)));
    assert_eq!(back.metadata, want);
    assert!(back.warnings.is_empty(), "{:?}", back.warnings);
    // Re-encoding a decoded message's metadata gives the same bytes.
    let again = encode(&back.metadata, &back.payload, Compression::None).unwrap();
    assert_eq!(again, encode(&m, &tensor, Compression::None).unwrap());
}

/// AVP-API-1: `compression` is honoured when the options produce it and
/// refused otherwise, by every entry point, leaving no output behind.
#[test]
fn api_1_compression_field_honoured_or_refused() {
    let tensor = [0u8; 16];
    let zstd = every_field().with_compression(Some("zstd"));
    for attempt in [
        encode(&zstd, &tensor, Compression::None),
        encode_prefix(&zstd, &tensor),
        encoded_len(&zstd, &tensor).map(|_| Vec::new()),
        encode(
            &every_field().with_compression(Some("lz4")),
            &tensor,
            Compression::None,
        ),
    ] {
        let err = attempt.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MetadataMismatch, "{err}");
        assert_eq!(err.kind().as_str(), "metadata_mismatch");
        assert!(err.message().contains("AVP-API-1"), "{err}");
    }
    let mut out = vec![9u8; 4];
    let err = encode_into(&zstd, &tensor, Compression::None, &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MetadataMismatch);
    assert!(out.is_empty(), "a refused encode leaves no partial output");
    #[cfg(feature = "zstd")]
    {
        let bytes = encode(&zstd, &tensor, Compression::Fast).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.metadata.compression.as_deref(), Some("zstd"));
        assert!(back.was_compressed());
        // A decoded compressed message re-encodes with a compressing option.
        encode(&back.metadata, &back.payload, Compression::Balanced).unwrap();
    }
    #[cfg(not(feature = "zstd"))]
    assert_eq!(
        encode(&zstd, &tensor, Compression::Fast)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

/// AVP-API-2: a given `payload_checksum` must be the tensor's CRC-32.
#[test]
fn api_2_payload_checksum_must_match_the_tensor() {
    let tensor = [7u8; 8];
    let crc = avp_codec::crc32(&tensor);
    let right = every_field().with_payload_checksum(Some(crc));
    assert_eq!(
        encode(&right, &tensor, Compression::None).unwrap(),
        encode(&every_field(), &tensor, Compression::None).unwrap()
    );
    let wrong = every_field().with_payload_checksum(Some(crc ^ 1));
    for attempt in [
        encode(&wrong, &tensor, Compression::None),
        encode_prefix(&wrong, &tensor),
        encoded_len(&wrong, &tensor).map(|_| Vec::new()),
    ] {
        let err = attempt.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MetadataMismatch, "{err}");
        assert!(err.message().contains("AVP-API-2"), "{err}");
    }
}

/// AVP-API-3: the refusal is the caller's fault, never the peer's.
#[test]
fn api_3_metadata_mismatch_is_api_misuse() {
    assert!(!ErrorKind::MetadataMismatch.is_peer_fault());
    assert!(!ErrorKind::InvalidArgument.is_peer_fault());
    assert!(ErrorKind::ChecksumMismatch.is_peer_fault());
}

/// AVP-API-4: one thread unless the caller opts in; the bytes do not depend on it.
#[test]
fn api_4_single_threaded_by_default() {
    assert_eq!(EncodeOptions::DEFAULT.threads, 1);
    assert_eq!(EncodeOptions::default().threads, 1);
    assert_eq!(DecodeOptions::DEFAULT.checksum_threads, 1);
    assert_eq!(DecodeOptions::default().checksum_threads, 1);
    let tensor: Vec<u8> = (0..(9usize << 20)).map(|i| (i % 251) as u8).collect();
    let m = every_field();
    let one = encode(&m, &tensor, Compression::None).unwrap();
    let auto = encode_with(&m, &tensor, &EncodeOptions::DEFAULT.with_threads(0)).unwrap();
    assert!(one == auto);
    let opts = DecodeOptions::default().with_checksum_threads(3);
    assert_eq!(
        avp_codec::decode_with(&one, &opts)
            .unwrap()
            .metadata
            .payload_checksum,
        Some(avp_codec::crc32(&tensor))
    );
}

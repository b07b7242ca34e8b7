//! Property tests: encode/decode round trips through the shared oracle
//! (`avp_codec::fuzzing`), robustness on arbitrary and mutated bytes, and
//! incremental decoding at random split points.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use avp_codec::{
    Compression, DataType, DecodeOptions, Metadata, Mode, PayloadType, decode, decode_with, encode,
    encoded_len, fuzzing, peek,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9/_.-]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(8).collect())
    ]
}

prop_compose! {
    fn metadata()(
        session_id in text(), source in text(), target in text(), model in text(), map_id in text(),
        hidden_dim in any::<u32>(), num_layers in any::<u32>(),
        payload_type in prop_oneof![Just(PayloadType::HiddenState), Just(PayloadType::KvCache)],
        dtype in prop_oneof![Just(DataType::Float32), Just(DataType::Float16), Just(DataType::Bfloat16), Just(DataType::Int8)],
        mode in prop_oneof![Just(Mode::Latent), Just(Mode::Json)],
        shape in proptest::collection::vec(any::<u32>(), 0..6),
        extra in proptest::collection::btree_map(text(), text(), 0..5),
    ) -> Metadata<'static> {
        Metadata::new()
            .with_session_id(Cow::Owned(session_id))
            .with_source_agent_id(Cow::Owned(source))
            .with_target_agent_id(Cow::Owned(target))
            .with_model_id(Cow::Owned(model))
            .with_hidden_dim(hidden_dim)
            .with_num_layers(num_layers)
            .with_payload_type(payload_type)
            .with_dtype(dtype)
            .with_tensor_shape(shape)
            .with_mode(mode)
            .with_avp_map_id(Cow::Owned(map_id))
            .with_extra(extra.into_iter().map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))).collect::<BTreeMap<_, _>>())
    }
}

#[cfg(feature = "zstd")]
fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![4 => Just(Compression::None), 1 => Just(Compression::Fast), 1 => Just(Compression::Balanced)]
}

/// Without zstd the encoder refuses to compress (`invalid_argument`), so only plain messages.
#[cfg(not(feature = "zstd"))]
fn compression() -> impl Strategy<Value = Compression> {
    Just(Compression::None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// AVP-WIRE-22: encode → decode gives back the metadata and tensor; the oracle holds.
    #[test]
    fn wire_22_encode_decode_roundtrip(m in metadata(), tensor in proptest::collection::vec(any::<u8>(), 0..300), c in compression()) {
        let bytes = encode(&m, &tensor, c).unwrap();
        if c == Compression::None {
            prop_assert_eq!(encoded_len(&m, &tensor).unwrap(), bytes.len());
        }
        let msg = decode(&bytes).unwrap();
        prop_assert_eq!(&*msg.payload, &tensor[..]);
        let mut want = m.clone();
        want.compression = (c != Compression::None).then_some(Cow::Borrowed("zstd"));
        want.payload_checksum = Some(avp_codec::crc32(&tensor));
        prop_assert_eq!(&msg.metadata, &want);
        // Only a shape/size disagreement (random shapes) may warn.
        prop_assert!(msg.warnings.iter().all(|w| w.code() == "shape_size_mismatch"));
        prop_assert_eq!(&peek(&bytes).unwrap().metadata, &msg.metadata);
        prop_assert!(fuzzing::check_roundtrip(&bytes));
    }

    /// Metadata alone: write → parse is the identity, `encoded_len` is exact.
    #[test]
    fn wire_10_metadata_write_parse(m in metadata(), checksum in proptest::option::of(any::<u32>())) {
        let mut m = m;
        m.payload_checksum = checksum;
        let mut out = Vec::new();
        m.write(&mut out);
        prop_assert_eq!(out.len(), m.encoded_len());
        let back = Metadata::parse(&out, &avp_codec::Limits::default()).unwrap();
        prop_assert_eq!(back, m);
    }

    /// No input makes the decoder, the oracle or the stream decoder panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), split in any::<usize>()) {
        let _ = decode_with(&data, &DecodeOptions::strict());
        fuzzing::check_roundtrip(&data);
        fuzzing::check_incremental(&data, split % (data.len() + 1));
    }

    /// Mutated valid messages (a byte changed, bytes inserted or removed):
    /// no panic, the oracle holds, incremental equals one-shot.
    #[test]
    fn mutated_messages_hold_the_oracles(
        m in metadata(), tensor in proptest::collection::vec(any::<u8>(), 0..64), c in compression(),
        pos in any::<usize>(), byte in any::<u8>(), op in 0u8..3, split in any::<usize>(),
    ) {
        let mut bytes = encode(&m, &tensor, c).unwrap();
        let p = pos % bytes.len();
        match op {
            0 => bytes[p] = byte,
            1 => bytes.insert(p, byte),
            _ => { bytes.remove(p); }
        }
        fuzzing::check_roundtrip(&bytes);
        fuzzing::check_incremental(&bytes, split % (bytes.len() + 1));
    }

    /// Header length fields rewritten to arbitrary values never panic and
    /// never decode a message that claims more bytes than it has.
    #[test]
    fn wire_6_rewritten_lengths(m in metadata(), pl in any::<u32>(), ml in any::<u32>()) {
        let mut bytes = encode(&m, b"abcd", Compression::None).unwrap();
        bytes[4..8].copy_from_slice(&pl.to_le_bytes());
        bytes[8..12].copy_from_slice(&ml.to_le_bytes());
        if let Ok(msg) = decode(&bytes) {
            prop_assert!(12 + u64::from(pl) <= bytes.len() as u64);
            prop_assert!(ml <= pl);
            prop_assert_eq!(msg.payload.len() as u32, pl - ml);
        }
    }
}

/// Bytes for a string field: valid text, ASCII, or byte soup that is often
/// not UTF-8 (lone continuation bytes, sequences cut short, overlongs).
fn string_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(String::into_bytes),
        "[ -~]{0,20}".prop_map(String::into_bytes),
        proptest::collection::vec(
            prop_oneof![
                0x20u8..0x7f,
                Just(0xe2),
                Just(0x82),
                Just(0xac),
                Just(0xc0),
                Just(0xf0),
                Just(0x9f)
            ],
            0..20
        ),
    ]
}

/// A metadata field for the UTF-8 property: a string field (1-4, 11, 13),
/// an `extra` entry (14) whose key is the bytes, or a varint (5) whose
/// value's bytes are non-ASCII when large.
#[derive(Debug, Clone)]
enum Field {
    Text(u8, Vec<u8>),
    Entry(Vec<u8>),
    Varint(u64),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        4 => (prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(11), Just(13)], string_bytes())
            .prop_map(|(f, b)| Field::Text(f, b)),
        1 => string_bytes().prop_map(Field::Entry),
        1 => any::<u64>().prop_map(Field::Varint),
    ]
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, field: u8, body: &[u8]) {
    out.push(field << 3 | 2);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// AVP-WIRE-10: every string field is checked as UTF-8 on its own, however
    /// the parser shares the work between neighbouring fields: a message
    /// parses exactly when every string occurrence is UTF-8, the first bad
    /// one is named, and the last occurrence of each field is the value.
    #[test]
    fn wire_10_each_string_field_is_validated_on_its_own(fields in proptest::collection::vec(field(), 0..12)) {
        let mut bytes = Vec::new();
        let mut first_bad: Option<&str> = None;
        let mut last: BTreeMap<u8, &[u8]> = BTreeMap::new();
        for f in &fields {
            match f {
                Field::Text(n, b) => {
                    put_len(&mut bytes, *n, b);
                    last.insert(*n, b);
                    if first_bad.is_none() && std::str::from_utf8(b).is_err() {
                        first_bad = Some(match n { 1 => "session_id", 2 => "source_agent_id", 3 => "target_agent_id",
                            4 => "model_id", 11 => "compression", _ => "avp_map_id" });
                    }
                }
                Field::Entry(k) => {
                    let mut entry = Vec::new();
                    put_len(&mut entry, 1, k);
                    put_len(&mut entry, 2, b"v");
                    put_len(&mut bytes, 14, &entry);
                    if first_bad.is_none() && std::str::from_utf8(k).is_err() {
                        first_bad = Some("extra key");
                    }
                }
                Field::Varint(v) => {
                    bytes.push(5 << 3);
                    put_varint(&mut bytes, *v);
                }
            }
        }
        let parsed = Metadata::parse(&bytes, &avp_codec::Limits::default());
        match (first_bad, parsed) {
            (None, Ok(m)) => {
                let want = |n: u8| last.get(&n).map(|b| std::str::from_utf8(b).unwrap());
                prop_assert_eq!(Some(&*m.session_id).filter(|s| !s.is_empty()), want(1).filter(|s| !s.is_empty()));
                prop_assert_eq!(Some(&*m.source_agent_id).filter(|s| !s.is_empty()), want(2).filter(|s| !s.is_empty()));
                prop_assert_eq!(Some(&*m.target_agent_id).filter(|s| !s.is_empty()), want(3).filter(|s| !s.is_empty()));
                prop_assert_eq!(Some(&*m.model_id).filter(|s| !s.is_empty()), want(4).filter(|s| !s.is_empty()));
                prop_assert_eq!(m.compression.as_deref(), want(11));
                prop_assert_eq!(Some(&*m.avp_map_id).filter(|s| !s.is_empty()), want(13).filter(|s| !s.is_empty()));
                let keys: Vec<&str> = m.extra.iter().map(|(k, _)| k).collect();
                for f in &fields {
                    if let Field::Entry(k) = f {
                        prop_assert!(keys.contains(&std::str::from_utf8(k).unwrap()));
                    }
                }
            }
            (Some(name), Err(e)) => {
                prop_assert_eq!(e.kind(), avp_codec::ErrorKind::MalformedMetadata);
                prop_assert!(e.to_string().contains(name), "{} does not name {}", e, name);
            }
            (want, got) => prop_assert!(false, "expected first bad field {:?}, got {:?}", want, got.map(|_| ())),
        }
    }
}

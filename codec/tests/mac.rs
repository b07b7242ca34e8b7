//! AVP-MAC against the independent vectors of conformance/vectors/mac
//! (built with the SDK's encoder and Python `blake3`, never with this crate):
//! every case verifies as expected, and our signer reproduces every signed
//! uncompressed vector byte for byte.
#![cfg(feature = "mac")]
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use std::path::PathBuf;

use avp_codec::mac::{MacKey, TAG_KEY, encode_signed, sign_in_place, verify};
use avp_codec::{Compression, ErrorKind, Limits, decode};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/mac")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("cases.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["key_context"].as_str(),
        Some(avp_codec::mac::KEY_CONTEXT)
    );
    doc["cases"].as_array().unwrap().clone()
}

fn key(file: &str) -> MacKey {
    MacKey::from_key_file_bytes(&std::fs::read(dir().join(file)).unwrap()).unwrap()
}

#[test]
fn mac_5_every_vector_verifies_as_expected() {
    let all = cases();
    assert!(all.len() >= 15);
    let mut bad_macs = 0;
    for c in &all {
        let id = c["id"].as_str().unwrap();
        let bytes = std::fs::read(dir().join(c["input"]["file"].as_str().unwrap())).unwrap();
        let k = key(c["input"]["key_file"].as_str().unwrap());
        let got = verify(&bytes, &k, &Limits::DEFAULT);
        match c["expect"]["result"].as_str().unwrap() {
            "valid" => {
                assert!(got.is_ok(), "{id}: {got:?}");
                // A verified message also decodes (compatible mode).
                let msg = decode(&bytes).unwrap();
                assert_eq!(
                    msg.metadata.extra.get(TAG_KEY),
                    c["expect"]["tag"].as_str(),
                    "{id}: tag"
                );
            }
            "invalid" => {
                let want = c["expect"]["error_kind"].as_str().unwrap();
                let e = got.expect_err(id);
                assert_eq!(e.kind().as_str(), want, "{id}: {e}");
                if e.kind() == ErrorKind::BadMac {
                    bad_macs += 1;
                }
            }
            other => panic!("{id}: result {other}"),
        }
    }
    assert!(bad_macs >= 9, "signed, tampered and unsigned cases present");
}

#[test]
fn mac_6_our_signer_reproduces_the_python_vectors() {
    let mut checked = 0;
    for c in cases() {
        let id = c["id"].as_str().unwrap();
        let Some(enc) = c.get("encode") else { continue };
        let bytes = std::fs::read(dir().join(c["input"]["file"].as_str().unwrap())).unwrap();
        let msg = decode(&bytes).unwrap();
        let mut meta = msg.metadata.clone();
        meta.extra.remove(TAG_KEY);
        meta.compression = None;
        meta.payload_checksum = None;
        let compression = Compression::from_name(enc["compression"].as_str().unwrap()).unwrap();
        let ours = encode_signed(&meta, &msg.payload, compression, &key("key.bin")).unwrap();
        verify(&ours, &key("key.bin"), &Limits::DEFAULT).unwrap();
        if compression == Compression::None {
            assert_eq!(ours, bytes, "{id}: byte-identical signed message");
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked}");
}

#[test]
fn mac_1_key_files_are_derived_and_short_ones_refused() {
    let e = MacKey::from_key_file_bytes(b"short").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    // Two different key files give different tags over the same message.
    let m = avp_codec::Metadata::default();
    let a = encode_signed(&m, b"tensor", Compression::None, &key("key.bin")).unwrap();
    let b = encode_signed(&m, b"tensor", Compression::None, &key("wrong-key.bin")).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), b.len(), "the tag has a fixed size");
    assert!(
        format!("{:?}", key("key.bin")).contains(".."),
        "Debug hides the key"
    );
}

#[test]
fn mac_6_signing_twice_is_refused_and_resigning_replaces_the_tag() {
    let k = key("key.bin");
    let mut signed = encode_signed(
        &avp_codec::Metadata::default(),
        b"abc",
        Compression::None,
        &k,
    )
    .unwrap();
    assert_eq!(
        sign_in_place(&mut signed, &k, &Limits::DEFAULT)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    // encode_signed on already-signed metadata replaces the old tag.
    let msg = decode(&signed).unwrap().into_owned();
    let mut meta = msg.metadata.clone();
    meta.compression = None;
    meta.payload_checksum = None;
    let again = encode_signed(&meta, &msg.payload, Compression::None, &k).unwrap();
    assert_eq!(again, signed);
}

#[test]
fn mac_3_every_single_bit_flip_of_a_signed_message_is_caught() {
    let k = key("key.bin");
    let m = avp_codec::Metadata::new()
        .with_session_id("s")
        .with_tensor_shape(vec![2]);
    let signed = encode_signed(&m, &[1, 2, 3, 4, 5, 6, 7, 8], Compression::None, &k).unwrap();
    for i in 0..signed.len() {
        for bit in 0..8 {
            let mut t = signed.clone();
            t[i] ^= 1 << bit;
            assert!(
                verify(&t, &k, &Limits::DEFAULT).is_err(),
                "flip of byte {i} bit {bit} verified"
            );
        }
    }
}

/// The verdict of `verify` (kind and message), for comparing two paths.
fn verdict(r: Result<(), avp_codec::Error>) -> Result<(), (ErrorKind, String)> {
    r.map_err(|e| (e.kind(), e.to_string()))
}

/// AVP-MAC-5 in constant memory: `StreamVerifier`, fed the header and
/// metadata and then the rest in pieces of any size, reaches the verdict of
/// `verify` on the whole input, with the same error kind and message, for
/// every vector, every cut-short prefix of it, and with bytes after its end.
#[test]
fn mac_5_streamed_verification_equals_the_one_shot_verify() {
    use avp_codec::mac::StreamVerifier;
    let mut compared = 0;
    for c in &cases() {
        let id = c["id"].as_str().unwrap();
        let bytes = std::fs::read(dir().join(c["input"]["file"].as_str().unwrap())).unwrap();
        let k = key(c["input"]["key_file"].as_str().unwrap());
        let mut inputs: Vec<Vec<u8>> = (0..bytes.len())
            .step_by((bytes.len() / 40).max(1))
            .map(|cut| bytes[..cut].to_vec())
            .collect();
        inputs.push(bytes.clone());
        inputs.push([bytes.as_slice(), b"trailing bytes"].concat());
        for input in inputs {
            let want = verdict(verify(&input, &k, &Limits::DEFAULT));
            // Where a reader has header and metadata: the prefix it gives `new`.
            let meta_end = avp_codec::check_header(&input, &Limits::DEFAULT)
                .map_or(input.len(), |h| h.metadata_end().min(input.len()));
            for piece in [1usize, 7, 4096, usize::MAX] {
                let (prefix, rest) = input.split_at(meta_end.max(12).min(input.len()));
                let got = StreamVerifier::new(prefix, &k, &Limits::DEFAULT).and_then(|mut v| {
                    for chunk in rest.chunks(piece.min(rest.len()).max(1)) {
                        v.update(chunk);
                    }
                    v.finish()
                });
                assert_eq!(
                    verdict(got),
                    want,
                    "{id}: {} bytes, pieces of {piece}",
                    input.len()
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "{compared}");
}

//! Shared oracles for unit tests, proptest and fuzz targets. Not a stable API.
//!
//! These functions panic on purpose: a panic is how an oracle reports a
//! broken invariant to proptest and libFuzzer.
#![allow(clippy::panic)]

use crate::compress::Compression;
use crate::decode::{DecodeOptions, decode_with};
use crate::encode::{encode, encoded_len};
use crate::stream::{Status, StreamDecoder};

/// The round-trip oracle: for any input that decodes, encoding the decoded
/// message (uncompressed) gives `encoded_len` bytes, that output decodes to
/// the same metadata (up to the encoder-derived fields) and payload, and
/// re-encoding it is byte-identical. Panics (on purpose) when it fails;
/// returns whether `data` decoded at all.
pub fn check_roundtrip(data: &[u8]) -> bool {
    let opts = DecodeOptions::DEFAULT;
    let Ok(msg) = decode_with(data, &opts) else {
        return false;
    };
    let Ok(first) = encode(&msg.metadata, &msg.payload, Compression::None) else {
        // Only a message whose metadata grew past 4 GiB could get here.
        return true;
    };
    assert_eq!(
        encoded_len(&msg.metadata, &msg.payload).ok(),
        Some(first.len()),
        "encoded_len"
    );
    let again = match decode_with(&first, &opts) {
        Ok(m) => m,
        Err(e) => panic!("our own encoding does not decode: {e}"),
    };
    // The encoder derives flags, compression and checksum, so only a
    // shape/size disagreement carried over from the input may remain.
    for w in &again.warnings {
        assert!(
            matches!(w, crate::Warning::ShapeSizeMismatch { .. }),
            "our own encoding decodes with a warning: {w}"
        );
    }
    assert_eq!(again.payload, msg.payload, "payload changed");
    let mut expect = msg.metadata.clone();
    expect.compression = None;
    expect.payload_checksum = Some(crc32fast::hash(&msg.payload));
    assert_eq!(again.metadata, expect, "metadata changed");
    let second = encode(&again.metadata, &again.payload, Compression::None).ok();
    assert_eq!(
        second.as_deref(),
        Some(first.as_slice()),
        "re-encoding differs"
    );
    true
}

/// The incremental oracle: feeding `data` split at `split` gives the same
/// result as decoding it in one go.
pub fn check_incremental(data: &[u8], split: usize) {
    let opts = DecodeOptions::DEFAULT;
    let one_shot = decode_with(data, &opts);
    let (a, b) = data.split_at(split.min(data.len()));
    let mut dec = StreamDecoder::new(opts);
    let fed = dec.feed(a).and_then(|_| dec.feed(b));
    match (fed, &one_shot) {
        (Err(e), Err(want)) => assert_eq!(e.kind(), want.kind(), "early error differs"),
        (Err(e), Ok(_)) => panic!("stream rejected what one-shot accepts: {e}"),
        (Ok(Status::NeedMore(_)), Err(want)) => {
            assert_eq!(
                want.kind(),
                crate::ErrorKind::Truncated,
                "stream wants more, one-shot says {want}"
            )
        }
        (Ok(Status::NeedMore(n)), Ok(_)) => {
            panic!("stream wants {n} more bytes of a complete message")
        }
        (Ok(Status::Complete), _) => {
            let got = dec.finish();
            match (&got, &one_shot) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(g), Err(w)) => assert_eq!(g.kind(), w.kind()),
                _ => panic!("stream and one-shot disagree: {got:?} vs {one_shot:?}"),
            }
        }
    }
}

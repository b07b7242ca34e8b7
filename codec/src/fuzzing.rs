//! Shared oracles for unit tests, proptest and fuzz targets. Not a stable API.
//!
//! These functions panic on purpose: a panic is how an oracle reports a
//! broken invariant to proptest and libFuzzer.
#![allow(clippy::panic)]

use crate::compress::Compression;
use crate::decode::{DecodeOptions, decode_with};
use crate::encode::{encode, encoded_len};
use crate::stream::{Status, StreamDecoder, parse_message};

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
    // Re-encoded uncompressed: the received `compression` no longer applies
    // (AVP-API-1 refuses a stale one), the received checksum still does.
    let mut given = msg.metadata.clone();
    given.compression = None;
    let Ok(first) = encode(&given, &msg.payload, Compression::None) else {
        // Only a message whose metadata grew past 4 GiB could get here.
        return true;
    };
    assert_eq!(
        encoded_len(&given, &msg.payload).ok(),
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
    assert_stream_agrees(fed, &dec, &one_shot);
    check_parse_message(a, data, &one_shot);
}

/// [`parse_message`] over a prefix of `data` and over all of it agrees with
/// the one-shot decode: a prefix gives `NeedMore` (never past the declared
/// end) or the one-shot error; the whole input gives the one-shot result
/// for the declared bytes.
fn check_parse_message(
    prefix: &[u8],
    data: &[u8],
    one_shot: &Result<crate::Message<'_>, crate::Error>,
) {
    let opts = DecodeOptions::DEFAULT;
    match (parse_message(prefix, &opts), one_shot) {
        (Ok(Status::NeedMore(n)), _) => {
            let end = prefix.len().saturating_add(n);
            assert!(
                end <= data.len() || one_shot.is_err(),
                "NeedMore({n}) runs past a complete message"
            );
        }
        (Ok(Status::Complete((m, used))), _) => {
            assert_eq!(
                decode_with(prefix.get(..used).unwrap_or_default(), &opts).as_ref(),
                Ok(&m)
            );
        }
        (Err(e), Err(want)) => assert_eq!(e.kind(), want.kind(), "parse_message error differs"),
        (Err(e), Ok(_)) => panic!("parse_message rejected a prefix of a good message: {e}"),
    }
    // Compatible mode only warns about bytes after the message, which
    // parse_message leaves alone: both see the same message.
    match (parse_message(data, &opts), one_shot) {
        (Ok(Status::Complete((m, used))), Ok(want)) => {
            assert_eq!(used as u64, want.header.message_len(), "consumed");
            if used == data.len() {
                assert_eq!(&m, want, "parse_message differs from decode");
            }
        }
        (Ok(Status::NeedMore(_)), Err(want)) => assert_eq!(
            want.kind(),
            crate::ErrorKind::Truncated,
            "NeedMore, one-shot says {want}"
        ),
        (Err(e), Err(want)) => assert_eq!(e.kind(), want.kind(), "parse_message error differs"),
        (got, want) => panic!("parse_message and decode disagree: {got:?} vs {want:?}"),
    }
}

/// `status` (the stream decoder's last answer) agrees with the one-shot
/// decode of the same bytes; returns whether the stream completed.
fn assert_stream_agrees(
    status: Result<Status<usize>, crate::Error>,
    dec: &StreamDecoder,
    one_shot: &Result<crate::Message<'_>, crate::Error>,
) -> bool {
    match (status, one_shot) {
        (Err(e), Err(want)) => assert_eq!(e.kind(), want.kind(), "early error differs"),
        (Err(e), Ok(_)) => panic!("stream rejected what one-shot accepts: {e}"),
        (Ok(Status::NeedMore(_)), Err(want)) => assert_eq!(
            want.kind(),
            crate::ErrorKind::Truncated,
            "stream wants more, one-shot says {want}"
        ),
        (Ok(Status::NeedMore(n)), Ok(_)) => {
            panic!("stream wants {n} more bytes of a complete message")
        }
        (Ok(Status::Complete(_)), _) => {
            let got = dec.finish();
            match (&got, one_shot) {
                (Ok(g), Ok(w)) => assert_eq!(g, w),
                (Err(g), Err(w)) => assert_eq!(g.kind(), w.kind()),
                _ => panic!("stream and one-shot disagree: {got:?} vs {one_shot:?}"),
            }
            return true;
        }
    }
    false
}

/// The two-modes oracle: compatible and strict decoding of the same bytes
/// agree. Strict accepts only what compatible accepts without warnings, and
/// then returns the same message; `peek` agrees with both on header and
/// metadata. Returns whether compatible mode accepted the input.
pub fn check_decode_modes(data: &[u8]) -> bool {
    let compatible = decode_with(data, &DecodeOptions::DEFAULT);
    let strict = decode_with(data, &DecodeOptions::strict());
    match (&compatible, &strict) {
        (Ok(c), Ok(s)) => {
            assert!(c.warnings.is_empty(), "strict accepted a warned message");
            assert_eq!(c, s, "strict and compatible decode differently");
        }
        (Ok(c), Err(e)) => {
            assert!(
                !c.warnings.is_empty() || e.kind() == crate::ErrorKind::Inconsistent,
                "strict rejected ({e}) a message compatible mode accepts without warnings"
            );
        }
        (Err(c), Ok(_)) => panic!("strict accepted what compatible rejects: {c}"),
        (Err(_), Err(_)) => {}
    }
    for e in [compatible.as_ref().err(), strict.as_ref().err()]
        .into_iter()
        .flatten()
    {
        assert!(
            e.kind().is_peer_fault(),
            "received bytes caused a non-peer error: {e}"
        );
    }
    if let Ok(m) = &compatible {
        match crate::peek(data) {
            Ok(p) => {
                assert_eq!(p.header, m.header, "peek header");
                assert_eq!(p.metadata, m.metadata, "peek metadata");
            }
            Err(e) => panic!("peek rejects ({e}) what decode accepts"),
        }
    }
    compatible.is_ok()
}

/// The peek oracle: `peek` never needs more than `12 + metadata_length`
/// bytes, and gives the same answer on that prefix as on the whole input;
/// a decoded message's peek equals its header and metadata.
pub fn check_peek(data: &[u8]) {
    let whole = crate::peek(data);
    if let Ok(p) = &whole {
        let need = p.header.metadata_end();
        let prefix = data.get(..need).unwrap_or(data);
        assert_eq!(
            crate::peek(prefix).as_ref(),
            Ok(p),
            "peek on the header+metadata prefix differs"
        );
        assert!(
            p.message_len() >= need as u64,
            "message_len below metadata end"
        );
    }
    if let Err(e) = &whole {
        assert!(e.kind().is_peer_fault(), "peek: non-peer error {e}");
    }
}

/// The incremental oracle over several chunks: the first input byte picks
/// the chunk sizes (a cycle of small and large steps), the rest is the
/// message. Feeding it chunk by chunk agrees with one-shot decoding, and
/// `into_buffer` hands back exactly the declared message bytes; so does
/// [`parse_message`] over a prefix and over the whole buffer.
pub fn check_incremental_chunks(data: &[u8]) {
    let Some((&seed, msg)) = data.split_first() else {
        return;
    };
    let opts = DecodeOptions::DEFAULT;
    let one_shot = decode_with(msg, &opts);
    let steps = [
        1usize,
        usize::from(seed & 0x0f).saturating_add(1),
        usize::from(seed >> 4).saturating_mul(37).saturating_add(1),
    ];
    let mut dec = StreamDecoder::new(opts);
    let mut rest = msg;
    let mut status = Ok(Status::NeedMore(0));
    for step in steps.iter().cycle() {
        let (a, b) = rest.split_at((*step).min(rest.len()));
        status = dec.feed(a);
        rest = b;
        if status.is_err() || rest.is_empty() {
            break;
        }
    }
    // parse_message over the caller's buffer agrees too, on a prefix the
    // seed picks and on the whole input.
    let cut = steps
        .iter()
        .fold(0usize, |a, &b| a.saturating_add(b))
        .min(msg.len());
    check_parse_message(msg.get(..cut).unwrap_or_default(), msg, &one_shot);
    if assert_stream_agrees(status, &dec, &one_shot) {
        let declared = dec.header().map(|h| h.message_len()).unwrap_or(0);
        let buffered = dec.into_buffer();
        assert_eq!(buffered.len() as u64, declared, "into_buffer length");
        assert_eq!(
            Some(buffered.as_slice()),
            msg.get(..buffered.len()),
            "into_buffer bytes"
        );
    }
}

/// The metadata oracle: a Metadata protobuf that parses writes back to a
/// canonical form that parses to the same value and re-writes identically;
/// `encoded_len` is exact; the `extra` view read from the wire agrees with
/// the same entries turned into a map.
pub fn check_metadata(data: &[u8]) {
    let limits = crate::Limits::DEFAULT;
    let Ok(m) = crate::Metadata::parse(data, &limits) else {
        return;
    };
    let mut materialised = m.extra.clone();
    let map = materialised.map_mut().clone();
    assert_eq!(m.extra.len(), map.len(), "extra len");
    assert_eq!(m.extra.is_empty(), map.is_empty(), "extra is_empty");
    assert!(
        m.extra
            .iter()
            .eq(map.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))),
        "extra iteration differs from its map"
    );
    for (k, v) in &map {
        assert_eq!(m.extra.get(k), Some(v.as_ref()), "extra get({k:?})");
    }
    let mut out = Vec::new();
    m.write(&mut out);
    assert_eq!(out.len(), m.encoded_len(), "metadata encoded_len");
    let again = match crate::Metadata::parse(&out, &limits) {
        Ok(a) => a,
        Err(e) => panic!("our own metadata does not parse: {e}"),
    };
    assert_eq!(again, m, "metadata changed in a round trip");
    let mut second = Vec::new();
    again.write(&mut second);
    assert_eq!(second, out, "metadata re-encoding differs");
}

/// The KV oracle: a KV-cache payload that parses has exactly `num_layers`
/// layers of `tensor_bytes` each, strict accepts only what compatible
/// accepts without warnings, and re-writing the layers gives back the
/// declared bytes.
pub fn check_kv(data: &[u8]) {
    use crate::kv::{KvCache, write_kv_cache};
    let compatible = KvCache::parse_with(data, false);
    let strict = KvCache::parse_with(data, true);
    let Ok(kv) = compatible else {
        assert!(
            strict.is_err(),
            "strict KV accepted what compatible rejects"
        );
        return;
    };
    assert_eq!(
        strict.is_ok(),
        kv.warnings.is_empty(),
        "KV strict vs warnings"
    );
    let per = kv.header.tensor_bytes().unwrap_or(u64::MAX);
    let layers: Vec<_> = kv.layers().collect();
    assert_eq!(layers.len(), kv.num_layers(), "KV layer count");
    for l in &layers {
        assert_eq!(l.key.bytes().len() as u64, per, "K size");
        assert_eq!(l.value.bytes().len() as u64, per, "V size");
    }
    let written = write_kv_cache(
        &kv.header,
        layers.iter().map(|l| (l.key.bytes(), l.value.bytes())),
    );
    let total = kv.header.total_bytes().unwrap_or(u64::MAX);
    match written {
        Ok(w) => assert_eq!(Some(w.as_slice()), data.get(..total as usize), "KV rewrite"),
        Err(e) => panic!("KV rewrite failed: {e}"),
    }
}

/// The JSON fallback oracle: any text that parses writes back (Python
/// `json.dumps` style) to text that parses to the same value, and a fallback
/// message that parses round-trips through `to_json`.
pub fn check_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = crate::json::parse(text) {
        let written = crate::json::to_python_json(&v);
        match crate::json::parse(&written) {
            Ok(again) => {
                assert_eq!(
                    crate::json::to_python_json(&again),
                    written,
                    "JSON re-write differs"
                );
            }
            Err(e) => panic!("our own JSON does not parse: {e}: {written}"),
        }
    }
    if let Ok(m) = crate::json::JsonMessage::from_json(text) {
        let written = m.to_json();
        match crate::json::JsonMessage::from_json(&written) {
            Ok(again) => {
                assert_eq!(
                    again.to_json(),
                    written,
                    "fallback message re-write differs"
                )
            }
            Err(e) => panic!("our own fallback message does not parse: {e}"),
        }
    }
}

/// The streamed verifier reaches `verify`'s verdict (kind and message) on the
/// same bytes, with the prefix cut where a reader has header and metadata and
/// the rest fed in pieces whose size the input picks.
#[cfg(feature = "mac")]
fn check_streamed_mac(
    data: &[u8],
    key: &crate::mac::MacKey,
    limits: &crate::Limits,
    whole: &Result<(), crate::Error>,
) {
    use crate::mac::StreamVerifier;
    let meta_end =
        crate::check_header(data, limits).map_or(data.len(), |h| h.metadata_end().min(data.len()));
    let (prefix, rest) = data.split_at(meta_end.max(crate::HEADER_LEN).min(data.len()));
    let piece = usize::from(data.last().copied().unwrap_or(1)).max(1);
    let streamed = StreamVerifier::new(prefix, key, limits).and_then(|mut v| {
        for chunk in rest.chunks(piece) {
            v.update(chunk);
        }
        v.finish()
    });
    let view =
        |r: &Result<(), crate::Error>| r.as_ref().copied().map_err(|e| (e.kind(), e.to_string()));
    assert_eq!(
        view(&streamed),
        view(whole),
        "streamed vs one-shot MAC verdict"
    );
}

/// The MAC oracle (spec/protocol/mac.md): verifying arbitrary bytes never panics and
/// reports framing errors with their own kinds; any message that decodes
/// can be signed, the signed form verifies, and flipping any one of the
/// first bytes that the MAC covers makes it fail; the streamed verifier
/// always agrees with the one-shot one.
#[cfg(feature = "mac")]
pub fn check_mac(data: &[u8]) {
    use crate::mac::{MacKey, encode_signed, verify};
    let key = MacKey::from_raw([7; 32]);
    let limits = crate::Limits::DEFAULT;
    let whole = verify(data, &key, &limits);
    if let Err(e) = &whole {
        assert!(e.kind().is_peer_fault(), "verify: non-peer error {e}");
    }
    check_streamed_mac(data, &key, &limits, &whole);
    let Ok(msg) = decode_with(data, &DecodeOptions::DEFAULT) else {
        return;
    };
    let mut meta = msg.metadata.clone();
    meta.compression = None;
    meta.payload_checksum = None;
    let Ok(signed) = encode_signed(&meta, &msg.payload, Compression::None, &key) else {
        return;
    };
    let lenient = limits
        .with_max_metadata_len(u32::MAX)
        .with_max_extra_entries(usize::MAX)
        .with_max_extra_string_len(usize::MAX);
    if let Err(e) = verify(&signed, &key, &lenient) {
        panic!("our own signed message does not verify: {e}");
    }
    let pick = data
        .first()
        .map_or(0, |&b| usize::from(b))
        .checked_rem(signed.len())
        .unwrap_or(0);
    let mut tampered = signed;
    if let Some(b) = tampered.get_mut(pick) {
        *b ^= 0x01;
        assert!(
            verify(&tampered, &key, &lenient).is_err(),
            "a flipped byte {pick} still verifies"
        );
    }
}

// --- KV extensions (kv_quant, kv_delta) ---

/// The extended-KV oracle (AVP-KVQ-3): received bytes never cause a caller
/// or internal error; a payload that parses has sections of the declared
/// size, dequantizes (or refuses a bad scale with `inconsistent`) into a
/// KV v1 payload that parses strictly with the declared shape, and an
/// unquantized full payload re-encodes byte-identically.
pub fn check_kv_ext(data: &[u8]) {
    use crate::kv::KvCache;
    use crate::kv_quant::{KvExt, KvPart, KvScheme, QuantParams, encode_ext};
    let ext = match KvExt::parse(data) {
        Ok(ext) => ext,
        Err(e) => {
            assert!(e.kind().is_peer_fault(), "parse gave {e}");
            return;
        }
    };
    for layer in 0..ext.header.num_layers as usize {
        for part in [KvPart::Key, KvPart::Value] {
            let len = ext.section(layer, part).map(|s| s.len() as u64);
            assert_eq!(len, ext.header.section_bytes(part), "section size");
        }
    }
    // Bound the work: dequantizing may expand 8 times.
    if ext.dequantized_len() > 1 << 24 {
        return;
    }
    let out = match ext.dequantize() {
        Ok(out) => out,
        Err(e) => {
            assert_eq!(
                e.kind(),
                crate::ErrorKind::Inconsistent,
                "dequantize gave {e}"
            );
            return;
        }
    };
    let kv = KvCache::parse_with(&out, true);
    let Ok(kv) = kv else {
        panic!("dequantized payload does not parse");
    };
    assert_eq!(kv.header, ext.dequantized_header(), "dequantized header");
    if ext.header.scheme == KvScheme::None && ext.header.seq_start == 0 {
        let again = encode_ext(&kv, &QuantParams::NONE, 0, None);
        // NaN payloads are refused by the encoder (a sender never sends them).
        if let Ok(again) = again {
            assert_eq!(again.as_slice(), data, "scheme none re-encodes identically");
        }
    }
}

/// The delta oracle (AVP-KVD-2/4): any KV v1 payload split at a position
/// chosen by its last byte and assembled again on itself gives back its
/// declared bytes; a base one position too short is `delta_mismatch`.
pub fn check_kv_delta(data: &[u8]) {
    use crate::kv::KvCache;
    use crate::kv_delta::{assemble_into, assembled_len};
    use crate::kv_quant::{KvExt, PrefixAddress, QuantParams, encode_ext};
    let Ok(kv) = KvCache::parse_with(data, true) else {
        return;
    };
    let n = kv.header.seq_len;
    if n == 0 || kv.header.total_bytes().unwrap_or(u64::MAX) > 1 << 24 {
        return;
    }
    let p = u32::from(data.last().copied().unwrap_or(1))
        .checked_rem(n)
        .unwrap_or(0)
        .saturating_add(1);
    let address = PrefixAddress([0xa5; 32]);
    let Ok(delta) = encode_ext(&kv, &QuantParams::NONE, p, Some(&address)) else {
        return; // NaN values: the encoder refuses them
    };
    let ext = match KvExt::parse(&delta) {
        Ok(ext) => ext,
        Err(e) => panic!("delta we wrote does not parse: {e}"),
    };
    let mut out = vec![0u8; assembled_len(&ext) as usize];
    if let Err(e) = assemble_into(&kv, &address, &ext, &mut out) {
        panic!("assembly failed: {e}");
    }
    assert_eq!(out.as_slice(), data, "split + assemble is the identity");
    let wrong = PrefixAddress([0x5a; 32]);
    let e = assemble_into(&kv, &wrong, &ext, &mut out)
        .err()
        .map(|e| e.kind());
    assert_eq!(
        e,
        Some(crate::ErrorKind::PrefixMismatch),
        "address mismatch"
    );
}

// --- chunked contexts (chunk) ---

/// The chunk oracle (AVP-CHK-1..8). Any bytes read as chunk messages back
/// to back assemble or fail with a peer-fault kind. The same bytes also
/// shape a small KV v1 context (dimensions, chunk count, arrival order,
/// a duplicate) that is split and assembled again: the identity; without
/// one chunk it is `incomplete_context`.
#[cfg(feature = "kv-chunked")]
pub fn check_chunk_assembly(data: &[u8]) {
    use crate::chunk::{AssemblyLimits, ChunkDescriptor, assemble_messages, split_payload};
    use crate::kv::{KV_HEADER_LEN, KvDtype, KvHeader};
    use crate::{DecodeOptions, ErrorKind, Metadata};

    let limits = AssemblyLimits {
        max_chunks: 64,
        max_total_bytes: 1 << 20,
        max_layers: 64,
    };
    let options = DecodeOptions::strict();
    // 1. Received bytes.
    let mut messages = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let len = crate::check_header(rest, &options.limits)
            .map(|h| usize::try_from(h.message_len()).unwrap_or(usize::MAX));
        match len {
            Ok(len) if len <= rest.len() => {
                let (m, r) = rest.split_at(len);
                messages.push(m);
                rest = r;
            }
            _ => {
                messages.push(rest);
                rest = &[];
            }
        }
    }
    if let Err(e) = assemble_messages(&messages, &limits, &options) {
        assert!(e.kind().is_peer_fault(), "assembly gave {e}");
    }
    if let Err(e) = ChunkDescriptor::parse_extra_value(&String::from_utf8_lossy(data)) {
        assert_eq!(e.kind(), ErrorKind::BadChunk, "descriptor parse gave {e}");
    }
    // 2. A context shaped by the bytes, split and assembled again.
    let byte = |i: usize| u32::from(data.get(i).copied().unwrap_or(0));
    let header = KvHeader {
        num_layers: byte(0).wrapping_rem(6).wrapping_add(1),
        num_kv_heads: byte(1).wrapping_rem(3).wrapping_add(1),
        head_dim: byte(2).wrapping_rem(4).wrapping_add(1),
        seq_len: byte(3) % 5,
        dtype: match byte(4) % 3 {
            0 => KvDtype::Float32,
            1 => KvDtype::Float16,
            _ => KvDtype::Bfloat16,
        },
    };
    let total = header.total_bytes().unwrap_or(0) as usize;
    let mut payload = header.to_bytes().to_vec();
    let fill = data.get(8..).filter(|f| !f.is_empty()).unwrap_or(&[0x3c]);
    payload.extend(
        fill.iter()
            .cycle()
            .take(total.saturating_sub(KV_HEADER_LEN)),
    );
    let count = byte(5)
        .checked_rem(header.num_layers)
        .unwrap_or(0)
        .wrapping_add(1);
    let base = Metadata::new().with_model_id("fuzz");
    let chunks = match split_payload(&payload, count, &base, [byte(6) as u8; 16]) {
        Ok(chunks) => chunks,
        Err(e) => panic!("split of a valid context failed: {e}"),
    };
    assert_eq!(chunks.len(), count as usize, "chunk count");
    // Arrival order: a rotation by byte 6, then chunk `byte 7` once more.
    let n = chunks.len();
    let mut order: Vec<&[u8]> = (0..n)
        .filter_map(|i| {
            chunks
                .get(i.wrapping_add(byte(6) as usize).checked_rem(n).unwrap_or(0))
                .map(Vec::as_slice)
        })
        .collect();
    if let Some(dup) = chunks.get((byte(7) as usize).checked_rem(n).unwrap_or(0)) {
        order.push(dup);
    }
    match assemble_messages(&order, &limits, &options) {
        Ok(out) => assert_eq!(out, payload, "split + assemble is the identity"),
        Err(e) => panic!("assembly of a valid split failed: {e}"),
    }
    if n > 1 {
        let drop = (byte(7) as usize).checked_rem(n).unwrap_or(0);
        let fewer: Vec<&[u8]> = chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != drop)
            .map(|(_, c)| c.as_slice())
            .collect();
        let kind = assemble_messages(&fewer, &limits, &options)
            .err()
            .map(|e| e.kind());
        assert_eq!(kind, Some(ErrorKind::IncompleteContext), "a chunk missing");
    }
}

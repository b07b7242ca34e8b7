//! Chunked contexts (spec/protocol/chunked.md, AVP-CHK-*): descriptor
//! round trip, the plan, split + assemble in any order, and every typed
//! error of the assembler.
#![cfg(feature = "kv-chunked")]

use avp_codec::chunk::{
    Added, Assembler, AssemblyLimits, CHUNK_EXTRA_KEY, ChunkDescriptor, ChunkInfo, ChunkPlan,
    ChunkSummer, ChunkSums, MAX_CHUNK_PAYLOAD, assemble_messages, context_digest, descriptor_of,
    split_payload,
};
use avp_codec::kv::{KV_HEADER_LEN, KvDtype, KvHeader};
use avp_codec::{DecodeOptions, ErrorKind, Metadata, PayloadType, decode, fuzzing, peek};
use proptest::prelude::*;

#[path = "../../test-support/fuzz_replay.rs"]
mod fuzz_replay;

fn header(layers: u32) -> KvHeader {
    KvHeader {
        num_layers: layers,
        num_kv_heads: 2,
        head_dim: 4,
        seq_len: 3,
        dtype: KvDtype::Float16,
    }
}

/// A KV v1 payload whose bytes are a simple function of their position.
fn payload(layers: u32) -> Vec<u8> {
    let h = header(layers);
    let mut out = h.to_bytes().to_vec();
    let n = h.total_bytes().unwrap() as usize - KV_HEADER_LEN;
    out.extend((0..n).map(|i| (i * 7 % 251) as u8));
    out
}

const CTX: [u8; 16] = [0x11; 16];

fn chunks(layers: u32, count: u32) -> Vec<Vec<u8>> {
    let base = Metadata::new().with_model_id("m");
    split_payload(&payload(layers), count, &base, CTX).unwrap()
}

fn assemble(msgs: &[Vec<u8>]) -> Result<Vec<u8>, avp_codec::Error> {
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    assemble_messages(&refs, &AssemblyLimits::DEFAULT, &DecodeOptions::strict())
}

fn kind(r: Result<Vec<u8>, avp_codec::Error>) -> &'static str {
    r.err().map_or("ok", |e| e.kind().as_str())
}

#[test]
fn avp_chk_2_descriptor_round_trips_and_only_canonical_parses() {
    let d = ChunkDescriptor {
        context_id: [0xab; 16],
        index: 1,
        count: 3,
        layer_start: 2,
        layer_end: 5,
        num_layers: 9,
        context_digest: [0x0f; 32],
    };
    let text = d.to_extra_value();
    assert_eq!(
        text,
        format!("1:{}:1:3:2:5:9:{}", "ab".repeat(16), "0f".repeat(32))
    );
    assert_eq!(ChunkDescriptor::parse_extra_value(&text).unwrap(), d);
    for bad in [
        text.replace("1:ab", "2:ab"),
        text.replace(":1:3:", ":01:3:"),
        text.replace(":1:3:", ":+1:3:"),
        text.replace("abab", "ABAB"),
        format!("{text}:"),
        text.replacen(":9:", ":99999999999:", 1),
        text[..text.len() - 2].to_owned(),
        String::new(),
    ] {
        let e = ChunkDescriptor::parse_extra_value(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadChunk, "{bad}");
    }
}

#[test]
fn avp_chk_3_descriptor_fields_must_agree() {
    let ok = ChunkDescriptor {
        context_id: CTX,
        index: 1,
        count: 3,
        layer_start: 1,
        layer_end: 2,
        num_layers: 3,
        context_digest: [0; 32],
    };
    ok.validate().unwrap();
    let bads = [
        ChunkDescriptor { index: 3, ..ok },     // index >= count
        ChunkDescriptor { layer_end: 1, ..ok }, // empty
        ChunkDescriptor { layer_end: 4, ..ok }, // past the end
        ChunkDescriptor {
            layer_start: 0,
            ..ok
        }, // no room for chunk 0
        ChunkDescriptor { layer_end: 3, ..ok }, // no room for chunk 2
        ChunkDescriptor {
            index: 0,
            count: 1,
            ..ok
        }, // only chunk, not from 0
        ChunkDescriptor {
            count: 0,
            index: 0,
            ..ok
        }, // no chunks
    ];
    for b in bads {
        assert_eq!(
            b.validate().unwrap_err().kind(),
            ErrorKind::BadChunk,
            "{b:?}"
        );
    }
}

#[test]
fn avp_chk_1_plan_keeps_chunks_under_the_size_and_even() {
    let h = header(10);
    let layer = h.tensor_bytes().unwrap() * 2; // 48
    let plan = ChunkPlan::new(&h, KV_HEADER_LEN as u64 + 3 * layer).unwrap();
    assert_eq!(plan.count(), 4);
    let lens: Vec<u32> = plan.ranges().iter().map(|r| r.end - r.start).collect();
    assert_eq!(lens, [3, 3, 2, 2]);
    for i in 0..plan.count() {
        assert!(plan.chunk_payload_len(i).unwrap() <= KV_HEADER_LEN as u64 + 3 * layer);
    }
    let one = ChunkPlan::new(&h, u64::MAX).unwrap();
    assert_eq!((one.count(), one.ranges()[0].clone()), (1, 0..10));
    let e = ChunkPlan::new(&h, KV_HEADER_LEN as u64 + layer - 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        ChunkPlan::with_count(&h, 11).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn avp_chk_4_split_then_assemble_in_any_order_with_duplicates() {
    let whole = payload(7);
    let msgs = chunks(7, 3);
    assert_eq!(msgs.len(), 3);
    assert_eq!(assemble(&msgs).unwrap(), whole);
    let mut rev = msgs.clone();
    rev.reverse();
    assert_eq!(assemble(&rev).unwrap(), whole);
    let dup = vec![
        msgs[1].clone(),
        msgs[0].clone(),
        msgs[1].clone(),
        msgs[2].clone(),
    ];
    assert_eq!(assemble(&dup).unwrap(), whole);
    // Each chunk's layer bytes sit at its offset in the whole payload.
    for m in &msgs {
        let msg = decode(m).unwrap();
        let info = ChunkInfo::of_chunk_message(&msg).unwrap();
        let at = info.offset_in_context().unwrap() as usize;
        let layers = ChunkInfo::layer_bytes(&msg.payload);
        assert_eq!(&whole[at..at + layers.len()], layers);
    }
    // Each chunk is an ordinary KV_CACHE message whose descriptor peek reads.
    for (i, m) in msgs.iter().enumerate() {
        let p = peek(m).unwrap();
        assert_eq!(p.metadata.payload_type, PayloadType::KvCache);
        let d = descriptor_of(&p.metadata).unwrap().unwrap();
        assert_eq!(d.index, i as u32);
        assert_eq!(d.count, 3);
        assert_eq!(d.num_layers, 7);
        assert_eq!(d.context_digest, context_digest(&whole));
        let msg = decode(m).unwrap();
        assert_eq!(msg.metadata.model_id, "m");
        let h = KvHeader::parse(&msg.payload).unwrap();
        assert_eq!(h.num_layers, d.layer_end - d.layer_start);
    }
}

#[test]
fn avp_chk_5_missing_chunk_and_digest_mismatch() {
    let msgs = chunks(6, 3);
    assert_eq!(
        kind(assemble(&[msgs[0].clone(), msgs[2].clone()])),
        "incomplete_context"
    );
    // Same shape, other bytes, the first context's digest: re-split a
    // changed payload and graft the original descriptors on it.
    let mut other = payload(6);
    *other.last_mut().unwrap() ^= 1;
    let base = Metadata::new().with_model_id("m");
    let forged: Vec<Vec<u8>> = split_payload(&other, 3, &base, CTX)
        .unwrap()
        .into_iter()
        .zip(&msgs)
        .map(|(m, orig)| {
            let dm = decode(orig).unwrap();
            let want = dm.metadata.extra.get(CHUNK_EXTRA_KEY).unwrap().to_owned();
            let got = decode(&m).unwrap();
            let meta = got
                .metadata
                .clone()
                .with_extra_entry(CHUNK_EXTRA_KEY, want)
                .with_payload_checksum(None);
            avp_codec::encode(&meta, &got.payload, avp_codec::Compression::None).unwrap()
        })
        .collect();
    assert_eq!(kind(assemble(&forged)), "context_digest_mismatch");
}

fn info(layers: u32, d: ChunkDescriptor, crc: u32) -> ChunkInfo {
    let h = KvHeader {
        num_layers: d.layer_end - d.layer_start,
        ..header(layers)
    };
    ChunkInfo::new(d, h, h.total_bytes().unwrap(), crc).unwrap()
}

fn desc(index: u32, count: u32, start: u32, end: u32, layers: u32) -> ChunkDescriptor {
    ChunkDescriptor {
        context_id: CTX,
        index,
        count,
        layer_start: start,
        layer_end: end,
        num_layers: layers,
        context_digest: [7; 32],
    }
}

#[test]
fn avp_chk_4_conflicts_are_typed_and_change_nothing() {
    let mut a = Assembler::new(AssemblyLimits::DEFAULT);
    assert_eq!(a.add(&info(6, desc(0, 3, 0, 2, 6), 1)).unwrap(), Added::New);
    assert_eq!(
        a.add(&info(6, desc(0, 3, 0, 2, 6), 1)).unwrap(),
        Added::Duplicate
    );
    let conflicts = [
        info(6, desc(0, 3, 0, 2, 6), 2), // conflicting duplicate
        info(6, desc(1, 3, 1, 3, 6), 0), // overlaps chunk 0
        info(6, desc(1, 3, 3, 4, 6), 0), // gap after chunk 0
        info(6, desc(2, 3, 2, 6, 6), 0), // no room for chunk 1
        info(6, desc(1, 4, 2, 3, 6), 0), // another count
        info(
            6,
            ChunkDescriptor {
                context_id: [9; 16],
                ..desc(1, 3, 2, 4, 6)
            },
            0,
        ),
    ];
    for c in conflicts {
        let e = a.add(&c).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChunkConflict, "{c:?}: {e}");
    }
    let mut other_shape = info(6, desc(1, 3, 2, 4, 6), 0);
    other_shape.header.seq_len = 4;
    other_shape.payload_len = other_shape.header.total_bytes().unwrap();
    assert_eq!(
        a.add(&other_shape).unwrap_err().kind(),
        ErrorKind::ChunkConflict
    );
    assert_eq!(a.held_indices().collect::<Vec<_>>(), [0]);
    assert_eq!(a.missing_indices().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        a.check_complete().unwrap_err().kind(),
        ErrorKind::IncompleteContext
    );
    assert_eq!(a.add(&info(6, desc(2, 3, 4, 6, 6), 0)).unwrap(), Added::New);
    assert_eq!(a.add(&info(6, desc(1, 3, 2, 4, 6), 0)).unwrap(), Added::New);
    assert!(a.is_complete());
}

#[test]
fn avp_chk_7_limits_are_checked_on_the_first_chunk() {
    let limits = AssemblyLimits {
        max_chunks: 2,
        ..AssemblyLimits::DEFAULT
    };
    let mut a = Assembler::new(limits);
    let e = a.add(&info(6, desc(0, 3, 0, 2, 6), 0)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let small = AssemblyLimits {
        max_total_bytes: header(6).total_bytes().unwrap() - 1,
        ..AssemblyLimits::DEFAULT
    };
    let e = Assembler::new(small)
        .add(&info(6, desc(0, 3, 0, 2, 6), 0))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
    let e = Assembler::new(AssemblyLimits::DEFAULT)
        .add(&info(5000, desc(0, 2, 0, 1, 5000), 0))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LimitExceeded);
}

#[test]
fn avp_chk_3_kv_header_must_match_the_range() {
    let d = desc(0, 2, 0, 2, 4);
    let h = KvHeader {
        num_layers: 3,
        ..header(4)
    };
    let e = ChunkInfo::new(d, h, h.total_bytes().unwrap(), 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadChunk);
    let h = KvHeader {
        num_layers: 2,
        ..header(4)
    };
    let e = ChunkInfo::new(d, h, h.total_bytes().unwrap() + 1, 0).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadChunk);
}

#[test]
fn avp_chk_5_summer_matches_the_digest_of_the_whole_payload_for_any_split() {
    let whole = payload(5);
    let plan = ChunkPlan::with_count(&header(5), 2).unwrap();
    for step in [1, 7, 48, 1000] {
        let mut s = ChunkSummer::new(&plan);
        for piece in whole[KV_HEADER_LEN..].chunks(step) {
            s.update(piece).unwrap();
        }
        let sums = s.finish().unwrap();
        assert_eq!(sums.context_digest, context_digest(&whole));
        assert_eq!(sums.chunk_crc32.len(), 2);
    }
    let mut s = ChunkSummer::new(&plan);
    s.update(&whole[KV_HEADER_LEN + 1..]).unwrap();
    assert_eq!(s.finish().unwrap_err().kind(), ErrorKind::InvalidArgument);
    let mut s = ChunkSummer::new(&plan);
    s.update(&whole[KV_HEADER_LEN..]).unwrap();
    assert_eq!(
        s.update(&[0]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn avp_chk_2_a_plain_message_has_no_descriptor() {
    let m = Metadata::new();
    assert_eq!(descriptor_of(&m).unwrap(), None);
    let hidden =
        Metadata::new().with_extra_entry(CHUNK_EXTRA_KEY, desc(0, 1, 0, 4, 4).to_extra_value());
    assert_eq!(
        descriptor_of(&hidden).unwrap_err().kind(),
        ErrorKind::BadChunk
    );
}

#[test]
fn fuzz_corpus_chunk_assembly() {
    // AVP-CHK-4, AVP-CHK-5: the committed seeds of the chunk_assembly target.
    assert!(fuzz_replay::replay("chunk_assembly", fuzzing::check_chunk_assembly) >= 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// AVP-CHK-1, AVP-CHK-4, AVP-CHK-5 through the shared oracle: any shape,
    /// chunk count, arrival order and duplicate round-trips.
    #[test]
    fn avp_chk_4_split_assemble_oracle(data in proptest::collection::vec(any::<u8>(), 0..160)) {
        fuzzing::check_chunk_assembly(&data);
    }

    /// AVP-CHK-8: real chunks with one byte changed never panic and fail
    /// only with peer-fault kinds.
    #[test]
    fn avp_chk_8_mutated_chunks_hold_the_oracle(count in 1u32..4, at in any::<usize>(), bit in 0u8..8) {
        let mut bytes = chunks(4, count).concat();
        let i = at % bytes.len();
        bytes[i] ^= 1 << bit;
        fuzzing::check_chunk_assembly(&bytes);
    }
}

#[test]
fn avp_chk_1_plans_of_huge_contexts_fit_one_message_per_chunk() {
    // A 20 GiB context (32 layers of 640 MiB), planned without a byte of it.
    let h = KvHeader {
        num_layers: 32,
        num_kv_heads: 8,
        head_dim: 128,
        seq_len: 163_840,
        dtype: KvDtype::Float16,
    };
    let plan = ChunkPlan::new(&h, u64::MAX).unwrap();
    assert_eq!(plan.count(), 6);
    for i in 0..plan.count() {
        assert!(plan.chunk_payload_len(i).unwrap() <= MAX_CHUNK_PAYLOAD);
    }
    let sums = ChunkSums {
        context_digest: [0; 32],
        chunk_crc32: vec![0; 6],
    };
    let prefix = plan.chunk_prefix(&Metadata::new(), CTX, &sums, 5).unwrap();
    let p = peek(&prefix).unwrap();
    assert_eq!(
        p.message_len(),
        prefix.len() as u64 - 17 + plan.chunk_payload_len(5).unwrap()
    );
    // One chunk of the whole context would not fit a message.
    let one = ChunkPlan::with_count(&h, 1).unwrap();
    let sums1 = ChunkSums {
        context_digest: [0; 32],
        chunk_crc32: vec![0],
    };
    let e = one
        .chunk_prefix(&Metadata::new(), CTX, &sums1, 0)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        plan.chunk_prefix(&Metadata::new(), CTX, &sums, 6)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

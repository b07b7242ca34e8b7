//! Chunked contexts in the engine (issue 18, spec/impl/engine.md AVP-ENG-40..43):
//! a context exported straight into chunk messages is the plain export cut
//! by layers, and importing those chunks, in any order or streamed from a
//! reader, gives the context the plain import gives: the same bytes on
//! re-export and the same generated tokens, on every fixture model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use avp_codec::ErrorKind;
use avp_codec::chunk::{AssemblyLimits, assemble_messages, context_digest};
use avp_engine::{
    ChunkOptions, ChunkProgress, Device, Engine, EngineError, GenerateOptions, Kind, LatentContext,
    LoadOptions, WeightSource,
};

const MODELS: [&str; 7] = [
    "llama_tied",
    "llama_untied",
    "qwen2",
    "qwen3",
    "mistral",
    "mistral_window",
    "llama_nan",
];

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join("models")
        .join(name)
}

fn engine(name: &str, kind: Kind) -> Engine {
    let opts = LoadOptions {
        device: Device::Cpu,
        kind: Some(kind),
        weights: WeightSource::Checkpoint,
        cache_dir: None,
        model_hash: None,
    };
    Engine::load(&model_dir(name), &opts).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        ..GenerateOptions::default()
    }
}

/// Chunks of `layers` layers each (the last may hold fewer).
fn per_layers(ctx: &LatentContext, layers: u64) -> ChunkOptions {
    let c = &ctx.cache;
    let elem = if c.kind() == Kind::Float { 4 } else { 2 };
    let layer = 2 * (c.num_kv_heads() * c.seq_len() * c.head_dim()) as u64 * elem;
    ChunkOptions::new(17 + layers * layer)
}

fn wire_kind(e: &EngineError) -> Option<ErrorKind> {
    match e {
        EngineError::Wire(w) => Some(w.kind()),
        _ => None,
    }
}

/// AVP-ENG-40: the chunks are the plain export's payload cut by layer
/// ranges (the codec's assembler rebuilds it byte for byte, digest checked),
/// one chunk per layer or several layers per chunk.
#[test]
fn chunked_export_is_the_plain_payload_cut_by_layers() {
    for name in MODELS {
        let e = engine(name, Kind::Float);
        let ctx = e.think("Split me into layers.", 3, None).unwrap();
        let plain = ctx.kv_payload().unwrap();
        let layers = ctx.cache.num_layers();
        for per in [1, 2] {
            let chunks = ctx.to_chunks(&per_layers(&ctx, per)).unwrap();
            assert_eq!(chunks.len(), layers.div_ceil(per as usize), "{name}");
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let whole = assemble_messages(
                &refs,
                &AssemblyLimits::default(),
                &avp_codec::DecodeOptions::default(),
            )
            .unwrap();
            assert_eq!(whole, plain, "{name}: {per} layer(s) per chunk");
            // The same context always gets the same id and digest.
            let again = ctx.to_chunks(&per_layers(&ctx, per)).unwrap();
            assert_eq!(again, chunks, "{name}: reproducible");
        }
        let summary =
            avp_engine::chunked::write_chunks(&ctx, &per_layers(&ctx, 1), &|_| {}, &mut |_| Ok(()))
                .unwrap();
        assert_eq!(summary.context_digest, context_digest(&plain), "{name}");
        assert_eq!(summary.count as usize, layers, "{name}");
    }
}

/// AVP-ENG-41: chunks pushed in reverse order, with a duplicate, import
/// to the plain import's context: the same bytes on re-export and the same
/// greedy tokens. AVP-ENG-20 through chunks.
#[test]
fn chunks_in_any_order_import_to_the_plain_context() {
    for name in MODELS {
        let e = engine(name, Kind::Float);
        let ctx = e.think("What is 2+3? Answer briefly.", 4, None).unwrap();
        let plain = e.import_context(&ctx.to_bytes().unwrap(), 32).unwrap();
        let mut chunks = ctx.to_chunks(&per_layers(&ctx, 1)).unwrap();
        chunks.reverse();
        let mut import = e.chunk_import(32);
        let mut progress = ChunkProgress::default();
        for c in &chunks {
            progress = import.push(c).unwrap();
        }
        // An identical duplicate changes nothing (AVP-CHK-4).
        assert_eq!(import.push(&chunks[0]).unwrap(), progress, "{name}");
        assert!(progress.is_complete(), "{name}");
        let back = import.finish().unwrap();
        assert_eq!(back.seq_len(), ctx.seq_len(), "{name}");
        assert_eq!(back.num_steps, ctx.num_steps, "{name}");
        assert_eq!(
            back.to_bytes().unwrap(),
            plain.to_bytes().unwrap(),
            "{name}: re-export"
        );
        let a = e.generate("Now answer.", Some(&plain), &greedy(8)).unwrap();
        let b = e.generate("Now answer.", Some(&back), &greedy(8)).unwrap();
        assert_eq!(a.token_ids, b.token_ids, "{name}");
        // The continued context grows past the imported one (headroom).
        let more = e.think("And then?", 2, Some(back)).unwrap();
        assert!(more.seq_len() > ctx.seq_len(), "{name}");
    }
}

/// AVP-ENG-41: a context exported in bfloat16 imports into a float32
/// model exactly as the plain bfloat16 message does (converted on the device).
#[test]
fn half_precision_chunks_import_like_the_plain_message() {
    let bf = engine("qwen3", Kind::BFloat16);
    let f32 = engine("qwen3", Kind::Float);
    let ctx = bf.think("Half precision, please.", 2, None).unwrap();
    let plain = f32.import_context(&ctx.to_bytes().unwrap(), 8).unwrap();
    let mut import = f32.chunk_import(8);
    for c in ctx.to_chunks(&per_layers(&ctx, 1)).unwrap() {
        import.push(&c).unwrap();
    }
    let back = import.finish().unwrap();
    assert_eq!(back.to_bytes().unwrap(), plain.to_bytes().unwrap());
}

/// AVP-ENG-42: a chunked file read by the reader thread gives the same
/// context, and progress reports layers on the device before the last
/// chunk is there.
#[test]
fn a_streamed_chunk_file_imports_while_it_is_read() {
    let e = engine("llama_untied", Kind::Float);
    let ctx = e.think("Stream me.", 2, None).unwrap();
    let chunks = ctx.to_chunks(&per_layers(&ctx, 1)).unwrap();
    assert_eq!(chunks.len(), 3);
    let file: Vec<u8> = chunks.concat();
    let mut seen = Vec::new();
    let back = e
        .import_chunk_stream(&mut Cursor::new(file), 16, &mut |p| seen.push(p))
        .unwrap();
    let layers: Vec<u32> = seen.iter().map(|p| p.layers).collect();
    assert_eq!(layers, [1, 2, 3]);
    assert!(!seen[0].is_complete() && seen[2].is_complete());
    let plain = e.import_context(&ctx.to_bytes().unwrap(), 16).unwrap();
    assert_eq!(back.to_bytes().unwrap(), plain.to_bytes().unwrap());
    // Out of order in the file works too.
    let shuffled: Vec<u8> = [chunks[2].as_slice(), &chunks[0], &chunks[1]].concat();
    let back = e
        .import_chunk_stream(&mut Cursor::new(shuffled), 16, &mut |_| {})
        .unwrap();
    assert_eq!(back.to_bytes().unwrap(), plain.to_bytes().unwrap());
}

/// `message` with one tensor byte changed and its checksum made to match:
/// a chunk whose CRC is fine but whose bytes are not the context's.
fn forge_layer_byte(message: &[u8]) -> Vec<u8> {
    let msg = avp_codec::decode(message).unwrap();
    let mut meta = msg.metadata.clone();
    meta.payload_checksum = None;
    let mut payload = msg.payload.to_vec();
    let last = payload.len() - 1;
    payload[last] ^= 0x40;
    avp_codec::encode(&meta, &payload, avp_codec::Compression::None).unwrap()
}

/// AVP-ENG-41: missing, garbled, forged, foreign and plain messages are
/// typed errors, and an import that saw one is never usable.
#[test]
fn missing_garbled_and_foreign_chunks_are_typed_errors() {
    let e = engine("llama_untied", Kind::Float);
    let ctx = e.think("One context.", 2, None).unwrap();
    let chunks = ctx.to_chunks(&per_layers(&ctx, 1)).unwrap();

    // A chunk missing: incomplete at the end, never half a context.
    let mut import = e.chunk_import(0);
    import.push(&chunks[0]).unwrap();
    import.push(&chunks[2]).unwrap();
    let err = import.finish().unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::IncompleteContext), "{err}");

    // A flipped byte: the message checksum catches it.
    let mut garbled = chunks[1].clone();
    let last = garbled.len() - 1;
    garbled[last] ^= 1;
    let mut import = e.chunk_import(0);
    import.push(&chunks[0]).unwrap();
    let err = import.push(&garbled).unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::ChecksumMismatch), "{err}");
    // The import is abandoned: the good chunks after it are refused too.
    assert!(import.push(&chunks[1]).is_err());
    assert!(import.finish().is_err());

    // A changed byte with a matching checksum: the context digest catches it.
    let mut import = e.chunk_import(0);
    for c in [&chunks[0], &forge_layer_byte(&chunks[1]), &chunks[2]] {
        import.push(c).unwrap();
    }
    let err = import.finish().unwrap_err();
    assert_eq!(
        wire_kind(&err),
        Some(ErrorKind::ContextDigestMismatch),
        "{err}"
    );

    // A chunk of another context of the same model mixed in.
    let other = e.think("Another context.", 2, None).unwrap();
    let foreign = other.to_chunks(&per_layers(&other, 1)).unwrap();
    let mut import = e.chunk_import(0);
    import.push(&chunks[0]).unwrap();
    let err = import.push(&foreign[1]).unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::ChunkConflict), "{err}");

    // A chunk of another model: refused before anything is allocated.
    let q = engine("qwen2", Kind::Float);
    let qctx = q.think("Other model.", 1, None).unwrap();
    let qchunks = qctx.to_chunks(&per_layers(&qctx, 1)).unwrap();
    let err = e.chunk_import(0).push(&qchunks[0]).unwrap_err();
    assert!(
        matches!(err, EngineError::IncompatibleContext { .. }),
        "{err}"
    );

    // A plain message is no chunk.
    let err = e
        .chunk_import(0)
        .push(&ctx.to_bytes().unwrap())
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidContext(_)), "{err}");

    // Nothing pushed: incomplete.
    let err = e.chunk_import(0).finish().unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::IncompleteContext), "{err}");

    // A stream cut inside a chunk, and one with a chunk left out.
    let file: Vec<u8> = chunks.concat();
    let cut = &file[..file.len() - 5];
    let err = e
        .import_chunk_stream(&mut Cursor::new(cut.to_vec()), 0, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, EngineError::Wire(_)), "{err}");
    let short: Vec<u8> = [chunks[0].as_slice(), &chunks[1]].concat();
    let err = e
        .import_chunk_stream(&mut Cursor::new(short), 0, &mut |_| {})
        .unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::IncompleteContext), "{err}");
    // Bytes that are no AVP message at all stop after one header.
    let err = e
        .import_chunk_stream(&mut Cursor::new(vec![0u8; 4096]), 0, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, EngineError::Wire(_)), "{err}");
}

/// AVP-ENG-41: `import_message` given one chunk imports a one-chunk context
/// (digest checked) and names the missing chunks of a larger one.
#[test]
fn import_message_takes_a_lone_chunk_for_what_it_is() {
    let e = engine("llama_untied", Kind::Float);
    let ctx = e.think("Alone.", 1, None).unwrap();
    let plain = e.import_context(&ctx.to_bytes().unwrap(), 4).unwrap();
    let whole = ctx.to_chunks(&ChunkOptions::new(1 << 30)).unwrap();
    assert_eq!(whole.len(), 1);
    let back = e.import_message(&whole[0], 4).unwrap();
    assert_eq!(back.to_bytes().unwrap(), plain.to_bytes().unwrap());
    let parts = ctx.to_chunks(&per_layers(&ctx, 1)).unwrap();
    let err = e.import_message(&parts[1], 4).unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::IncompleteContext), "{err}");
}

/// AVP-ENG-40: a chunk bound smaller than one layer is refused with a
/// typed error, not a chunk over the bound.
#[test]
fn a_chunk_bound_below_one_layer_is_refused() {
    let e = engine("qwen2", Kind::Float);
    let ctx = e.think("tiny", 0, None).unwrap();
    let err = ctx.to_chunks(&ChunkOptions::new(64)).unwrap_err();
    assert_eq!(wire_kind(&err), Some(ErrorKind::InvalidArgument), "{err}");
}

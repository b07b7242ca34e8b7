//! Criterion benches of the handshake hot paths (BENCHMARKS.md `## Handshake`):
//! model hash of a 7B config, tokenizer hash of a 152k-token vocabulary
//! (one thread and the opt-in two-thread path),
//! the weights-digest leaf hash (one core) and whole-file digest.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::arithmetic_side_effects
)]

use std::hint::black_box;

use avp_handshake::json::{self, Int, JsonString, Object, Value};
use avp_handshake::weights::{digest_safetensors_bytes, leaf_hash};
use avp_handshake::{
    model_hash, tokenizer_hash, tokenizer_hash_with_threads, vocab_from_tokenizer_json,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A Llama-2-7B config.json as HF writes it.
pub const LLAMA2_7B: &str = r#"{
  "_name_or_path": "meta-llama/Llama-2-7b-hf",
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.31.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
}"#;

/// A deterministic byte-level-BPE-like vocabulary of `n` distinct tokens
/// (ASCII, `Ġ`-prefixed and CJK pieces), as `{token: id}`.
fn synthetic_vocab(n: usize) -> Object {
    let mut entries = Vec::with_capacity(n);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seen = std::collections::HashSet::new();
    while entries.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 2 + (state % 7) as usize;
        let mut token = String::new();
        if state & 1 == 0 {
            token.push('Ġ');
        }
        for i in 0..len {
            let r = (state >> (8 + 5 * i)) as u32;
            let c = match r % 10 {
                0 => char::from_u32(0x4e00 + r % 2000).unwrap(),
                1 => 'é',
                _ => char::from(b'a' + (r % 26) as u8),
            };
            token.push(c);
        }
        if seen.insert(token.clone()) {
            let id = entries.len() as u64;
            entries.push((JsonString::from(token), Value::Int(Int::from(id))));
        }
    }
    let mut o = Object::new();
    // Insert through a tokenizer.json-shaped document so the object is built
    // the way real inputs are.
    let mut text = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        json::write_value(
            &mut text,
            &Value::Str(k.clone()),
            json::WriteOptions::COMPACT,
        )
        .unwrap();
        text.push(':');
        json::write_value(&mut text, v, json::WriteOptions::COMPACT).unwrap();
    }
    text.push('}');
    if let Value::Object(parsed) = json::parse(text.as_bytes()).unwrap() {
        o = parsed;
    }
    o
}

fn tokenizer_json(vocab: &Object) -> String {
    let mut v = String::new();
    json::write_value(
        &mut v,
        &Value::Object(vocab.clone()),
        json::WriteOptions::COMPACT,
    )
    .unwrap();
    format!(
        r#"{{"version":"1.0","added_tokens":[{{"id":0,"content":"<|endoftext|>","special":true}}],"model":{{"type":"BPE","vocab":{v},"merges":[]}}}}"#
    )
}

/// A safetensors file with `count` F32 tensors of `elems` elements each.
fn synthetic_safetensors(count: usize, elems: usize) -> Vec<u8> {
    let mut header = String::from("{");
    for i in 0..count {
        if i > 0 {
            header.push(',');
        }
        let (b, e) = (i * elems * 4, (i + 1) * elems * 4);
        header.push_str(&format!(
            r#""layer.{i}.weight":{{"dtype":"F32","shape":[{elems}],"data_offsets":[{b},{e}]}}"#
        ));
    }
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend((0..count * elems * 4).map(|i| (i * 31 % 251) as u8));
    file
}

fn benches(c: &mut Criterion) {
    let config = json::parse(LLAMA2_7B.as_bytes()).unwrap();
    c.bench_function("model_hash/llama2-7b-config", |b| {
        b.iter(|| model_hash(black_box(&config)).unwrap())
    });
    c.bench_function("model_hash/llama2-7b-config-parse-and-hash", |b| {
        b.iter(|| model_hash(&json::parse(black_box(LLAMA2_7B.as_bytes())).unwrap()).unwrap())
    });

    let vocab = synthetic_vocab(152_000);
    let mut group = c.benchmark_group("tokenizer_hash");
    group.sample_size(20);
    group.bench_function("vocab-152k", |b| {
        b.iter(|| tokenizer_hash(black_box(&vocab)).unwrap())
    });
    group.bench_function("vocab-152k-two-threads", |b| {
        b.iter(|| tokenizer_hash_with_threads(black_box(&vocab), 2).unwrap())
    });
    let text = tokenizer_json(&vocab);
    group.bench_function("tokenizer-json-152k-parse-vocab-hash", |b| {
        b.iter(|| {
            let doc = json::parse(black_box(text.as_bytes())).unwrap();
            tokenizer_hash(&vocab_from_tokenizer_json(&doc).unwrap()).unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("weights_digest");
    let block = vec![0x5au8; 64 << 20];
    group.throughput(Throughput::Bytes(block.len() as u64));
    group.sample_size(20);
    group.bench_function("leaf-hash-64MiB-one-core", |b| {
        b.iter(|| leaf_hash(black_box(&block)))
    });
    let file = synthetic_safetensors(64, 256 * 1024);
    group.throughput(Throughput::Bytes(file.len() as u64));
    group.bench_function("safetensors-64MiB-in-memory-one-core", |b| {
        b.iter(|| digest_safetensors_bytes(&[black_box(file.as_slice())]).unwrap())
    });
    group.finish();
}

criterion_group!(handshake, benches);
criterion_main!(handshake);

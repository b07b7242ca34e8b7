//! The built-in subject: this workspace's own codec and handshake crates,
//! answering the same requests an adapter does (AVP-CONF-20..), in process.
//!
//! `strict` picks the codec's strict decoder (AVP-WIRE-20): the compatible
//! default accepts the `non_strict` vectors with warnings (NON-STRICT
//! verdicts), the strict one rejects them.

use std::borrow::Cow;
use std::path::Path;

use avp_codec::json::JsonMessage;
use avp_codec::kv::KvCache;
use avp_codec::{
    Compression, DataType, DecodeOptions, Message, Metadata, Mode, PayloadType, decode_with,
};
use avp_handshake::json::{self as hjson, JsonString, Object, Value as HValue, WriteOptions};
use avp_handshake::weights::{WeightsDigest, digest_safetensors_bytes};
use avp_handshake::{
    HelloMessage, ModelIdentity, ResolveOptions, identity_from_config, model_hash, resolve,
    tokenizer_hash, vocab_from_document, vocab_from_tokenizer_json,
};
use serde_json::{Value, json};

use crate::error::ConformanceError;
use crate::subject::{HarnessFailure, Request, Subject};

/// Map-file suffixes the resolver recognises (AVP-HS-8).
const MAP_SUFFIXES: [&str; 2] = [".pt", ".avpmap.safetensors"];

/// Our implementation as a [`Subject`].
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinSubject {
    strict: bool,
}

impl BuiltinSubject {
    /// `strict`: decode with the codec's strict options.
    pub fn new(strict: bool) -> Self {
        BuiltinSubject { strict }
    }
}

fn rejected(kind: &str, message: impl std::fmt::Display) -> Value {
    json!({ "outcome": "rejected", "error_kind": kind, "message": message.to_string() })
}

fn skipped(reason: &str) -> Value {
    json!({ "outcome": "skipped", "reason": reason })
}

impl Subject for BuiltinSubject {
    fn hello(&mut self) -> Result<Value, ConformanceError> {
        let mode = if self.strict { "strict" } else { "compatible" };
        Ok(json!({
            "protocol": crate::adapter::PROTOCOL_VERSION,
            "implementation": {
                "name": if self.strict { "avp-rs-strict" } else { "avp-rs" },
                "version": env!("CARGO_PKG_VERSION"),
                "language": "rust",
                "decoder": mode,
            },
        }))
    }

    fn call(&mut self, request: &Request<'_>) -> Result<Value, HarnessFailure> {
        Ok(match request.cmd {
            "decode" => match request.data {
                Some(data) => self.decode(data),
                None => {
                    return Err(HarnessFailure::Protocol(
                        "decode without input bytes".into(),
                    ));
                }
            },
            "json_decode" => json_decode(request),
            "encode" => match request.data {
                Some(payload) => encode_op(request.input, payload),
                None => {
                    return Err(HarnessFailure::Protocol(
                        "encode without payload bytes".into(),
                    ));
                }
            },
            "mac_verify" => match request.data {
                Some(data) => mac_verify(request.input, data),
                None => {
                    return Err(HarnessFailure::Protocol(
                        "mac_verify without input bytes".into(),
                    ));
                }
            },
            "kv_ext_decode" => match request.data {
                Some(data) => kv_ext_decode(request.input, data),
                None => {
                    return Err(HarnessFailure::Protocol(
                        "kv_ext_decode without input bytes".into(),
                    ));
                }
            },
            "kv_ext_encode" => match request.data {
                Some(data) => kv_ext_encode(request.input, data),
                None => {
                    return Err(HarnessFailure::Protocol(
                        "kv_ext_encode without input bytes".into(),
                    ));
                }
            },
            "chunk_assemble" => self.chunk_assemble(request.input, request.data.unwrap_or(&[])),
            op => handshake_op(op, request),
        })
    }

    fn take_log(&mut self) -> String {
        String::new()
    }

    fn finish(&mut self) {}
}

impl BuiltinSubject {
    fn decode(&self, data: &[u8]) -> Value {
        let options = if self.strict {
            DecodeOptions::strict()
        } else {
            DecodeOptions::default()
        };
        match decode_with(data, &options) {
            Ok(msg) => json!({
                "outcome": "accepted",
                "decoded": decoded_view(&msg, self.strict),
                "warnings": msg.warnings.iter().map(|w| w.code()).collect::<Vec<_>>(),
            }),
            Err(e) => rejected(e.kind().as_str(), &e),
        }
    }
}

/// The `decoded` answer form of a message (spec/protocol/conformance.md, AVP-CONF-23),
/// payload as a byte reference; also the runner's reference view of encode output.
pub(crate) fn decoded_view(msg: &Message<'_>, strict: bool) -> Value {
    let m = &msg.metadata;
    let extra: serde_json::Map<String, Value> = m
        .extra
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let kv = if m.payload_type == PayloadType::KvCache {
        // The inner dtype is compared with the metadata's too (AVP-KV-5).
        match KvCache::parse_with(&msg.payload, strict)
            .and_then(|mut kv| kv.check_metadata_dtype(m.dtype, strict).map(|()| kv))
        {
            Ok(kv) => {
                let h = kv.header;
                json!({"num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads, "head_dim": h.head_dim,
                       "seq_len": h.seq_len, "dtype": h.dtype.name()})
            }
            Err(e) => json!({ "error_kind": e.kind().as_str(), "message": e.to_string() }),
        }
    } else {
        Value::Null
    };
    json!({
        "header": {
            "version": msg.header.version,
            "flags": msg.header.flags.0,
            "payload_length": msg.header.payload_length,
            "metadata_length": msg.header.metadata_length,
        },
        "metadata": {
            "session_id": m.session_id, "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id, "model_id": m.model_id,
            "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
            "payload_type": m.payload_type.name(), "dtype": m.dtype.name(),
            "tensor_shape": m.tensor_shape.as_slice(), "mode": m.mode.name(),
            "compression": if msg.was_compressed() { Some("zstd") } else { None },
            "avp_map_id": m.avp_map_id, "extra": extra,
            "payload_checksum": m.payload_checksum,
        },
        "payload": { "b64": crate::b64::encode(&msg.payload) },
        "kv": kv,
    })
}

/// `encode`: the corpus' metadata (decode-answer form) plus payload bytes.
fn encode_op(input: &Value, payload: &[u8]) -> Value {
    let m = input.get("metadata").cloned().unwrap_or(Value::Null);
    let text = |k: &str| Cow::Owned(m.get(k).and_then(Value::as_str).unwrap_or("").to_string());
    let number = |k: &str| {
        m.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let name = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (Some(payload_type), Some(dtype), Some(mode)) = (
        PayloadType::from_name(&name("payload_type")),
        DataType::from_name(&name("dtype")),
        Mode::from_name(&name("mode")),
    ) else {
        return rejected("unknown_enum", "metadata enum names not recognised");
    };
    let compression_name = input
        .get("compression")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let Some(compression) = Compression::from_name(compression_name) else {
        return rejected("invalid", format!("unknown compression {compression_name}"));
    };
    let metadata = Metadata::new()
        .with_session_id(text("session_id"))
        .with_source_agent_id(text("source_agent_id"))
        .with_target_agent_id(text("target_agent_id"))
        .with_model_id(text("model_id"))
        .with_hidden_dim(number("hidden_dim"))
        .with_num_layers(number("num_layers"))
        .with_payload_type(payload_type)
        .with_dtype(dtype)
        .with_tensor_shape(
            m.get("tensor_shape")
                .and_then(Value::as_array)
                .map(|dims| {
                    dims.iter()
                        .filter_map(|d| d.as_u64().and_then(|n| u32::try_from(n).ok()))
                        .collect::<avp_codec::Shape>()
                })
                .unwrap_or_default(),
        )
        .with_mode(mode)
        .with_avp_map_id(text("avp_map_id"))
        .with_extra(
            m.get("extra")
                .and_then(Value::as_object)
                .map(|e| {
                    e.iter()
                        .map(|(k, v)| {
                            (
                                Cow::Owned(k.clone()),
                                Cow::Owned(v.as_str().unwrap_or("").to_string()),
                            )
                        })
                        .collect::<avp_codec::Extra<'_>>()
                })
                .unwrap_or_default(),
        );
    match avp_codec::encode(&metadata, payload, compression) {
        Ok(bytes) => {
            json!({ "outcome": "accepted", "output": { "b64": crate::b64::encode(&bytes) } })
        }
        Err(e) => rejected(e.kind().as_str(), &e),
    }
}

/// `mac_verify` (spec/protocol/mac.md, AVP-MAC-5): the key file's bytes come as
/// `input.key_file_hex`; an accepted answer carries the verified tag.
fn mac_verify(input: &Value, data: &[u8]) -> Value {
    let Some(hex) = input.get("key_file_hex").and_then(Value::as_str) else {
        return rejected("invalid_argument", "no key_file_hex in the input");
    };
    let key_file: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i.saturating_add(2))
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    let Some(key_file) = key_file else {
        return rejected("invalid_argument", "key_file_hex is not hex");
    };
    let key = match avp_codec::mac::MacKey::from_key_file_bytes(&key_file) {
        Ok(k) => k,
        Err(e) => return rejected(e.kind().as_str(), &e),
    };
    match avp_codec::mac::verify(data, &key, &avp_codec::Limits::DEFAULT) {
        Ok(()) => {
            let tag = avp_codec::peek(data).ok().and_then(|p| {
                p.metadata
                    .extra
                    .get(avp_codec::mac::TAG_KEY)
                    .map(|t| t.to_string())
            });
            json!({ "outcome": "accepted", "tag": tag })
        }
        Err(e) => rejected(e.kind().as_str(), &e),
    }
}

/// `kv_ext_decode` (spec/protocol/kv-quant.md, kv-delta.md): parse and
/// dequantize an extended KV payload; a delta is assembled on
/// `input.base_hex` (a KV v1 payload the receiver holds) under
/// `input.model_hash`, and without a base it is `missing_prefix`
/// (AVP-KVD-5). The answer's `output` is the resulting KV v1 payload.
fn kv_ext_decode(input: &Value, data: &[u8]) -> Value {
    use avp_codec::kv_delta::{assemble, missing_prefix};
    use avp_codec::kv_quant::KvExt;
    let ext = match KvExt::parse(data) {
        Ok(ext) => ext,
        Err(e) => return rejected(e.kind().as_str(), &e),
    };
    let prefix = ext.prefix.map(|a| a.to_hex());
    let output = match ext.prefix {
        None => ext.dequantize(),
        Some(address) => {
            let Some(hex) = input.get("base_hex").and_then(Value::as_str) else {
                let e = missing_prefix(&address);
                return rejected(e.kind().as_str(), &e);
            };
            let Some(base_bytes) = hex_bytes(hex) else {
                return rejected("invalid_argument", "base_hex is not hex");
            };
            let base = match KvCache::parse_with(&base_bytes, true) {
                Ok(base) => base,
                Err(e) => return rejected("invalid_argument", format!("corpus base: {e}")),
            };
            let model_hash = input
                .get("model_hash")
                .and_then(Value::as_str)
                .unwrap_or("");
            assemble(&base, model_hash, &ext)
        }
    };
    match output {
        Ok(bytes) => json!({
            "outcome": "accepted",
            "output": { "b64": crate::b64::encode(&bytes) },
            "prefix": prefix,
        }),
        Err(e) => rejected(e.kind().as_str(), &e),
    }
}

impl BuiltinSubject {
    /// `chunk_assemble` (spec/protocol/chunked.md, AVP-CHK-1..8): `data` is
    /// chunk messages back to back in arrival order; each is decoded and
    /// added to an assembler with the input's limits (`max_chunks`,
    /// `max_total_bytes`, defaults AVP-CHK-7), then the assembly is
    /// finished. The answer's `output` is the assembled KV v1 payload.
    fn chunk_assemble(&self, input: &Value, data: &[u8]) -> Value {
        use avp_codec::chunk::{AssemblyLimits, assemble_messages};
        let options = if self.strict {
            DecodeOptions::strict()
        } else {
            DecodeOptions::default()
        };
        let mut limits = AssemblyLimits::DEFAULT;
        if let Some(n) = input.get("max_chunks").and_then(Value::as_u64) {
            limits.max_chunks = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = input.get("max_total_bytes").and_then(Value::as_u64) {
            limits.max_total_bytes = n;
        }
        let mut messages = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let len = avp_codec::check_header(rest, &options.limits)
                .map(|h| usize::try_from(h.message_len()).unwrap_or(usize::MAX));
            match len {
                Ok(len) if len <= rest.len() => {
                    let (message, after) = rest.split_at(len);
                    messages.push(message);
                    rest = after;
                }
                // Short or bad: the decoder names the fault.
                _ => {
                    messages.push(rest);
                    rest = &[];
                }
            }
        }
        match assemble_messages(&messages, &limits, &options) {
            Ok(bytes) => json!({
                "outcome": "accepted",
                "output": { "b64": crate::b64::encode(&bytes) },
            }),
            Err(e) => rejected(e.kind().as_str(), &e),
        }
    }
}

/// `kv_ext_encode` (AVP-KVQ-5/6, AVP-KVD-1/2): quantize the KV v1 payload
/// `data` with the input's parameters; for `seq_start > 0` a delta with the
/// prefix address under `input.model_hash`.
fn kv_ext_encode(input: &Value, data: &[u8]) -> Value {
    use avp_codec::kv_delta::prefix_address;
    use avp_codec::kv_quant::{KvScheme, QuantParams, ScaleDtype, encode_ext};
    let kv = match KvCache::parse_with(data, true) {
        Ok(kv) => kv,
        Err(e) => return rejected(e.kind().as_str(), &e),
    };
    let number = |k: &str| {
        input
            .get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let text = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("");
    let Some(scheme) = KvScheme::from_name(text("scheme")) else {
        return rejected("invalid_argument", "unknown scheme");
    };
    let scale_dtype = if text("scale_dtype") == "f16" {
        ScaleDtype::F16
    } else {
        ScaleDtype::F32
    };
    let params = QuantParams {
        scheme,
        group_size: number("group_size"),
        scale_dtype,
        residual: number("residual"),
    };
    let start = number("seq_start");
    let address = if start > 0 {
        match prefix_address(&kv, start, text("model_hash")) {
            Ok(a) => Some(a),
            Err(e) => return rejected(e.kind().as_str(), &e),
        }
    } else {
        None
    };
    match encode_ext(&kv, &params, start, address.as_ref()) {
        Ok(bytes) => {
            json!({ "outcome": "accepted", "output": { "b64": crate::b64::encode(&bytes) } })
        }
        Err(e) => rejected(e.kind().as_str(), &e),
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i.saturating_add(2))
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

fn json_decode(request: &Request<'_>) -> Value {
    let text = match request.input.get("text").and_then(Value::as_str) {
        Some(t) => t.to_string(),
        None => match request
            .data
            .map(|d| String::from_utf8_lossy(d).into_owned())
        {
            Some(t) => t,
            None => return rejected("malformed_metadata", "no text"),
        },
    };
    match JsonMessage::from_json(&text) {
        Ok(m) => {
            let mut message = json!({
                "avp_version": m.avp_version, "session_id": m.session_id,
                "source_agent_id": m.source_agent_id, "target_agent_id": m.target_agent_id,
                "content": m.content,
            });
            if !m.extra.is_empty() {
                let extra = avp_codec::json::Value::Object(m.extra.clone());
                let parsed: Value = serde_json::from_str(&avp_codec::json::to_python_json(&extra))
                    .unwrap_or(Value::Null);
                message["extra"] = parsed;
            }
            json!({ "outcome": "accepted", "message": message, "to_json": m.to_json() })
        }
        Err(e) => rejected(e.kind().as_str(), &e),
    }
}

/// The request input parsed with the handshake crate's own JSON parser
/// (keeps big integers, -0.0 and lone surrogates exactly).
fn handshake_input(request: &Request<'_>) -> Result<HValue, Value> {
    hjson::parse(request.input_raw.as_bytes())
        .map_err(|e| rejected("invalid", format!("input: {e}")))
}

fn member<'a>(v: &'a HValue, key: &str) -> Option<&'a HValue> {
    v.as_object().and_then(|o| o.get(key))
}

fn text_of(v: Option<&HValue>) -> Option<String> {
    v.and_then(HValue::as_json_str).map(|s| s.to_string_lossy())
}

/// The document a hashing op works on: the input file's bytes or `input.text`'s WTF-8.
fn document(request: &Request<'_>, input: &HValue) -> Result<HValue, Value> {
    let bytes: Vec<u8> = match (
        request.data,
        member(input, "text").and_then(HValue::as_json_str),
    ) {
        (Some(d), _) => d.to_vec(),
        (None, Some(t)) => t.as_wtf8().to_vec(),
        (None, None) => return Err(rejected("invalid", "no document in the input")),
    };
    hjson::parse(&bytes).map_err(|e| rejected("invalid", e))
}

fn write(v: &HValue, options: WriteOptions) -> Option<String> {
    let mut s = String::new();
    hjson::write_value(&mut s, v, options).ok().map(|()| s)
}

fn handshake_op(op: &str, request: &Request<'_>) -> Value {
    let input = match handshake_input(request) {
        Ok(v) => v,
        Err(answer) => return answer,
    };
    let result = match op {
        "model_hash" => document(request, &input).and_then(|doc| {
            let canonical = hjson::to_canonical(&doc).map_err(|e| rejected("invalid", e))?;
            let hash = model_hash(&doc).map_err(|e| rejected("invalid", e))?;
            Ok(json!({ "outcome": "accepted", "canonical": canonical, "model_hash": hash }))
        }),
        "canonical_json" => document(request, &input).map(|doc| {
            json!({
                "outcome": "accepted",
                "canonical": write(&doc, WriteOptions::CANONICAL),
                "compact": write(&doc, WriteOptions::COMPACT),
                "python_default": write(&doc, WriteOptions::PYTHON_DEFAULT),
            })
        }),
        "tokenizer_hash" => document(request, &input).and_then(|doc| {
            let vocab = vocab_from_tokenizer_json(&doc).map_err(|e| rejected("invalid", e))?;
            let hash = tokenizer_hash(&vocab).map_err(|e| rejected("invalid", e))?;
            Ok(
                json!({ "outcome": "accepted", "tokenizer_hash": hash, "vocab_size": vocab.len(),
                       "vocab_sample": vocab_sample(&vocab) }),
            )
        }),
        "vocab_hash" => {
            let vocab = match member(&input, "vocab").and_then(HValue::as_object) {
                Some(v) => Ok(v.clone()),
                None => document(request, &input)
                    .and_then(|doc| vocab_from_document(&doc).map_err(|e| rejected("invalid", e))),
            };
            vocab.and_then(|v| {
                let hash = tokenizer_hash(&v).map_err(|e| rejected("invalid", e))?;
                Ok(json!({ "outcome": "accepted", "tokenizer_hash": hash }))
            })
        }
        "identity" => identity(request, &input),
        "hello_parse" => document(request, &input).and_then(|doc| {
            let hello = HelloMessage::from_value(&doc)
                .and_then(|h| h.weights_digest().map(|_| h))
                .map_err(|e| rejected("invalid", e))?;
            let wire = hello.to_wire().map_err(|e| rejected("invalid", e))?;
            let wire = String::from_utf8_lossy(&wire).into_owned();
            let to_dict: Value = serde_json::from_str(&wire).unwrap_or(Value::Null);
            Ok(json!({ "outcome": "accepted", "to_dict": to_dict, "wire": wire }))
        }),
        "resolve" => resolve_op(&input),
        "weights_digest" => weights(&input),
        _ => Ok(skipped("op not implemented by the built-in subject")),
    };
    result.unwrap_or_else(|answer| answer)
}

fn vocab_sample(vocab: &Object) -> Value {
    let mut entries: Vec<(String, String)> = vocab
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy(),
                write(v, WriteOptions::COMPACT).unwrap_or_default(),
            )
        })
        .collect();
    entries.sort();
    let map: serde_json::Map<String, Value> = entries
        .into_iter()
        .take(20)
        .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(Value::Null)))
        .collect();
    Value::Object(map)
}

fn identity(request: &Request<'_>, input: &HValue) -> Result<Value, Value> {
    let read = |p: &Path| -> Result<HValue, Value> {
        let bytes =
            std::fs::read(p).map_err(|e| rejected("invalid", format!("{}: {e}", p.display())))?;
        hjson::parse(&bytes).map_err(|e| rejected("invalid", e))
    };
    let (config, tokenizer) = if let Some(dir) = text_of(member(input, "model_dir")) {
        let dir = Path::new(&dir);
        let tok = dir.join("tokenizer.json");
        (
            read(&dir.join("config.json"))?,
            if tok.exists() {
                Some(read(&tok)?)
            } else {
                None
            },
        )
    } else if request.data.is_some() {
        (document(request, input)?, None)
    } else {
        (
            member(input, "config")
                .cloned()
                .ok_or_else(|| rejected("invalid", "no config"))?,
            None,
        )
    };
    let tokenizer_hash = match tokenizer {
        Some(doc) => {
            let vocab = vocab_from_tokenizer_json(&doc).map_err(|e| rejected("invalid", e))?;
            JsonString::from(tokenizer_hash(&vocab).map_err(|e| rejected("invalid", e))?)
        }
        None => JsonString::default(),
    };
    let id = identity_from_config(&config, tokenizer_hash).map_err(|e| rejected("invalid", e))?;
    let text = write(&id.to_value(), WriteOptions::PYTHON_DEFAULT).unwrap_or_default();
    let as_json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(json!({ "outcome": "accepted", "identity": as_json, "json": text }))
}

fn resolve_op(input: &HValue) -> Result<Value, Value> {
    let identity = |key: &str| -> Result<ModelIdentity, Value> {
        let v = member(input, key).ok_or_else(|| rejected("invalid", format!("no {key}")))?;
        ModelIdentity::from_value(v, key).map_err(|e| rejected("invalid", e))
    };
    let (local, remote) = (identity("local")?, identity("remote")?);
    let maps: Vec<String> = match member(input, "maps") {
        Some(HValue::Array(items)) => items.iter().filter_map(|v| text_of(Some(v))).collect(),
        _ => Vec::new(),
    };
    let lookup = |id: &str| {
        MAP_SUFFIXES
            .iter()
            .any(|s| maps.contains(&format!("{id}{s}")))
    };
    let local_vocab = member(input, "local_vocab")
        .and_then(HValue::as_object)
        .cloned();
    let remote_vocab = member(input, "remote_vocab")
        .and_then(HValue::as_object)
        .cloned();
    let digest = |key: &str| -> Result<Option<WeightsDigest>, Value> {
        match text_of(member(input, key)) {
            Some(hex) => WeightsDigest::from_hex(&hex)
                .map(Some)
                .ok_or_else(|| rejected("invalid", format!("bad weights digest {hex}"))),
            None => Ok(None),
        }
    };
    let options = ResolveOptions {
        maps: Some(&lookup),
        vocabularies: local_vocab.as_ref().zip(remote_vocab.as_ref()),
        local_weights: digest("local_weights_digest")?,
        remote_weights: digest("remote_weights_digest")?,
    };
    let r = resolve(&local, &remote, &options);
    Ok(json!({
        "outcome": "accepted",
        "mode": r.mode.name(),
        "resolution_path": r.resolution_path.as_str(),
        "avp_map_id": r.avp_map_id,
        "weights_mismatch": r.weights_mismatch,
    }))
}

fn weights(input: &HValue) -> Result<Value, Value> {
    let dir = text_of(member(input, "dir")).ok_or_else(|| rejected("invalid", "no dir"))?;
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| rejected("invalid", e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let blobs: Vec<Vec<u8>> = files
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()
        .map_err(|e| rejected("invalid", e))?;
    let slices: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    let d = digest_safetensors_bytes(&slices).map_err(|e| rejected("invalid", e))?;
    Ok(json!({ "outcome": "accepted", "weights_digest": d.to_hex() }))
}

//! Identity hashes (spec/protocol/handshake.md): `model_hash` (AVP-HASH-1),
//! `tokenizer_hash` (AVP-HASH-10), the `weights_digest` extension
//! (AVP-HS-20) and the model identity. Python objects arrive as the JSON
//! text Python's own `json.dumps` wrote, which our parser reads without
//! losing Python's int/float distinctions; the hashing runs with the GIL
//! released.

use std::path::PathBuf;

use avp_handshake::json::{self, Int, JsonString, Object, Value};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use crate::errors;

fn parse(py: Python<'_>, text: &[u8]) -> PyResult<Value> {
    json::parse(text).map_err(|e| errors::handshake(py, &avp_handshake::Error::Json(e)))
}

/// model_hash_json(text) -> str: `model_hash` of the config serialised by
/// `json.dumps` (any separators, any key order).
#[pyfunction]
pub(crate) fn model_hash_json(py: Python<'_>, text: &[u8]) -> PyResult<String> {
    py.allow_threads(|| {
        json::parse(text)
            .map_err(avp_handshake::Error::Json)
            .and_then(|v| avp_handshake::model_hash(&v))
    })
    .map_err(|e| errors::handshake(py, &e))
}

/// The thread count a tokenizer hash runs on: `threads`, or for 0 the
/// available parallelism (at most 8). The hash hands out its parts to
/// whichever thread is free, so a busy core costs little; the result never
/// depends on the count.
fn hash_threads(threads: usize) -> usize {
    static AUTO: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match threads {
        0 => {
            *AUTO.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
        }
        n => n,
    }
}

fn vocab_hash(
    doc: &Value,
    from_tokenizer_json: bool,
    threads: usize,
) -> Result<String, avp_handshake::Error> {
    let threads = hash_threads(threads);
    if from_tokenizer_json {
        let vocab = avp_handshake::vocab_from_tokenizer_json(doc)?;
        avp_handshake::tokenizer_hash_with_threads(&vocab, threads)
    } else {
        let vocab = avp_handshake::vocab_from_document(doc)?;
        avp_handshake::tokenizer_hash_with_threads(&vocab, threads)
    }
}

/// tokenizer_hash_json(text, threads=0) -> str: `tokenizer_hash` of a
/// `{token: id}` vocabulary serialised by `json.dumps`.
#[pyfunction]
#[pyo3(signature = (text, threads=0))]
pub(crate) fn tokenizer_hash_json(py: Python<'_>, text: &[u8], threads: usize) -> PyResult<String> {
    py.allow_threads(|| {
        let doc = json::parse(text).map_err(avp_handshake::Error::Json)?;
        vocab_hash(&doc, false, threads)
    })
    .map_err(|e| errors::handshake(py, &e))
}

/// tokenizer_hash_file(path, threads=0) -> str: `tokenizer_hash` of the
/// vocabulary of a `tokenizer.json` file (or a directory holding one).
#[pyfunction]
#[pyo3(signature = (path, threads=0))]
pub(crate) fn tokenizer_hash_file(
    py: Python<'_>,
    path: PathBuf,
    threads: usize,
) -> PyResult<String> {
    py.allow_threads(|| {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path
        };
        let text = std::fs::read(&file).map_err(|e| avp_handshake::Error::Io {
            path: file.display().to_string(),
            message: e.to_string(),
        })?;
        let doc = json::parse(&text).map_err(avp_handshake::Error::Json)?;
        vocab_hash(&doc, true, threads)
    })
    .map_err(|e| errors::handshake(py, &e))
}

/// weights_digest(dir, threads=0) -> str: the BLAKE3 weights digest (hex)
/// of the `*.safetensors` files in `dir` (AVP-HS-20), streamed from disk.
#[pyfunction]
#[pyo3(signature = (dir, threads=0))]
pub(crate) fn weights_digest(py: Python<'_>, dir: PathBuf, threads: usize) -> PyResult<String> {
    py.allow_threads(|| avp_handshake::fs::weights_digest_dir(&dir, threads))
        .map(|d| d.to_hex())
        .map_err(|e| errors::handshake(py, &e))
}

/// identity_json(config_text, tokenizer_hash="") -> str: the model identity
/// (AVP-HS-1) of a config serialised by `json.dumps`, as canonical JSON.
#[pyfunction]
#[pyo3(signature = (config_text, tokenizer_hash=String::new()))]
pub(crate) fn identity_json(
    py: Python<'_>,
    config_text: &[u8],
    tokenizer_hash: String,
) -> PyResult<String> {
    let config = parse(py, config_text)?;
    avp_handshake::identity_from_config(&config, tokenizer_hash.into())
        .and_then(|id| json::to_canonical(&id.to_value()).map_err(avp_handshake::Error::Json))
        .map_err(|e| errors::handshake(py, &e))
}

/// tokenizer_hash_dict(vocab, threads=0) -> str | None: `tokenizer_hash` of a
/// `{str: int}` dict read directly (no JSON round trip), or None when the
/// dict holds anything else (other value types, lone surrogates, huge ints),
/// for which the caller takes the JSON path.
#[pyfunction]
#[pyo3(signature = (vocab, threads=0))]
pub(crate) fn tokenizer_hash_dict(
    vocab: &Bound<'_, PyDict>,
    threads: usize,
) -> PyResult<Option<String>> {
    let py = vocab.py();
    // Every real vocabulary: str keys, ids that are u32s below u32::MAX.
    // One pass copies each token (CPython's cached UTF-8) and id into a
    // table that owns them, so the hash that follows runs with the GIL
    // released and holds no Python object.
    let mut table = avp_handshake::hash::TokenTable::with_capacity(vocab.len());
    match crate::buffer::dict_into_table(vocab, &mut table)? {
        crate::buffer::DictScan::Done => {}
        crate::buffer::DictScan::NotStrInt => return Ok(None),
        crate::buffer::DictScan::OtherInt => return tokenizer_hash_dict_any_int(vocab, threads),
    }
    py.allow_threads(|| table.hash(hash_threads(threads)))
        .map(Some)
        .map_err(|e| errors::handshake(py, &e))
}

/// [`tokenizer_hash_dict`] for a `{str: int}` dict with ids beyond `u32`
/// (negative, huge): through a vocabulary object, which writes any int.
fn tokenizer_hash_dict_any_int(
    vocab: &Bound<'_, PyDict>,
    threads: usize,
) -> PyResult<Option<String>> {
    let py = vocab.py();
    let mut entries = Vec::with_capacity(vocab.len());
    for (k, v) in vocab.iter() {
        let (Ok(key), Ok(id)) = (k.downcast::<PyString>(), v.downcast::<PyInt>()) else {
            return Ok(None);
        };
        if v.is_instance_of::<PyBool>() {
            return Ok(None);
        }
        let (Some(text), Ok(id)) = (crate::buffer::str_as_str(key), id.extract::<i64>()) else {
            return Ok(None);
        };
        // Python str keys are distinct, and so are their UTF-8 encodings.
        entries.push((JsonString::from(text), Value::Int(Int::from(id))));
    }
    let object = Object::from_distinct(entries);
    py.allow_threads(|| avp_handshake::tokenizer_hash_with_threads(&object, hash_threads(threads)))
        .map(Some)
        .map_err(|e| errors::handshake(py, &e))
}

/// Map-file suffixes rule 4 recognises (as the built-in conformance subject).
const MAP_SUFFIXES: [&str; 2] = [".pt", ".avpmap.safetensors"];

/// resolve_json(local, remote, local_vocab=None, remote_vocab=None, maps=[], local_weights_digest=None, remote_weights_digest=None) -> (mode, resolution_path, avp_map_id, weights_mismatch)
///
/// The SDK's six resolution rules (AVP-HS-5..10) plus the weights-digest
/// extension (AVP-HS-22). Identities and vocabularies arrive as
/// `json.dumps` text; `maps` names the available map files (or map ids).
#[pyfunction]
#[pyo3(signature = (local, remote, local_vocab=None, remote_vocab=None, maps=Vec::new(),
    local_weights_digest=None, remote_weights_digest=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn resolve_json(
    py: Python<'_>,
    local: &[u8],
    remote: &[u8],
    local_vocab: Option<&[u8]>,
    remote_vocab: Option<&[u8]>,
    maps: Vec<String>,
    local_weights_digest: Option<String>,
    remote_weights_digest: Option<String>,
) -> PyResult<(&'static str, &'static str, String, bool)> {
    let err = |e: avp_handshake::Error| errors::handshake(py, &e);
    let local =
        avp_handshake::ModelIdentity::from_value(&parse(py, local)?, "local").map_err(err)?;
    let remote =
        avp_handshake::ModelIdentity::from_value(&parse(py, remote)?, "remote").map_err(err)?;
    let vocab = |text: Option<&[u8]>| -> PyResult<Option<Object>> {
        text.map(|t| avp_handshake::vocab_from_document(&parse(py, t)?).map_err(err))
            .transpose()
    };
    let (local_vocab, remote_vocab) = (vocab(local_vocab)?, vocab(remote_vocab)?);
    let digest = |hex: Option<String>| -> PyResult<Option<avp_handshake::WeightsDigest>> {
        hex.map(|h| {
            avp_handshake::WeightsDigest::from_hex(&h).ok_or_else(|| {
                errors::usage(
                    py,
                    format!("weights digest {h:?}: expected 64 lowercase hex digits"),
                )
            })
        })
        .transpose()
    };
    let lookup = |id: &str| {
        maps.iter()
            .any(|m| m == id || MAP_SUFFIXES.iter().any(|s| *m == format!("{id}{s}")))
    };
    let options = avp_handshake::ResolveOptions {
        maps: Some(&lookup),
        vocabularies: local_vocab.as_ref().zip(remote_vocab.as_ref()),
        local_weights: digest(local_weights_digest)?,
        remote_weights: digest(remote_weights_digest)?,
    };
    let r = avp_handshake::resolve(&local, &remote, &options);
    Ok((
        r.mode.name(),
        r.resolution_path.as_str(),
        r.avp_map_id,
        r.weights_mismatch,
    ))
}

//! A model directory's handshake identity and weights digest, computed by
//! the handshake crate (config.json, tokenizer.json, safetensors headers and
//! bytes) without loading the model: what `avp serve --model` answers and
//! what `avp think --to` says in its hello (AVP-PIPE-4).

use std::path::Path;

use anyhow::Context;
use avp_handshake::json::JsonString;
use avp_handshake::{
    ModelIdentity, WeightsDigest, identity_from_config, tokenizer_hash, vocab_from_tokenizer_json,
};

/// The SDK's `extract_model_identity(config, tokenizer)` for a model directory.
pub(crate) fn identity_from_model_dir(dir: &Path) -> anyhow::Result<ModelIdentity> {
    let parse = |name: &str| -> anyhow::Result<avp_handshake::json::Value> {
        let path = dir.join(name);
        let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        avp_handshake::json::parse(&raw).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
    };
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        let vocab = vocab_from_tokenizer_json(&parse("tokenizer.json")?)
            .map_err(|err| anyhow::anyhow!("tokenizer.json: {err}"))?;
        JsonString::from(
            tokenizer_hash(&vocab).map_err(|err| anyhow::anyhow!("tokenizer.json: {err}"))?,
        )
    } else {
        JsonString::default()
    };
    identity_from_config(&parse("config.json")?, tokenizer)
        .map_err(|err| anyhow::anyhow!("config.json: {err}"))
}

/// The weights digest (AVP-HS-21) of the directory's safetensors files, or
/// none when it has none (a config-only directory).
pub(crate) fn weights_of_model_dir(dir: &Path) -> anyhow::Result<Option<WeightsDigest>> {
    let files = avp_handshake::fs::safetensors_files(dir)
        .map_err(|err| anyhow::anyhow!("{}: {err}", dir.display()))?;
    if files.is_empty() {
        return Ok(None);
    }
    avp_handshake::fs::weights_digest_dir(dir, 0)
        .map(Some)
        .map_err(|err| anyhow::anyhow!("weights digest of {}: {err}", dir.display()))
}

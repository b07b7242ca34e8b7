//! `avp identity CONFIG.json|MODEL_DIR` (AVP-CLI-105): the identity as the
//! SDK's `json.dumps(identity.to_dict())`, with `tokenizer_hash` when a
//! `tokenizer.json` sits beside the config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use avp_handshake::json::{JsonString, WriteOptions, write_value};
use avp_handshake::{ModelIdentity, identity_from_config};
use clap::Args;

use super::hash::{fail, read_json, tokenizer_file_hash};

/// Arguments of `avp identity`.
#[derive(Args)]
pub(crate) struct IdentityArgs {
    /// A config.json, or a model directory holding one.
    path: PathBuf,
}

/// The identity of a config file or model directory (used by `handshake resolve` too).
pub(crate) fn identity_of(path: &Path) -> Result<ModelIdentity> {
    let config_path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let config = read_json(&config_path)?;
    // The config is checked first, so its errors win over the tokenizer's.
    let mut identity = identity_from_config(&config, JsonString::default())
        .map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
    let tokenizer_path = config_path.with_file_name("tokenizer.json");
    if tokenizer_path.is_file() {
        identity.tokenizer_hash = JsonString::from(tokenizer_file_hash(&tokenizer_path)?);
    }
    Ok(identity)
}

pub(crate) fn run(args: IdentityArgs) -> ExitCode {
    let identity = match identity_of(&args.path) {
        Ok(identity) => identity,
        Err(e) => return fail(&e),
    };
    let mut out = String::new();
    if let Err(e) = write_value(&mut out, &identity.to_value(), WriteOptions::PYTHON_DEFAULT) {
        return fail(&anyhow!("{}: {e}", args.path.display()));
    }
    crate::out::finish_line(out)
}

//! `avp hash config|vocab|tokenizer|weights` (spec/impl/cli.md, AVP-CLI-101..104):
//! one line of lowercase hex on stdout. Also the file helpers the other
//! handshake commands share.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use avp_handshake::json::{self, Object, Value};
use avp_handshake::{model_hash, tokenizer_hash, vocab_from_document, vocab_from_tokenizer_json};
use clap::{Args, Subcommand};

/// Arguments of `avp hash`.
#[derive(Args)]
pub(crate) struct HashArgs {
    #[command(subcommand)]
    what: HashWhat,
}

#[derive(Subcommand)]
enum HashWhat {
    /// SHA-256 model hash of a config.json (the SDK's compute_model_hash).
    Config {
        /// A HF config.json (any JSON document).
        file: PathBuf,
    },
    /// Tokenizer hash of a `{token: id}` JSON map (or of a tokenizer.json).
    Vocab {
        /// The vocabulary file.
        file: PathBuf,
    },
    /// Tokenizer hash of a HF tokenizer.json (vocab as get_vocab() returns it).
    Tokenizer {
        /// The tokenizer.json file.
        file: PathBuf,
    },
    /// BLAKE3 weights digest of the *.safetensors files in a model directory.
    Weights {
        /// The model directory.
        dir: PathBuf,
        /// Worker threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

/// Prints `avp: error: <message>` on one line and returns exit status 1 (AVP-CLI-100).
pub(crate) fn fail(err: &anyhow::Error) -> ExitCode {
    let message = format!("{err:#}").replace('\n', " ");
    eprintln!("avp: error: {message}");
    ExitCode::from(1)
}

/// Reads and parses a JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    json::parse(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The vocabulary of a tokenizer.json or `{token: id}` file; errors name the file.
pub(crate) fn read_vocab(path: &Path) -> Result<Object> {
    let doc = read_json(path)?;
    vocab_from_document(&doc).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The tokenizer hash of a tokenizer.json; errors name the file.
pub(crate) fn tokenizer_file_hash(path: &Path) -> Result<String> {
    let doc = read_json(path)?;
    let vocab = vocab_from_tokenizer_json(&doc).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    tokenizer_hash(&vocab).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn hash(args: HashArgs) -> Result<String> {
    match args.what {
        HashWhat::Config { file } => {
            let doc = read_json(&file)?;
            model_hash(&doc).map_err(|e| anyhow!("{}: {e}", file.display()))
        }
        HashWhat::Vocab { file } => {
            let vocab = read_vocab(&file)?;
            tokenizer_hash(&vocab).map_err(|e| anyhow!("{}: {e}", file.display()))
        }
        HashWhat::Tokenizer { file } => tokenizer_file_hash(&file),
        HashWhat::Weights { dir, threads } => {
            if !dir.is_dir() {
                return Err(anyhow!("{}: not a directory", dir.display()));
            }
            let files = avp_handshake::fs::safetensors_files(&dir).map_err(|e| anyhow!("{e}"))?;
            if files.is_empty() {
                return Err(anyhow!(
                    "{}: no *.safetensors file in the directory",
                    dir.display()
                ));
            }
            let digest =
                avp_handshake::fs::weights_digest_dir(&dir, threads).map_err(|e| match e {
                    // These messages already name the file they are about.
                    avp_handshake::Error::Safetensors(_) | avp_handshake::Error::Io { .. } => {
                        anyhow!("{e}")
                    }
                    _ => anyhow!("{}: {e}", dir.display()),
                })?;
            Ok(digest.to_hex())
        }
    }
}

pub(crate) fn run(args: HashArgs) -> ExitCode {
    match hash(args) {
        Ok(hex) => crate::out::finish_line(hex),
        Err(e) => fail(&e),
    }
}

//! `avp handshake resolve LOCAL.json REMOTE.json [--maps DIR]
//! [--local-tokenizer F --remote-tokenizer F]` (AVP-CLI-106): the mode two
//! identities negotiate, as one line of JSON
//! `{"mode":…,"resolution_path":…,"avp_map_id":…}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use avp_handshake::fs::MapDir;
use avp_handshake::json::{Object, Value, WriteOptions, write_value};
use avp_handshake::{
    HelloMessage, MapLookup, ModelIdentity, ResolveOptions, WeightsDigest, resolve,
};
use clap::{Args, Subcommand};

use super::hash::{fail, read_json, read_vocab};

/// Arguments of `avp handshake`: either `resolve` two identity files here,
/// or `avp handshake URL --identity FILE` against a live agent
/// (cli/src/cmd/handshake_remote.rs).
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct HandshakeArgs {
    #[command(subcommand)]
    what: Option<HandshakeWhat>,
    #[command(flatten)]
    remote: Option<super::handshake_remote::HandshakeRemoteArgs>,
}

#[derive(Subcommand)]
enum HandshakeWhat {
    /// Resolve the communication mode between two identities (or hellos).
    Resolve {
        /// Local identity JSON (or a hello JSON with an `identity` member).
        local: PathBuf,
        /// Remote identity JSON (or hello JSON).
        remote: PathBuf,
        /// Directory of map files `{src16}_{tgt16}.pt` / `.avpmap.safetensors`.
        #[arg(long)]
        maps: Option<PathBuf>,
        /// Local tokenizer.json or `{token: id}` file (enables the vocab_overlap rule).
        #[arg(long, requires = "remote_tokenizer")]
        local_tokenizer: Option<PathBuf>,
        /// Remote tokenizer.json or `{token: id}` file.
        #[arg(long, requires = "local_tokenizer")]
        remote_tokenizer: Option<PathBuf>,
    },
}

/// An identity file, or a hello file (then its identity and weights digest).
fn read_side(path: &Path) -> Result<(ModelIdentity, Option<WeightsDigest>)> {
    let doc = read_json(path)?;
    let is_hello = doc.as_object().is_some_and(|o| o.get("identity").is_some());
    let with_path = |e: avp_handshake::Error| anyhow!("{}: {e}", path.display());
    if is_hello {
        let hello = HelloMessage::from_value(&doc).map_err(with_path)?;
        let digest = hello.weights_digest().map_err(with_path)?;
        Ok((hello.identity_or_default(), digest))
    } else {
        Ok((
            ModelIdentity::from_value(&doc, "").map_err(with_path)?,
            None,
        ))
    }
}

fn resolve_files(
    local: &Path,
    remote: &Path,
    maps: Option<&Path>,
    tokenizers: Option<(&Path, &Path)>,
) -> Result<String> {
    let (local_identity, local_weights) = read_side(local)?;
    let (remote_identity, remote_weights) = read_side(remote)?;
    let map_dir = match maps {
        Some(dir) if !dir.is_dir() => return Err(anyhow!("{}: not a directory", dir.display())),
        Some(dir) => Some(MapDir(dir.to_path_buf())),
        None => None,
    };
    let vocabs: Option<(Object, Object)> = match tokenizers {
        Some((a, b)) => Some((read_vocab(a)?, read_vocab(b)?)),
        None => None,
    };
    let options = ResolveOptions {
        maps: map_dir.as_ref().map(|m| m as &dyn MapLookup),
        vocabularies: vocabs.as_ref().map(|(a, b)| (a, b)),
        local_weights,
        remote_weights,
    };
    let resolution = resolve(&local_identity, &remote_identity, &options);
    let mut out = Object::new();
    out.insert("mode", Value::from(resolution.mode.name()));
    out.insert(
        "resolution_path",
        Value::from(resolution.resolution_path.as_str()),
    );
    out.insert("avp_map_id", Value::from(resolution.avp_map_id.as_str()));
    let mut line = String::new();
    write_value(&mut line, &Value::Object(out), WriteOptions::COMPACT)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(line)
}

pub(crate) fn run(args: HandshakeArgs) -> ExitCode {
    let what = match (args.what, args.remote) {
        (Some(what), _) => what,
        (None, Some(remote)) => return super::handshake_remote::run_remote(&remote),
        (None, None) => {
            eprintln!("avp handshake: give `resolve LOCAL REMOTE` or `URL --identity FILE`");
            return ExitCode::from(2);
        }
    };
    match what {
        HandshakeWhat::Resolve {
            local,
            remote,
            maps,
            local_tokenizer,
            remote_tokenizer,
        } => {
            let tokenizers = local_tokenizer.as_deref().zip(remote_tokenizer.as_deref());
            match resolve_files(&local, &remote, maps.as_deref(), tokenizers) {
                Ok(line) => crate::out::finish_line(line),
                Err(e) => fail(&e),
            }
        }
    }
}

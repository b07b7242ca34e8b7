//! `avp encode --metadata META.json --payload FILE [--compress …] -o OUT`
//! (spec/impl/cli.md, AVP-CLI-5).
//!
//! META.json uses the member names and enum names of `avp decode`'s
//! `metadata` object. The output is written to a temporary file next to OUT
//! and renamed, so OUT is never half-written.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use avp_codec::{Compression, DataType, EncodeOptions, Metadata, Mode, PayloadType, encode_with};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::decode::{EXIT_INVALID, codec_error, io_error, print_error};

/// Compression choices (AVP-WIRE-18).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CompressArg {
    /// zstd level 1.
    Fast,
    /// zstd level 3.
    Balanced,
    /// zstd level 19.
    Max,
}

/// Arguments of `avp encode`.
#[derive(Args, Debug)]
pub(crate) struct EncodeArgs {
    /// Metadata as JSON (the `metadata` object of `avp decode`).
    #[arg(long)]
    metadata: PathBuf,
    /// Raw tensor bytes.
    #[arg(long)]
    payload: PathBuf,
    /// Compress the tensor bytes with zstd.
    #[arg(long, value_enum)]
    compress: Option<CompressArg>,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Sign the message with a keyed MAC derived from this key file (spec/protocol/mac.md, AVP-MAC-8).
    #[arg(long, value_name = "F")]
    mac_key: Option<PathBuf>,
    /// Override the routing fields of META.json.
    #[command(flatten)]
    address: super::address::AddressArgs,
}

const KNOWN: &[&str] = &[
    "session_id",
    "source_agent_id",
    "target_agent_id",
    "model_id",
    "hidden_dim",
    "num_layers",
    "payload_type",
    "dtype",
    "tensor_shape",
    "mode",
    "compression",
    "avp_map_id",
    "extra",
    "payload_checksum",
];

/// Parses META.json; `compression` and `payload_checksum` are accepted and
/// ignored because the encoder derives them (AVP-WIRE-15/16).
fn metadata_from_json(v: &Value) -> anyhow::Result<Metadata<'static>> {
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("metadata must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        bail!("unknown metadata member {k:?}");
    }
    let string = |k: &str| -> anyhow::Result<Cow<'static, str>> {
        match obj.get(k) {
            None => Ok(Cow::Borrowed("")),
            Some(Value::String(s)) => Ok(Cow::Owned(s.clone())),
            Some(_) => bail!("{k} must be a string"),
        }
    };
    let u32_of = |k: &str, v: Option<&Value>| -> anyhow::Result<u32> {
        match v {
            None => Ok(0),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| anyhow!("{k} must be a u32")),
        }
    };
    let name = |k: &str| -> anyhow::Result<Option<String>> {
        match obj.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("{k} must be a string"),
        }
    };
    let payload_type = match name("payload_type")? {
        None => PayloadType::HiddenState,
        Some(s) => {
            PayloadType::from_name(&s).ok_or_else(|| anyhow!("unknown payload_type {s:?}"))?
        }
    };
    let dtype = match name("dtype")? {
        None => DataType::Float32,
        Some(s) => DataType::from_name(&s).ok_or_else(|| anyhow!("unknown dtype {s:?}"))?,
    };
    let mode = match name("mode")? {
        None => Mode::Latent,
        Some(s) => Mode::from_name(&s).ok_or_else(|| anyhow!("unknown mode {s:?}"))?,
    };
    let tensor_shape = match obj.get("tensor_shape") {
        None => avp_codec::Shape::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| u32_of("tensor_shape entry", Some(x)))
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("tensor_shape must be an array"),
    };
    let mut extra = std::collections::BTreeMap::new();
    match obj.get("extra") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| anyhow!("extra values must be strings ({k})"))?;
                extra.insert(Cow::Owned(k.clone()), Cow::Owned(v.to_owned()));
            }
        }
        Some(_) => bail!("extra must be an object of strings"),
    }
    Ok(Metadata::new()
        .with_session_id(string("session_id")?)
        .with_source_agent_id(string("source_agent_id")?)
        .with_target_agent_id(string("target_agent_id")?)
        .with_model_id(string("model_id")?)
        .with_hidden_dim(u32_of("hidden_dim", obj.get("hidden_dim"))?)
        .with_num_layers(u32_of("num_layers", obj.get("num_layers"))?)
        .with_payload_type(payload_type)
        .with_dtype(dtype)
        .with_tensor_shape(tensor_shape)
        .with_mode(mode)
        .with_avp_map_id(string("avp_map_id")?)
        .with_extra(extra))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half an output; `-` writes them to stdout (AVP-CLI-14).
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if crate::out::names_stdout(path) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        return out.write_all(bytes).and_then(|()| out.flush());
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp-avp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

pub(crate) fn run(args: EncodeArgs) -> ExitCode {
    let meta_text = match std::fs::read_to_string(&args.metadata) {
        Ok(t) => t,
        Err(e) => return io_error(&args.metadata, &e),
    };
    let meta = serde_json::from_str::<Value>(&meta_text)
        .context("metadata is not JSON")
        .and_then(|v| metadata_from_json(&v));
    let mut meta = match meta {
        Ok(m) => m,
        Err(e) => {
            print_error(
                "invalid_argument",
                &format!("{}: {e:#}", args.metadata.display()),
            );
            return ExitCode::from(EXIT_INVALID);
        }
    };
    args.address.apply(&mut meta);
    let payload = match std::fs::read(&args.payload) {
        Ok(p) => p,
        Err(e) => return io_error(&args.payload, &e),
    };
    let compression = match args.compress {
        None => Compression::None,
        Some(CompressArg::Fast) => Compression::Fast,
        Some(CompressArg::Balanced) => Compression::Balanced,
        Some(CompressArg::Max) => Compression::Max,
    };
    let key = match args.mac_key.as_deref().map(super::decode::read_mac_key) {
        None => None,
        Some(Ok(k)) => Some(k),
        Some(Err(code)) => return code,
    };
    let encoded = match &key {
        Some(k) => avp_codec::mac::encode_signed(&meta, &payload, compression, k),
        // The CLI opts in to threads for large tensors (the codec's default is one).
        None => encode_with(
            &meta,
            &payload,
            &EncodeOptions::DEFAULT
                .with_compression(compression)
                .with_threads(0),
        ),
    };
    let bytes = match encoded {
        Ok(b) => b,
        Err(e) => return codec_error(&e),
    };
    if let Err(e) = write_atomically(&args.output, &bytes) {
        return io_error(&args.output, &e);
    }
    crate::out::finish_report(
        json!({"output": args.output.display().to_string(), "length": bytes.len(),
               "payload_checksum": avp_codec::crc32(&payload), "compression": compression.name(), "signed": key.is_some()}),
        &args.output,
    )
}

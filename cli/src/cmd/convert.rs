//! `avp convert IN -o OUT`: re-encodes a KV context (spec/impl/cli.md,
//! AVP-CLI-20 .. AVP-CLI-22): quantized (`--kv-quant`), plain in a float
//! dtype (`--kv-dtype`), as a delta on a base (`--delta-from`), or a delta
//! assembled on its base (`--base`).
//!
//! Every input is first made the plain KV v1 payload of its context in
//! memory (a quantized message dequantized, a delta assembled on `--base`),
//! then written in the form asked for. The output is written to a temporary
//! file and renamed, so OUT is whole or untouched, and never one of the
//! inputs. What cannot work for this input (a delta without its base, a
//! base for a full context) is refused before anything is written.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use avp_codec::kv::{KvCache, KvDtype};
use avp_codec::kv_delta::{assemble, prefix_address, split_delta};
use avp_codec::kv_quant::{KvExt, KvScheme, QuantParams, ScaleDtype, convert_dtype, encode_ext};
use avp_codec::{Compression, Error, ErrorKind, Limits, Metadata, PayloadType, Shape};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::decode::{EXIT_INVALID, io_error, print_error};

/// Arguments of `avp convert`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("operation").required(true).multiple(true)
    .args(["kv_quant", "kv_dtype", "delta_from", "base"])))]
pub(crate) struct ConvertArgs {
    /// The KV message to convert (KV_CACHE, or KV_CACHE_EXT: quantized or delta).
    input: PathBuf,
    /// Where to write the result (a temporary file, then renamed; never IN or a base).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Quantize into a KV_CACHE_EXT message (spec/protocol/kv-quant.md).
    #[arg(long, value_enum, value_name = "SCHEME", conflicts_with_all = ["kv_dtype", "base"])]
    kv_quant: Option<QuantArg>,
    /// Values per group: int8 1..=64 dividing head_dim (default 64), int4 32 or 64 (default 32).
    #[arg(long, value_name = "G", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    group_size: Option<u32>,
    /// int4: the most recent tokens kept unquantized (default 0); the tokens that do not
    /// fill a last group are added to it (AVP-KVQ-4).
    #[arg(long, value_name = "R", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    residual: Option<u32>,
    /// Element type of scales and minimums (default: f32 for int8, f16 for int4).
    #[arg(long, value_enum, value_name = "T", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    scale_dtype: Option<ScaleArg>,
    /// Write a plain KV_CACHE message in this float dtype (the SDK reads it).
    #[arg(long, value_enum, value_name = "DTYPE", conflicts_with = "delta_from")]
    kv_dtype: Option<DtypeArg>,
    /// Write only the positions after BASE (a context IN starts with) as a delta on it
    /// (spec/protocol/kv-delta.md); with --kv-quant a quantized delta.
    #[arg(long, value_name = "BASE", conflicts_with = "base")]
    delta_from: Option<PathBuf>,
    /// IN is a delta: assemble it on BASE (a context that starts with its prefix)
    /// into the whole context.
    #[arg(long, value_name = "BASE")]
    base: Option<PathBuf>,
    /// The model hash of prefix addresses (AVP-KVD-1); default: IN's extra `model_hash`.
    #[arg(long, value_name = "HASH")]
    model_hash: Option<String>,
}

/// `--kv-quant`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum QuantArg {
    Int8,
    Int4,
}

/// `--scale-dtype`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScaleArg {
    F32,
    F16,
}

/// `--kv-dtype`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum DtypeArg {
    Float32,
    Float16,
    Bfloat16,
}

impl DtypeArg {
    fn kv(self) -> KvDtype {
        match self {
            DtypeArg::Float32 => KvDtype::Float32,
            DtypeArg::Float16 => KvDtype::Float16,
            DtypeArg::Bfloat16 => KvDtype::Bfloat16,
        }
    }
}

/// Why a conversion stopped: the exit status and the error line differ.
pub(crate) enum Stop {
    /// A file could not be read or written (exit 2, kind `io`).
    Io(PathBuf, std::io::Error),
    /// The input or the request is invalid (exit 1, a codec error kind).
    Invalid(ErrorKind, String),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Invalid(e.kind(), e.message().to_owned())
    }
}

impl Stop {
    pub(crate) fn report(self) -> ExitCode {
        match self {
            Stop::Io(path, e) => io_error(&path, &e),
            Stop::Invalid(kind, message) => {
                print_error(kind.as_str(), &message);
                ExitCode::from(EXIT_INVALID)
            }
        }
    }
}

fn invalid(kind: ErrorKind, message: String) -> Stop {
    Stop::Invalid(kind, message)
}

/// A context read from a file: the metadata it came with and the KV v1
/// payload of its positions, whatever form it was stored in.
pub(crate) struct Context {
    pub(crate) metadata: Metadata<'static>,
    /// A KV v1 payload (AVP-KV-1..3) without trailing bytes.
    pub(crate) payload: Vec<u8>,
}

impl Context {
    /// The parsed payload (checked when the context was made).
    pub(crate) fn kv(&self) -> Result<KvCache<'_>, Error> {
        KvCache::parse(&self.payload)
    }
}

/// Reads the one message in `path`: the header first, then only the length
/// it declares, so `/dev/zero` or a stray file is refused after 12 bytes
/// and a huge file is never read whole for nothing (as AVP-CLI-4).
pub(crate) fn read_message_bytes(path: &Path) -> Result<Vec<u8>, Stop> {
    use std::io::Read;
    let io = |e| Stop::Io(path.to_owned(), e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(avp_codec::HEADER_LEN);
    (&mut file)
        .take(avp_codec::HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let declared = match avp_codec::parse_header(&bytes, &Limits::DEFAULT)? {
        // Shorter than a header: decoding says `truncated`.
        avp_codec::Status::NeedMore(_) => return Ok(bytes),
        avp_codec::Status::Complete(header) => header.message_len(),
    };
    file.take(declared.saturating_sub(avp_codec::HEADER_LEN as u64))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// The message in `path`, decoded (compatible mode), owning its bytes.
pub(crate) fn read_message(path: &Path) -> Result<avp_codec::Message<'static>, Stop> {
    let bytes = read_message_bytes(path)?;
    let msg = avp_codec::decode(&bytes).map_err(|e| with_path(path, &e))?;
    Ok(msg.into_owned())
}

/// `e` with the file it came from in its message.
fn with_path(path: &Path, e: &Error) -> Stop {
    Stop::Invalid(e.kind(), format!("{}: {}", path.display(), e.message()))
}

/// The model hash that prefix addresses use: `--model-hash`, else the
/// message's extra `model_hash` (what `avp think` writes).
fn model_hash_of<'m>(given: Option<&'m str>, metadata: &'m Metadata<'_>) -> Result<&'m str, Stop> {
    given
        .or_else(|| metadata.extra.get("model_hash"))
        .ok_or_else(|| {
            invalid(
                ErrorKind::InvalidArgument,
                "a prefix address needs the model hash: the input has no extra \"model_hash\"; give --model-hash".into(),
            )
        })
}

/// Reads the context in `path` as a KV v1 payload: a KV_CACHE as it is, a
/// quantized KV_CACHE_EXT dequantized (AVP-KVQ-8), a delta assembled on
/// `base` (AVP-KVD-4; `model_hash` names the model for its address).
pub(crate) fn load_context(
    path: &Path,
    base: Option<&Path>,
    model_hash: Option<&str>,
) -> Result<Context, Stop> {
    let msg = read_message(path)?;
    let metadata = msg.metadata;
    let refuse = |m: String| {
        invalid(
            ErrorKind::InvalidArgument,
            format!("{}: {m}", path.display()),
        )
    };
    let payload = match metadata.payload_type {
        PayloadType::KvCache => {
            if base.is_some() {
                return Err(refuse(
                    "a full KV_CACHE message, not a delta: --base applies to deltas".into(),
                ));
            }
            let mut kv = KvCache::parse(&msg.payload).map_err(|e| with_path(path, &e))?;
            kv.check_metadata_dtype(metadata.dtype, false)
                .map_err(|e| with_path(path, &e))?;
            // Trailing bytes after the last layer (a compatible-mode warning) are dropped.
            let total = kv.header.total_bytes().unwrap_or(0) as usize;
            msg.payload.get(..total).unwrap_or_default().to_vec()
        }
        PayloadType::KvCacheExt => {
            let ext = KvExt::parse(&msg.payload).map_err(|e| with_path(path, &e))?;
            match (ext.prefix, base) {
                (None, None) => ext.dequantize().map_err(|e| with_path(path, &e))?,
                (None, Some(_)) => {
                    return Err(refuse(
                        "a full context (seq_start 0), not a delta: --base applies to deltas"
                            .into(),
                    ));
                }
                (Some(prefix), None) => {
                    return Err(refuse(format!(
                        "a delta (positions [{}, {}) on the prefix {}): give --base BASE, a context that starts with that prefix",
                        ext.header.seq_start,
                        ext.header.seq_len,
                        prefix.to_hex()
                    )));
                }
                (Some(_), Some(base)) => {
                    let hash = model_hash_of(model_hash, &metadata)?;
                    let base = load_context(base, None, None)?;
                    assemble(&base.kv()?, hash, &ext).map_err(|e| with_path(path, &e))?
                }
            }
        }
        other => {
            return Err(refuse(format!(
                "a {} message, not a KV cache",
                other.name()
            )));
        }
    };
    Ok(Context { metadata, payload })
}

/// The same file (not merely the same name).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The quantization parameters for a context of `tokens` carried positions:
/// the scheme's defaults (kv-quant.md), overridden by the options; int4's
/// residual grows by the tokens that do not fill a last group (AVP-KVQ-4).
fn quant_params(args: &ConvertArgs, scheme: QuantArg, tokens: u32) -> Result<QuantParams, Stop> {
    let scheme = match scheme {
        QuantArg::Int8 => KvScheme::Int8,
        QuantArg::Int4 => KvScheme::Int4,
    };
    let mut params = QuantParams::for_scheme(scheme);
    if let Some(g) = args.group_size {
        params.group_size = g;
    }
    if let Some(s) = args.scale_dtype {
        params.scale_dtype = match s {
            ScaleArg::F32 => ScaleDtype::F32,
            ScaleArg::F16 => ScaleDtype::F16,
        };
    }
    let residual = args.residual.unwrap_or(0);
    if scheme == KvScheme::Int8 {
        if residual != 0 {
            return Err(invalid(
                ErrorKind::InvalidArgument,
                "--residual applies to int4 only (int8 quantizes every token)".into(),
            ));
        }
        return Ok(params);
    }
    if residual > tokens {
        return Err(invalid(
            ErrorKind::InvalidArgument,
            format!("--residual {residual} exceeds the {tokens} positions carried"),
        ));
    }
    let leftover = (tokens - residual)
        .checked_rem(params.group_size)
        .unwrap_or(0);
    params.residual = residual.saturating_add(leftover);
    Ok(params)
}

/// The output metadata: the input's, with the payload type, dtype and
/// shape of what is written (AVP-KVQ-1: KV messages carry an empty shape).
fn output_metadata(
    input: &Metadata<'static>,
    payload_type: PayloadType,
    dtype: KvDtype,
) -> Metadata<'static> {
    let mut m = input.clone();
    m.payload_type = payload_type;
    m.dtype = dtype.data_type();
    m.tensor_shape = Shape::default();
    m.compression = None;
    m.payload_checksum = None;
    m
}

/// What was written, for the report line.
struct Written {
    payload_type: PayloadType,
    scheme: Option<KvScheme>,
    dtype: KvDtype,
    seq_start: u32,
    seq_len: u32,
    group_size: u32,
    residual: u32,
    prefix: Option<String>,
}

fn convert(args: &ConvertArgs) -> Result<(Vec<u8>, Written), Stop> {
    for other in [
        Some(&args.input),
        args.base.as_ref(),
        args.delta_from.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if same_file(&args.output, other) {
            return Err(invalid(
                ErrorKind::InvalidArgument,
                format!(
                    "{} is also an input: write the result to another file",
                    args.output.display()
                ),
            ));
        }
    }
    let input = load_context(
        &args.input,
        args.base.as_deref(),
        args.model_hash.as_deref(),
    )?;
    if input.metadata.extra.contains_key(avp_codec::mac::TAG_KEY) {
        // The tag covers the bytes this command changes; only the key holder can sign anew.
        return Err(invalid(
            ErrorKind::InvalidArgument,
            format!(
                "{}: the message carries a MAC ({}); convert it before signing (avp encode --mac-key)",
                args.input.display(),
                avp_codec::mac::TAG_KEY
            ),
        ));
    }
    let kv = input.kv()?;
    let h = kv.header;
    let mut written = Written {
        payload_type: PayloadType::KvCache,
        scheme: None,
        dtype: h.dtype,
        seq_start: 0,
        seq_len: h.seq_len,
        group_size: 0,
        residual: 0,
        prefix: None,
    };
    let payload: Cow<'_, [u8]> = if let Some(base_path) = &args.delta_from {
        let hash = model_hash_of(args.model_hash.as_deref(), &input.metadata)?;
        let base = load_context(base_path, None, None)?;
        if let (Some(mine), Some(theirs)) = (
            input.metadata.extra.get("model_hash"),
            base.metadata.extra.get("model_hash"),
        ) {
            if mine != theirs {
                return Err(invalid(
                    ErrorKind::DeltaMismatch,
                    format!(
                        "{} is a context of another model ({theirs}, not {mine})",
                        base_path.display()
                    ),
                ));
            }
        }
        let base_kv = base.kv()?;
        let b = base_kv.header;
        if (b.num_layers, b.num_kv_heads, b.head_dim, b.dtype)
            != (h.num_layers, h.num_kv_heads, h.head_dim, h.dtype)
        {
            return Err(invalid(
                ErrorKind::DeltaMismatch,
                format!(
                    "{} has {} layers x {} heads x {} in {}, the input {} x {} x {} in {}",
                    base_path.display(),
                    b.num_layers,
                    b.num_kv_heads,
                    b.head_dim,
                    b.dtype.name(),
                    h.num_layers,
                    h.num_kv_heads,
                    h.head_dim,
                    h.dtype.name()
                ),
            ));
        }
        let p = b.seq_len;
        if p == 0 || p > h.seq_len {
            return Err(invalid(
                ErrorKind::DeltaMismatch,
                format!(
                    "{} holds {p} positions: a delta base holds 1 to {} (the input's length)",
                    base_path.display(),
                    h.seq_len
                ),
            ));
        }
        let params = match args.kv_quant {
            Some(q) => quant_params(args, q, h.seq_len - p)?,
            None => QuantParams::NONE,
        };
        let (address, delta) = split_delta(&kv, p, hash, &params)?;
        if prefix_address(&base_kv, p, hash)? != address {
            return Err(invalid(
                ErrorKind::PrefixMismatch,
                format!(
                    "{} is not the first {p} positions of {}: a receiver holding it could not assemble the delta",
                    base_path.display(),
                    args.input.display()
                ),
            ));
        }
        written = Written {
            payload_type: PayloadType::KvCacheExt,
            scheme: Some(params.scheme),
            seq_start: p,
            group_size: params.group_size,
            residual: params.residual,
            prefix: Some(address.to_hex()),
            ..written
        };
        Cow::Owned(delta)
    } else if let Some(q) = args.kv_quant {
        let params = quant_params(args, q, h.seq_len)?;
        written = Written {
            payload_type: PayloadType::KvCacheExt,
            scheme: Some(params.scheme),
            group_size: params.group_size,
            residual: params.residual,
            ..written
        };
        Cow::Owned(encode_ext(&kv, &params, 0, None)?)
    } else {
        match args.kv_dtype.map(DtypeArg::kv) {
            Some(d) if d != h.dtype => {
                written.dtype = d;
                Cow::Owned(convert_dtype(&kv, d)?)
            }
            _ => Cow::Borrowed(input.payload.as_slice()),
        }
    };
    let metadata = output_metadata(&input.metadata, written.payload_type, written.dtype);
    let bytes = avp_codec::encode(&metadata, &payload, Compression::None)?;
    Ok((bytes, written))
}

/// `avp convert`: prints `{"output","length","payload_type","scheme",
/// "dtype","seq_start","seq_len","group_size","residual","prefix"}`
/// (AVP-CLI-20); errors as AVP-CLI-3.
pub(crate) fn run(args: ConvertArgs) -> ExitCode {
    let (bytes, w) = match convert(&args) {
        Ok(done) => done,
        Err(stop) => return stop.report(),
    };
    if let Err(e) = super::encode::write_atomically(&args.output, &bytes) {
        return io_error(&args.output, &e);
    }
    crate::out::finish_line(json!({
        "output": args.output.display().to_string(),
        "length": bytes.len(),
        "payload_type": w.payload_type.name(),
        "scheme": w.scheme.map(KvScheme::name),
        "dtype": w.dtype.name(),
        "seq_start": w.seq_start,
        "seq_len": w.seq_len,
        "group_size": w.group_size,
        "residual": w.residual,
        "prefix": w.prefix,
    }))
}

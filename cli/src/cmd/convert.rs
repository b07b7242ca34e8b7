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

use avp_codec::chunk::{CHUNK_EXTRA_KEY, ChunkPlan, descriptor_of, split_payload};
use avp_codec::kv::{KvCache, KvDtype, KvHeader};
use avp_codec::kv_delta::{common_prefix_len, prefix_address, split_delta};
use avp_codec::kv_quant::{KvScheme, QuantParams, ScaleDtype, convert_dtype, encode_ext};
use avp_codec::{Compression, ErrorKind, Metadata, PayloadType, Shape};
use avp_transport::kv_wire::DELTA_BASE_KEY;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::chunk_files::{self, fits_one_message};
use super::decode::{io_error, report_stop};
use super::kv_file::{Context, Stop, invalid, load_context, model_hash_of, peek_first};

/// Arguments of `avp convert`.
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("operation").required(true).multiple(true)
    .args(["kv_quant", "kv_dtype", "delta_from", "base", "chunk_mib", "join"])))]
pub(crate) struct ConvertArgs {
    /// The KV context to convert: a KV_CACHE or KV_CACHE_EXT (quantized or delta) message, or a chunked file.
    input: PathBuf,
    /// Where to write the result (a temporary file, then renamed; never IN or a base).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Quantize into a KV_CACHE_EXT message (spec/protocol/kv-quant.md).
    #[arg(long, value_enum, value_name = "SCHEME", conflicts_with_all = ["kv_dtype", "base"])]
    kv_quant: Option<QuantArg>,
    /// Values per group: int8 1..=64 dividing head_dim (default 64), int4 32 or 64 (default 64 where it divides head_dim, else 32),
    /// int8-channel 1..=64 dividing head_dim (default: the largest).
    #[arg(long, value_name = "G", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    group_size: Option<u32>,
    /// int4, int8-channel: the most recent tokens kept unquantized (default 0); int4 adds the tokens
    /// that do not fill a last group (AVP-KVQ-4), int8-channel quantizes them in a shorter group.
    #[arg(long, value_name = "R", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    residual: Option<u32>,
    /// Element type of scales and minimums (default: f32 for int8, f16 for int4 and int8-channel).
    #[arg(long, value_enum, value_name = "T", requires = "kv_quant", conflicts_with_all = ["kv_dtype", "base"])]
    scale_dtype: Option<ScaleArg>,
    /// Write a plain KV_CACHE message in this float dtype (the SDK reads it).
    #[arg(long, value_enum, value_name = "DTYPE", conflicts_with = "delta_from")]
    kv_dtype: Option<DtypeArg>,
    /// Write only the positions after those IN shares with BASE as a delta on them
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
    /// Write a chunked file (spec/protocol/chunked.md): chunk messages of at most N MiB
    /// of KV payload each, back to back.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with_all = ["kv_quant", "delta_from", "join"])]
    chunk_mib: Option<u32>,
    /// IN is a chunked file: write its context as one message (when it fits in one).
    #[arg(long, conflicts_with = "base")]
    join: bool,
}

/// `--kv-quant`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum QuantArg {
    Int8,
    Int4,
    // int8 with keys grouped per channel (scheme 3, AVP-KVQ-30); no doc comment: it would
    // make clap print every flag's help in long form.
    Int8Channel,
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
fn quant_params(
    args: &ConvertArgs,
    scheme: QuantArg,
    tokens: u32,
    head_dim: u32,
) -> Result<QuantParams, Stop> {
    let scheme = match scheme {
        QuantArg::Int8 => KvScheme::Int8,
        QuantArg::Int4 => KvScheme::Int4,
        QuantArg::Int8Channel => KvScheme::Int8Channel,
    };
    let mut params = QuantParams::for_scheme(scheme);
    // AVP-CLI-20: int4 defaults to groups of 64 (4.5 bits a value, the size target of
    // issue 17) where 64 divides head_dim, else to 32.
    if scheme == KvScheme::Int4 && head_dim % 64 == 0 {
        params.group_size = 64;
    }
    // AVP-CLI-110: int8-channel defaults to the largest group dividing head_dim (up to 64).
    if scheme == KvScheme::Int8Channel {
        params.group_size = QuantParams::int8_channel_for(head_dim).group_size;
    }
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
    // int4 keeps the tokens that do not fill a last key group as residual (AVP-KVQ-4);
    // int8-channel's last key group is shorter instead (AVP-KVQ-31).
    params.residual = residual;
    Ok(params.with_leftover_residual(tokens))
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
    /// The `avp.delta_base` hint written with a delta (AVP-KVD-31).
    delta_base: Option<String>,
    /// Chunk messages written (`--chunk-mib`).
    chunks: Option<u32>,
}

/// OUT must not be IN or a base: the rename would replace an input (AVP-CLI-22).
fn refuse_overwriting_inputs(args: &ConvertArgs) -> Result<(), Stop> {
    let inputs = [
        Some(&args.input),
        args.base.as_ref(),
        args.delta_from.as_ref(),
    ];
    match inputs
        .into_iter()
        .flatten()
        .find(|i| same_file(&args.output, i))
    {
        Some(_) => Err(invalid(
            ErrorKind::InvalidArgument,
            format!(
                "{} is also an input: write the result to another file",
                args.output.display()
            ),
        )),
        None => Ok(()),
    }
}

/// The bytes to write and what they are.
fn convert(args: &ConvertArgs) -> Result<(Vec<u8>, Written), Stop> {
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
    if args.join && input.chunks == 0 {
        return Err(invalid(
            ErrorKind::InvalidArgument,
            format!(
                "{}: --join reads a chunked file; this is one message",
                args.input.display()
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
        delta_base: None,
        chunks: None,
    };
    let payload: Cow<'_, [u8]> = if let Some(base_path) = &args.delta_from {
        let (delta, done) = write_delta(args, base_path, &input, &kv, written)?;
        written = done;
        Cow::Owned(delta)
    } else if let Some(q) = args.kv_quant {
        let params = quant_params(args, q, h.seq_len, h.head_dim)?;
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
    let mut metadata = output_metadata(&input.metadata, written.payload_type, written.dtype);
    // Only a delta written now carries a hint; one copied from IN would lie.
    metadata.extra.remove(DELTA_BASE_KEY);
    if let Some(hint) = &written.delta_base {
        metadata.extra.insert(DELTA_BASE_KEY, hint.clone());
    }
    let bytes = match args.chunk_mib {
        Some(mib) => {
            // A chunk's own descriptor is written by the splitter, never copied.
            metadata.extra.remove(CHUNK_EXTRA_KEY);
            let plan = ChunkPlan::new(&KvHeader::parse(&payload)?, u64::from(mib) << 20)?;
            let chunks = split_payload(&payload, plan.count(), &metadata, context_id()?)?;
            written.chunks = Some(plan.count());
            chunks.concat()
        }
        None => avp_codec::encode(&metadata, &payload, Compression::None)?,
    };
    Ok((bytes, written))
}

/// `--delta-from BASE` (AVP-CLI-21): positions `[p, n)` of `kv` as a delta
/// on the `p` positions it shares with BASE (AVP-KVD-30), naming BASE in
/// an `avp.delta_base` hint when BASE is longer (AVP-KVD-31).
fn write_delta(
    args: &ConvertArgs,
    base_path: &Path,
    input: &Context,
    kv: &KvCache<'_>,
    written: Written,
) -> Result<(Vec<u8>, Written), Stop> {
    let h = kv.header;
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
    // AVP-KVD-30: the base need only share a prefix with the input; a base
    // holding all of it gives p = n, a delta of no positions (AVP-KVD-2).
    let p = common_prefix_len(&base_kv, kv)?;
    if p == 0 {
        return Err(invalid(
            ErrorKind::PrefixMismatch,
            format!(
                "{} and {} share no position (their first positions differ): there is nothing to send a delta on",
                base_path.display(),
                args.input.display()
            ),
        ));
    }
    let params = match args.kv_quant {
        Some(q) => quant_params(args, q, h.seq_len - p, h.head_dim)?,
        None => QuantParams::NONE,
    };
    // The bytes of [0, p) were compared: one hash, of the input's, names both.
    let (address, delta) = split_delta(kv, p, hash, &params)?;
    // A base longer than p is named for the receiver (AVP-KVD-31).
    let hint = if p < b.seq_len {
        Some(prefix_address(&base_kv, b.seq_len, hash)?.to_hex())
    } else {
        None
    };
    let written = Written {
        payload_type: PayloadType::KvCacheExt,
        scheme: Some(params.scheme),
        seq_start: p,
        group_size: params.group_size,
        residual: params.residual,
        prefix: Some(address.to_hex()),
        delta_base: hint,
        ..written
    };
    Ok((delta, written))
}

/// `--chunk-mib` alone on a plain uncompressed KV_CACHE message, or
/// `--join` alone: chunk_files.rs splits and joins streaming, in constant
/// memory whatever the context's size (AVP-CLI-25). `None` when the request
/// needs the context in memory (another change, another input form).
fn streamed(args: &ConvertArgs) -> Option<Result<Written, Stop>> {
    let alone = args.kv_quant.is_none()
        && args.kv_dtype.is_none()
        && args.delta_from.is_none()
        && args.base.is_none()
        && args.input.as_os_str() != "-";
    if !alone {
        return None;
    }
    let first = match peek_first(&args.input) {
        Ok(Some(first)) => first,
        Ok(None) => return None,
        Err(stop) => return Some(Err(stop)),
    };
    let metadata = &first.metadata;
    let chunked = metadata.extra.contains_key(CHUNK_EXTRA_KEY);
    let plain = metadata.payload_type == PayloadType::KvCache
        && !first.header.flags.compressed()
        && !metadata.extra.contains_key(avp_codec::mac::TAG_KEY);
    // A context that cannot be one message is refused from its first chunk, not after reading all.
    let joinable = match (descriptor_of(metadata), first.kv) {
        (Ok(Some(d)), Some(kv)) => fits_one_message(&d.context_header(&kv), metadata),
        _ => false,
    };
    let summary = match (args.chunk_mib, args.join) {
        (Some(mib), false) if plain && !chunked => {
            let id = match context_id() {
                Ok(id) => id,
                Err(stop) => return Some(Err(stop)),
            };
            chunk_files::split_file(&args.input, &args.output, u64::from(mib), id)
        }
        (None, true) if chunked && joinable => chunk_files::join_file(&args.input, &args.output),
        _ => return None,
    };
    Some(
        summary
            .map(|s| Written {
                payload_type: PayloadType::KvCache,
                scheme: None,
                dtype: s.header.dtype,
                seq_start: 0,
                seq_len: s.header.seq_len,
                group_size: 0,
                residual: 0,
                prefix: None,
                delta_base: None,
                chunks: args.chunk_mib.map(|_| s.messages),
            })
            .map_err(|e| {
                // A closed stdout is the output's failure, not the input's (AVP-CLI-14).
                let on_stdout = crate::out::names_stdout(&args.output);
                stop_of(
                    if on_stdout && crate::out::is_broken_pipe(&e) {
                        &args.output
                    } else {
                        &args.input
                    },
                    &e,
                )
            }),
    )
}

/// chunk_files.rs's error as a [`Stop`]: the codec's kind when it has one,
/// `io` for a file that failed, else `invalid_argument` (as `avp kv`).
fn stop_of(path: &Path, e: &anyhow::Error) -> Stop {
    let message = format!("{e:#}");
    if let Some(codec) = e.chain().find_map(|c| c.downcast_ref::<avp_codec::Error>()) {
        return invalid(codec.kind(), message);
    }
    match e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        Some(io) => Stop::Io(path.to_owned(), std::io::Error::new(io.kind(), message)),
        None => invalid(ErrorKind::InvalidArgument, message),
    }
}

/// A new context id: 16 random bytes, as AVP-CHK-6 recommends.
fn context_id() -> Result<[u8; 16], Stop> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| {
        invalid(
            ErrorKind::Internal,
            format!("no random bytes for a context id: {e}"),
        )
    })?;
    Ok(id)
}

/// `avp convert`: prints `{"output","length","payload_type","scheme",
/// "dtype","seq_start","seq_len","group_size","residual","prefix","chunks"}`
/// (AVP-CLI-20); errors as AVP-CLI-3.
pub(crate) fn run(args: ConvertArgs) -> ExitCode {
    if let Err(stop) = refuse_overwriting_inputs(&args) {
        return report_stop(stop);
    }
    let (length, w) = match streamed(&args) {
        // On stdout the streamed bytes are not counted: `length` is null.
        Some(Ok(w)) if crate::out::names_stdout(&args.output) => (None, w),
        Some(Ok(w)) => match std::fs::metadata(&args.output) {
            Ok(m) => (Some(m.len()), w),
            Err(e) => return io_error(&args.output, &e),
        },
        Some(Err(stop)) => return report_stop(stop),
        None => {
            let (bytes, w) = match convert(&args) {
                Ok(done) => done,
                Err(stop) => return report_stop(stop),
            };
            if let Err(e) = super::encode::write_atomically(&args.output, &bytes) {
                return io_error(&args.output, &e);
            }
            (Some(bytes.len() as u64), w)
        }
    };
    crate::out::finish_report(
        json!({
            "output": args.output.display().to_string(),
            "length": length,
            "payload_type": w.payload_type.name(),
            "scheme": w.scheme.map(KvScheme::name),
            "dtype": w.dtype.name(),
            "seq_start": w.seq_start,
            "seq_len": w.seq_len,
            "group_size": w.group_size,
            "residual": w.residual,
            "prefix": w.prefix,
            "chunks": w.chunks,
        }),
        &args.output,
    )
}

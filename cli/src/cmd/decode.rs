//! `avp decode --json FILE|-` (spec/impl/cli.md, AVP-CLI-1 .. AVP-CLI-4,
//! AVP-CLI-23 for extended KV payloads).
//!
//! Reads one message, decodes it (compatible mode, or strict with
//! `--strict`) and prints one JSON object. The tensor streams through one
//! window (`stream_in`), so memory does not grow with the input (AVP-CLI-4).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use avp_codec::kv::KvHeader;
use avp_codec::kv_quant::{
    KVX_HEADER_LEN, KvExtHeader, PREFIX_ADDRESS_LEN, PrefixAddress, ScaleDtype,
};
use avp_codec::{DecodeOptions, Error, ErrorKind, Limits, PayloadType};
use clap::Args;
use serde_json::{Value, json};

use super::kv_file::{ChunkedFile, Invalid, Stop, is_chunk, scan_chunked};
use super::stream_in::{Decoded, Failure, Want, read_message};

/// Arguments of `avp decode`.
#[derive(Args, Debug)]
pub(crate) struct DecodeArgs {
    /// Print the result as one line of JSON (the machine contract; without it, pretty-printed).
    #[arg(long)]
    json: bool,
    /// Reject what compatible mode only warns about (AVP-WIRE-20).
    #[arg(long)]
    strict: bool,
    /// Require a valid keyed MAC made with this key file (spec/protocol/mac.md,
    /// AVP-MAC-8); a missing or wrong tag is `bad_mac`. Checked before decoding.
    #[arg(long, value_name = "F")]
    mac_key: Option<PathBuf>,
    /// The message file, or `-` for stdin.
    file: PathBuf,
}

/// Exit code for a message that does not decode (AVP-CLI-2).
pub(crate) const EXIT_INVALID: u8 = 1;
/// Exit code for a file that cannot be read or written (AVP-CLI-2).
pub(crate) const EXIT_IO: u8 = 2;

/// Reads `path` (`-` = stdin) whole: for commands that rewrite a message (`address`).
pub(crate) fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().lock().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

/// `{"error":{"kind":..,"message":..}}` on stdout, as AVP-CLI-3 requires.
pub(crate) fn print_error(kind: &str, message: &str) {
    // The status already says what failed; a closed stdout only loses the detail.
    let _ = crate::out::line(json!({"error": {"kind": kind, "message": message}}));
}

/// Reads a MAC key file (AVP-MAC-1); prints the error and gives the exit code on failure.
pub(crate) fn read_mac_key(path: &Path) -> Result<avp_codec::mac::MacKey, ExitCode> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, &e))?;
    avp_codec::mac::MacKey::from_key_file_bytes(&bytes).map_err(|e| {
        print_error(
            e.kind().as_str(),
            &format!("{}: {}", path.display(), e.message()),
        );
        ExitCode::from(EXIT_INVALID)
    })
}

pub(crate) fn codec_error(e: &Error) -> ExitCode {
    print_error(e.kind().as_str(), e.message());
    ExitCode::from(EXIT_INVALID)
}

/// The error line and exit status of a [`Stop`] (AVP-CLI-2, AVP-CLI-3).
pub(crate) fn report_stop(stop: Stop) -> ExitCode {
    match stop {
        Stop::Io(path, e) => io_error(&path, &e),
        Stop::Invalid(invalid) => invalid.report(),
    }
}

// The error line of an [`Invalid`] lives here with the others.
impl Invalid {
    /// Prints the error line (AVP-CLI-3); exit 1.
    pub(crate) fn report(&self) -> ExitCode {
        print_error(self.kind.as_str(), &self.message);
        ExitCode::from(EXIT_INVALID)
    }
}

/// The `kv` member of an extended KV payload (AVP-CLI-23) from its first
/// bytes and its length: AVP-KVQ-3 steps 1-9, everything but the scale
/// values, which only dequantizing reads. No compatible-mode tolerance:
/// the format is new (AVP-KVQ-3), so any failure is the message's.
pub(crate) fn ext_json(head: &[u8], len: u64, limits: &Limits) -> Result<Value, Invalid> {
    let h = KvExtHeader::parse(head)?;
    let invalid = |kind, message| Invalid { kind, message };
    let total = h.total_bytes().ok_or_else(|| {
        invalid(
            ErrorKind::Truncated,
            "KV dimensions overflow 64 bits".to_owned(),
        )
    })?;
    if len < total {
        return Err(invalid(
            ErrorKind::Truncated,
            format!("KV extended payload: need {total} bytes, have {len}"),
        ));
    }
    if len > total {
        return Err(invalid(
            ErrorKind::Inconsistent,
            format!("{} bytes after the last layer", len - total),
        ));
    }
    if h.num_layers > limits.max_kv_layers {
        return Err(invalid(
            ErrorKind::LimitExceeded,
            format!(
                "KV cache declares {} layers, over the limit of {} (AVP-LIM-12)",
                h.num_layers, limits.max_kv_layers
            ),
        ));
    }
    let prefix = (h.seq_start > 0)
        .then(|| head.get(KVX_HEADER_LEN..KVX_HEADER_LEN + PREFIX_ADDRESS_LEN))
        .flatten()
        .and_then(|a| a.first_chunk::<PREFIX_ADDRESS_LEN>())
        .map(|a| PrefixAddress(*a).to_hex());
    Ok(
        json!({"num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads, "head_dim": h.head_dim,
              "seq_len": h.seq_len, "dtype": h.dtype.name(),
              "scheme": h.scheme.name(), "scale_dtype": scale_name(h.scale_dtype),
              "group_size": h.group_size, "residual": h.residual,
              "scales_per_tensor": h.scales_per_tensor,
              "seq_start": h.seq_start, "prefix": prefix}),
    )
}

/// `f32` or `f16`, the names `avp convert --scale-dtype` takes.
pub(crate) fn scale_name(s: ScaleDtype) -> &'static str {
    match s {
        ScaleDtype::F16 => "f16",
        _ => "f32",
    }
}

pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> ExitCode {
    if crate::out::names_stdout(path) && e.kind() == std::io::ErrorKind::BrokenPipe {
        // `-o -` into a pipe closed early: quiet, as AVP-CLI-7 says.
        return crate::out::status_for(e);
    }
    print_error("io", &format!("{}: {e}", path.display()));
    ExitCode::from(EXIT_IO)
}

/// The JSON view of a decoded message (AVP-CLI-1, AVP-CLI-23).
pub(crate) fn message_json(d: &Decoded, strict: bool) -> Result<Value, Invalid> {
    let m = &d.metadata;
    let extra: serde_json::Map<String, Value> = m
        .extra
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut warnings: Vec<Value> = d
        .warnings
        .iter()
        .map(|w| json!({"code": w.code(), "message": w.to_string()}))
        .collect();
    let t = &d.tensor;
    let kv = if m.payload_type == PayloadType::KvCache {
        // KvCache::parse_with + check_metadata_dtype, from the inner header and the length.
        let checked = KvHeader::check_payload(&t.head, t.len, strict, &Limits::DEFAULT).and_then(
            |(h, mut ws)| {
                ws.extend(h.check_metadata_dtype(m.dtype, strict)?);
                Ok((h, ws))
            },
        );
        match checked {
            Ok((h, kv_warnings)) => {
                warnings.extend(
                    kv_warnings
                        .iter()
                        .map(|w| json!({"code": w.code(), "message": w.to_string()})),
                );
                json!({"num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads, "head_dim": h.head_dim,
                       "seq_len": h.seq_len, "dtype": h.dtype.name()})
            }
            Err(e) if strict => return Err(e.into()),
            Err(e) => {
                warnings.push(
                    json!({"code": "kv_invalid", "message": format!("KV cache not readable: {e}")}),
                );
                Value::Null
            }
        }
    } else if m.payload_type == PayloadType::KvCacheExt {
        ext_json(&t.head, t.len, &Limits::DEFAULT)?
    } else {
        Value::Null
    };
    let blake3 = t.blake3.map(|h| h.to_hex().to_string());
    Ok(json!({
        "header": {
            "version": d.header.version,
            "flags": d.header.flags.0,
            "payload_length": d.header.payload_length,
            "metadata_length": d.header.metadata_length,
        },
        "metadata": {
            "session_id": m.session_id,
            "source_agent_id": m.source_agent_id,
            "target_agent_id": m.target_agent_id,
            "model_id": m.model_id,
            "hidden_dim": m.hidden_dim,
            "num_layers": m.num_layers,
            "payload_type": m.payload_type.name(),
            "dtype": m.dtype.name(),
            "tensor_shape": m.tensor_shape.as_slice(),
            "mode": m.mode.name(),
            "compression": if d.header.flags.compressed() { Some("zstd") } else { None },
            "avp_map_id": m.avp_map_id,
            "extra": extra,
            "payload_checksum": m.payload_checksum,
        },
        "payload": {
            "length": t.len,
            "crc32": t.crc32,
            "blake3": blake3,
        },
        "kv": kv,
        "warnings": warnings,
    }))
}

/// Reads and decodes per the arguments, streamed (AVP-CLI-4); a MAC key
/// (AVP-MAC-8) is checked in the same pass, before any decoding verdict.
pub(crate) fn read_decoded(
    file: &Path,
    strict: bool,
    mac_key: Option<&Path>,
    want: Want,
) -> Result<Decoded, ExitCode> {
    // The CLI opts in to threads for large checksums (the codec's default is one).
    let opts = DecodeOptions::default()
        .with_strict(strict)
        .with_checksum_threads(0);
    let key = mac_key.map(read_mac_key).transpose()?;
    read_message(file, &opts, want, key.as_ref()).map_err(|f| match f {
        Failure::Io(e) => io_error(file, &e),
        Failure::Codec(e) => codec_error(&e),
    })
}

/// The JSON view of a chunked file (AVP-CLI-25): each message's AVP-CLI-1
/// object with its descriptor as `"chunk"`, in file order, and the
/// assembled context, which [`scan_chunked`] verified.
fn chunked_json(file: &ChunkedFile, strict: bool) -> Result<Value, Invalid> {
    let mut chunks = Vec::with_capacity(file.chunks.len());
    for c in &file.chunks {
        let mut v = message_json(&c.decoded, strict)?;
        let d = &c.descriptor;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "chunk".to_owned(),
                json!({"offset": c.offset, "index": d.index, "count": d.count,
                       "layer_start": d.layer_start, "layer_end": d.layer_end}),
            );
        }
        chunks.push(v);
    }
    let h = &file.context;
    Ok(json!({
        "chunks": chunks,
        "context": {
            "context_id": hex(&file.context_id),
            "context_digest": hex(&file.context_digest),
            "digest_verified": true,
            "num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads, "head_dim": h.head_dim,
            "seq_len": h.seq_len, "dtype": h.dtype.name(),
            "payload_length": h.total_bytes(),
        },
    }))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn run(args: DecodeArgs) -> ExitCode {
    let want = Want {
        blake3: true,
        stats: false,
    };
    let decoded = match read_decoded(&args.file, args.strict, args.mac_key.as_deref(), want) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let value = if is_chunk(&decoded.metadata) {
        let key = match args.mac_key.as_deref().map(read_mac_key).transpose() {
            Ok(k) => k,
            Err(code) => return code,
        };
        let opts = DecodeOptions::default().with_strict(args.strict);
        match scan_chunked(&args.file, &opts, want, key.as_ref()) {
            Ok(file) => chunked_json(&file, args.strict),
            Err(stop) => return report_stop(stop),
        }
    } else {
        message_json(&decoded, args.strict)
    };
    match value {
        Ok(v) if args.json => crate::out::finish_line(v),
        Ok(v) => crate::out::finish_line(serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(e) => e.report(),
    }
}

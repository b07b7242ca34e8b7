//! `avp decode --json FILE|-` (spec/cli.md, AVP-CLI-1 .. AVP-CLI-4).
//!
//! Reads one message, decodes it (compatible mode, or strict with
//! `--strict`) and prints one JSON object. The file is read into one buffer
//! of exactly its size and the payload is borrowed from it, so peak memory
//! stays near the file size (AVP-CLI-4).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use avp_codec::kv::KvCache;
use avp_codec::{DecodeOptions, Error, Message, PayloadType, decode_with};
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `avp decode`.
#[derive(Args, Debug)]
pub(crate) struct DecodeArgs {
    /// Print the result as one line of JSON (the machine contract; without it, pretty-printed).
    #[arg(long)]
    json: bool,
    /// Reject what compatible mode only warns about (AVP-WIRE-20).
    #[arg(long)]
    strict: bool,
    /// Require a valid keyed MAC made with this key file (spec/mac.md,
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

/// Reads `path` (`-` = stdin) into a buffer of exactly its size.
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

pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> ExitCode {
    print_error("io", &format!("{}: {e}", path.display()));
    ExitCode::from(EXIT_IO)
}

/// The JSON view of a decoded message (AVP-CLI-1).
pub(crate) fn message_json(msg: &Message<'_>, strict: bool) -> Result<Value, Error> {
    let m = &msg.metadata;
    let extra: serde_json::Map<String, Value> = m
        .extra
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let mut warnings: Vec<Value> = msg
        .warnings
        .iter()
        .map(|w| json!({"code": w.code(), "message": w.to_string()}))
        .collect();
    let kv = if m.payload_type == PayloadType::KvCache {
        match KvCache::parse_with(&msg.payload, strict).and_then(|mut kv| {
            kv.check_metadata_dtype(m.dtype, strict)?;
            Ok(kv)
        }) {
            Ok(kv) => {
                warnings.extend(
                    kv.warnings
                        .iter()
                        .map(|w| json!({"code": w.code(), "message": w.to_string()})),
                );
                let h = kv.header;
                json!({"num_layers": h.num_layers, "num_kv_heads": h.num_kv_heads, "head_dim": h.head_dim,
                       "seq_len": h.seq_len, "dtype": h.dtype.name()})
            }
            Err(e) if strict => return Err(e),
            Err(e) => {
                warnings.push(
                    json!({"code": "kv_invalid", "message": format!("KV cache not readable: {e}")}),
                );
                Value::Null
            }
        }
    } else {
        Value::Null
    };
    Ok(json!({
        "header": {
            "version": msg.header.version,
            "flags": msg.header.flags.0,
            "payload_length": msg.header.payload_length,
            "metadata_length": msg.header.metadata_length,
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
            "compression": if msg.was_compressed() { Some("zstd") } else { None },
            "avp_map_id": m.avp_map_id,
            "extra": extra,
            "payload_checksum": m.payload_checksum,
        },
        "payload": {
            "length": msg.payload.len(),
            "crc32": crc32(&msg.payload),
            "blake3": blake3::hash(&msg.payload).to_hex().as_str(),
        },
        "kv": kv,
        "warnings": warnings,
    }))
}

fn crc32(bytes: &[u8]) -> u32 {
    // The codec already verified the checksum when present; recomputing keeps
    // the output right for messages without one. crc32fast is what the codec uses.
    avp_codec::crc32(bytes)
}

pub(crate) fn run(args: DecodeArgs) -> ExitCode {
    let data = match read_input(&args.file) {
        Ok(d) => d,
        Err(e) => return io_error(&args.file, &e),
    };
    let opts = DecodeOptions::default().with_strict(args.strict);
    if let Some(path) = &args.mac_key {
        let key = match read_mac_key(path) {
            Ok(k) => k,
            Err(code) => return code,
        };
        if let Err(e) = avp_codec::mac::verify(&data, &key, &opts.limits) {
            return codec_error(&e);
        }
    }
    let out = decode_with(&data, &opts).and_then(|msg| message_json(&msg, args.strict));
    match out {
        Ok(v) => {
            if args.json {
                crate::out::finish_line(v)
            } else {
                crate::out::finish_line(serde_json::to_string_pretty(&v).unwrap_or_default())
            }
        }
        Err(e) => codec_error(&e),
    }
}

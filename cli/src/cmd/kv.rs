//! `avp kv synth|split|join|verify` (spec/impl/cli.md AVP-CLI-13): synthetic KV
//! contexts of any size for tests and benchmarks, and the conversions
//! between one KV_CACHE message and a chunked context file
//! (spec/protocol/chunked.md). Everything streams: memory stays constant
//! whatever the context's size.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use avp_codec::Metadata;
use avp_codec::kv::{KvDtype, KvHeader};
use clap::{Args, Subcommand};

use super::chunk_files::{
    self, ContextSummary, LayerSource, WINDOW, codec_kind, fits_one_message, split_file,
    write_chunked, write_single,
};

/// Arguments of `avp kv`.
#[derive(Args)]
pub(crate) struct KvArgs {
    #[command(subcommand)]
    what: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Write a deterministic synthetic KV context (one message, or chunks).
    Synth(SynthArgs),
    /// Split one KV_CACHE message file into a chunked context file.
    Split(SplitArgs),
    /// Join a chunked context file into one KV_CACHE message file.
    Join(JoinArgs),
    /// Check a chunked context file (every chunk, completeness, digest) and summarize it.
    Verify(VerifyArgs),
}

/// Arguments of `avp kv verify`.
#[derive(Args)]
struct VerifyArgs {
    /// A chunked context file.
    input: PathBuf,
}

/// Arguments of `avp kv synth`.
#[derive(Args)]
struct SynthArgs {
    /// Layers.
    #[arg(long)]
    layers: u32,
    /// KV heads per layer.
    #[arg(long)]
    heads: u32,
    /// Per-head dimension.
    #[arg(long)]
    head_dim: u32,
    /// Positions (tokens).
    #[arg(long)]
    tokens: u32,
    /// Element type: float16, bfloat16 or float32.
    #[arg(long, default_value = "float16")]
    dtype: String,
    /// Write chunks of at most this many MiB of KV payload each. Without
    /// it the context is one message, refused when over 4 GiB.
    #[arg(long)]
    chunk_mib: Option<u64>,
    /// Seed of the values (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The metadata's model_id.
    #[arg(long, default_value = "synthetic")]
    model_id: String,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
}

/// Arguments of `avp kv split`.
#[derive(Args)]
struct SplitArgs {
    /// A file holding one uncompressed KV_CACHE message.
    input: PathBuf,
    /// Most MiB of KV payload per chunk.
    #[arg(long)]
    chunk_mib: u64,
    /// Output file (chunks back to back).
    #[arg(short, long)]
    output: PathBuf,
}

/// Arguments of `avp kv join`.
#[derive(Args)]
struct JoinArgs {
    /// A chunked context file.
    input: PathBuf,
    /// Output file (one KV_CACHE message).
    #[arg(short, long)]
    output: PathBuf,
}

/// Deterministic values: layer `l`'s bytes are a function of the seed,
/// `l` and the position alone, so any layer range can be produced again.
struct SynthSource {
    seed: u64,
    dtype: KvDtype,
    layer_bytes: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SynthSource {
    /// Eight bytes of finite values (magnitudes in [1/16, 2)) for word `i` of `layer`.
    fn word(&self, layer: u32, i: u64) -> [u8; 8] {
        let r = splitmix(self.seed ^ splitmix(u64::from(layer)).wrapping_add(i));
        let mut out = [0u8; 8];
        match self.dtype {
            KvDtype::Float32 => {
                for (k, dst) in out.chunks_exact_mut(4).enumerate() {
                    let bits = (r >> (32 * k)) as u32;
                    let exp = 123 + (bits >> 23) % 5;
                    let v = (bits & 0x8000_0000) | (exp << 23) | (bits & 0x007f_ffff);
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
            KvDtype::Bfloat16 => {
                for (k, dst) in out.chunks_exact_mut(2).enumerate() {
                    let bits = (r >> (16 * k)) as u16;
                    let exp = 123 + (bits >> 7) % 5;
                    let v = (bits & 0x8000) | (exp << 7) | (bits & 0x7f);
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                for (k, dst) in out.chunks_exact_mut(2).enumerate() {
                    let bits = (r >> (16 * k)) as u16;
                    let exp = 11 + (bits >> 10) % 5;
                    let v = (bits & 0x8000) | (exp << 10) | (bits & 0x3ff);
                    dst.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        out
    }
}

impl LayerSource for SynthSource {
    fn layers(
        &mut self,
        layers: Range<u32>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        // WINDOW is a multiple of 8, so word numbers do not depend on it.
        let mut window = vec![0u8; WINDOW];
        for layer in layers {
            let mut word = 0u64;
            let mut left = self.layer_bytes;
            while left > 0 {
                let n = usize::try_from(left.min(WINDOW as u64))?;
                let part = window.get_mut(..n).unwrap_or_default();
                for dst in part.chunks_mut(8) {
                    let bytes = self.word(layer, word);
                    dst.copy_from_slice(bytes.get(..dst.len()).unwrap_or_default());
                    word += 1;
                }
                sink(part)?;
                left -= n as u64;
            }
        }
        Ok(())
    }
}

fn parse_dtype(name: &str) -> Result<KvDtype> {
    [KvDtype::Float16, KvDtype::Bfloat16, KvDtype::Float32]
        .into_iter()
        .find(|d| d.name() == name)
        .ok_or_else(|| anyhow!("unknown dtype {name:?} (float16, bfloat16 or float32)"))
}

fn synth(args: &SynthArgs) -> Result<ContextSummary> {
    let header = KvHeader {
        num_layers: args.layers,
        num_kv_heads: args.heads,
        head_dim: args.head_dim,
        seq_len: args.tokens,
        dtype: parse_dtype(&args.dtype)?,
    };
    let layer_bytes = header
        .tensor_bytes()
        .and_then(|t| t.checked_mul(2))
        .ok_or_else(|| anyhow!("KV dimensions overflow 64 bits"))?;
    let base = Metadata::new()
        .with_model_id(args.model_id.as_str())
        .with_num_layers(args.layers);
    let mut source = SynthSource {
        seed: args.seed,
        dtype: header.dtype,
        layer_bytes,
    };
    match args.chunk_mib {
        Some(mib) => {
            // A context id new for each (seed, shape): AVP-CHK-6.
            let mut h = blake3::Hasher::new();
            h.update(b"avp kv synth\n");
            h.update(&args.seed.to_le_bytes());
            h.update(&header.to_bytes());
            let mut context_id = [0u8; 16];
            context_id.copy_from_slice(&h.finalize().as_bytes()[..16]);
            write_chunked(
                &args.output,
                &header,
                mib.saturating_mul(1 << 20),
                &base,
                context_id,
                &mut source,
            )
        }
        None if !fits_one_message(&header, &base) => Err(anyhow!(
            "the context is {} bytes, over the 4 GiB of one message (AVP-WIRE-5); \
             pass --chunk-mib N to write it as chunks (spec/protocol/chunked.md)",
            header.total_bytes().unwrap_or(u64::MAX)
        )),
        None => write_single(&args.output, &header, &base, &mut source),
    }
}

fn context_id_of(path: &std::path::Path) -> [u8; 16] {
    // Split outputs get an id from the input's name and the clock: new per
    // run, as AVP-CHK-6 asks, without a random-number dependency.
    let mut h = blake3::Hasher::new();
    h.update(path.as_os_str().as_encoded_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.update(&now.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn verify(args: &VerifyArgs) -> Result<serde_json::Value> {
    if !chunk_files::is_chunked_file(&args.input)? {
        return Err(anyhow!(
            "{}: not a chunked context (its first message has no avp.chunk descriptor)",
            args.input.display()
        ));
    }
    let file = chunk_files::read_chunked_file(
        &args.input,
        &avp_codec::chunk::AssemblyLimits::DEFAULT,
        &avp_codec::DecodeOptions::strict(),
    )?;
    Ok(serde_json::json!({
        "input": args.input.display().to_string(),
        "chunks": file.count(),
        "messages": file.messages,
        "layers": file.header.num_layers,
        "context_bytes": file.context_bytes(),
        "context_id": hex(&file.context_id),
        "context_digest": hex(&file.context_digest),
    }))
}

fn report(output: &std::path::Path, s: &ContextSummary) -> ExitCode {
    let digest = hex(&s.context_digest);
    let line = serde_json::json!({
        "output": output.display().to_string(),
        "messages": s.messages,
        "layers": s.header.num_layers,
        "context_bytes": s.context_bytes,
        "context_digest": digest,
    });
    crate::out::finish_report(line, output)
}

/// Exit 1 with the codec's kind (or `invalid_argument`) for bad input,
/// 2 with `io` for a file that cannot be read or written (AVP-CLI-2/3).
fn failure(e: &anyhow::Error) -> ExitCode {
    let io = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some());
    let kind = codec_kind(e).unwrap_or(if io { "io" } else { "invalid_argument" });
    let message = format!("{e:#}").replace('\n', " ");
    let line = serde_json::json!({"error": {"kind": kind, "message": message}});
    let _ = crate::out::line(line);
    eprintln!("avp: error: {message}");
    ExitCode::from(if kind == "io" { 2 } else { 1 })
}

/// Runs `avp kv ...`.
pub(crate) fn run(args: KvArgs) -> ExitCode {
    if let KvCommand::Verify(a) = &args.what {
        return match verify(a) {
            Ok(line) => crate::out::line(line).map_or_else(|code| code, |()| ExitCode::SUCCESS),
            Err(e) => failure(&e),
        };
    }
    let (output, result) = match &args.what {
        KvCommand::Synth(a) => (&a.output, synth(a)),
        KvCommand::Split(a) => (
            &a.output,
            split_file(&a.input, &a.output, a.chunk_mib, context_id_of(&a.input)),
        ),
        KvCommand::Join(a) => (&a.output, chunk_files::join_file(&a.input, &a.output)),
        KvCommand::Verify(_) => return ExitCode::from(2),
    };
    match result {
        Ok(summary) => report(output, &summary),
        // `-o -` into a pipe closed early: quiet, as AVP-CLI-7 says.
        Err(e) if crate::out::names_stdout(output) && crate::out::is_broken_pipe(&e) => {
            ExitCode::from(crate::out::EXIT_BROKEN_PIPE)
        }
        Err(e) => failure(&e),
    }
}

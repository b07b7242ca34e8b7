//! `avp think`: latent thinking on a model; writes the KV_CACHE message the
//! SDK's `AVPContext.to_bytes()` writes (spec/impl/engine.md), addressed with
//! `--session/--source-agent/--target-agent` when given, and reports on stderr what it
//! did (AVP-CLI-9). With `--to URL` it also hands the thought to that agent
//! (handoff.rs, AVP-PIPE-3): the handshake's session and agent ids address
//! what is sent, whatever `--session/--source-agent/--target-agent` say.
//! `--kv-quant int8|int4|int8-channel` writes the context quantized, as a KV_CACHE_EXT
//! message (spec/protocol/kv-quant.md), quantized on the model's device
//! (AVP-ENG-28); only a peer that announced the scheme can read it, so it
//! is for files, not for `--to`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use avp_codec::kv_quant::KvScheme;
use avp_engine::kv_quant::params_for;
use clap::{Args, ValueEnum};

use super::address::AddressArgs;
use super::engine_common::{
    DeviceArgs, Progress, PromptArgs, destination, fail, import_context_file, is_chunked_file,
    load, read_context_file, report, write_chunked, write_out,
};
use super::handoff::{HandoffArgs, Sender, hand_off};

/// Arguments of `avp think`.
#[derive(Args, Debug)]
pub(crate) struct ThinkArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Latent steps.
    #[arg(long)]
    steps: usize,
    /// Continue from this context: a KV_CACHE message of the same model (a
    /// LatentMAS chain), a chunked context (--chunk-mib), or a HIDDEN_STATE
    /// message projected for it.
    #[arg(long)]
    context: Option<PathBuf>,
    /// Output file for the KV_CACHE message (`-` for stdout); optional with --to.
    #[arg(long, short = 'o', required_unless_present = "to")]
    out: Option<PathBuf>,
    /// Write the context quantized, as a KV_CACHE_EXT message that only AVP-KVQ receivers read: int8, int4 (head_dim a multiple of 32), or int8-channel (keys grouped per channel).
    #[arg(long, value_name = "SCHEME", conflicts_with = "to")]
    kv_quant: Option<KvQuant>,
    /// Write --out as a chunked context (spec/protocol/chunked.md): KV_CACHE
    /// messages of whole layers, each KV payload at most N MiB, back to back.
    #[arg(long, value_name = "N", requires = "out", conflicts_with_all = ["to", "kv_quant"],
          value_parser = clap::value_parser!(u64).range(1..))]
    chunk_mib: Option<u64>,
    /// Identity hash to write and accept instead of the config.json hash (e.g. the SDK peer's).
    #[arg(long)]
    model_hash: Option<String>,
    #[command(flatten)]
    address: AddressArgs,
    #[command(flatten)]
    handoff: HandoffArgs,
    #[command(flatten)]
    load: DeviceArgs,
}

/// The schemes of `--kv-quant` (AVP-KVQ-5, AVP-KVQ-6).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum KvQuant {
    // Symmetric 8-bit, per token and head (no doc comment: it would make
    // clap print every flag's help in long form).
    Int8,
    // Asymmetric 4-bit, KIVI-style.
    Int4,
    // Symmetric 8-bit, keys per channel (KIVI grouping, AVP-KVQ-30).
    Int8Channel,
}

impl KvQuant {
    fn scheme(self) -> KvScheme {
        match self {
            KvQuant::Int8 => KvScheme::Int8,
            KvQuant::Int4 => KvScheme::Int4,
            KvQuant::Int8Channel => KvScheme::Int8Channel,
        }
    }
}

pub(crate) fn run(args: ThinkArgs) -> ExitCode {
    match think(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn think(args: &ThinkArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let prompt = args.prompt.text()?;
    let progress = Progress::new();
    let engine = load(&args.model, &args.load, args.model_hash.clone(), &progress)?;
    let loaded = started.elapsed();
    let sender = match &args.handoff.to {
        Some(_) => Some(Sender::new(&args.handoff, &args.model, &engine)?),
        None => None,
    };
    // The previous context's message is kept: `--to` may send only what follows it.
    let mut previous = None;
    let context = match &args.context {
        // A chunked file is imported while it is read; only a single message
        // can be the base of a delta (AVP-HTTP-104), so only its bytes are kept.
        Some(p) if is_chunked_file(p)? => Some(import_context_file(
            &engine,
            p,
            args.steps.saturating_add(512),
        )?),
        Some(p) => {
            let bytes = read_context_file(p)?;
            let imported = engine.import_message(&bytes, args.steps.saturating_add(512))?;
            previous = Some(bytes);
            Some(imported)
        }
        None => None,
    };
    let prior = context.as_ref().map_or(0, |c| c.seq_len());
    let prompt_tokens = engine.prompt_format().prompt_ids(&prompt)?.len();
    let ctx = engine.think_with_progress(&prompt, args.steps, context, &mut |d, t| {
        progress.step(d, t)
    })?;
    if ctx.nan_seen {
        report(format_args!(
            "warning: NaN in the hidden state; stopped after {} of {} steps",
            ctx.steps_taken, args.steps
        ));
    }
    if ctx.inf_seen {
        report(format_args!(
            "warning: Inf in the hidden state; generation from this context will likely be garbage"
        ));
    }
    let (written, chunks) = match (&args.out, args.chunk_mib) {
        (Some(out), Some(mib)) => {
            let summary = write_chunked(out, &ctx, mib, &|meta| args.address.apply(meta))?;
            (summary.bytes, format!(" in {} chunks", summary.count))
        }
        (out, _) => {
            let message = match args.kv_quant {
                None => ctx.to_bytes()?,
                Some(q) => {
                    let params = params_for(q.scheme(), ctx.cache.head_dim(), ctx.seq_len())?;
                    ctx.to_bytes_quantized(&params)?
                }
            };
            let bytes = args.address.readdress(message)?;
            if let Some(out) = out {
                write_out(out, &bytes)?;
            }
            (bytes.len() as u64, String::new())
        }
    };
    report(format_args!(
        "think: {} prompt tokens{}, {} of {} latent steps; KV cache of {} positions, {} bytes{}{}{} in {:.2} s (model load {:.2} s)",
        prompt_tokens,
        if prior > 0 {
            format!(" after a context of {prior} positions")
        } else {
            String::new()
        },
        ctx.steps_taken,
        args.steps,
        ctx.seq_len(),
        written,
        chunks,
        args.kv_quant
            .map_or_else(String::new, |q| format!(" ({})", q.scheme().name())),
        args.out.as_ref().map_or_else(String::new, |out| format!(
            " written to {}",
            destination(out)
        )),
        started.elapsed().as_secs_f64(),
        loaded.as_secs_f64()
    ));
    if let Some(sender) = &sender {
        let previous = previous.as_deref();
        hand_off(
            sender,
            &args.handoff,
            &engine,
            &args.load,
            &prompt,
            &ctx,
            previous,
        )?;
    }
    Ok(())
}

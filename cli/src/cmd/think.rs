//! `avp think`: latent thinking on a model; writes the KV_CACHE message the
//! SDK's `AVPContext.to_bytes()` writes (spec/engine.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::engine_common::{DeviceArgs, Progress, fail, load, write_out};

/// Arguments of `avp think`.
#[derive(Args, Debug)]
pub(crate) struct ThinkArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// Latent steps.
    #[arg(long)]
    steps: usize,
    /// Continue from this KV_CACHE message (made by the same model).
    #[arg(long)]
    context: Option<PathBuf>,
    /// Output file for the KV_CACHE message (`-` for stdout).
    #[arg(long)]
    out: PathBuf,
    /// Identity hash to write and accept instead of the config.json hash (e.g. the SDK peer's).
    #[arg(long)]
    model_hash: Option<String>,
    #[command(flatten)]
    load: DeviceArgs,
}

pub(crate) fn run(args: ThinkArgs) -> ExitCode {
    match think(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn think(args: &ThinkArgs) -> Result<()> {
    let progress = Progress::new();
    let engine = load(&args.model, &args.load, args.model_hash.clone(), &progress)?;
    let context = match &args.context {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(engine.import_context(&bytes, args.steps.saturating_add(512))?)
        }
        None => None,
    };
    let ctx = engine.think_with_progress(&args.prompt, args.steps, context, &mut |d, t| {
        progress.step(d, t)
    })?;
    if ctx.nan_seen {
        eprintln!(
            "warning: NaN in the hidden state; stopped after {} of {} steps",
            ctx.steps_taken, args.steps
        );
    }
    if ctx.inf_seen {
        eprintln!(
            "warning: Inf in the hidden state; generation from this context will likely be garbage"
        );
    }
    write_out(&args.out, &ctx.to_bytes()?)?;
    progress.say(&format!(
        "wrote {} positions, {} steps",
        ctx.seq_len(),
        ctx.num_steps
    ));
    Ok(())
}

//! `avp generate`: text generation, optionally continuing a KV_CACHE context;
//! prints the text on stdout (spec/engine.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avp_engine::{GenerateOptions, Sampling};
use clap::Args;

use super::engine_common::{DeviceArgs, Progress, fail, load};

/// Arguments of `avp generate`.
#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// KV_CACHE message to continue from (made by this model).
    #[arg(long)]
    context: Option<PathBuf>,
    /// Upper bound on generated tokens.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Greedy decoding (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "seed"])]
    greedy: bool,
    /// Sampling temperature (> 0); enables sampling.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus mass in (0, 1].
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// Keep only the k most likely tokens (0 = off; default from generation_config.json, else 50).
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// Seed for sampling (as torch.manual_seed).
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
    /// Identity hash to accept instead of the config.json hash (e.g. the SDK peer's).
    #[arg(long)]
    model_hash: Option<String>,
    #[command(flatten)]
    load: DeviceArgs,
}

pub(crate) fn run(args: GenerateArgs) -> ExitCode {
    match generate(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let progress = Progress::new();
    let engine = load(&args.model, &args.load, args.model_hash.clone(), &progress)?;
    let context = match &args.context {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(engine.import_context(&bytes, args.max_new_tokens.saturating_add(512))?)
        }
        None => None,
    };
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(t) => {
            if !(t > 0.0 && t.is_finite()) {
                bail!("--temperature must be a positive number");
            }
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
            Sampling::Sample {
                temperature: t,
                top_p: args.top_p.unwrap_or(1.0),
                top_k: args.top_k.unwrap_or(engine.default_top_k()),
                seed,
            }
        }
    };
    progress.say("generating");
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_tokens: None,
    };
    let out = engine.generate(&args.prompt, context.as_ref(), &opts)?;
    println!("{}", out.text);
    Ok(())
}

//! `avp generate`: text generation, optionally continuing a received context
//! (a KV_CACHE message of this model, or a HIDDEN_STATE message projected for
//! it, AVP-PIPE-1);
//! prints the text on stdout (spec/impl/engine.md) and on stderr what it did
//! (AVP-CLI-9). A `--max-new-tokens` beyond the model's context length is
//! cut to what fits, with a warning, so the text produced is never lost to
//! a "cache full" error at the last position.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use avp_engine::{GenerateOptions, Sampling};
use clap::Args;

use super::engine_common::{
    DeviceArgs, Progress, PromptArgs, fail, import_context_file, load, report,
};

/// Arguments of `avp generate`.
#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Context to continue from: a KV_CACHE message made by this model, a
    /// chunked context (`avp think --chunk-mib`), or a HIDDEN_STATE message
    /// projected for it (`avp project`).
    #[arg(long)]
    context: Option<PathBuf>,
    /// Upper bound on generated tokens (cut, with a warning, to what the model's context length leaves).
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
    let started = std::time::Instant::now();
    let prompt = args.prompt.text()?;
    let progress = Progress::new();
    let engine = load(&args.model, &args.load, args.model_hash.clone(), &progress)?;
    let loaded = started.elapsed();
    let capacity = engine.config().decoder.max_position_embeddings;
    let context = match &args.context {
        Some(p) => {
            let headroom = args.max_new_tokens.min(capacity).saturating_add(512);
            Some(import_context_file(&engine, p, headroom)?)
        }
        None => None,
    };
    let imported = started.elapsed().saturating_sub(loaded);
    let prior = context.as_ref().map_or(0, |c| c.seq_len());
    let prompt_tokens = engine.prompt_format().prompt_ids(&prompt)?.len();
    let room = capacity.saturating_sub(prior.saturating_add(prompt_tokens));
    let max_new_tokens = if args.max_new_tokens > room {
        report(format_args!(
            "warning: the model's context is {capacity} positions and {} are taken ({prior} context, {prompt_tokens} prompt): generating at most {room} tokens, not {}",
            prior.saturating_add(prompt_tokens),
            args.max_new_tokens
        ));
        room
    } else {
        args.max_new_tokens
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
        max_new_tokens,
        sampling,
        stop_tokens: None,
    };
    let out = engine.generate(&prompt, context.as_ref(), &opts)?;
    let why = if out.stopped {
        "stopped at an end-of-sequence token".to_owned()
    } else if max_new_tokens < args.max_new_tokens {
        format!("reached the model's context length ({capacity} positions)")
    } else {
        format!("reached --max-new-tokens {max_new_tokens}")
    };
    report(format_args!(
        "generate: {} prompt tokens{}, {} tokens generated ({why}) in {:.2} s (model load {:.2} s, context import {:.3} s)",
        prompt_tokens,
        if prior > 0 {
            format!(" after a context of {prior} positions")
        } else {
            String::new()
        },
        out.token_ids.len(),
        started.elapsed().as_secs_f64(),
        loaded.as_secs_f64(),
        imported.as_secs_f64()
    ));
    // Through `fail`, a closed stdout is status 141 like every other command's.
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", out.text)
        .and_then(|()| stdout.flush())
        .context("writing the text to stdout")?;
    Ok(())
}

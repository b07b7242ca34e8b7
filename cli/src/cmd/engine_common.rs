//! Options and helpers shared by `avp think`, `avp generate` and `avp project`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use avp_engine::{Engine, LoadOptions, WeightSource, parse_device, parse_kind};
use clap::Args;

/// How to load a model.
#[derive(Args, Debug, Clone)]
pub(crate) struct DeviceArgs {
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Element type: float32, float16 or bfloat16 (default: float32 on CPU, bfloat16 on CUDA).
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// Build the model from config.json with random weights (seeded) instead of the checkpoint.
    #[arg(long)]
    pub(crate) random_weights: bool,
    /// Seed for --random-weights.
    #[arg(long, default_value_t = 0)]
    pub(crate) weights_seed: i64,
}

/// Prints progress lines on stderr, only when stderr is a terminal.
pub(crate) struct Progress {
    on: bool,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn say(&self, msg: &str) {
        if self.on {
            eprintln!("{msg}");
        }
    }

    pub(crate) fn step(&self, done: usize, total: usize) {
        if self.on {
            eprint!("\rlatent step {done}/{total}");
            if done == total {
                eprintln!();
            }
        }
    }
}

pub(crate) fn load(
    dir: &Path,
    args: &DeviceArgs,
    model_hash: Option<String>,
    progress: &Progress,
) -> Result<Engine> {
    progress.say(&format!("loading {}", dir.display()));
    if args.random_weights {
        // AVP-ENG-19: the context still carries the config hash, so say so.
        eprintln!(
            "warning: --random-weights: {} gets random weights; outputs are for measurements only",
            dir.display()
        );
    }
    let opts = LoadOptions {
        device: parse_device(&args.device)?,
        kind: args.dtype.as_deref().map(parse_kind).transpose()?,
        weights: if args.random_weights {
            WeightSource::Random {
                seed: args.weights_seed,
            }
        } else {
            WeightSource::Checkpoint
        },
        model_hash,
        ..LoadOptions::default()
    };
    Engine::load(dir, &opts).with_context(|| format!("loading model {}", dir.display()))
}

/// Writes `bytes` to `path` atomically (temporary file, then rename); `-` is stdout.
pub(crate) fn write_out(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        std::io::stdout().lock().write_all(bytes)?;
        return Ok(());
    }
    let tmp = path.with_extension("avp-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Reports an error the anyhow way and returns exit status 1.
pub(crate) fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

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

/// The user message: `--prompt TEXT`, or `--prompt-file F` (`-` = stdin)
/// for prompts the command line cannot carry (its limit is ~128 KiB per argument).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub(crate) struct PromptArgs {
    /// The user message.
    #[arg(long)]
    prompt: Option<String>,
    /// Read the user message from this file (`-` for stdin), as UTF-8.
    #[arg(long, value_name = "F")]
    prompt_file: Option<PathBuf>,
}

impl PromptArgs {
    /// The message text.
    pub(crate) fn text(&self) -> Result<String> {
        use std::io::Read;
        match (&self.prompt, &self.prompt_file) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(f)) if f.as_os_str() == "-" => {
                let mut s = String::new();
                std::io::stdin()
                    .lock()
                    .read_to_string(&mut s)
                    .context("reading the prompt from stdin")?;
                Ok(s)
            }
            (None, Some(f)) => {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))
            }
            (None, None) => anyhow::bail!("give --prompt or --prompt-file"),
        }
    }
}

/// One line on stderr saying what a command did (always, unlike
/// [`Progress`]): scripts and logs see it, stdout stays the data.
pub(crate) fn report(line: std::fmt::Arguments<'_>) {
    crate::out::note(line);
}

/// Where a written message went, for the report.
pub(crate) fn destination(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "stdout".to_owned()
    } else {
        path.display().to_string()
    }
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
            crate::out::note(msg);
        }
    }

    pub(crate) fn step(&self, done: usize, total: usize) {
        if self.on {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rlatent step {done}/{total}");
            if done == total {
                let _ = writeln!(err);
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
        crate::out::note(format_args!(
            "warning: --random-weights: {} gets random weights; outputs are for measurements only",
            dir.display()
        ));
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
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .context("writing the message to stdout");
    }
    let tmp = path.with_extension("avp-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Reads the AVP message in `path` for `--context`: its 12-byte header first,
/// then the length that header declares (and one byte more, so the codec still
/// sees and reports trailing bytes). A file that is no AVP message, `/dev/zero`
/// say, is refused after 12 bytes instead of being read without end.
pub(crate) fn read_context_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let shown = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).with_context(shown)?;
    let mut bytes = Vec::with_capacity(avp_codec::HEADER_LEN);
    (&mut file)
        .take(avp_codec::HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .with_context(shown)?;
    let declared = match avp_codec::parse_header(&bytes, &avp_codec::Limits::default()) {
        Err(e) => return Err(anyhow::Error::new(e).context(shown())),
        // A file shorter than a header: the codec reports it as truncated.
        Ok(avp_codec::Status::NeedMore(_)) => return Ok(bytes),
        Ok(avp_codec::Status::Complete(header)) => header.message_len(),
    };
    let rest = declared
        .saturating_sub(avp_codec::HEADER_LEN as u64)
        .saturating_add(1);
    file.take(rest)
        .read_to_end(&mut bytes)
        .with_context(shown)?;
    Ok(bytes)
}

/// Reports an error the anyhow way and returns exit status 1.
pub(crate) fn fail(e: &anyhow::Error) -> ExitCode {
    // A closed stdout (`avp think --out - | head -c1`) is the reader's choice, not an error.
    if e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::from(crate::out::EXIT_BROKEN_PIPE);
    }
    crate::out::note(format_args!("error: {e:#}"));
    ExitCode::FAILURE
}

/// Whether `path` holds a chunked context (spec/protocol/chunked.md): its
/// first message carries an `avp.chunk` descriptor. Reads that message's
/// header and metadata only; anything else (a plain message, a stray file)
/// is `false` and left to [`read_context_file`]'s checks.
pub(crate) fn is_chunked_file(path: &Path) -> Result<bool> {
    use std::io::Read;
    let shown = || format!("reading {}", path.display());
    let mut file = std::fs::File::open(path).with_context(shown)?;
    let mut prefix = Vec::with_capacity(avp_codec::HEADER_LEN);
    (&mut file)
        .take(avp_codec::HEADER_LEN as u64)
        .read_to_end(&mut prefix)
        .with_context(shown)?;
    let limits = avp_codec::Limits::default();
    let Ok(avp_codec::Status::Complete(header)) = avp_codec::parse_header(&prefix, &limits) else {
        return Ok(false);
    };
    let rest = header.metadata_end().saturating_sub(avp_codec::HEADER_LEN) as u64;
    file.take(rest)
        .read_to_end(&mut prefix)
        .with_context(shown)?;
    let Ok(peeked) = avp_codec::peek(&prefix) else {
        return Ok(false);
    };
    // A malformed descriptor is reported, not imported as a plain message.
    let descriptor = avp_codec::chunk::descriptor_of(&peeked.metadata)
        .with_context(|| format!("the first message of {}", path.display()))?;
    Ok(descriptor.is_some())
}

/// The context in `path` for `--context`, on `engine`'s device with
/// `headroom` positions after it: a chunked file is imported while it is
/// read, each chunk uploaded as the next is read (AVP-ENG-42); anything
/// else is read by [`read_context_file`] and imported as one message.
pub(crate) fn import_context_file(
    engine: &Engine,
    path: &Path,
    headroom: usize,
) -> Result<avp_engine::LatentContext> {
    if !is_chunked_file(path)? {
        let bytes = read_context_file(path)?;
        return Ok(engine.import_message(&bytes, headroom)?);
    }
    let shown = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).with_context(shown)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut last = avp_engine::ChunkProgress::default();
    let ctx = engine
        .import_chunk_stream(&mut reader, headroom, &mut |p| last = p)
        .with_context(|| format!("importing the chunked context {}", path.display()))?;
    report(format_args!(
        "context: {} chunks of a {}-layer context from {}",
        last.count,
        last.num_layers,
        path.display()
    ));
    Ok(ctx)
}

/// Writes `ctx` to `path` as chunk messages back to back, each chunk's KV
/// payload at most `chunk_mib` MiB (AVP-ENG-40); atomically like
/// [`write_out`], `-` is stdout. Returns the summary for the report.
pub(crate) fn write_chunked(
    path: &Path,
    ctx: &avp_engine::LatentContext,
    chunk_mib: u64,
    address: &dyn Fn(&mut avp_codec::Metadata<'_>),
) -> Result<avp_engine::ChunkSummary> {
    use std::io::Write;
    let opts = avp_engine::ChunkOptions::new(chunk_mib.saturating_mul(1 << 20));
    let write = |out: &mut dyn Write| -> Result<avp_engine::ChunkSummary> {
        let mut failed: Option<std::io::Error> = None;
        let summary = avp_engine::chunked::write_chunks(ctx, &opts, address, &mut |parts| {
            for part in parts {
                if let Err(e) = out.write_all(part) {
                    let what = e.to_string();
                    failed = Some(e);
                    return Err(avp_engine::EngineError::InvalidArgument(what));
                }
            }
            Ok(())
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        let summary = summary?;
        out.flush()?;
        Ok(summary)
    };
    if path.as_os_str() == "-" {
        return write(&mut std::io::stdout().lock()).context("writing the chunks to stdout");
    }
    let tmp = path.with_extension("avp-tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let summary = match write(&mut out) {
        Ok(s) => s,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("writing {}", tmp.display())));
        }
    };
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(summary)
}

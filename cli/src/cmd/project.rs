//! `avp project`: think on a source model and project its last hidden state
//! into a target model's embedding space through the vocabulary; writes a
//! HIDDEN_STATE message with the float32 vector `[D_target]` (AVP-ENG-17),
//! addressed with `--session/--source-agent/--target-agent` when given, and reports on
//! stderr what it did (AVP-CLI-9).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use avp_engine::{Engine, ProjectionMap, calibrate};
use clap::Args;

use super::address::AddressArgs;
use super::engine_common::{
    DeviceArgs, Progress, PromptArgs, destination, fail, load, report, write_out,
};

/// Arguments of `avp project`.
#[derive(Args, Debug)]
pub(crate) struct ProjectArgs {
    /// Source model directory (the one that thinks).
    #[arg(long)]
    source: PathBuf,
    /// Target model directory (whose embedding space receives the vector).
    #[arg(long)]
    target: PathBuf,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Latent steps on the source.
    #[arg(long)]
    steps: usize,
    /// Output file for the HIDDEN_STATE message (`-` for stdout).
    #[arg(long)]
    out: PathBuf,
    /// Directory of map files (`{src16}_{tgt16}.avpmap.safetensors`, the first 16 hex digits
    /// of each model hash): read if present and fitting, calibrated and written otherwise.
    #[arg(long)]
    maps: Option<PathBuf>,
    #[command(flatten)]
    address: AddressArgs,
    #[command(flatten)]
    load: DeviceArgs,
}

pub(crate) fn run(args: ProjectArgs) -> ExitCode {
    match run_project(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn run_project(args: &ProjectArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let prompt = args.prompt.text()?;
    let progress = Progress::new();
    let source = load(&args.source, &args.load, None, &progress)?;
    let target = load(&args.target, &args.load, None, &progress)?;
    let (map, map_note) = projection_map(&source, &target, args.maps.as_deref())?;
    progress.say(&format!("projection: {}", map.method.name()));
    let ctx =
        source.think_with_progress(&prompt, args.steps, None, &mut |d, t| progress.step(d, t))?;
    let message = avp_engine::handoff::projected_message(&source, &target, &map, &ctx)?;
    let d = target.config().decoder.hidden_size;
    let message = args.address.readdress(message)?;
    write_out(&args.out, &message)?;
    report(format_args!(
        "project: {} of {} latent steps on {}, projected ({}; {map_note}) to [{d}] float32 of {}; {} bytes written to {} in {:.2} s",
        ctx.steps_taken,
        args.steps,
        args.source.display(),
        map.method.name(),
        args.target.display(),
        message.len(),
        destination(&args.out),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The projection map for a model pair: read from `maps` when a fitting file
/// is there, else calibrated (and written there when `maps` is given); with
/// a note for the report.
pub(crate) fn projection_map(
    source: &Engine,
    target: &Engine,
    maps: Option<&Path>,
) -> Result<(ProjectionMap, String)> {
    Ok(match maps {
        Some(dir) => {
            let path = avp_engine::project::map_path(dir, source.model_hash(), target.model_hash());
            // A map file is used only if it fits these two models (AVP-ENG-15).
            match ProjectionMap::load(&path) {
                Ok(map) if map.fits(source, target) => {
                    (map, format!("map read from {}", path.display()))
                }
                _ => {
                    let map = calibrate(source, target)?;
                    map.save(&path, source, target)?;
                    (
                        map,
                        format!("map calibrated, written to {}", path.display()),
                    )
                }
            }
        }
        None => (calibrate(source, target)?, "map calibrated".to_owned()),
    })
}

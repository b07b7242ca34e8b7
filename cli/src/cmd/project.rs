//! `avp project`: think on a source model and project its last hidden state
//! into a target model's embedding space through the vocabulary; writes a
//! HIDDEN_STATE message with the float32 vector `[D_target]` (AVP-ENG-17),
//! addressed with `--session/--source-agent/--target-agent` when given, and reports on
//! stderr what it did (AVP-CLI-9).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use avp_engine::wire::{KvDtype, PayloadKind, WireMeta, encode_message};
use avp_engine::{Device, Kind, ProjectionMap, calibrate, project};
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
    let (map, map_note) = match &args.maps {
        Some(dir) => {
            let path = avp_engine::project::map_path(dir, source.model_hash(), target.model_hash());
            // A map file is used only if it fits these two models (AVP-ENG-15).
            match ProjectionMap::load(&path) {
                Ok(map) if map.fits(&source, &target) => {
                    (map, format!("map read from {}", path.display()))
                }
                _ => {
                    let map = calibrate(&source, &target)?;
                    map.save(&path, &source, &target)?;
                    (
                        map,
                        format!("map calibrated, written to {}", path.display()),
                    )
                }
            }
        }
        None => (calibrate(&source, &target)?, "map calibrated".to_owned()),
    };
    progress.say(&format!("projection: {}", map.method.name()));
    let ctx =
        source.think_with_progress(&prompt, args.steps, None, &mut |d, t| progress.step(d, t))?;
    let hidden = ctx
        .last_hidden
        .as_ref()
        .context("think produced no hidden state")?;
    let v = project(&source, &target, &map, hidden)?
        .f_reshape([-1])?
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?;
    let d = v.numel();
    let mut bytes = vec![0u8; d * 4];
    v.f_copy_data_u8(&mut bytes, d)?;
    let extra: BTreeMap<String, String> = [
        ("model_hash", target.model_hash().to_owned()),
        ("model_family", target.model_family().to_owned()),
        ("num_steps", ctx.num_steps.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let map_id = avp_engine::project::map_file_name(source.model_hash(), target.model_hash());
    let meta = WireMeta {
        hidden_dim: u32::try_from(d)?,
        num_layers: u32::try_from(target.config().decoder.num_layers)?,
        payload: PayloadKind::HiddenState,
        dtype: KvDtype::Float32,
        tensor_shape: [u32::try_from(d)?].into(),
        avp_map_id: map_id.split('.').next().unwrap_or_default().to_owned(),
        extra,
    };
    let message = args.address.readdress(encode_message(&meta, &bytes)?)?;
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

//! `avp`: the command-line front end of the AVP workspace.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only
//! dispatches. Output formats are contracts other tools rely on (spec/cli.md).
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Agent Vector Protocol tools.
#[derive(Parser)]
#[command(name = "avp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the workspace version and enabled features.
    Version,
    /// Think in latent space on a model and write the KV_CACHE message.
    #[cfg(feature = "engine")]
    Think(cmd::think::ThinkArgs),
    /// Generate text, optionally continuing a KV_CACHE context.
    #[cfg(feature = "engine")]
    Generate(cmd::generate::GenerateArgs),
    /// Project a source model's thought into a target model's embedding space.
    #[cfg(feature = "engine")]
    Project(cmd::project::ProjectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version::run(),
        #[cfg(feature = "engine")]
        Command::Think(args) => cmd::think::run(args),
        #[cfg(feature = "engine")]
        Command::Generate(args) => cmd::generate::run(args),
        #[cfg(feature = "engine")]
        Command::Project(args) => cmd::project::run(args),
    }
}

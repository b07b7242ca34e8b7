//! `avp-engine`: the engine commands `think`, `generate` and `project`, the
//! only ones that need libtorch. `avp` execs this binary, installed beside
//! it, for those commands (cmd/engine_exec.rs says why), so it presents
//! itself as `avp` in usage and help.
#![forbid(unsafe_code)]

#[allow(dead_code)] // shared with `avp`, which uses all of it; the engine commands use part
mod out;

/// The engine subcommands; their sources are shared with `avp`'s `cmd/`.
mod cmd {
    pub(crate) mod address;
    pub(crate) mod engine_common;
    pub(crate) mod generate;
    pub(crate) mod handoff;
    pub(crate) mod kv_send;
    pub(crate) mod model_dir;
    pub(crate) mod project;
    #[allow(dead_code)] // `think --to` uses its client helpers, not `avp send` itself
    pub(crate) mod send;
    #[allow(dead_code)] // send.rs reaches it for chunked contexts; engine commands do not
    pub(crate) mod send_chunked;
    pub(crate) mod think;
}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Agent Vector Protocol tools: the engine commands (libtorch).
#[derive(Parser)]
#[command(name = "avp", bin_name = "avp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Think in latent space on a model and write the KV_CACHE message.
    Think(cmd::think::ThinkArgs),
    /// Generate text, optionally continuing a received context.
    Generate(cmd::generate::GenerateArgs),
    /// Project a source model's thought into a target model's embedding space.
    Project(cmd::project::ProjectArgs),
}

fn main() -> ExitCode {
    out::install_panic_hook();
    match Cli::parse().command {
        Command::Think(args) => cmd::think::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Project(args) => cmd::project::run(args),
    }
}

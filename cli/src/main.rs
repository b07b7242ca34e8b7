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
    /// Model hash, tokenizer hash or weights digest of a file or directory.
    Hash(cmd::hash::HashArgs),
    /// The model identity (the SDK's `to_dict()` JSON) of a config or model directory.
    Identity(cmd::identity::IdentityArgs),
    /// Handshake tools: resolve the mode two identities would negotiate.
    Handshake(cmd::handshake::HandshakeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version::run(),
        Command::Hash(args) => cmd::hash::run(args),
        Command::Identity(args) => cmd::identity::run(args),
        Command::Handshake(args) => cmd::handshake::run(args),
    }
}

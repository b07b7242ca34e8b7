//! `avp`: the command-line front end of the AVP workspace.
//!
//! Each subcommand lives in its own module under `cmd/`; this file only
//! dispatches. `think`, `generate` and `project` are run by the separate
//! `avp-engine` binary, so this one never links libtorch (cmd/engine_exec.rs). Output formats are contracts other tools rely on (spec/impl/cli.md).
#![forbid(unsafe_code)]

mod cmd; // one module per subcommand
mod out; // stdout/stderr writes that never panic

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
    /// Check an implementation or a live server against the conformance corpus.
    #[command(subcommand)]
    Conformance(cmd::conformance::ConformanceCommand),
    /// Decode one AVP message and print it as JSON (spec/impl/cli.md).
    Decode(cmd::decode::DecodeArgs),
    /// Encode metadata (JSON) and tensor bytes into an AVP message.
    Encode(cmd::encode::EncodeArgs),
    /// Show a message for humans: header, metadata, per-layer tensor statistics.
    Inspect(cmd::inspect::InspectArgs),
    /// Run an agent endpoint that receives and stores AVP messages.
    Serve(cmd::serve::ServeArgs),
    /// Send an encoded AVP message (or a JSON fallback message) to an agent.
    Send(cmd::send::SendArgs),
    /// Forward messages to agents by their target_agent_id.
    Route(cmd::route::RouteArgs),
    /// Inspect an agent's store directory (`avp store ls DIR`).
    Store(cmd::store::StoreArgs),
    /// Model hash, tokenizer hash or weights digest of a file or directory.
    Hash(cmd::hash::HashArgs),
    /// The model identity (the SDK's `to_dict()` JSON) of a config or model directory.
    Identity(cmd::identity::IdentityArgs),
    /// Set session_id, source_agent_id, target_agent_id of an existing message.
    Address(cmd::address_cmd::AddressCmdArgs),
    /// KV contexts: synthesize, split into chunks, join, verify (spec/protocol/chunked.md).
    Kv(cmd::kv::KvArgs),
    /// Handshake tools: resolve the mode two identities would negotiate.
    Handshake(cmd::handshake::HandshakeArgs),
    /// Think in latent space on a model and write the KV_CACHE message (runs avp-engine).
    Think(cmd::engine_exec::EngineArgs),
    /// Generate text, optionally continuing a received context (runs avp-engine).
    Generate(cmd::engine_exec::EngineArgs),
    /// Project a source model's thought into a target model's embedding space (runs avp-engine).
    Project(cmd::engine_exec::EngineArgs),
}

fn main() -> ExitCode {
    out::install_panic_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => cmd::version::run(),
        Command::Conformance(command) => cmd::conformance::run(command),
        Command::Decode(args) => cmd::decode::run(args),
        Command::Encode(args) => cmd::encode::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Serve(args) => cmd::serve::run(&args),
        Command::Send(args) => cmd::send::run(&args),
        Command::Route(args) => cmd::route::run(&args),
        Command::Store(args) => cmd::store::run(&args),
        Command::Hash(args) => cmd::hash::run(args),
        Command::Identity(args) => cmd::identity::run(args),
        Command::Handshake(args) => cmd::handshake::run(args),
        Command::Kv(args) => cmd::kv::run(args),
        Command::Address(args) => cmd::address_cmd::run(args),
        Command::Think(args) => cmd::engine_exec::run("think", args),
        Command::Generate(args) => cmd::engine_exec::run("generate", args),
        Command::Project(args) => cmd::engine_exec::run("project", args),
    }
}

//! `avp serve`: an agent endpoint (AVP-HTTP-30..35). Prints
//! `listening on http://ADDR` on stdout once bound (so callers using port 0
//! learn the port), one progress line per received message on stderr, and
//! shuts down gracefully on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use avp_handshake::json::JsonString;
use avp_handshake::{
    ModelIdentity, identity_from_config, tokenizer_hash, vocab_from_tokenizer_json,
};
use avp_transport::hello::identity_from_json;
use avp_transport::{Agent, ContextStore, Received, Role, Server, ServerConfig};
use clap::Args;

use super::send::{read_token_file, runtime};

/// Arguments of `avp serve`.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// Require `Authorization: Bearer <token>` with the token in this file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest accepted message in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_body: u64,
    /// This agent's ModelIdentity (JSON, the SDK's `to_dict()` form) for handshakes.
    #[arg(long, conflicts_with = "model")]
    identity: Option<PathBuf>,
    /// Derive the identity from a model directory (config.json, and tokenizer.json when present).
    #[arg(long)]
    model: Option<PathBuf>,
    /// This agent's id, reported in answers.
    #[arg(long, default_value = "avp-serve")]
    agent_id: String,
    /// Keep received messages as files here (written atomically); memory only without it.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Message bytes all requests together may buffer (default 4 GiB); more waits.
    #[arg(long, default_value_t = avp_transport::DEFAULT_MEMORY_BUDGET)]
    memory_budget: u64,
    /// Seconds a received message is kept.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Refuse transmits without a valid keyed MAC made with this key file
    /// (spec/mac.md, AVP-MAC-7): 400 with the error kind `bad_mac`.
    #[arg(long, value_name = "F")]
    mac_key: Option<PathBuf>,
}

pub(crate) fn run(args: &ServeArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(serve(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("avp serve: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let identity = match (&args.identity, &args.model) {
        (Some(path), _) => read_identity(path)?,
        (None, Some(dir)) => identity_from_model_dir(dir)?,
        (None, None) => ModelIdentity::default(),
    };
    let ttl = Duration::from_secs(args.ttl);
    let store = match &args.store {
        Some(dir) => ContextStore::open(dir, ttl)
            .with_context(|| format!("opening store {}", dir.display()))?,
        None => ContextStore::in_memory(ttl),
    };
    let mut agent = Agent::new(args.agent_id.clone(), identity, Arc::new(store))
        .with_memory_budget(args.memory_budget);
    if !args.quiet {
        agent = agent.on_received(Arc::new(print_progress));
    }
    if let Some(path) = &args.mac_key {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading MAC key {}", path.display()))?;
        let key = avp_codec::mac::MacKey::from_key_file_bytes(&bytes)
            .with_context(|| format!("MAC key {}", path.display()))?;
        agent = agent.with_mac_key(key);
    }
    let config = ServerConfig {
        token: read_token_file(args.token_file.as_deref())?,
        max_body: args.max_body,
        ..ServerConfig::default()
    };
    let server = Server::bind(args.listen, config, Role::Agent(Arc::new(agent)))
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce(server.local_addr()?)?;
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// The first stdout line, flushed at once: tests and scripts read the port from it.
pub(crate) fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;
    Ok(())
}

fn read_identity(path: &Path) -> anyhow::Result<ModelIdentity> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading identity {}", path.display()))?;
    identity_from_json(&raw).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
}

/// The SDK's `extract_model_identity(config, tokenizer)` for a model directory.
fn identity_from_model_dir(dir: &Path) -> anyhow::Result<ModelIdentity> {
    let parse = |name: &str| -> anyhow::Result<avp_handshake::json::Value> {
        let path = dir.join(name);
        let raw = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        avp_handshake::json::parse(&raw).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))
    };
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        let vocab = vocab_from_tokenizer_json(&parse("tokenizer.json")?)
            .map_err(|err| anyhow::anyhow!("tokenizer.json: {err}"))?;
        JsonString::from(
            tokenizer_hash(&vocab).map_err(|err| anyhow::anyhow!("tokenizer.json: {err}"))?,
        )
    } else {
        JsonString::default()
    };
    identity_from_config(&parse("config.json")?, tokenizer)
        .map_err(|err| anyhow::anyhow!("config.json: {err}"))
}

/// One line per received message, e.g.
/// `received transmit 64.0 MiB from "a" for "b" in 0.412 s (155.3 MiB/s) -> <id> [<file>]`.
fn print_progress(received: &Received) {
    let context = &received.context;
    let secs = received.elapsed.as_secs_f64();
    let mib = context.len as f64 / (1024.0 * 1024.0);
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    let place = context
        .path
        .as_ref()
        .map_or_else(|| "memory".to_owned(), |p| p.display().to_string());
    eprintln!(
        "received {} {} from {:?} for {:?} in {:.3} s ({:.1} MiB/s) -> {} [{}]",
        received.endpoint,
        human_size(context.len),
        context.source_agent_id,
        context.target_agent_id,
        secs,
        rate,
        context.id,
        place
    );
}

fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM stops us.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

//! `avp serve`: an agent endpoint (AVP-HTTP-30..35). Prints
//! `listening on http://ADDR` (or `https://`) on stdout once bound (so
//! callers using port 0 learn the port), one progress line per received
//! message on stderr, and shuts down gracefully on Ctrl-C or SIGTERM.
//!
//! With `--model DIR` the handshake answers with the identity and weights
//! digest of that directory, computed by the handshake crate (config.json,
//! tokenizer.json, safetensors headers and bytes); the engine is not loaded.
//! Every option is checked before anything is created on disk.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use avp_handshake::ModelIdentity;
use avp_transport::assembly::{Assemblies, ChunkLimits};
use avp_transport::hello::identity_from_json;
use avp_transport::kv_wire::KvCapabilities;
use avp_transport::{
    Agent, ContextStore, HandshakeServer, Received, Server, ServerConfig, WeightsDigest,
};
use clap::Args;

use super::model_dir::{identity_from_model_dir, weights_of_model_dir};
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
    /// This agent's ModelIdentity (JSON, the SDK's `to_dict()` form) for handshakes,
    /// or a hello file whose identity and `capabilities.weights_digest` are used.
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
    /// (spec/protocol/mac.md, AVP-MAC-7): 400 with the error kind `bad_mac`.
    #[arg(long, value_name = "F")]
    mac_key: Option<PathBuf>,
    /// Bytes of the memory budget one peer (its mTLS certificate, else its
    /// address) may hold (default: a quarter of the budget, at least 1 GiB when
    /// the budget has it).
    #[arg(long)]
    peer_share: Option<u64>,
    /// Refuse transmits that do not claim a live session from this agent's
    /// handshake (409 `unknown_session`, AVP-HTTP-35).
    #[arg(long)]
    require_session: bool,
    /// Seconds an incomplete chunked context is kept without a new chunk
    /// (with --store; AVP-HTTP-92).
    #[arg(long, default_value_t = 600)]
    chunk_ttl: u64,
    /// Chunked contexts assembled at once (with --store); 0 turns chunk
    /// assembly off (no kv_chunked in the handshake).
    #[arg(long, default_value_t = 16)]
    max_assemblies: usize,
    /// Bytes all incomplete chunked contexts together may hold on disk.
    #[arg(long, default_value_t = 64 << 30)]
    max_assembly_bytes: u64,
    /// Prefix addresses the store indexes to find delta bases, oldest out first (AVP-HTTP-121).
    #[arg(long, value_name = "N", default_value_t = avp_transport::store::DEFAULT_INDEX_CAPACITY)]
    prefix_index_capacity: usize,
    /// Map-file directory for handshake rule 4 (AVP-HS-8).
    #[arg(long, value_name = "DIR")]
    maps: Option<PathBuf>,
    /// Compact contexts announced in the hello and accepted (AVP-HTTP-100):
    /// any of int8, int4, int8-channel, delta, or none; KV_CACHE_EXT messages
    /// that need another are refused with 400 capability_not_announced.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = ["int8", "int4", "int8-channel", "delta", "none"],
        default_value = "int8,int4,int8-channel,delta"
    )]
    kv_capabilities: Vec<String>,
    #[command(flatten)]
    limits: ServerLimitArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

/// Deadlines shared by `serve` and `route` (AVP-HTTP-18).
#[derive(Args, Debug)]
pub(crate) struct ServerLimitArgs {
    /// Minimum request body rate in bytes/s after a 10 s grace (0 = no floor).
    #[arg(long, default_value_t = avp_transport::DEFAULT_MIN_RATE)]
    min_rate: u64,
    /// Seconds for the TLS handshake plus a request head.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a request body may send nothing.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
}

/// TLS options of the servers (`serve`, `route`), AVP-HTTP-70..75.
#[derive(Args, Debug)]
pub(crate) struct ServerTlsArgs {
    /// Serve HTTPS with this PEM certificate chain (leaf first).
    #[arg(long, value_name = "F", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates that chain to this PEM CA (mutual TLS);
    /// the certificate's identity is recorded with each stored message.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerLimitArgs {
    /// A server configuration with these limits, `token`, `max_body` and TLS.
    pub(crate) fn config(
        &self,
        token: Option<String>,
        max_body: u64,
        tls: &ServerTlsArgs,
    ) -> anyhow::Result<ServerConfig> {
        let tls = match (&tls.tls_cert, &tls.tls_key) {
            (Some(cert), Some(key)) => Some(avp_transport::tls::server_config(
                &avp_transport::tls::ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: tls.tls_client_ca.clone(),
                },
            )?),
            _ => None,
        };
        Ok(ServerConfig {
            token,
            max_body,
            min_rate: self.min_rate,
            header_timeout: Duration::from_secs(self.header_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            tls,
            ..ServerConfig::default()
        })
    }
}

pub(crate) fn run(args: &ServeArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(serve(args))) {
        Ok(()) => ExitCode::SUCCESS,
        // `avp serve | head -1`: the address line was the only output wanted.
        Err(err) if crate::out::is_broken_pipe(&err) => {
            ExitCode::from(crate::out::EXIT_BROKEN_PIPE)
        }
        Err(err) => {
            crate::out::note(format_args!("avp serve: {err:#}"));
            ExitCode::from(2)
        }
    }
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Everything that can fail is read first: a bad option leaves nothing behind.
    let token = read_token_file(args.token_file.as_deref())?;
    let config = args.limits.config(token, args.max_body, &args.tls)?;
    let (identity, weights) = match (&args.identity, &args.model) {
        (Some(path), _) => read_identity(path)?,
        (None, Some(dir)) => (identity_from_model_dir(dir)?, weights_of_model_dir(dir)?),
        (None, None) => (ModelIdentity::default(), None),
    };
    let mac_key = match &args.mac_key {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading MAC key {}", path.display()))?;
            Some(
                avp_codec::mac::MacKey::from_key_file_bytes(&bytes)
                    .with_context(|| format!("MAC key {}", path.display()))?,
            )
        }
        None => None,
    };
    if let Some(dir) = &args.maps {
        anyhow::ensure!(dir.is_dir(), "--maps {} is not a directory", dir.display());
    }
    let ttl = Duration::from_secs(args.ttl);
    let mut handshake = HandshakeServer::new(args.agent_id.clone(), identity)
        .with_session_limit(ttl, avp_transport::hello::DEFAULT_MAX_SESSIONS);
    if let Some(digest) = weights {
        handshake = handshake.with_weights_digest(digest);
    }
    if let Some(dir) = &args.maps {
        handshake = handshake.with_maps(Arc::new(avp_handshake::fs::MapDir(dir.clone())));
    }
    let has = |name: &str| args.kv_capabilities.iter().any(|c| c == name);
    handshake = handshake.with_kv_capabilities(KvCapabilities {
        int8: has("int8"),
        int4: has("int4"),
        int8_channel: has("int8-channel"),
        delta: has("delta"),
    });
    let store = Arc::new(
        match &args.store {
            Some(dir) => ContextStore::open(dir, ttl)
                .with_context(|| format!("opening store {}", dir.display()))?,
            None => ContextStore::in_memory(ttl),
        }
        .with_index_capacity(args.prefix_index_capacity),
    );
    // Chunked contexts are assembled on disk only (AVP-HTTP-90); with
    // --max-assemblies 0 not at all (no kv_chunked).
    let assemblies = match &args.store {
        Some(dir) if args.max_assemblies > 0 => Some(Arc::new(
            Assemblies::open(
                Arc::clone(&store),
                ChunkLimits {
                    max_assemblies: args.max_assemblies,
                    max_bytes: args.max_assembly_bytes,
                    ttl: Duration::from_secs(args.chunk_ttl),
                    ..ChunkLimits::default()
                },
            )
            .with_context(|| format!("opening chunk assemblies in {}", dir.display()))?,
        )),
        _ => None,
    };
    handshake = handshake.with_kv_chunked(assemblies.is_some());
    let mut agent = Agent::new(args.agent_id.clone(), ModelIdentity::default(), store)
        .with_handshake(handshake)
        .require_session(args.require_session)
        .with_memory_budget(args.memory_budget);
    if let Some(share) = args.peer_share {
        agent = agent.with_peer_share(share);
    }
    if !args.quiet {
        agent = agent.on_received(Arc::new(print_progress));
    }
    if let Some(key) = mac_key {
        agent = agent.with_mac_key(key);
    }
    if let Some(assemblies) = assemblies {
        // Expiry also runs with each chunk request; this sweep frees the
        // disk of abandoned assemblies when no request comes (AVP-HTTP-92).
        let sweeping = Arc::clone(&assemblies);
        let every = Duration::from_secs(args.chunk_ttl.clamp(1, 60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let sweeping = Arc::clone(&sweeping);
                let _ = tokio::task::spawn_blocking(move || sweeping.expire()).await;
            }
        });
        agent = agent.with_chunk_assembly(assemblies);
    }
    let https = config.tls.is_some();
    let server = Server::bind(args.listen, config, Arc::new(agent))
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce(server.local_addr()?, https)?;
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// The first stdout line, flushed at once: tests and scripts read the port from it.
pub(crate) fn announce(addr: SocketAddr, https: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let scheme = if https { "https" } else { "http" };
    writeln!(stdout, "listening on {scheme}://{addr}")?;
    stdout.flush()?;
    Ok(())
}

/// An identity file (ModelIdentity JSON), or a hello file (an object with an
/// `identity` member), whose `capabilities.weights_digest` is then ours too,
/// as `avp handshake resolve` reads its sides.
fn read_identity(path: &Path) -> anyhow::Result<(ModelIdentity, Option<WeightsDigest>)> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading identity {}", path.display()))?;
    let doc = avp_handshake::json::parse(&raw)
        .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
    if doc.as_object().is_some_and(|o| o.get("identity").is_some()) {
        let with_path = |err: avp_handshake::Error| anyhow::anyhow!("{}: {err}", path.display());
        let hello = avp_handshake::HelloMessage::from_value(&doc).map_err(with_path)?;
        let digest = hello.weights_digest().map_err(with_path)?;
        return Ok((hello.identity_or_default(), digest));
    }
    let identity =
        identity_from_json(&raw).map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
    Ok((identity, None))
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

//! `avp think --to URL`: negotiate, then send what the peer can use
//! (spec/impl/pipeline.md, AVP-PIPE-3). Runs inside `avp-engine`; the
//! network half is avp-transport's client, the payload half the engine's
//! [`avp_engine::handoff`] (which names the recipe for library users).
//!
//! Steps: hello with this model's identity and weights digest; the mode and
//! rule resolved on our side pick the payload (KV-cache, projected hidden
//! state, or the text this model generates); the message is addressed with
//! the session id of the answer, our agent id and the peer's; then sent.
//! A KV-cache that continues `--context PREV` goes out as the positions after
//! PREV when the peer announced `kv_delta` (the multi-turn path of issue 17,
//! AVP-HTTP-104), with the full context once if the peer does not hold PREV.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use avp_engine::handoff::{
    TargetModel, Transfer, kv_cache_message, projected_message, projected_message_from_map_file,
};
use avp_engine::project::map_path;
use avp_engine::{Engine, GenerateOptions, LatentContext, Sampling};
use avp_transport::{AvpClient, ClientConfig};
use clap::Args;
use serde_json::{Value, json};

use super::address::AddressArgs;
use super::engine_common::{DeviceArgs, Progress, load, report};
use super::kv_send::{Plan, send_kv};
use super::model_dir::{identity_from_model_dir, weights_of_model_dir};
use super::project::projection_map;
use super::send::{read_token_file, runtime};

/// The sending options of `avp think`.
#[derive(Args, Debug, Clone)]
pub(crate) struct HandoffArgs {
    /// Hand the thought to the agent at this URL: handshake, then send what it can use.
    #[arg(long, value_name = "URL")]
    pub(crate) to: Option<String>,
    /// File holding the bearer token for --to.
    #[arg(long, value_name = "F", requires = "to")]
    pub(crate) token_file: Option<PathBuf>,
    /// The peer's model directory, for a cross-model handoff (its embeddings receive the thought).
    #[arg(long, value_name = "DIR", requires = "to")]
    pub(crate) target_model: Option<PathBuf>,
    /// Map-file directory for a cross-model handoff: with --target-model, read if
    /// fitting, else written; without it, the pair's map file alone supplies the target rows.
    #[arg(long, value_name = "DIR", requires = "to")]
    pub(crate) maps: Option<PathBuf>,
    /// This agent's id: sent in the hello and written as source_agent_id.
    #[arg(long, default_value = "avp-cli", requires = "to")]
    pub(crate) agent_id: String,
    /// Seconds for each exchange with the peer.
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "to")]
    pub(crate) timeout: u64,
    /// Tokens to generate when the handshake falls back to JSON text.
    #[arg(long, default_value_t = 256, requires = "to")]
    pub(crate) text_tokens: usize,
}

/// Where the time went, for the report (and BENCHMARKS.md).
#[derive(Debug, Default)]
struct Timings {
    handshake: Duration,
    /// Loading the peer's model for a projection (not part of `prepare`).
    target_load: Duration,
    prepare: Duration,
    transfer: Duration,
}

/// A sender ready to hand off: the client and the hello's identity, made
/// before thinking so that a bad URL, token file or model directory fails
/// before the expensive part.
pub(crate) struct Sender {
    url: String,
    client: AvpClient,
    identity: avp_handshake::ModelIdentity,
}

impl Sender {
    /// The client for `args.to`, announcing `model_dir`'s identity with the
    /// hash `engine` writes into its messages.
    pub(crate) fn new(args: &HandoffArgs, model_dir: &Path, engine: &Engine) -> Result<Self> {
        let Some(url) = &args.to else {
            bail!("no --to URL");
        };
        let mut identity = identity_from_model_dir(model_dir)?;
        identity.model_hash = engine.model_hash().into();
        let config = ClientConfig {
            agent_id: args.agent_id.clone(),
            token: read_token_file(args.token_file.as_deref())?,
            timeout: Duration::from_secs(args.timeout.max(1)),
            weights_digest: weights_of_model_dir(model_dir)?,
            ..ClientConfig::default()
        };
        let client = AvpClient::new(url, config).with_context(|| format!("--to {url}"))?;
        Ok(Self {
            url: url.clone(),
            client,
            identity,
        })
    }
}

/// Hands `ctx` (thought by `engine` on `prompt`) to the sender's peer; prints
/// the peer's answer on stdout and what was sent on stderr.
pub(crate) fn hand_off(
    sender: &Sender,
    args: &HandoffArgs,
    engine: &Engine,
    load_args: &DeviceArgs,
    prompt: &str,
    ctx: &LatentContext,
    previous: Option<&[u8]>,
) -> Result<()> {
    let (url, client, identity) = (&sender.url, &sender.client, &sender.identity);
    let rt = runtime()?;
    let mut t = Timings::default();
    let started = Instant::now();
    let result = rt
        .block_on(client.handshake(identity))
        .with_context(|| format!("handshake with {url}"))?;
    t.handshake = started.elapsed();
    let transfer = Transfer::for_resolution(result.mode, result.resolution_path);
    report(format_args!(
        "handshake: mode {}, rule {} (peer {:?}, session {}): sending the {}",
        result.mode.name(),
        result.resolution_path.as_str(),
        result.agent_id,
        result.session_id,
        match transfer {
            Transfer::KvCache => "KV-cache",
            Transfer::ProjectedHiddenState => "projected hidden state",
            _ => "generated text as a JSON message",
        }
    ));
    let address = AddressArgs {
        session: Some(result.session_id.clone()),
        source_agent: Some(args.agent_id.clone()),
        target_agent: Some(result.agent_id.clone()),
    };
    let started = Instant::now();
    let outgoing = match transfer {
        Transfer::KvCache => Outgoing::Message(kv_cache_message(ctx)?),
        Transfer::ProjectedHiddenState => {
            let peer_hash = result.identity.model_hash.to_string_lossy();
            let message = match (&args.target_model, &args.maps) {
                (Some(dir), _) => {
                    let loading = Instant::now();
                    let target = load(dir, load_args, None, &Progress::new())?;
                    t.target_load = loading.elapsed();
                    if target.model_hash() != peer_hash {
                        bail!(
                            "--target-model {} has model hash {}, the peer announced {peer_hash}",
                            dir.display(),
                            target.model_hash()
                        );
                    }
                    let (map, note) = projection_map(engine, &target, args.maps.as_deref())?;
                    report(format_args!("projection: {} ({note})", map.method.name()));
                    projected_message(engine, &target, &map, ctx)?
                }
                (None, Some(maps)) => {
                    let path = map_path(maps, engine.model_hash(), &peer_hash);
                    if !path.is_file() {
                        bail!(
                            "the peer runs another model ({peer_hash}, rule {}) and {} does not exist: give --target-model DIR (its model directory) to project into",
                            result.resolution_path.as_str(),
                            path.display()
                        );
                    }
                    report(format_args!(
                        "projection: map file {} (no target weights loaded)",
                        path.display()
                    ));
                    let family = result.identity.model_family.to_string_lossy();
                    let target = TargetModel {
                        model_hash: &peer_hash,
                        model_family: &family,
                        num_layers: usize::try_from(result.identity.num_layers)
                            .context("the peer's num_layers")?,
                    };
                    projected_message_from_map_file(engine, &path, target, ctx)?
                }
                (None, None) => bail!(
                    "the peer runs another model ({peer_hash}, rule {}): give --target-model DIR with its model directory (or --maps DIR holding the pair's map file) to project into",
                    result.resolution_path.as_str()
                ),
            };
            Outgoing::Message(message)
        }
        _ => {
            let opts = GenerateOptions {
                max_new_tokens: args.text_tokens,
                sampling: Sampling::Greedy,
                stop_tokens: None,
            };
            let text = engine.generate(prompt, None, &opts)?.text;
            Outgoing::Text(json!({
                "avp_version": avp_transport::hello::AVP_VERSION_STRING,
                "session_id": result.session_id,
                "source_agent_id": args.agent_id,
                "target_agent_id": result.agent_id,
                "content": text,
            }))
        }
    };
    let base = previous.filter(|_| transfer == Transfer::KvCache && result.kv.delta);
    let (answer, sent) = match outgoing {
        Outgoing::Message(bytes) => {
            let bytes = address.readdress(bytes)?;
            t.prepare = started.elapsed().saturating_sub(t.target_load);
            let n = bytes.len();
            let started = Instant::now();
            let answer = match base.and_then(|base| as_delta(&rt, client, result.kv, &bytes, base))
            {
                Some((answer, sizes)) => {
                    t.transfer = started.elapsed();
                    report(format_args!(
                        "delta: {} bytes sent for a context of {n} bytes",
                        sizes.iter().sum::<usize>()
                    ));
                    answer
                }
                None => {
                    let answer = rt.block_on(client.transmit(bytes.into()));
                    t.transfer = started.elapsed();
                    answer
                }
            };
            (answer, n)
        }
        Outgoing::Text(message) => {
            let body = serde_json::to_vec(&message)?;
            t.prepare = started.elapsed();
            let n = body.len();
            let started = Instant::now();
            let answer = rt.block_on(client.send_text_bytes(body.into()));
            t.transfer = started.elapsed();
            (answer, n)
        }
    };
    let answer: Value = answer.with_context(|| format!("sending to {url}"))?;
    report(format_args!(
        "sent: {} of {sent} bytes to {url} (handshake {:.3} s, target model load {:.3} s, prepare {:.3} s, transfer {:.3} s)",
        transfer.name(),
        t.handshake.as_secs_f64(),
        t.target_load.as_secs_f64(),
        t.prepare.as_secs_f64(),
        t.transfer.as_secs_f64()
    ));
    // A closed stdout loses only the answer; the message was delivered.
    let _ = crate::out::line(answer);
    Ok(())
}

/// Sends `message` as the positions after `base` (the `--context` message)
/// through `avp send --delta-from`'s path, which falls back to the full
/// context on `missing_prefix` by itself. `None` when `message` does not
/// continue `base` (a projected or foreign context): nothing was sent, the
/// caller sends the full message.
fn as_delta(
    rt: &tokio::runtime::Runtime,
    client: &AvpClient,
    caps: avp_transport::kv_wire::KvCapabilities,
    message: &[u8],
    base: &[u8],
) -> Option<(
    std::result::Result<Value, avp_transport::TransportError>,
    Vec<usize>,
)> {
    let plan = Plan {
        base: Some(base),
        ..Plan::default()
    };
    match rt.block_on(send_kv(client, caps, message, &plan)) {
        Ok(sent) => Some((sent.answer, sent.sizes)),
        Err(why) => {
            report(format_args!(
                "delta: not used ({why:#}); sending the full context"
            ));
            None
        }
    }
}

/// A binary AVP message or a JSON fallback message.
enum Outgoing {
    Message(Vec<u8>),
    Text(Value),
}

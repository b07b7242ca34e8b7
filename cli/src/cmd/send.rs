//! `avp send FILE --to URL`: streams an encoded message (or, with `--text`, a
//! JSON fallback message) to an agent and prints its JSON answer
//! (AVP-HTTP-40..42). A KV context can go out quantized (`--kv-quant`) or as
//! a delta (`--delta-from`) when the peer's hello announced it; a
//! `KV_CACHE_EXT` file only to a peer that announced what it uses
//! (AVP-HTTP-103/84, [`super::kv_send`]). Also holds the helpers the other
//! transport commands share.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use avp_codec::kv_quant::KvScheme;
use avp_codec::{PayloadType, peek};
use avp_transport::kv_wire::KvCapabilities;
use avp_transport::{AvpClient, ClientConfig, TransportError};
use clap::Args;
use serde_json::{Value, json};

use super::kv_send::{EXIT_NOT_NEGOTIATED, NotNegotiated, Plan, QuantFallback, send_kv};

/// Arguments of `avp send`.
#[derive(Args, Debug)]
pub(crate) struct SendArgs {
    /// The encoded AVP message to send (streamed, never read whole, unless
    /// --kv-quant, --delta-from or a KV_CACHE_EXT payload needs its values).
    file: PathBuf,
    /// Base URL of the receiving agent, e.g. http://127.0.0.1:8470.
    #[arg(long = "to")]
    to: String,
    /// File holding the bearer token (surrounding whitespace is ignored).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Sent as AVP-Agent-ID.
    #[arg(long, default_value = "avp-cli")]
    agent_id: String,
    /// FILE is a JSON fallback message: send it to /avp/v2/text.
    #[arg(long)]
    text: bool,
    /// Use HTTP/2 with prior knowledge instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Extra attempts when the connection cannot be made (for a chunked
    /// context: resumptions after a lost connection).
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Cut a single KV_CACHE message into chunks of at most N MiB when the
    /// peer announces kv_chunked (a chunked FILE is always sent in chunks).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4095),
          conflicts_with_all = ["kv_quant", "delta_from"])]
    chunk_mib: Option<u64>,
    /// Cap the upload rate of a chunked transfer, in bytes per second.
    #[arg(long, value_name = "BYTES")]
    limit_rate: Option<u64>,
    /// Quantize the KV-cache before sending, if the peer's hello announces the
    /// scheme (kv_quant_int8 / kv_quant_int4 / kv_quant_int8_channel); otherwise see
    /// --kv-quant-fallback.
    #[arg(long, value_name = "SCHEME", value_parser = ["int8", "int4", "int8-channel"], conflicts_with = "text")]
    kv_quant: Option<String>,
    /// When the peer did not announce the --kv-quant scheme: `error` sends
    /// nothing and exits 3, `full` sends the context unquantized.
    #[arg(long, value_enum, default_value = "error", requires = "kv_quant")]
    kv_quant_fallback: QuantFallback,
    /// A KV context the peer should hold (e.g. the previous turn) that shares
    /// its first positions with FILE: send only the positions after those if
    /// the peer announces kv_delta; if the peer lacks them, the full context
    /// is sent once.
    #[arg(long, value_name = "BASE", conflicts_with = "text")]
    delta_from: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// TLS options of the commands that connect (`send`, `handshake URL`, and
/// `route` towards its upstreams), AVP-HTTP-70..75.
#[derive(Args, Debug, Default)]
pub(crate) struct ClientTlsArgs {
    /// PEM file of the CA(s) to trust for https:// URLs (no other roots are trusted).
    #[arg(long, value_name = "F")]
    pub(crate) ca: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require mutual TLS.
    #[arg(long, value_name = "F", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "F", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The rustls client configuration, when any TLS option was given.
    pub(crate) fn config(&self) -> anyhow::Result<Option<rustls::ClientConfig>> {
        if self.ca.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        let files = avp_transport::tls::ClientTlsFiles {
            ca: self.ca.clone(),
            client_cert: self.client_cert.clone().zip(self.client_key.clone()),
        };
        Ok(Some(avp_transport::tls::client_config(&files)?))
    }
}

pub(crate) fn run(args: &SendArgs) -> ExitCode {
    let outcome = runtime().and_then(|rt| rt.block_on(send(args)));
    if let Err(err) = &outcome {
        if let Some(refused) = err.downcast_ref::<NotNegotiated>() {
            crate::out::note(format_args!("avp: {refused}"));
            return ExitCode::from(EXIT_NOT_NEGOTIATED);
        }
    }
    finish(outcome)
}

async fn send(args: &SendArgs) -> anyhow::Result<Result<Value, TransportError>> {
    let config = ClientConfig {
        agent_id: args.agent_id.clone(),
        token: read_token_file(args.token_file.as_deref())?,
        timeout: Duration::from_secs(args.timeout),
        retries: args.retries,
        http2: args.http2,
        tls: args.tls.config()?,
        ..ClientConfig::default()
    };
    let client = match AvpClient::new(&args.to, config) {
        Ok(client) => client,
        Err(err) => return Ok(Err(err)),
    };
    if args.text {
        let raw = std::fs::read(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?;
        // Checked here for a clear local error; sent as the file's own bytes.
        serde_json::from_slice::<Value>(&raw)
            .with_context(|| format!("{} is not JSON", args.file.display()))?;
        return Ok(client.send_text_bytes(raw.into()).await);
    }
    if !args.file.is_file() {
        bail!("{} is not a readable file", args.file.display());
    }
    let compact = args.kv_quant.is_some() || args.delta_from.is_some();
    if !compact {
        let chunked = super::send_chunked::ChunkedSend {
            file: &args.file,
            chunk_mib: args.chunk_mib,
            limit_rate: args.limit_rate,
            retries: args.retries,
        };
        if let Some(outcome) = super::send_chunked::send_if_chunked(&client, &chunked).await? {
            return Ok(outcome);
        }
        if peek_payload_type(&args.file) != Some(PayloadType::KvCacheExt) {
            return Ok(client.transmit_file(&args.file).await);
        }
    } else if matches!(
        avp_transport::chunk_client::ChunkedFile::open(&args.file),
        Ok(Some(_))
    ) {
        anyhow::bail!(
            "{}: --kv-quant and --delta-from need a single-message context; join the chunked file first (avp convert --join)",
            args.file.display()
        );
    }
    // Compact contexts go only where the hello says they are understood (AVP-KVQ-1).
    let message =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let base = match &args.delta_from {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let caps = match peer_capabilities(&client).await {
        Ok(caps) => caps,
        Err(err) => return Ok(Err(err)),
    };
    let plan = Plan {
        quant: args.kv_quant.as_deref().and_then(KvScheme::from_name),
        fallback: args.kv_quant_fallback,
        base: base.as_deref(),
    };
    let sent = send_kv(&client, caps, &message, &plan).await?;
    let sizes: Vec<String> = sent.sizes.iter().map(usize::to_string).collect();
    crate::out::note(format_args!(
        "sent: {} ({} bytes; the file is {} bytes)",
        sent.form,
        sizes.join(" then "),
        message.len()
    ));
    Ok(sent.answer)
}

/// The peer's compact-context capabilities from a handshake (hello with an
/// empty identity: only the answer's `capabilities` are used). A peer
/// without the handshake endpoint (404/405/501), or whose answer is no
/// full handshake (the SDK's `create_app` echoes the hello without a
/// session), announced nothing: it gets only plain messages.
pub(crate) async fn peer_capabilities(
    client: &AvpClient,
) -> Result<KvCapabilities, TransportError> {
    match client
        .handshake(&avp_handshake::ModelIdentity::default())
        .await
    {
        Ok(result) => Ok(result.kv),
        Err(TransportError::Status {
            status: 404 | 405 | 501,
            ..
        })
        | Err(TransportError::BadHandshake(_)) => Ok(KvCapabilities::NONE),
        Err(err) => Err(err),
    }
}

/// The payload type from the file's header and metadata, read no further;
/// `None` when they do not parse (the peer then says what is wrong).
fn peek_payload_type(path: &Path) -> Option<PayloadType> {
    let mut file = std::fs::File::open(path).ok()?;
    let prefix = avp_transport::chunk_client::read_prefix_at(&mut file, 0).ok()?;
    Some(peek(&prefix).ok()?.metadata.payload_type)
}

/// Prints the answer (exit 0) or `{"error":{kind,message[,status]}}` (exit 1)
/// on stdout; local failures (bad arguments, unreadable files) exit 2.
pub(crate) fn finish(outcome: anyhow::Result<Result<Value, TransportError>>) -> ExitCode {
    match outcome {
        Ok(Ok(answer)) => crate::out::finish_line(answer),
        Ok(Err(err)) => {
            let mut error = json!({"kind": err.kind_name(), "message": err.to_string()});
            if let TransportError::Status { status, .. } = &err {
                error["status"] = json!(status);
            }
            // The status already says the peer refused; a closed stdout only loses the detail.
            let _ = crate::out::line(json!({ "error": error }));
            ExitCode::from(1)
        }
        Err(err) => {
            crate::out::note(format_args!("avp: {err:#}"));
            ExitCode::from(2)
        }
    }
}

/// A multi-threaded tokio runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Reads a bearer token from a file; an empty file is an error, not "no auth".
pub(crate) fn read_token_file(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        bail!(
            "token file {} holds spaces or control characters",
            path.display()
        );
    }
    Ok(Some(token.to_owned()))
}

//! `avp send FILE --to URL`: streams an encoded message (or, with `--text`, a
//! JSON fallback message) to an agent and prints its JSON answer
//! (AVP-HTTP-40..42). Also holds the helpers the other transport commands share.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use avp_transport::{AvpClient, ClientConfig, TransportError};
use clap::Args;
use serde_json::{Value, json};

/// Arguments of `avp send`.
#[derive(Args, Debug)]
pub(crate) struct SendArgs {
    /// The encoded AVP message to send (streamed, never read whole).
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4095))]
    chunk_mib: Option<u64>,
    /// Cap the upload rate of a chunked transfer, in bytes per second.
    #[arg(long, value_name = "BYTES")]
    limit_rate: Option<u64>,
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
    let chunked = super::send_chunked::ChunkedSend {
        file: &args.file,
        chunk_mib: args.chunk_mib,
        limit_rate: args.limit_rate,
        retries: args.retries,
    };
    if let Some(outcome) = super::send_chunked::send_if_chunked(&client, &chunked).await? {
        return Ok(outcome);
    }
    Ok(client.transmit_file(&args.file).await)
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

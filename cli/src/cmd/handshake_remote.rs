//! `avp handshake URL --identity FILE`: sends a hello with this model's
//! identity to a remote agent and prints its answer (AVP-HTTP-30), with the
//! resolution this side computes from both hellos under `client_resolution`.
//!
//! The `avp handshake` command itself (with `resolve`) lives in handshake.rs;
//! it calls [`run_remote`] when given a URL.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use avp_transport::hello::identity_from_json;
use avp_transport::{AvpClient, ClientConfig, TransportError};
use clap::Args;
use serde_json::Value;

use super::send::{ClientTlsArgs, finish, read_token_file, runtime};

/// Arguments of `avp handshake URL`.
#[derive(Args, Debug)]
pub(crate) struct HandshakeRemoteArgs {
    /// Base URL of the remote agent.
    pub(crate) url: String,
    /// This side's ModelIdentity (JSON, the SDK's `to_dict()` form).
    #[arg(long)]
    pub(crate) identity: PathBuf,
    /// File holding the bearer token.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// Sent as the hello's agent_id and as AVP-Agent-ID.
    #[arg(long, default_value = "avp-cli")]
    pub(crate) agent_id: String,
    /// Use HTTP/2 with prior knowledge.
    #[arg(long)]
    pub(crate) http2: bool,
    /// Seconds to wait for the whole exchange (connecting included).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub(crate) timeout: f64,
    /// PEM file of the CA(s) to trust for an https:// URL.
    #[arg(long, value_name = "F")]
    pub(crate) ca: Option<PathBuf>,
    /// PEM client certificate chain, for agents that require mutual TLS.
    #[arg(long, value_name = "F", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, value_name = "F", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
}

impl HandshakeRemoteArgs {
    // Not a nested #[command(flatten)]: this struct is itself flattened as an
    // Option into `avp handshake`, and clap then never reports it present.
    fn tls(&self) -> ClientTlsArgs {
        ClientTlsArgs {
            ca: self.ca.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// Runs the remote handshake; prints the answer JSON (exit 0) or an error object (exit 1).
pub(crate) fn run_remote(args: &HandshakeRemoteArgs) -> ExitCode {
    finish(runtime().and_then(|rt| rt.block_on(handshake(args))))
}

async fn handshake(args: &HandshakeRemoteArgs) -> anyhow::Result<Result<Value, TransportError>> {
    let raw = std::fs::read(&args.identity)
        .with_context(|| format!("reading {}", args.identity.display()))?;
    let identity = identity_from_json(&raw)
        .map_err(|why| anyhow::anyhow!("{}: {why}", args.identity.display()))?;
    let config = ClientConfig {
        agent_id: args.agent_id.clone(),
        token: read_token_file(args.token_file.as_deref())?,
        timeout: Duration::try_from_secs_f64(args.timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .with_context(|| {
                format!(
                    "--timeout {}: give a positive number of seconds",
                    args.timeout
                )
            })?,
        http2: args.http2,
        tls: args.tls().config()?,
        ..ClientConfig::default()
    };
    let client = match AvpClient::new(&args.url, config) {
        Ok(client) => client,
        Err(err) => return Ok(Err(err)),
    };
    Ok(client.handshake(&identity).await.map(|result| {
        let mut answer = result.answer.clone();
        answer["client_resolution"] = serde_json::json!({
            "mode": result.mode.name(),
            "resolution_path": result.resolution_path.as_str(),
            "avp_map_id": result.avp_map_id,
            "weights_mismatch": result.weights_mismatch,
            "agrees": result.agrees(),
        });
        answer
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use avp_transport::{Agent, ContextStore, Server, ServerConfig};

    use serde_json::json;

    use super::*;

    #[test]
    fn hello_reaches_a_live_agent_and_the_modes_resolve() {
        let rt = runtime().expect("runtime");
        let dir = std::env::temp_dir().join(format!("avp-hs-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let identity = json!({"model_family": "qwen2", "model_id": "m", "model_hash": "abc",
            "hidden_dim": 8, "num_layers": 2, "num_kv_heads": 1, "head_dim": 8});
        let path = dir.join("identity.json");
        std::fs::write(&path, identity.to_string()).expect("write");
        let answer = rt.block_on(async {
            let local = identity_from_json(identity.to_string().as_bytes()).expect("identity");
            let store = Arc::new(ContextStore::in_memory(Duration::from_secs(5)));
            let agent = Agent::new("remote", local, store);
            let server = Server::bind(
                "127.0.0.1:0".parse().expect("addr"),
                ServerConfig::default(),
                Arc::new(agent),
            )
            .await
            .expect("bind");
            let url = format!("http://{}", server.local_addr().expect("addr"));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.run(async move {
                let _ = stopped.await;
            }));
            let args = HandshakeRemoteArgs {
                url,
                identity: path.clone(),
                token_file: None,
                agent_id: "me".into(),
                http2: true,
                timeout: 30.0,
                ca: None,
                client_cert: None,
                client_key: None,
            };
            let answer = handshake(&args)
                .await
                .expect("local side fine")
                .expect("answered");
            let _ = stop.send(());
            task.await.expect("join").expect("served");
            answer
        });
        assert_eq!(answer["resolution_path"], "hash_match");
        assert_eq!(answer["mode"], "LATENT");
        assert_eq!(answer["agent_id"], "remote");
        assert_eq!(answer["session_id"].as_str().map(str::len), Some(32));
        assert_eq!(answer["client_resolution"]["agrees"], true);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

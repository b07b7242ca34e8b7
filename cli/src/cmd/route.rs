//! `avp route`: forwards each transmit to the agent named by its
//! `target_agent_id`, reading only header and metadata (AVP-HTTP-50..54).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use avp_transport::{AvpClient, ClientConfig, Role, Router, Server, ServerConfig};
use clap::Args;

use super::send::{read_token_file, runtime};
use super::serve::{announce, shutdown_signal};

/// Arguments of `avp route`.
#[derive(Args, Debug)]
pub(crate) struct RouteArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8471")]
    listen: SocketAddr,
    /// `AGENT_ID=URL`: messages whose target_agent_id is AGENT_ID go to URL (repeatable).
    #[arg(long = "route", value_name = "AGENT_ID=URL", required = true)]
    routes: Vec<String>,
    /// Require `Authorization: Bearer <token>` from clients (the header is passed on unchanged).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Largest accepted message in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    max_body: u64,
}

pub(crate) fn run(args: &RouteArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(route(args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("avp route: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn route(args: &RouteArgs) -> anyhow::Result<()> {
    let routes = parse_routes(&args.routes)?;
    let config = ServerConfig {
        token: read_token_file(args.token_file.as_deref())?,
        max_body: args.max_body,
        ..ServerConfig::default()
    };
    let server = Server::bind(
        args.listen,
        config,
        Role::Router(Arc::new(Router::new(routes))),
    )
    .await
    .with_context(|| format!("binding {}", args.listen))?;
    announce(server.local_addr()?)?;
    server.run(shutdown_signal()).await?;
    Ok(())
}

fn parse_routes(specs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut routes = HashMap::new();
    for spec in specs {
        let Some((agent, url)) = spec.split_once('=') else {
            bail!("--route {spec:?}: expected AGENT_ID=URL");
        };
        // Same URL rules as the client, checked now rather than at the first message.
        AvpClient::new(url, ClientConfig::default())
            .with_context(|| format!("--route {spec:?}"))?;
        if routes.insert(agent.to_owned(), url.to_owned()).is_some() {
            bail!("--route: agent {agent:?} is routed twice");
        }
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_bad_ones_are_refused() {
        let ok = parse_routes(&["bob=http://127.0.0.1:9/".to_owned()]).expect("valid");
        assert_eq!(
            ok.get("bob").map(String::as_str),
            Some("http://127.0.0.1:9/")
        );
        assert!(parse_routes(&["bob".to_owned()]).is_err());
        assert!(parse_routes(&["bob=ftp://x".to_owned()]).is_err());
        assert!(parse_routes(&["a=http://x:1".to_owned(), "a=http://y:1".to_owned()]).is_err());
    }
}

//! `avp route`: forwards each transmit to the agent named by its
//! `target_agent_id`, reading only header and metadata (AVP-HTTP-50..56).
//! HTTPS on both sides: `--tls-cert/--tls-key` towards clients, `--ca` (and
//! `--client-cert/--client-key`) towards `https://` upstreams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use avp_transport::{AvpClient, ClientConfig, Router, Server, ServerConfig};
use clap::Args;

use super::send::{ClientTlsArgs, read_token_file, runtime};
use super::serve::{ServerLimitArgs, ServerTlsArgs, announce, shutdown_signal};

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
    /// Seconds an upstream may take to answer once it has the whole request
    /// (then 504 `upstream_timeout`, AVP-HTTP-56).
    #[arg(long, default_value_t = 60)]
    upstream_timeout: u64,
    #[command(flatten)]
    limits: ServerLimitArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    upstream_tls: ClientTlsArgs,
}

pub(crate) fn run(args: &RouteArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(route(args))) {
        Ok(()) => ExitCode::SUCCESS,
        // `avp route | head -1`: the address line was the only output wanted.
        Err(err) if crate::out::is_broken_pipe(&err) => {
            ExitCode::from(crate::out::EXIT_BROKEN_PIPE)
        }
        Err(err) => {
            crate::out::note(format_args!("avp route: {err:#}"));
            ExitCode::from(2)
        }
    }
}

async fn route(args: &RouteArgs) -> anyhow::Result<()> {
    let routes = parse_routes(&args.routes)?;
    let token = read_token_file(args.token_file.as_deref())?;
    let config: ServerConfig = args.limits.config(token, args.max_body, &args.tls)?;
    let mut router =
        Router::new(routes).with_upstream_timeout(Duration::from_secs(args.upstream_timeout));
    if let Some(tls) = args.upstream_tls.config()? {
        router = router.with_upstream_tls(tls);
    }
    let https = config.tls.is_some();
    let server = Server::bind(args.listen, config, Arc::new(router))
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce(server.local_addr()?, https)?;
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

//! `avp store ls DIR [--json]`: what an agent received, read from its store
//! directory without changing it (AVP-HTTP-63): id, kind, size, arrival
//! time, session, sender, target and, under mutual TLS, the client
//! certificate identity.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use avp_transport::{ContextStore, StoredContext};
use clap::{Args, Subcommand};
use serde_json::json;

/// Arguments of `avp store`.
#[derive(Args, Debug)]
pub(crate) struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// List the messages in a store directory, oldest first.
    Ls {
        /// The directory given to `avp serve --store`.
        dir: PathBuf,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: &StoreArgs) -> ExitCode {
    let StoreCommand::Ls { dir, json } = &args.command;
    if !dir.is_dir() {
        eprintln!("avp store ls: {} is not a directory", dir.display());
        return ExitCode::from(2);
    }
    let contexts = match ContextStore::scan(dir) {
        Ok(contexts) => contexts,
        Err(err) => {
            eprintln!("avp store ls: reading {}: {err}", dir.display());
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if *json {
        let rows: Vec<_> = contexts.iter().map(as_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(rows))
    } else {
        print_table(&mut out, &contexts)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `| head`: quietly 141 (AVP-CLI-7); any other write failure is 2.
        Err(e) => crate::out::status_for(&e),
    }
}

fn kind(context: &StoredContext) -> &'static str {
    if context.text { "text" } else { "avp" }
}

fn as_json(context: &StoredContext) -> serde_json::Value {
    json!({
        "id": context.id,
        "kind": kind(context),
        "bytes": context.len,
        "received_at": utc(context.received_at),
        "session_id": context.session_id,
        "source_agent_id": context.source_agent_id,
        "target_agent_id": context.target_agent_id,
        "client_identity": context.client_identity,
        "path": context.path.as_ref().map(|p| p.display().to_string()),
    })
}

fn print_table(out: &mut impl Write, contexts: &[StoredContext]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<32}  {:<4}  {:>12}  {:<24}  {:<20}  {:<20}  {:<20}  client",
        "id", "kind", "bytes", "received (UTC)", "session", "from", "to"
    )?;
    for c in contexts {
        writeln!(
            out,
            "{:<32}  {:<4}  {:>12}  {:<24}  {:<20}  {:<20}  {:<20}  {}",
            c.id,
            kind(c),
            c.len,
            utc(c.received_at),
            c.session_id,
            c.source_agent_id,
            c.target_agent_id,
            c.client_identity.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds).
fn utc(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_print_as_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(utc(at), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00.000Z");
    }
}

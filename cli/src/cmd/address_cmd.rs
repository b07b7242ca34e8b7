//! `avp address IN -o OUT`: the routing fields of an existing message
//! (AVP-CLI-12). `avp` only: it reuses decode's and encode's I/O helpers,
//! which the engine binary does not have.

use clap::Args;

use super::address::AddressArgs;

/// Arguments of `avp address`.
#[derive(Args, Debug)]
pub(crate) struct AddressCmdArgs {
    /// The message to address (`-` for stdin).
    input: std::path::PathBuf,
    /// Where to write the addressed message (written to a temporary file, then renamed).
    #[arg(short = 'o', long = "output")]
    output: std::path::PathBuf,
    /// session_id to write.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// source_agent_id to write (this agent).
    #[arg(long, value_name = "ID")]
    source: Option<String>,
    /// target_agent_id to write (the agent `avp route` forwards it to).
    #[arg(long, value_name = "ID")]
    target: Option<String>,
}

/// `avp address IN -o OUT`: rewrites the routing fields of an existing
/// message (one the SDK made, say). Prints `{"output","length"}` like
/// `encode` (AVP-CLI-12); errors as AVP-CLI-3.
pub(crate) fn run(args: AddressCmdArgs) -> std::process::ExitCode {
    use super::decode::{EXIT_INVALID, codec_error, io_error, print_error, read_input};
    let data = match read_input(&args.input) {
        Ok(d) => d,
        Err(e) => return io_error(&args.input, &e),
    };
    let signed = match avp_codec::decode(&data) {
        Ok(msg) => msg.metadata.extra.get(avp_codec::mac::TAG_KEY).is_some(),
        Err(e) => return codec_error(&e),
    };
    if signed {
        // A new metadata invalidates the tag, and only the key holder can make another.
        print_error(
            "invalid_argument",
            &format!(
                "{}: the message carries a MAC ({}); address it before signing (avp encode --mac-key)",
                args.input.display(),
                avp_codec::mac::TAG_KEY
            ),
        );
        return std::process::ExitCode::from(EXIT_INVALID);
    }
    let fields = AddressArgs {
        session: args.session,
        source_agent: args.source,
        target_agent: args.target,
    };
    let bytes = match fields.readdress(data) {
        Ok(b) => b,
        Err(e) => return codec_error(&e),
    };
    if let Err(e) = super::encode::write_atomically(&args.output, &bytes) {
        return io_error(&args.output, &e);
    }
    crate::out::finish_report(
        serde_json::json!({
            "output": args.output.display().to_string(),
            "length": bytes.len(),
        }),
        &args.output,
    )
}

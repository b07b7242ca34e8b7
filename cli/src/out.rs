//! Writing to stdout and stderr without panicking (spec/impl/cli.md, AVP-CLI-7).
//!
//! `println!` panics when stdout is a closed pipe (`avp decode F | head -c1`),
//! so every command writes through [`line`] / [`text`], which turn a broken
//! pipe into a quiet exit with the shell's SIGPIPE status (128 + 13) and any
//! other write failure into the I/O status 2. [`install_panic_hook`] is the
//! safety net for the print sites that are not ours (clap, libraries, the
//! transport commands): the same mapping, applied to std's print panics.

use std::io::Write;
use std::process::ExitCode;

/// Status of a command whose stdout was closed early: what a shell reports
/// for a process killed by SIGPIPE, so `set -o pipefail` scripts see the usual value.
pub(crate) const EXIT_BROKEN_PIPE: u8 = 141;
/// Status for any other failure to write the output (as AVP-CLI-2's I/O code).
const EXIT_WRITE: u8 = 2;

/// The status for a failed write to stdout: 141 for a closed pipe (quietly),
/// 2 with a note on stderr for anything else.
pub(crate) fn status_for(e: &std::io::Error) -> ExitCode {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ExitCode::from(EXIT_BROKEN_PIPE)
    } else {
        // stderr may be closed too; a lost message must not become a panic.
        let _ = writeln!(std::io::stderr(), "avp: cannot write the output: {e}");
        ExitCode::from(EXIT_WRITE)
    }
}

/// Writes `s` as it is to stdout and flushes.
pub(crate) fn text(s: &str) -> Result<(), ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| status_for(&e))
}

/// Writes `s` and a newline to stdout and flushes.
pub(crate) fn line(s: impl std::fmt::Display) -> Result<(), ExitCode> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(|e| status_for(&e))
}

/// Whether an output path names stdout: `-o -` writes the output itself to
/// stdout, for every command, as `think --out -` does (AVP-CLI-8).
pub(crate) fn names_stdout(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// A command's report line: on stdout, or on stderr when stdout already
/// carries the command's output (`-o -`), so the output stays a clean stream.
pub(crate) fn finish_report(s: impl std::fmt::Display, output: &std::path::Path) -> ExitCode {
    if !names_stdout(output) {
        return finish_line(s);
    }
    // stderr may be closed; the output was written, so the status stays success.
    let _ = writeln!(std::io::stderr(), "{s}");
    ExitCode::SUCCESS
}

/// `line`, for a command's last act: its status is the command's status.
pub(crate) fn finish_line(s: impl std::fmt::Display) -> ExitCode {
    match line(s) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Whether a command failed only because its stdout was closed: then it ends
/// quietly with [`EXIT_BROKEN_PIPE`] instead of reporting an error.
pub(crate) fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `s` and a newline to stderr; a closed stderr is not an error worth dying for.
pub(crate) fn note(s: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Turns std's "failed printing to stdout/stderr" panics into exits with
/// the statuses above, so no print site anywhere in the process can crash
/// the command with status 101.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") {
            let code = if msg.contains("Broken pipe") {
                EXIT_BROKEN_PIPE
            } else {
                note(format_args!("avp: {msg}"));
                EXIT_WRITE
            };
            std::process::exit(i32::from(code));
        }
        default(info);
    }));
}

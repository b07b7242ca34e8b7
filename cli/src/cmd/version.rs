//! `avp version`: what this binary is and what it was built with.

use std::process::ExitCode;

pub(crate) fn run() -> ExitCode {
    // What `avp think` would find, not how this binary was built: `avp`
    // itself is the same either way (the engine is a separate executable).
    let engine = match super::engine_exec::engine_path() {
        Ok(p) if p.is_file() => "engine",
        _ => "no-engine",
    };
    crate::out::finish_line(format_args!("avp {} ({engine})", env!("CARGO_PKG_VERSION")))
}

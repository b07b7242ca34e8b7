//! `avp version`: what this binary is and what it was built with.

use std::process::ExitCode;

pub(crate) fn run() -> ExitCode {
    let engine = if cfg!(feature = "engine") {
        "engine"
    } else {
        "no-engine"
    };
    crate::out::finish_line(format_args!("avp {} ({engine})", env!("CARGO_PKG_VERSION")))
}

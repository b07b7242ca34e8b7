//! `avp version`: what this binary is and what it was built with.

use std::process::ExitCode;

pub(crate) fn run() -> ExitCode {
    let engine = if cfg!(feature = "engine") {
        "engine"
    } else {
        "no-engine"
    };
    println!("avp {} ({engine})", env!("CARGO_PKG_VERSION"));
    ExitCode::SUCCESS
}

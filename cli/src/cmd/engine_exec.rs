//! `avp think | generate | project`: run by the `avp-engine` executable
//! installed beside `avp` (design: spec/impl/cli.md, AVP-CLI-8).
//!
//! libtorch is ~500 MB of shared objects that the dynamic loader maps and
//! relocates at start-up, before `main`, whichever subcommand runs; linked
//! into `avp` it made `avp --help` take 0.5 s and 490 MB and every server
//! idle at 370 MB. The engine commands therefore live in a second binary and
//! `avp` replaces itself with it (`exec`: same pid, stdio, signals and exit
//! status), so `avp` itself never links libtorch, however it was built. A
//! lazily `dlopen`ed engine would need unsafe FFI in the CLI; a separate
//! executable needs none and can be checked with `ldd`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

/// Everything after the subcommand, passed on untouched (`--help` included:
/// the engine binary owns these commands' options and help).
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub(crate) struct EngineArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// The name of the engine executable.
pub(crate) const ENGINE_EXE: &str = "avp-engine";

/// Where the engine executable is: `$AVP_ENGINE` if set, else beside `avp`.
pub(crate) fn engine_path() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("AVP_ENGINE") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name(ENGINE_EXE))
}

/// Replaces this process with `avp-engine SUBCOMMAND ARGS`; returns only on failure.
pub(crate) fn run(subcommand: &str, args: EngineArgs) -> ExitCode {
    let path = match engine_path() {
        Ok(p) => p,
        Err(e) => {
            crate::out::note(format_args!(
                "avp {subcommand}: cannot locate this executable: {e}"
            ));
            return ExitCode::from(2);
        }
    };
    let err = Command::new(&path).arg(subcommand).args(&args.args).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        crate::out::note(format_args!(
            "avp {subcommand}: needs the engine, and {} does not exist.\n\
             Build it with `cargo install --path cli --features engine` (after `bash scripts/setup-venv.sh`),\n\
             or `cargo build -p avp-cli --features engine`; see README.md.",
            path.display()
        ));
    } else {
        crate::out::note(format_args!(
            "avp {subcommand}: cannot run {}: {err}",
            path.display()
        ));
    }
    ExitCode::from(2)
}

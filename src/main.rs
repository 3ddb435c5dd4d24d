//! The `lockstep` binary: parses the command line and hands over to [`lockstep::cli`].
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    lockstep::cli::main()
}

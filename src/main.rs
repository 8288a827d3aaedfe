//! `iron-proxy`: parse the command line, dispatch, exit 0/1/2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match iron_proxy::cli::Cli::try_parse() {
        Ok(cli) => iron_proxy::cli::dispatch(cli),
        Err(e) => {
            let _ = e.print();
            // clap: 0 for --help/--version, 2 for usage errors.
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
    }
}

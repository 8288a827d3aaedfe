//! `iron-agent`: parse the command line, dispatch, exit 0/1/2.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match iron_proxy::agent::Cli::try_parse() {
        Ok(cli) => iron_proxy::agent::dispatch(cli),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
    }
}

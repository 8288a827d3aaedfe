//! `iron-agent git-credential`: git's credential helper protocol
//! (git-credential(1)). For `get`, answers username `x-access-token` and the
//! stub PAT; the proxy swaps it for the real one in the Basic header git
//! builds. `store` and `erase` are accepted and ignored: there is nothing
//! real to store.

use std::io::{BufRead, Write};
use std::process::ExitCode;

pub fn run(stub: &str, operation: &str) -> ExitCode {
    // git writes its request and closes stdin; read it all so git never
    // blocks on a full pipe.
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line {
            Ok(l) if l.is_empty() => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if operation != "get" {
        return ExitCode::SUCCESS;
    }
    let mut out = std::io::stdout().lock();
    let written =
        writeln!(out, "username=x-access-token").and_then(|_| writeln!(out, "password={stub}"));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

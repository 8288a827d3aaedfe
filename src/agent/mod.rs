//! `iron-agent`, the thin agent-side companion (SPEC §9).
//!
//! Owns: preparing an agent's home so that everything it runs goes through
//! the proxy holding only stubs (`setup`), proving that it still does
//! (`check`), and answering git's credential requests with the stub PAT
//! (`git-credential`). No server, no background work. Shares only the CA
//! and PEM helpers with the proxy.

mod check;
mod git_credential;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub const DEFAULT_ACCESS_STUB: &str = "access-token-stub";
pub const DEFAULT_REFRESH_STUB: &str = "refresh-token-stub";
pub const DEFAULT_PAT_STUB: &str = "github-token-stub";

#[derive(Debug, Parser)]
#[command(
    name = "iron-agent",
    version,
    about = "Agent-side companion of iron-proxy: stub credentials, CA bundle, proxy environment, git helper"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write stub credentials, the CA bundle, the proxy environment file and git's credential helper.
    #[command(group(clap::ArgGroup::new("ca").required(true).args(["ca_file", "ca_url"])))]
    Setup {
        /// The proxy agents use, e.g. http://iron-proxy:8080.
        #[arg(long)]
        proxy: String,
        /// The proxy CA certificate (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Where to fetch the proxy CA bundle, e.g. http://iron-proxy:9090/ca.pem.
        #[arg(long)]
        ca_url: Option<String>,
        /// Home directory to prepare (default: $HOME).
        #[arg(long)]
        home: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_ACCESS_STUB)]
        access_stub: String,
        #[arg(long, default_value = DEFAULT_REFRESH_STUB)]
        refresh_stub: String,
        #[arg(long, default_value = DEFAULT_PAT_STUB)]
        pat_stub: String,
    },
    /// Verify the setup: stubs in place, proxy reachable, CA trusted end to end.
    Check {
        /// Home directory that `setup` prepared (default: $HOME).
        #[arg(long)]
        home: Option<PathBuf>,
        /// The proxy (default: HTTPS_PROXY from the env file `setup` wrote).
        #[arg(long)]
        proxy: Option<String>,
        /// An allowlisted host to reach through the proxy, as host or host:port.
        #[arg(long, default_value = "api.anthropic.com:443")]
        host: String,
    },
    /// git credential helper: answers `get` with username x-access-token and the stub PAT.
    GitCredential {
        /// The stub PAT to hand to git.
        #[arg(long, default_value = DEFAULT_PAT_STUB)]
        stub: String,
        /// git's operation: get, store or erase.
        operation: String,
    },
}

pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Setup {
            proxy,
            ca_file,
            ca_url,
            home,
            access_stub,
            refresh_stub,
            pat_stub,
        } => {
            let ca = match (ca_file, ca_url) {
                (Some(f), _) => setup::CaFrom::File(f),
                (None, Some(u)) => setup::CaFrom::Url(u),
                (None, None) => return ExitCode::from(2),
            };
            let stubs = Stubs {
                access: access_stub,
                refresh: refresh_stub,
                pat: pat_stub,
            };
            setup::run(&proxy, &ca, home_dir(home).as_deref(), &stubs)
        }
        Command::Check { home, proxy, host } => {
            check::run(home_dir(home).as_deref(), proxy.as_deref(), &host)
        }
        Command::GitCredential { stub, operation } => git_credential::run(&stub, &operation),
    }
}

/// The three stub values an agent holds.
#[derive(Debug, Clone)]
pub struct Stubs {
    pub access: String,
    pub refresh: String,
    pub pat: String,
}

fn home_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("HOME").map(PathBuf::from))
}

/// Where `setup` writes, relative to the home directory.
#[derive(Debug)]
pub struct Layout {
    pub credentials: PathBuf,
    pub bundle: PathBuf,
    pub env: PathBuf,
    pub gitconfig: PathBuf,
}

impl Layout {
    pub fn new(home: &std::path::Path) -> Layout {
        let dir = home.join(".config/iron-agent");
        Layout {
            credentials: home.join(".claude/.credentials.json"),
            bundle: dir.join("ca-bundle.pem"),
            env: dir.join("env"),
            gitconfig: home.join(".gitconfig"),
        }
    }
}

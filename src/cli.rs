//! The `iron-proxy` command line (SPEC §3): one function per subcommand,
//! each returning the process exit code (0 ok, 1 operational failure; clap
//! itself exits 2 on usage errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::{self, App};
use crate::config::Config;
use crate::store::{BuildMode, Snapshot};
use crate::telemetry::{self, LogFormat};

pub const DEFAULT_CONFIG: &str = "config/iron-proxy.toml";

/// How long SIGTERM waits for in-flight requests before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "iron-proxy",
    version,
    about = "Egress proxy for AI agent pods: allowlist, TLS interception, stub-to-real credential swap"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the proxy and admin ports.
    Run {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log format on stderr (default: pretty on a terminal, JSON otherwise).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate the config, the CA and every credential source; exit 1 on any problem.
    Check {
        /// Configuration file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Manage the interception CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Write a new CA: DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "iron-proxy CA")]
        name: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config, log_format } => run(&config, log_format),
        Command::Check { config } => check(&config),
        Command::Ca {
            command: CaCommand::Init { out, name, force },
        } => ca_init(&out, &name, force),
    }
}

fn run(config: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let _guard = telemetry::init(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let app = match App::start(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let shared = app.shared().clone();
        let signals = tokio::spawn(crate::shutdown::watch(shared));
        app.serve(DRAIN_TIMEOUT).await;
        signals.abort();
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Reports every problem: config rules, then (with whatever parsed) the CA,
/// trust files and credential sources.
fn check(path: &Path) -> ExitCode {
    let (config, mut problems) = match Config::load_lenient(path) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let generate = config
        .as_ref()
        .is_some_and(|c| c.ca.generate_if_missing && !c.ca.cert.exists());
    let summary =
        config.and_then(
            |c| match Snapshot::build(c, None, BuildMode::Check, &app::provider()) {
                Ok(snap) => Some(snap),
                Err(ps) => {
                    problems.extend(ps);
                    None
                }
            },
        );
    match summary {
        Some(snap) if problems.is_empty() => {
            let ca = if generate {
                format!(
                    "CA will be generated at {} on first run",
                    snap.config.ca.cert.display()
                )
            } else {
                format!("CA sha256 {}", snap.ca.fingerprint())
            };
            println!(
                "{}: ok ({} allow rule(s), {} credential(s), {ca})",
                path.display(),
                snap.config.policy.rules().len(),
                snap.credentials.len(),
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in &problems {
                eprintln!("  - {p}");
            }
            ExitCode::FAILURE
        }
    }
}

fn ca_init(out: &Path, name: &str, force: bool) -> ExitCode {
    match crate::ca::init(out, name, force) {
        Ok((cert, key)) => {
            println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iron-proxy ca init: {e}");
            ExitCode::FAILURE
        }
    }
}

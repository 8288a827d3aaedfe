//! The `iron-proxy` command line (SPEC §3): one function per subcommand,
//! each returning the process exit code (0 ok, 1 operational failure; clap
//! itself exits 2 on usage errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin_client::{self, Target, ValueFrom};
use crate::app::{self, App};
use crate::config::Config;
use crate::store::{BuildContext, BuildMode, Snapshot};
use crate::telemetry::{self, LogFormat};

pub const DEFAULT_CONFIG: &str = "config/iron-proxy.toml";

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
    /// Rotate credentials through the admin API of a running proxy.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Replace one credential's real value; prints its new sha256 prefix, never the value.
    #[command(group(clap::ArgGroup::new("value").required(true).args(["value_file", "stdin"])))]
    Set {
        /// Credential name, as in `[[credential]] name`.
        name: String,
        /// Read the new value from this file (one trailing newline is ignored).
        #[arg(long)]
        value_file: Option<PathBuf>,
        /// Read the new value from standard input.
        #[arg(long)]
        stdin: bool,
        /// Admin API base URL (default: http:// + `listen.admin` from the config).
        #[arg(long)]
        admin: Option<String>,
        /// File holding the admin token (default: `admin.token_file` from the config).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Configuration file to read defaults from.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
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
        Command::Credential {
            command:
                CredentialCommand::Set {
                    name,
                    value_file,
                    stdin: _,
                    admin,
                    token_file,
                    config,
                },
        } => {
            let from = value_file.map_or(ValueFrom::Stdin, ValueFrom::File);
            credential_set(
                &name,
                &from,
                admin.as_deref(),
                token_file.as_deref(),
                &config,
            )
        }
    }
}

fn credential_set(
    name: &str,
    from: &ValueFrom,
    admin: Option<&str>,
    token_file: Option<&Path>,
    config: &Path,
) -> ExitCode {
    let result = (|| {
        let target = Target::resolve(config, admin, token_file)?;
        let value = admin_client::read_value(from)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                admin_client::ClientError::Setup(format!("cannot start the async runtime: {e}"))
            })?;
        runtime.block_on(admin_client::set_credential(&target, name, value))
    })();
    match result {
        Ok(described) => {
            let field = |k: &str| {
                described
                    .get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_owned()
            };
            println!(
                "credential {name} updated: sha256 {}… (changed_at {})",
                field("sha256_prefix"),
                field("changed_at")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iron-proxy credential set: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let _guard = telemetry::init(log_format);
    // With one CPU to run on (taskset, or a cgroup quota of one), a
    // single-threaded runtime does the same work without cross-thread
    // wake-ups and queues: measurably more requests per CPU second.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut builder, flavor) = if cpus == 1 {
        (
            tokio::runtime::Builder::new_current_thread(),
            "current_thread",
        )
    } else {
        (tokio::runtime::Builder::new_multi_thread(), "multi_thread")
    };
    tracing::info!(cpus, runtime = flavor, "async runtime");
    let runtime = match builder.enable_all().build() {
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
        app.serve().await;
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
    let (provider, metrics) = (app::provider(), crate::metrics::Metrics::new());
    let cx = BuildContext {
        provider: &provider,
        metrics: &metrics,
        mode: BuildMode::Check,
    };
    let summary = config.and_then(|c| match Snapshot::build(c, None, cx) {
        Ok(snap) => Some(snap),
        Err(ps) => {
            problems.extend(ps);
            None
        }
    });
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

//! Wiring: config → first snapshot → listeners → drain.
//!
//! Owns: the process-wide `Shared` state (store, leaf minter, crypto
//! provider, shutdown token, task tracker), binding both ports after the
//! whole configuration is known to be valid, and `reload` (SIGHUP): build a
//! new snapshot from the files, publish it, or change nothing and say why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Problem};
use crate::mint::{MintError, Minter};
use crate::store::{BuildMode, Snapshot, Store};

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub minter: Minter,
    pub provider: Arc<CryptoProvider>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error("cannot listen on {addr} ({key}): {source}; is another process using that port?")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mint(#[from] MintError),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a config file and builds the snapshot it describes.
pub fn build(
    path: &std::path::Path,
    previous: Option<&Snapshot>,
    mode: BuildMode,
    provider: &Arc<CryptoProvider>,
) -> Result<Snapshot, AppError> {
    let config = Config::load(path)?;
    Snapshot::build(config, previous, mode, provider).map_err(|problems| AppError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// A bound, not yet serving, proxy.
#[derive(Debug)]
pub struct App {
    shared: Arc<Shared>,
    proxy: TcpListener,
    admin: TcpListener,
}

impl App {
    /// Validates everything, then binds: a bad config never opens a port.
    pub async fn start(config_path: &std::path::Path) -> Result<App, AppError> {
        let provider = provider();
        let snapshot = build(config_path, None, BuildMode::Run, &provider)?;
        let listen = snapshot.config.listen.clone();
        let bind = |key, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { key, addr, source })
        };
        let proxy = bind("listen.proxy", listen.proxy).await?;
        let admin = bind("listen.admin", listen.admin).await?;
        let shared = Arc::new(Shared {
            store: Store::new(snapshot),
            minter: Minter::new(provider.clone())?,
            provider,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        Ok(App {
            shared,
            proxy,
            admin,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shared.shutdown` is cancelled; then waits up to
    /// `drain` for in-flight work.
    pub async fn serve(self, drain: Duration) {
        let proxy_addr = self.proxy.local_addr().ok();
        let admin_addr = self.admin.local_addr().ok();
        let max = self.shared.store.load().config.limits.max_connections;
        tracing::info!(
            proxy = %display_addr(proxy_addr),
            admin = %display_addr(admin_addr),
            "listening"
        );
        let proxy = tokio::spawn(crate::listener::run(self.shared.clone(), self.proxy, max));
        let admin = tokio::spawn(crate::admin::run(self.shared.clone(), self.admin));
        self.shared.shutdown.cancelled().await;
        let _ = proxy.await;
        let _ = admin.await;
        self.shared.tasks.close();
        let open = self.shared.tasks.len();
        tracing::info!(open, drain = ?drain, "draining");
        if tokio::time::timeout(drain, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.tasks.len(),
                "drain timeout reached; closing the rest"
            );
        }
    }
}

fn display_addr(addr: Option<SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// Rebuilds the snapshot from the files on disk and publishes it; on any
/// problem the running snapshot stays and the error is returned.
pub fn reload(shared: &Shared) -> Result<(), AppError> {
    let current = shared.store.load();
    let next = build(
        &current.config.path,
        Some(&current),
        BuildMode::Run,
        &shared.provider,
    )?;
    if next.config.listen != current.config.listen
        || next.config.limits.max_connections != current.config.limits.max_connections
    {
        tracing::warn!(
            "listen addresses and limits.max_connections take effect only after a restart"
        );
    }
    let ca_changed = next.ca_generation != current.ca_generation;
    shared.store.replace(next);
    if ca_changed {
        shared.minter.clear();
    }
    tracing::info!(ca_changed, "reloaded");
    Ok(())
}

//! Wiring: config → first snapshot → listeners → drain.
//!
//! Owns: the process-wide `Shared` state (store, leaf minter, metrics, the
//! reload handle, crypto provider, shutdown tokens, task tracker), binding
//! both ports only after the whole configuration is known to be valid, and
//! the order of shutdown: stop accepting, drain (bounded), then stop the
//! admin port, which reports not-ready while draining.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Problem};
use crate::metrics::Metrics;
use crate::mint::{MintError, MintStats, Minter};
use crate::reload;
use crate::store::{BuildContext, BuildMode, Snapshot, Store};

/// State every connection task shares.
#[derive(Debug)]
pub struct Shared {
    pub store: Store,
    pub minter: Minter,
    pub metrics: Arc<Metrics>,
    pub reload: reload::Handle,
    pub refresher: crate::refresh::Refresher,
    pub provider: Arc<CryptoProvider>,
    /// Cancelled on SIGTERM/SIGINT: stop accepting, finish in-flight work.
    pub shutdown: CancellationToken,
    /// Cancelled once draining is over: the admin port closes last.
    pub stopped: CancellationToken,
    /// Downstream connections and tunnels, waited for when draining.
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

/// A bound, not yet serving, proxy.
#[derive(Debug)]
pub struct App {
    shared: Arc<Shared>,
    reload_rx: reload::Receiver,
    proxy: TcpListener,
    admin: TcpListener,
}

impl App {
    /// Validates everything, then binds: a bad config never opens a port.
    pub async fn start(config_path: &Path) -> Result<App, AppError> {
        let provider = provider();
        let metrics = Arc::new(Metrics::new());
        let config = Config::load(config_path)?;
        let generates =
            config.ca.generate_if_missing && !config.ca.cert.exists() && !config.ca.key.exists();
        let (reload, mut reload_rx) = reload::channel(&config);
        let cx = BuildContext {
            provider: &provider,
            metrics: &metrics,
            mode: BuildMode::Run,
        };
        let snapshot = Snapshot::build(config, None, cx).map_err(|problems| AppError::Invalid {
            path: config_path.to_owned(),
            problems,
        })?;
        if generates {
            reload_rx.rebaseline(&snapshot.config);
        }
        metrics.generation.set(1);
        metrics.ca_generation.set(1);
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
            minter: Minter::new(provider.clone(), MintStats::from_metrics(&metrics))?,
            metrics,
            reload,
            refresher: Default::default(),
            provider,
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        Ok(App {
            shared,
            reload_rx,
            proxy,
            admin,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shared.shutdown` is cancelled; then waits up to
    /// `limits.drain_timeout` for in-flight work.
    pub async fn serve(self) {
        let shared = self.shared;
        let addr = |l: &TcpListener| {
            l.local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        tracing::info!(proxy = %addr(&self.proxy), admin = %addr(&self.admin), "listening");
        let max = shared.store.load().config.limits.max_connections;
        let proxy = tokio::spawn(crate::listener::run(shared.clone(), self.proxy, max));
        let admin = tokio::spawn(crate::admin::run(shared.clone(), self.admin));
        let reloader = tokio::spawn(reload::run(shared.clone(), self.reload_rx));
        shared.shutdown.cancelled().await;
        let _ = proxy.await;
        let _ = reloader.await;
        shared.tasks.close();
        let drain = shared.store.load().config.limits.drain_timeout;
        tracing::info!(open = shared.tasks.len(), drain = ?drain, "draining");
        if tokio::time::timeout(drain, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = shared.tasks.len(),
                "limits.drain_timeout reached; closing the rest"
            );
        }
        shared.stopped.cancel();
        let _ = admin.await;
    }
}

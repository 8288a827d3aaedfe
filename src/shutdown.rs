//! Process signals (SPEC §3): SIGTERM/SIGINT drain and exit, SIGHUP reloads.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::app::{self, Shared};

/// Waits for signals until a terminating one arrives, then cancels
/// `shared.shutdown`. SIGHUP reloads in place.
pub async fn watch(shared: Arc<Shared>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = app::reload(&shared) {
                    tracing::error!(error = %e, "reload failed; still serving the previous configuration");
                }
            }
        }
    }
    tracing::info!("shutdown requested");
    shared.shutdown.cancel();
    Ok(())
}

//! Process signals (SPEC §3): SIGTERM/SIGINT drain and exit, SIGHUP reloads.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::app::Shared;

/// Waits for signals until a terminating one arrives, then cancels
/// `shared.shutdown`. SIGHUP asks the reload task for a full reload.
pub async fn watch(shared: Arc<Shared>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // The reload task logs the outcome and counts failures.
                let reload = shared.reload.clone();
                tokio::spawn(async move { let _ = reload.reload_now().await; });
            }
        }
    }
    tracing::info!("shutdown requested");
    shared.shutdown.cancel();
    Ok(())
}

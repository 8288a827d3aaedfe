//! The proxy port's accept loop.
//!
//! Owns: accepting TCP connections, the `max_connections` cap (a connection
//! over the cap gets one `503` line and is closed, rather than waiting
//! unanswered in the backlog), backing off when accept itself fails (file
//! descriptors exhausted), and one task per connection, tracked so shutdown
//! can drain it. The permit travels with the connection into its tunnel.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::Shared;
use crate::config::Limits;
use crate::error::{ErrorKind, ProxyError};
use crate::framing::Watched;
use crate::pipeline::Downstream;
use crate::prefixed::Prefixed;

/// One admitted downstream connection: its permit under `max_connections`
/// and its place in `iron_proxy_open_connections`, released together when
/// the connection (and its tunnel, if any) is gone.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: prometheus::IntGauge) -> Slot {
        open.inc();
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

pub async fn run(shared: Arc<Shared>, listener: TcpListener, max_connections: usize) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = Arc::new(Slot::new(permit, shared.metrics.open_connections.clone()));
                shared
                    .tasks
                    .spawn(handle(shared.clone(), stream, client, slot));
            }
            Err(_) => {
                shared.metrics.refused_connections.inc();
                tracing::warn!(client = %client, max_connections, "connection refused: over limits.max_connections");
                shared.tasks.spawn(refuse(stream));
            }
        }
    }
}

async fn refuse(stream: TcpStream) {
    let refusal = ProxyError::new(
        ErrorKind::Overloaded,
        "too many connections (limits.max_connections); retry",
    );
    crate::connect::linger_close(stream, &refusal.to_http1_close()).await;
}

async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: std::net::SocketAddr,
    slot: Arc<Slot>,
) {
    let limits = shared.store.load().config.limits.clone();
    let Some(stream) = crate::connect::first(&shared, stream, client, &limits).await else {
        return;
    };
    // Boxed: a connection's task is allocated at accept, and most are
    // tunnels that never need room for an HTTP/1 connection here.
    Box::pin(serve_plain(shared, stream, client, slot, limits)).await;
}

/// Absolute-form `http://` requests (and any later `CONNECT`) on the proxy
/// port, served by hyper.
async fn serve_plain(
    shared: Arc<Shared>,
    stream: Prefixed<TcpStream>,
    client: std::net::SocketAddr,
    slot: Arc<Slot>,
    limits: Limits,
) {
    let down = Arc::new(Downstream::new(client, None, shared.metrics.clone()));
    let stream = Watched::new(stream, down.ambiguous_framing.clone());
    let service = {
        let (shared, down) = (shared.clone(), down.clone());
        service_fn(move |req| {
            crate::connect::handle(shared.clone(), down.clone(), slot.clone(), req)
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.connect_line_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    crate::serve::drive(conn, &shared, &down.in_flight, limits.idle_timeout, |c| {
        c.graceful_shutdown()
    })
    .await;
}

//! Inside an accepted tunnel: TLS termination and HTTP serving (SPEC §5.1,
//! §5.3).
//!
//! Owns: reading the ClientHello (anything else closes the tunnel), the SNI
//! check against the CONNECT host, the TLS handshake with a minted leaf
//! under `tls_handshake_timeout`, and serving HTTP/1.1 or HTTP/2 per ALPN
//! with the header limits, idle timeout and graceful shutdown that every
//! downstream connection gets (`drive`, also used for the plain port).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;

use crate::app::Shared;
use crate::audit::InFlight;
use crate::config::Limits;
use crate::error::Body;
use crate::framing::Watched;
use crate::pipeline::{self, Downstream};
use crate::policy::{Authority, Host};
use crate::prefixed::Prefixed;

/// Why a tunnel was closed before serving any request.
#[derive(Debug, thiserror::Error)]
enum TunnelError {
    #[error("the client did not complete a TLS handshake within {0:?}")]
    Timeout(Duration),
    #[error("the tunnel did not start with a TLS ClientHello ({0}); plain HTTP must use absolute-form requests")]
    NotTls(std::io::Error),
    #[error("SNI `{sni}` does not match the CONNECT host {host}")]
    SniMismatch { sni: String, host: String },
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Mint(#[from] crate::mint::MintError),
}

/// Terminates the agent's TLS and serves the requests inside the tunnel.
pub async fn tunnel<I>(shared: Arc<Shared>, dest: Authority, client: std::net::SocketAddr, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let snap = shared.store.load();
    let limits = snap.config.limits.clone();
    // Boxed: the handshake's state is large and short-lived; inline, it
    // would stay in the size of every idle tunnel's task.
    let accepted = tokio::time::timeout(
        limits.tls_handshake_timeout,
        Box::pin(handshake(&shared, &snap, &dest, io)),
    )
    .await
    .unwrap_or(Err(TunnelError::Timeout(limits.tls_handshake_timeout)));
    drop(snap);
    let tls = match accepted {
        Ok(tls) => tls,
        Err(e) => {
            tracing::info!(client = %client, host = %dest.host, port = dest.port, reason = %e, "tunnel closed");
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let down = Downstream::new(client, Some(dest), shared.metrics.clone());
    // Boxed, each at its own size: the tunnel's task stays small, and an
    // HTTP/1 tunnel does not carry room for an HTTP/2 connection.
    if h2 {
        Box::pin(serve_h2(shared, Arc::new(down), TokioIo::new(tls), &limits)).await;
    } else {
        let down = Arc::new(down.with_handover());
        let watched = Watched::new(tls, down.ambiguous_framing.clone());
        Box::pin(serve_h1(shared, down, watched, &limits)).await;
    }
}

async fn handshake<I>(
    shared: &Shared,
    snap: &crate::store::Snapshot,
    dest: &Authority,
    io: I,
) -> Result<tokio_rustls::server::TlsStream<I>, TunnelError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = acceptor.await.map_err(TunnelError::NotTls)?;
    if let Some(sni) = start.client_hello().server_name() {
        let matches = matches!(&dest.host, Host::Name(n) if n.eq_ignore_ascii_case(sni.trim_end_matches('.')));
        if !matches {
            return Err(TunnelError::SniMismatch {
                sni: crate::policy::printable(sni),
                host: dest.host.to_string(),
            });
        }
    }
    let config = shared
        .minter
        .server_config(
            &snap.leaves,
            &snap.ca,
            &dest.host,
            snap.config.ca.leaf_validity,
        )
        .await?;
    start
        .into_stream(config)
        .await
        .map_err(TunnelError::Handshake)
}

/// Serves HTTP/2 inside a tunnel until it closes, idles out or the process
/// drains.
async fn serve_h2<I>(shared: Arc<Shared>, down: Arc<Downstream>, io: I, limits: &Limits)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .serve_connection(io, service(&shared, &down));
    drive(conn, &shared, &down.in_flight, limits.idle_timeout, |c| {
        c.graceful_shutdown()
    })
    .await;
}

/// Serves HTTP/1.1 inside a tunnel until it closes, idles out or the
/// process drains.
///
/// Once idle for `PARK_AFTER`, the tunnel is *parked*, as nginx does with
/// keep-alive connections: hyper's connection (two 8 KiB buffers and its
/// state) is dropped and the tunnel waits for the next request's first byte
/// holding only the TLS stream. `idle_timeout` runs while parked; hyper's
/// `header_read_timeout` from that first byte on.
async fn serve_h1<I>(shared: Arc<Shared>, down: Arc<Downstream>, io: I, limits: &Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let mut io = Prefixed::new(Vec::new(), io);
    loop {
        if !next_request(&mut io, &shared, limits.idle_timeout).await {
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            return;
        }
        match Box::pin(serve_until_idle(&shared, &down, io, limits)).await {
            Some(parked) => io = parked,
            None => return,
        }
    }
}

/// How long an HTTP/1.1 tunnel stays idle before it is parked: long enough
/// that a busy keep-alive connection never pays for re-creating hyper's
/// connection, short enough that idle ones hold their buffers only briefly.
const PARK_AFTER: Duration = Duration::from_millis(5);

/// Waits for the next request to begin (its first byte is put back);
/// `false` when the client closed, it idled out, or the process drains.
async fn next_request<T>(io: &mut Prefixed<T>, shared: &Shared, idle: Duration) -> bool
where
    T: AsyncRead + Unpin,
{
    if io.unread() > 0 {
        return true;
    }
    let mut first = [0u8; 1];
    let read = tokio::select! {
        _ = shared.shutdown.cancelled() => return false,
        read = tokio::time::timeout(idle, io.read(&mut first)) => read,
    };
    match read {
        Ok(Ok(1)) => {
            io.put_back(&first);
            true
        }
        _ => false,
    }
}

/// One hyper connection, until it is idle after a request: the stream comes
/// back (with any bytes hyper read beyond that request put back). `None`
/// when the connection ended, drained, or left HTTP after a `101` (the
/// stream is then handed to the pipeline's splice).
async fn serve_until_idle<T>(
    shared: &Arc<Shared>,
    down: &Arc<Downstream>,
    io: Prefixed<T>,
    limits: &Limits,
) -> Option<Prefixed<T>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static,
{
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service(shared, down));
    let first = down.in_flight.started();
    let mut seen = first;
    let mut drain = std::pin::pin!(shared.shutdown.cancelled());
    let mut park = std::pin::pin!(tokio::time::sleep(PARK_AFTER));
    let (mut parking, mut draining) = (false, false);
    let result = std::future::poll_fn(|cx| {
        if !draining && drain.as_mut().poll(cx).is_ready() {
            draining = true;
            Pin::new(&mut conn).graceful_shutdown();
        }
        let poll = conn.poll_without_shutdown(cx);
        if poll.is_ready() || parking || draining || down.in_flight.get() > 0 {
            return poll;
        }
        // Idle after a request: park once no request has started for
        // PARK_AFTER. A connection under load never waits that long.
        let started = down.in_flight.started();
        if started != seen {
            seen = started;
            park.as_mut()
                .reset(tokio::time::Instant::now() + PARK_AFTER);
        }
        if seen != first && park.as_mut().poll(cx).is_ready() {
            parking = true;
            Pin::new(&mut conn).graceful_shutdown();
            return conn.poll_without_shutdown(cx);
        }
        poll
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream connection ended with an error");
        return None;
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    io.put_back(&parts.read_buf);
    if let Some(handover) = down.take_handover() {
        let _ = handover.send(Box::new(io));
        return None;
    }
    if draining {
        let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
        return None;
    }
    Some(io)
}

/// Each request on the connection goes down the pipeline. Its future is
/// boxed: HTTP/2 then spawns and finishes a small task per stream instead of
/// copying the whole pipeline state in and out of it, and HTTP/1 gets the
/// `Unpin` connection that taking the stream back (`poll_without_shutdown`)
/// requires.
fn service(
    shared: &Arc<Shared>,
    down: &Arc<Downstream>,
) -> impl Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + Unpin,
> + Clone
       + Send
       + Unpin
       + 'static {
    let (shared, down) = (shared.clone(), down.clone());
    service_fn(move |req| Box::pin(pipeline::handle(shared.clone(), down.clone(), req)))
}

/// Polls a connection to completion, asking it to finish gracefully when the
/// process drains or when it has had no request in flight for
/// `idle_timeout` (checked every quarter of it).
pub async fn drive<C, E>(
    conn: C,
    shared: &Shared,
    in_flight: &InFlight,
    idle_timeout: Duration,
    graceful: impl Fn(std::pin::Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let mut tick = tokio::time::interval(idle_timeout / 4);
    tick.tick().await;
    let mut idle_since: Option<(Instant, u64)> = None;
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "downstream connection ended with an error");
                }
                return;
            }
            _ = shared.shutdown.cancelled(), if !closing => {
                closing = true;
                graceful(conn.as_mut());
            }
            _ = tick.tick(), if !closing => {
                let now = Instant::now();
                let started = in_flight.started();
                idle_since = match idle_since {
                    Some((since, seen)) if in_flight.get() == 0 && seen == started => {
                        if now.duration_since(since) >= idle_timeout {
                            closing = true;
                            graceful(conn.as_mut());
                        }
                        Some((since, seen))
                    }
                    _ if in_flight.get() == 0 => Some((now, started)),
                    _ => None,
                };
            }
        }
    }
}

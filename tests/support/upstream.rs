//! The test origin: a real HTTP(S) server on 127.0.0.1:0.
//!
//! Routes: `/echo` (JSON of what arrived), `/echo-auth` (echoes the
//! Authorization value in `x-echo-authorization`), `/sse?n=&delay_ms=`,
//! `/ws` (WebSocket echo), `/status/{code}`, `/slow?ms=`, `/big?bytes=`.
//! Every request is recorded in `seen`; every accepted TCP connection counts
//! in `connections`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::routes;
use super::tls::{TestCa, ALPN_BOTH, ALPN_H1, ALPN_H2};

/// Names on the upstream's certificate.
/// `localhost` serves the private-address guard tests (`allow_private`).
pub const UPSTREAM_NAMES: &[&str] = &[
    "api.test",
    "other.test",
    "*.wild.test",
    "127.0.0.1",
    "localhost",
];

/// Which protocols the upstream offers (ALPN) and speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Alpn {
    #[default]
    Both,
    H1,
    H2,
}

#[derive(Clone, Copy, Debug)]
pub struct UpstreamOpts {
    pub alpn: Alpn,
    pub tls: bool,
}

/// One request as the upstream received it (header names lower-case).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub port: u16,
    /// The upstream's own CA (empty for a plain upstream).
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
pub(super) struct State {
    pub(super) seen: Arc<Mutex<Vec<Seen>>>,
    pub(super) connections: Arc<AtomicUsize>,
}

// === impl UpstreamOpts ===

impl Default for UpstreamOpts {
    fn default() -> Self {
        UpstreamOpts {
            alpn: Alpn::Both,
            tls: true,
        }
    }
}

impl UpstreamOpts {
    pub fn h1_only() -> Self {
        UpstreamOpts {
            alpn: Alpn::H1,
            tls: true,
        }
    }
    pub fn h2_only() -> Self {
        UpstreamOpts {
            alpn: Alpn::H2,
            tls: true,
        }
    }
    pub fn plain() -> Self {
        UpstreamOpts {
            alpn: Alpn::Both,
            tls: false,
        }
    }
}

// === impl Seen ===

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).into_iter().next()
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        let matching = self.headers.iter().filter(|(n, _)| *n == name);
        matching.map(|(_, v)| v.as_str()).collect()
    }
}

// === impl Upstream ===

impl Upstream {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// The last request whose path is `path`; panics when there is none.
    pub fn last(&self, path: &str) -> Seen {
        let seen = self.requests();
        let found = seen.into_iter().rev().find(|s| s.path == path);
        found.unwrap_or_else(|| panic!("upstream saw no request for {path}"))
    }
    /// Stop accepting new connections (open ones keep being served).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn start_upstream(opts: UpstreamOpts) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = TestCa::new("iron-proxy test upstream CA");
    let alpn = match opts.alpn {
        Alpn::Both => ALPN_BOTH,
        Alpn::H1 => ALPN_H1,
        Alpn::H2 => ALPN_H2,
    };
    let tls = opts
        .tls
        .then(|| TlsAcceptor::from(ca.server_config(UPSTREAM_NAMES, alpn)));
    let state = State {
        seen: Arc::default(),
        connections: Arc::default(),
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    tokio::spawn(accept_loop(
        listener,
        tls,
        opts.alpn,
        state.clone(),
        stop_rx,
    ));
    Upstream {
        addr,
        port: addr.port(),
        ca_pem: if opts.tls { ca.cert_pem } else { String::new() },
        seen: state.seen,
        connections: state.connections,
        stop: Some(stop_tx),
    }
}

/// A plain-HTTP upstream (no TLS), for absolute-form tests.
pub async fn start_plain_upstream() -> Upstream {
    start_upstream(UpstreamOpts::plain()).await
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    alpn: Alpn,
    state: State,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_conn(tcp, tls.clone(), alpn, state.clone()));
            }
        }
    }
}

async fn serve_conn(tcp: TcpStream, tls: Option<TlsAcceptor>, alpn: Alpn, state: State) {
    match tls {
        None => serve_io(tcp, alpn, state).await,
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(tcp).await {
                serve_io(stream, alpn, state).await;
            }
        }
    }
}

async fn serve_io<S>(stream: S, alpn: Alpn, state: State)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let builder = match alpn {
        Alpn::Both => builder,
        Alpn::H1 => builder.http1_only(),
        Alpn::H2 => builder.http2_only(),
    };
    let service = service_fn(move |req| routes::route(req, state.clone()));
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

// === impl State ===

impl State {
    pub(super) fn record(&self, req: &Request<Incoming>) {
        let headers = req.headers().iter();
        let headers =
            headers.map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()));
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            version: format!("{:?}", req.version()),
            headers: headers.collect(),
        };
        self.seen.lock().unwrap().push(seen);
    }
}

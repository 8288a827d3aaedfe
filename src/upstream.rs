//! Toward the origin: resolve, guard, connect, verify, pool (SPEC §5.3, §5.8,
//! §5.8a).
//!
//! Owns: name resolution (static `resolve` map first, then DNS), the
//! private-address guard applied to DNS answers, TCP connect under
//! `connect_timeout` to exactly the address that was checked (no second
//! lookup), rustls with webpki roots plus `extra_roots` and ALPN h2 +
//! http/1.1, and the pooled hyper-util clients. Upgrade requests (WebSocket)
//! go through a separate HTTP/1.1-only pool, since an upgraded connection
//! is never returned to a pool.
//! Does not decide whether a destination is allowed (`policy`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{self, Problem};
use crate::error::{Body, ErrorKind, ProxyError};
use crate::policy::{is_private, Host};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error(
        "{host} resolves only to private or reserved addresses ({addrs}); iron-proxy refuses \
         them unless the operator names the address (upstream.resolve, or an IP/CIDR [[allow]] \
         rule) or sets upstream.allow_private = true"
    )]
    Private { host: String, addrs: String },
    #[error("connecting to {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("cannot connect to {host} ({addr}): {source}")]
    Tcp {
        host: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {source}; if the upstream uses a private CA, add it to upstream.extra_roots")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{0} is not a usable upstream URL")]
    BadUri(String),
}

impl ConnectError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Private { .. } => ErrorKind::Policy,
            ConnectError::Timeout { .. } => ErrorKind::UpstreamTimeout,
            _ => ErrorKind::UpstreamConnect,
        }
    }
}

/// The settings the connector needs, compared on reload to keep pools.
#[derive(Debug)]
struct Dialer {
    resolve: BTreeMap<String, IpAddr>,
    allow_private: bool,
    connect_timeout: Duration,
}

impl Dialer {
    /// Addresses to dial for `host`: the operator's own (static map, IP
    /// literal) as they are; DNS answers filtered by the private guard.
    async fn resolve(&self, host: &Host, port: u16) -> Result<Vec<SocketAddr>, ConnectError> {
        let name = match host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Name(n) => n,
        };
        if let Some(ip) = self.resolve.get(name) {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        let answers: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|source| ConnectError::Resolve {
                host: name.clone(),
                source,
            })?
            .collect();
        if self.allow_private {
            return Ok(answers);
        }
        let (public, private): (Vec<_>, Vec<_>) =
            answers.into_iter().partition(|a| !is_private(a.ip()));
        if public.is_empty() {
            let addrs = private
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ConnectError::Private {
                host: name.clone(),
                addrs,
            });
        }
        Ok(public)
    }

    async fn tcp(&self, host: &Host, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = self.resolve(host, port).await?;
        let attempt = async {
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(source) => last = Some((addr, source)),
                }
            }
            let (addr, source) = last.unwrap_or_else(|| {
                (
                    SocketAddr::from(([0, 0, 0, 0], port)),
                    std::io::ErrorKind::NotFound.into(),
                )
            });
            Err(ConnectError::Tcp {
                host: host.to_string(),
                addr,
                source,
            })
        };
        let stream = tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout {
                host: host.to_string(),
                after: self.connect_timeout,
            })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// A `tower::Service<Uri>` for hyper-util's pooled client.
#[derive(Clone)]
pub struct Connector {
    dialer: Arc<Dialer>,
    tls: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("dialer", &self.dialer)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("dialer", &self.dialer)
            .finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<UpstreamStream, ConnectError> {
        let bad = || ConnectError::BadUri(uri.to_string());
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri
            .host()
            .and_then(|h| Host::parse(h).ok())
            .ok_or_else(bad)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = self.dialer.tcp(&host, port).await?;
        if !tls {
            return Ok(UpstreamStream::Plain {
                io: TokioIo::new(tcp),
            });
        }
        let name = match &host {
            Host::Name(n) => ServerName::try_from(n.clone()).map_err(|_| bad())?,
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        };
        let handshake = self.tls.connect(name, tcp);
        let stream = tokio::time::timeout(self.dialer.connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout {
                host: host.to_string(),
                after: self.dialer.connect_timeout,
            })?
            .map_err(|source| ConnectError::Tls {
                host: host.to_string(),
                source,
            })?;
        Ok(UpstreamStream::Tls {
            io: TokioIo::new(stream),
        })
    }
}

pin_project! {
    /// A connection to an origin, plain or TLS.
    #[project = StreamProj]
    #[derive(Debug)]
    pub enum UpstreamStream {
        Plain { #[pin] io: TokioIo<TcpStream> },
        Tls { #[pin] io: TokioIo<TlsStream<TcpStream>> },
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Tls { io } if io.inner().get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_read(cx, buf),
            StreamProj::Tls { io } => io.poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_write(cx, buf),
            StreamProj::Tls { io } => io.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_flush(cx),
            StreamProj::Tls { io } => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_shutdown(cx),
            StreamProj::Tls { io } => io.poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.project() {
            StreamProj::Plain { io } => io.poll_write_vectored(cx, bufs),
            StreamProj::Tls { io } => io.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain { io } => io.is_write_vectored(),
            UpstreamStream::Tls { io } => io.is_write_vectored(),
        }
    }
}

/// Pooled clients toward origins, built from `[upstream]`.
pub struct Upstream {
    dialer: Arc<Dialer>,
    pooled: Client<Connector, Body>,
    upgrades: Client<Connector, Body>,
}

impl Upstream {
    /// Builds the TLS roots (webpki + `extra_roots`) and both pools.
    pub fn new(
        cfg: &config::Upstream,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Upstream, Vec<Problem>> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut problems = Vec::new();
        for (i, path) in cfg.extra_roots.iter().enumerate() {
            let key = format!("upstream.extra_roots[{i}]");
            match crate::ca::read_certs(path) {
                Ok(certs) => {
                    for c in certs {
                        if let Err(e) = roots.add(c) {
                            problems.push(Problem::new(&key, format!("{}: {e}", path.display())));
                        }
                    }
                }
                Err(e) => problems.push(Problem::new(&key, e.to_string())),
            }
        }
        let tls = |alpn: &[&[u8]]| -> Result<TlsConnector, Problem> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| Problem::new("upstream", e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(TlsConnector::from(Arc::new(c)))
        };
        let (both, h1) = match (tls(&[b"h2", b"http/1.1"]), tls(&[b"http/1.1"])) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(p), _) | (_, Err(p)) => {
                problems.push(p);
                return Err(problems);
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let dialer = Arc::new(Dialer {
            resolve: cfg.resolve.clone(),
            allow_private: cfg.allow_private,
            connect_timeout: cfg.connect_timeout,
        });
        let client = |tls| {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .http2_adaptive_window(true)
                .build(Connector {
                    dialer: dialer.clone(),
                    tls,
                })
        };
        Ok(Upstream {
            pooled: client(both),
            upgrades: client(h1),
            dialer,
        })
    }

    /// Early refusal at CONNECT time for names that resolve only to private
    /// addresses, so the agent gets a 403 before any TLS. The connection
    /// itself is still guarded again, on the addresses it dials.
    pub async fn precheck(&self, host: &Host, port: u16) -> Result<(), ConnectError> {
        if self.dialer.allow_private {
            return Ok(());
        }
        self.dialer.resolve(host, port).await.map(|_| ())
    }

    /// Sends a request to its origin; `req.uri()` must be absolute.
    pub async fn send(
        &self,
        req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, ProxyError> {
        let client = if upgrade {
            &self.upgrades
        } else {
            &self.pooled
        };
        // Only the error path names the host: keep the URI (shared bytes),
        // not a copy of the host, per request.
        let uri = req.uri().clone();
        client
            .request(req)
            .await
            .map_err(|e| classify(&e, uri.host().unwrap_or("upstream")))
    }
}

/// Maps a client error to who was at fault, keeping the connector's own
/// message when there is one.
fn classify(err: &hyper_util::client::legacy::Error, host: &str) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(ce) = e.downcast_ref::<ConnectError>() {
            return ProxyError::new(ce.kind(), ce.to_string());
        }
        source = e.source();
    }
    let detail = std::error::Error::source(err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| err.to_string());
    ProxyError::new(
        ErrorKind::UpstreamConnect,
        format!("upstream {host} failed: {detail}"),
    )
}

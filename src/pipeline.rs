//! One request, top to bottom (SPEC §5.2–§5.7, §5.9):
//! target (421 if it is not the tunnel's host) → framing checks (400) →
//! policy (403) → strip hop-by-hop → swap (403 on a refused credential) →
//! upstream → strip hop-by-hop → scrub echoed secrets → audit → downstream.
//!
//! Owns the order of those steps and the mapping of each failure to a
//! response. Every step it calls is pure or lives in its own module.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::Either;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::app::Shared;
use crate::audit::{Audit, Counted, InFlight};
use crate::error::{Body, ErrorKind, ProxyError};
use crate::policy::{Authority, Decision};
use crate::refresh::{self, Intercepted};
use crate::store::Snapshot;
use crate::swap;

/// The downstream connection a request arrived on.
#[derive(Debug)]
pub struct Downstream {
    pub client: SocketAddr,
    /// The CONNECT destination for intercepted tunnels; `None` on the plain
    /// listener (absolute-form `http://` requests).
    pub tunnel: Option<Authority>,
    /// `tunnel` as a URI authority, built once: requests in the tunnel
    /// compare their `Host` with it and reuse it in the upstream URI.
    origin: Option<http::uri::Authority>,
    pub in_flight: Arc<InFlight>,
    /// Raised by `framing::Watched` when an HTTP/1 head carried both
    /// `Content-Length` and `Transfer-Encoding`.
    pub ambiguous_framing: Arc<AtomicBool>,
    /// Set where the connection is served without hyper's upgrade support
    /// (parked HTTP/1.1 tunnels, `serve`): after a `101` the server hands
    /// the stream over through the sender left here.
    handover: Option<Mutex<Option<Handover>>>,
}

/// Where a server sends the downstream stream after a `101`.
pub type Handover = oneshot::Sender<Box<dyn Io>>;

/// A downstream stream, once it leaves HTTP for an upgraded protocol.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Io for T {}

/// Where the downstream side of an upgrade comes from.
enum DownUpgrade {
    Hyper(OnUpgrade),
    HandedOver,
}

impl Downstream {
    pub fn new(
        client: SocketAddr,
        tunnel: Option<Authority>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Downstream {
        let origin = tunnel.as_ref().and_then(|t| t.to_string().parse().ok());
        Downstream {
            client,
            tunnel,
            origin,
            in_flight: Arc::new(InFlight::new(metrics)),
            ambiguous_framing: Arc::default(),
            handover: None,
        }
    }

    /// For a server that hands the stream over itself after a `101`.
    pub fn with_handover(mut self) -> Downstream {
        self.handover = Some(Mutex::new(None));
        self
    }

    /// The sender for a `101` just written, if the pipeline left one.
    pub fn take_handover(&self) -> Option<Handover> {
        let slot = self.handover.as_ref()?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn await_handover(&self) -> Option<oneshot::Receiver<Box<dyn Io>>> {
        let slot = self.handover.as_ref()?;
        let (tx, rx) = oneshot::channel();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Some(rx)
    }
}

/// Handles one request; every failure becomes a response of ours.
pub async fn handle(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snap = shared.store.load();
    let mut audit = Audit::start(
        down.client,
        req.method(),
        req.uri().path(),
        down.in_flight.clone(),
    );
    let resp = match forward(&shared, &snap, &down, req, &mut audit).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(kind = e.kind.as_str(), error = %e.message, "refused or failed");
            audit.refused(e.kind);
            e.to_response()
        }
    };
    audit.status = resp.status();
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(
        parts,
        Counted::new(body, audit).boxed_unsync(),
    ))
}

async fn forward(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    down: &Downstream,
    mut req: Request<Incoming>,
    audit: &mut Audit,
) -> Result<Response<Body>, ProxyError> {
    let (dest, tls) = target(down, &req)?;
    audit.set_destination(&dest.host, dest.port);
    check(snap, down, &dest, req.headers())?;
    if tls && dest.is_self_check() {
        return Ok(self_check(snap));
    }
    let upgrade = is_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| match down.handover {
        Some(_) => DownUpgrade::HandedOver,
        None => DownUpgrade::Hyper(hyper::upgrade::on(&mut req)),
    });
    let (mut parts, body) = req.into_parts();
    audit.credentials = prepare(snap, &dest, tls, upgrade, &mut parts)?;
    parts.uri = upstream_uri(tls, down.origin.as_ref(), &dest, &parts.uri)?;
    let body = Counted::new(body, audit.bytes_in()).boxed_unsync();
    let (parts, body) = match refresh::entry_for(snap, &dest, tls, &parts).cloned() {
        None => (parts, body),
        Some(entry) => match refresh::intercept(shared.clone(), entry, parts, body).await? {
            Intercepted::Answered(resp, names) => {
                audit.credentials.extend(names);
                return Ok(resp);
            }
            Intercepted::NotOurs(parts, body) => (parts, body),
        },
    };
    exchange(
        snap,
        down,
        Request::from_parts(parts, body),
        downstream_upgrade,
    )
    .await
}

/// Framing (400) and policy (403), before anything is forwarded.
fn check(
    snap: &Snapshot,
    down: &Downstream,
    dest: &Authority,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if down.ambiguous_framing.load(Ordering::Relaxed) {
        return Err(ProxyError::new(
            ErrorKind::Malformed,
            "both Content-Length and Transfer-Encoding are set",
        ));
    }
    check_framing(headers)?;
    match snap.config.policy.decide(dest) {
        Decision::Allow { .. } => Ok(()),
        _ => Err(not_allowed(dest)),
    }
}

/// The request's headers as they will leave: hop-by-hop headers gone,
/// stubs swapped. Returns the credentials swapped.
fn prepare(
    snap: &Snapshot,
    dest: &Authority,
    tls: bool,
    upgrade: bool,
    parts: &mut Parts,
) -> Result<Vec<Arc<str>>, ProxyError> {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::HOST);
    let swapped = swap::swap_request(&mut parts.headers, &snap.credentials, &dest.host, !tls)
        .map_err(|r| {
            ProxyError::new(
                ErrorKind::Policy,
                format!(
                "the {} header toward {} carries a value that is not the stub of credential `{}`, \
                 which is required for this host",
                r.header, dest.host, r.credential
            ),
            )
        })?;
    parts.version = Version::HTTP_11;
    Ok(swapped)
}

/// Upstream and back: latency metric, upgrade splice, hop-by-hop strip,
/// echo scrub. The response body streams through untouched.
async fn exchange(
    snap: &Snapshot,
    down: &Downstream,
    req: Request<Body>,
    downstream_upgrade: Option<DownUpgrade>,
) -> Result<Response<Body>, ProxyError> {
    let sent = std::time::Instant::now();
    let resp = snap
        .upstream
        .send(req, downstream_upgrade.is_some())
        .await?;
    let latency = sent.elapsed().as_secs_f64();
    down.in_flight.metrics().upstream_latency.observe(latency);
    let (mut parts, body) = resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    match (
        switching,
        downstream_upgrade,
        parts.extensions.remove::<OnUpgrade>(),
    ) {
        (true, Some(down_up), Some(up_up)) => {
            let down_up = match down_up {
                DownUpgrade::Hyper(on) => Either::Left(on),
                DownUpgrade::HandedOver => match down.await_handover() {
                    Some(rx) => Either::Right(rx),
                    None => {
                        return Err(ProxyError::new(ErrorKind::Internal, "no upgrade hand-over"))
                    }
                },
            };
            tokio::spawn(splice(down_up, up_up));
        }
        _ => strip_hop_by_hop(&mut parts.headers, false),
    }
    swap::scrub_response(&mut parts.headers, &snap.credentials);
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed_unsync(),
    ))
}

/// The destination of a request, and whether it travels over TLS.
fn target<'d>(
    down: &'d Downstream,
    req: &Request<Incoming>,
) -> Result<(Cow<'d, Authority>, bool), ProxyError> {
    let malformed = |m: String| ProxyError::new(ErrorKind::Malformed, m);
    if req.method() == Method::CONNECT {
        return Err(malformed("CONNECT inside a tunnel is not supported".into()));
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(malformed("more than one Host header".into()));
    }
    let host_header = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let Some(tunnel) = &down.tunnel else {
        return plain_target(req.uri()).map(|(dest, tls)| (Cow::Owned(dest), tls));
    };
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or(host_header)
        .ok_or_else(|| {
            malformed("the request names no host (no Host header or :authority)".into())
        })?;
    // Nearly every request names its tunnel's host as written at CONNECT
    // (the port may be left out: it defaults to the tunnel's).
    if let Some(origin) = &down.origin {
        if named.eq_ignore_ascii_case(origin.as_str()) || named.eq_ignore_ascii_case(origin.host())
        {
            return Ok((Cow::Borrowed(tunnel), true));
        }
    }
    let named = Authority::parse(named, Some(tunnel.port))
        .map_err(|m| malformed(format!("bad Host: {m}")))?;
    if named != *tunnel {
        return Err(ProxyError::new(
            ErrorKind::HostMismatch,
            format!(
                "this tunnel was opened to {tunnel}; a request for {named} needs its own CONNECT"
            ),
        ));
    }
    Ok((Cow::Owned(named), true))
}

fn plain_target(uri: &Uri) -> Result<(Authority, bool), ProxyError> {
    let malformed = |m: &str| ProxyError::new(ErrorKind::Malformed, m.to_owned());
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => Authority::parse(a.as_str(), Some(80))
            .map(|dest| (dest, false))
            .map_err(|m| ProxyError::new(ErrorKind::Malformed, m)),
        (Some("https"), _) => Err(malformed(
            "send https:// requests through CONNECT (set HTTPS_PROXY), not as absolute-form",
        )),
        _ => Err(malformed(
            "this is a proxy: send CONNECT host:port, or an absolute-form http:// request",
        )),
    }
}

/// The answer of `iron-proxy.internal` (SPEC §9): proof that the agent
/// completed TLS with a leaf of this CA.
fn self_check(snap: &Snapshot) -> Response<Body> {
    let body = format!(
        "iron-proxy ok\nca_sha256 {}\ngeneration {}\n",
        snap.ca.fingerprint(),
        snap.generation
    );
    let mut resp = Response::new(crate::error::full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_allowed(dest: &Authority) -> ProxyError {
    ProxyError::new(ErrorKind::Policy, format!("{dest} is not on the allowlist"))
}

/// Refuses the request shapes that let two parsers disagree on where a
/// message ends (request smuggling), and values no header may hold.
fn check_framing(headers: &HeaderMap) -> Result<(), ProxyError> {
    let malformed = |m: &str| Err(ProxyError::new(ErrorKind::Malformed, m.to_owned()));
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !lengths.is_empty() && headers.contains_key(header::TRANSFER_ENCODING) {
        return malformed("both Content-Length and Transfer-Encoding are set");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return malformed("conflicting Content-Length values");
    }
    if headers
        .values()
        .any(|v| v.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)))
    {
        return malformed("a header value contains CR, LF or NUL");
    }
    Ok(())
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus
/// the proxy's own credentials.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and any header named in `Connection`. For an
/// upgrade, `Connection: upgrade` and `Upgrade` are kept: they are the
/// request. `TE: trailers` is the one TE value worth passing (gRPC).
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The absolute URI toward the origin: a tunnel's is assembled from parts
/// it already holds; a plain request's destination is formatted.
fn upstream_uri(
    tls: bool,
    origin: Option<&http::uri::Authority>,
    dest: &Authority,
    original: &Uri,
) -> Result<Uri, ProxyError> {
    let invalid = || {
        ProxyError::new(
            ErrorKind::Malformed,
            "the request target is not a valid URI",
        )
    };
    let path = match original.path_and_query() {
        Some(p) if p.as_str().starts_with('/') => p.clone(),
        Some(_) => {
            return Err(ProxyError::new(
                ErrorKind::Malformed,
                "the request target must be a path",
            ))
        }
        None => http::uri::PathAndQuery::from_static("/"),
    };
    match origin {
        Some(authority) if tls => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(path);
            Uri::from_parts(parts).map_err(|_| invalid())
        }
        _ => {
            let scheme = if tls { "https" } else { "http" };
            format!("{scheme}://{dest}{path}")
                .parse()
                .map_err(|_| invalid())
        }
    }
}

/// Joins an upgraded downstream connection (WebSocket) to the upstream one.
async fn splice(down: Either<OnUpgrade, oneshot::Receiver<Box<dyn Io>>>, up: OnUpgrade) {
    let down = async {
        match down {
            Either::Left(on) => on
                .await
                .ok()
                .map(|u| Box::new(TokioIo::new(u)) as Box<dyn Io>),
            Either::Right(rx) => rx.await.ok(),
        }
    };
    let (Some(mut down), Ok(up)) = tokio::join!(down, up) else {
        tracing::debug!("upgrade abandoned by one side");
        return;
    };
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_refuses_smuggling_shapes() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&h).is_ok());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(check_framing(&h).is_err());
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(check_framing(&h).is_err());
    }

    #[test]
    fn upstream_uri_is_the_same_assembled_or_formatted() {
        let dest = Authority::parse("api.test:8443", None).unwrap();
        let origin: http::uri::Authority = dest.to_string().parse().unwrap();
        let original: Uri = "/v1/messages?beta=true".parse().unwrap();
        let assembled = upstream_uri(true, Some(&origin), &dest, &original).unwrap();
        let formatted = upstream_uri(true, None, &dest, &original).unwrap();
        assert_eq!(assembled, formatted);
        assert_eq!(
            assembled.to_string(),
            "https://api.test:8443/v1/messages?beta=true"
        );
        let plain = upstream_uri(false, Some(&origin), &dest, &original).unwrap();
        assert_eq!(
            plain.to_string(),
            "http://api.test:8443/v1/messages?beta=true"
        );
        let star: Uri = "*".parse().unwrap();
        assert!(upstream_uri(true, Some(&origin), &dest, &star).is_err());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-foo, keep-alive"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("te", "gzip"),
            ("x-keep", "yes"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-keep"));
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key(header::TE));
    }
}

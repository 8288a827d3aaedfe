//! The first request on a downstream connection (SPEC §5.1).
//!
//! Owns: reading that first head on the raw socket. A `CONNECT host:port`
//! is parsed, checked — strict target parse, policy gate and early
//! private-address refusal, all *before* any TLS (403 with a one-line
//! reason, no upstream connection) — and answered here, and the same task
//! goes on into `serve::tunnel`. An idle tunnel therefore carries no HTTP/1
//! connection object and none of its buffers for the outer connection.
//! Anything else (absolute-form `http://` requests) goes to hyper with the
//! bytes read so far put back in front (`prefixed`); a `CONNECT` that comes
//! later on such a connection takes hyper's upgrade path (`handle`). Does
//! not terminate TLS (`serve`).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::Shared;
use crate::audit::{Audit, InFlight};
use crate::config::Limits;
use crate::error::{self, Body, ErrorKind, ProxyError};
use crate::pipeline::{self, Downstream};
use crate::policy::{Authority, Decision, Host};
use crate::prefixed::Prefixed;

const CONNECT: &[u8] = b"CONNECT ";
const ESTABLISHED: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

/// Reads the first head on a proxy-port connection. A `CONNECT` is answered
/// and its tunnel served before this returns `None`; any other request
/// comes back as the stream for hyper, with what was read put back.
pub async fn first(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    client: SocketAddr,
    limits: &Limits,
) -> Option<Prefixed<TcpStream>> {
    let read = tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        read = tokio::time::timeout(limits.connect_line_timeout, read_head(&mut stream, limits)) => read,
    };
    let (buf, head) = match read {
        Ok(Ok(Read::Other(buf))) => return Some(Prefixed::new(buf, stream)),
        Ok(Ok(Read::Connect(buf, head))) => (buf, Ok(head)),
        Ok(Ok(Read::Refused(e))) => (Vec::new(), Err(e)),
        Ok(Ok(Read::Closed)) | Ok(Err(_)) => return None,
        Err(_) => {
            tracing::debug!(client = %client, timeout = ?limits.connect_line_timeout,
                "no complete request head within limits.connect_line_timeout; closed");
            return None;
        }
    };
    let in_flight = Arc::new(InFlight::new(shared.metrics.clone()));
    let mut audit = Audit::start(client, &Method::CONNECT, "", in_flight);
    let admitted = match head {
        Ok(head) => {
            // httparse hands the target out as `&str`: these bytes are UTF-8.
            let target = std::str::from_utf8(&buf[head.target.clone()]).unwrap_or_default();
            let snap = shared.store.load();
            admit(&snap, target, &mut audit)
                .await
                .map(|dest| (dest, head.len))
        }
        Err(e) => Err(e),
    };
    let (dest, head_len) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            audit.refused(e.kind);
            drop(audit);
            linger_close(stream, &e.to_http1_close()).await;
            return None;
        }
    };
    drop(audit);
    if stream.write_all(ESTABLISHED).await.is_err() {
        return None;
    }
    let rest = buf[head_len..].to_vec();
    drop(buf);
    crate::serve::tunnel(shared.clone(), dest, client, Prefixed::new(rest, stream)).await;
    None
}

/// Where a `CONNECT` head ends and where its target is, in the bytes read.
#[derive(Debug)]
struct Head {
    len: usize,
    target: std::ops::Range<usize>,
}

#[derive(Debug)]
enum Read {
    Connect(Vec<u8>, Head),
    /// Not a `CONNECT`: everything read so far.
    Other(Vec<u8>),
    Refused(ProxyError),
    Closed,
}

/// Reads until the head is complete, or until the first bytes show it is
/// not a `CONNECT`.
async fn read_head(stream: &mut TcpStream, limits: &Limits) -> io::Result<Read> {
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(limits.max_header_bytes));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(Read::Closed);
        }
        let seen = buf.len().min(CONNECT.len());
        if buf[..seen] != CONNECT[..seen] {
            return Ok(Read::Other(buf));
        }
        match parse(&buf, limits.max_headers) {
            Ok(Some(head)) => return Ok(Read::Connect(buf, head)),
            Ok(None) if buf.len() < limits.max_header_bytes => {}
            Ok(None) => {
                return Ok(Read::Refused(ProxyError::new(
                    ErrorKind::Malformed,
                    format!(
                        "the CONNECT head is larger than limits.max_header_bytes ({} bytes)",
                        limits.max_header_bytes
                    ),
                )))
            }
            Err(e) => return Ok(Read::Refused(e)),
        }
    }
}

/// `None` while the head is incomplete.
fn parse(buf: &[u8], max_headers: usize) -> Result<Option<Head>, ProxyError> {
    let malformed = |m: String| ProxyError::new(ErrorKind::Malformed, m);
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(malformed(format!(
                "the CONNECT request has more than limits.max_headers ({max_headers}) headers"
            )))
        }
        Err(e) => return Err(malformed(format!("unparseable CONNECT request: {e}"))),
    };
    let carries_body = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    });
    if carries_body {
        return Err(malformed("a CONNECT request cannot carry a body".into()));
    }
    let target = req.path.unwrap_or("");
    let start = target.as_ptr() as usize - buf.as_ptr() as usize;
    Ok(Some(Head {
        len,
        target: start..start + target.len(),
    }))
}

/// Sends a final response and closes without resetting it away: a client
/// that already sent more (a pipelined ClientHello) would otherwise get a
/// TCP reset before it read the answer.
pub async fn linger_close(mut stream: TcpStream, response: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        for _ in 0..64 {
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// A `CONNECT` that arrives after other requests on a plain connection
/// (hyper parsed it): same checks, then hyper's upgrade hands over the
/// stream.
pub async fn handle(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    conn_guard: Arc<crate::listener::Slot>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::CONNECT {
        return pipeline::handle(shared, down, req).await;
    }
    let snap = shared.store.load();
    let mut audit = Audit::start(down.client, req.method(), "", down.in_flight.clone());
    let target = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let dest = match admit(&snap, target, &mut audit).await {
        Ok(dest) => dest,
        Err(e) => {
            audit.refused(e.kind);
            return Ok(e.to_response());
        }
    };
    audit.status = StatusCode::OK;
    drop(audit);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let client = down.client;
    shared.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                crate::serve::tunnel(shared, dest, client, TokioIo::new(upgraded)).await
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        drop(conn_guard);
    });
    Ok(Response::new(error::empty()))
}

/// Parses and checks a CONNECT target; every refusal happens here, before
/// the 200.
async fn admit(
    snap: &crate::store::Snapshot,
    raw: &str,
    audit: &mut Audit,
) -> Result<Authority, ProxyError> {
    let dest = Authority::parse(raw, None).map_err(|m| {
        audit.set_destination(&crate::policy::printable(raw), 0);
        ProxyError::new(ErrorKind::Malformed, format!("bad CONNECT target: {m}"))
    })?;
    audit.set_destination(&dest.host, dest.port);
    let trusted = match snap.config.policy.decide(&dest) {
        Decision::Allow { trusted } => trusted,
        Decision::DenyHost => {
            return Err(ProxyError::new(
                ErrorKind::Policy,
                format!("{} is not on the allowlist", dest.host),
            ))
        }
        Decision::DenyPort => {
            return Err(ProxyError::new(
                ErrorKind::Policy,
                format!("{} is allowed, but not on port {}", dest.host, dest.port),
            ))
        }
    };
    let named = matches!(&dest.host, Host::Name(n) if snap.config.upstream.resolve.contains_key(n));
    if !trusted && !named {
        snap.upstream
            .precheck(&dest.host, dest.port)
            .await
            .map_err(|e| ProxyError::new(e.kind(), e.to_string()))?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(buf: &'a [u8], head: &Head) -> &'a [u8] {
        &buf[head.target.clone()]
    }

    #[test]
    fn parses_a_complete_connect_head() {
        let buf = b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n\x16\x03\x01";
        let head = parse(buf, 16).unwrap().unwrap();
        assert_eq!(target(buf, &head), b"api.test:443");
        assert_eq!(&buf[head.len..], b"\x16\x03\x01", "pipelined bytes stay");
    }

    #[test]
    fn waits_for_the_blank_line() {
        assert!(parse(b"CONNECT api.test:443 HTTP/1.1\r\nHost: a", 16)
            .unwrap()
            .is_none());
    }

    #[test]
    fn refuses_a_body_too_many_headers_and_garbage() {
        for (head, want) in [
            (
                &b"CONNECT a:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\n"[..],
                "body",
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "body",
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n",
                "max_headers",
            ),
            (b"CONNECT a:443 HTTP/9.9\r\n\r\n", "unparseable"),
        ] {
            let e = parse(head, 2).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Malformed);
            assert!(e.message.contains(want), "{:?}: {}", head, e.message);
        }
        assert!(
            parse(b"CONNECT a:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 2)
                .unwrap()
                .is_some()
        );
    }
}

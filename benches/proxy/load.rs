//! The load generator: hyper client connections over tokio-rustls, either
//! straight to the origin or through `CONNECT` on a proxy, and the timed
//! workloads. Everything runs on the bench's single-threaded runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::child::cpu_ticks;
use super::upstream::{client_config, Upstream, STUB};

type Body = Empty<Bytes>;

/// Where requests go: the origin directly, or through a proxy (`via`).
pub struct Target {
    via: Option<SocketAddr>,
    upstream: SocketAddr,
    /// The proxy's pid, for its CPU time.
    pub pid: Option<u32>,
    /// The origin's count of TLS handshakes.
    handshakes: Arc<AtomicU64>,
    connect_line: String,
    host: HeaderValue,
    uri: Uri,
    auth: HeaderValue,
    h1_tls: TlsConnector,
    h2_tls: TlsConnector,
}

/// One cell of the table: a request rate, CPU use and (row c) latencies.
#[derive(Default)]
pub struct Outcome {
    pub rps: f64,
    /// CPU use of the bench process and of the proxy, in % of one core.
    pub cpu_bench: f64,
    pub cpu_proxy: Option<f64>,
    /// TLS handshakes the origin completed in the measured window.
    pub origin_handshakes: u64,
    /// Per-request latencies in ns, sorted (only when recorded).
    pub latencies: Vec<u32>,
    /// Workers that panicked or hung: the figures are not trustworthy.
    pub failed: usize,
}

/// Warm-up, then the measured window.
#[derive(Clone, Copy)]
pub struct Window {
    pub warm: Duration,
    pub measure: Duration,
}

impl Target {
    pub fn new(via: Option<(SocketAddr, u32)>, origin: &Upstream, ca_pem: &str) -> Arc<Self> {
        let upstream = origin.addr;
        let authority = format!("api.test:{}", upstream.port());
        Arc::new(Target {
            via: via.map(|v| v.0),
            upstream,
            handshakes: origin.handshakes.clone(),
            pid: via.map(|v| v.1),
            connect_line: format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"),
            host: HeaderValue::from_str(&authority).unwrap(),
            uri: format!("https://{authority}/").parse().unwrap(),
            auth: HeaderValue::from_str(&format!("Bearer {STUB}")).unwrap(),
            h1_tls: TlsConnector::from(client_config(ca_pem, b"http/1.1")),
            h2_tls: TlsConnector::from(client_config(ca_pem, b"h2")),
        })
    }

    /// TCP to the origin, or TCP to the proxy + `CONNECT` answered by 200.
    pub async fn tcp(&self) -> TcpStream {
        let mut stream = TcpStream::connect(self.via.unwrap_or(self.upstream))
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        if self.via.is_none() {
            return stream;
        }
        stream
            .write_all(self.connect_line.as_bytes())
            .await
            .unwrap();
        let (mut buf, mut len) = ([0u8; 512], 0);
        while !buf[..len].ends_with(b"\r\n\r\n") {
            assert!(len < buf.len(), "CONNECT reply too long");
            let n = stream.read(&mut buf[len..]).await.unwrap();
            assert!(n > 0, "proxy closed the connection after CONNECT");
            len += n;
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        assert!(head.split(' ').nth(1) == Some("200"), "CONNECT: {head}");
        stream
    }

    async fn tls(&self, tls: &TlsConnector, tcp: TcpStream) -> TlsStream<TcpStream> {
        let name = ServerName::try_from("api.test").unwrap();
        tls.connect(name, tcp).await.unwrap()
    }

    /// A new HTTP/1.1 connection; the task drives it until the sender drops.
    pub async fn h1(&self) -> (http1::SendRequest<Body>, JoinHandle<()>) {
        self.h1_over(self.tcp().await).await
    }

    async fn h1_over(&self, tcp: TcpStream) -> (http1::SendRequest<Body>, JoinHandle<()>) {
        let io = TokioIo::new(self.tls(&self.h1_tls, tcp).await);
        let (send, conn) = http1::handshake(io).await.unwrap();
        (send, tokio::spawn(async move { conn.await.unwrap() }))
    }

    /// A new HTTP/2 connection.
    pub async fn h2(&self) -> http2::SendRequest<Body> {
        let io = TokioIo::new(self.tls(&self.h2_tls, self.tcp().await).await);
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .unwrap();
        tokio::spawn(async move { conn.await.unwrap() });
        send
    }

    /// `GET /` with `Authorization: Bearer <stub>`; for HTTP/2 the URI
    /// carries the authority, for HTTP/1.1 the Host header does.
    fn request(&self, h2: bool) -> Request<Body> {
        let builder = if h2 {
            Request::get(self.uri.clone())
        } else {
            Request::get("/").header(HOST, self.host.clone())
        };
        builder
            .header(AUTHORIZATION, self.auth.clone())
            .body(Empty::new())
            .unwrap()
    }
}

async fn check(response: hyper::Result<hyper::Response<hyper::body::Incoming>>) {
    let response = response.unwrap();
    assert_eq!(response.status(), 200, "unexpected status");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 64);
}

/// One request on a kept-alive HTTP/1.1 connection.
pub async fn h1_step(
    t: Arc<Target>,
    mut send: http1::SendRequest<Body>,
) -> http1::SendRequest<Body> {
    check(send.send_request(t.request(false)).await).await;
    send
}

/// One request on a multiplexed HTTP/2 connection.
pub async fn h2_step(
    t: Arc<Target>,
    mut send: http2::SendRequest<Body>,
) -> http2::SendRequest<Body> {
    check(send.send_request(t.request(true)).await).await;
    send
}

/// A connection for one request: TCP (+ CONNECT) + TLS + request + close.
pub async fn fresh_step(t: Arc<Target>, unit: ()) {
    let (mut send, conn) = t.h1().await;
    check(send.send_request(t.request(false)).await).await;
    drop(send);
    conn.await.unwrap();
    unit
}

/// Run `step` in a loop on each of `states` (one task each) for the window;
/// count the requests completed inside the measured part.
pub async fn measure<S, F, Fut>(
    t: &Arc<Target>,
    states: Vec<S>,
    window: Window,
    record: bool,
    step: F,
) -> Outcome
where
    S: Send + 'static,
    F: Fn(Arc<Target>, S) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = S> + Send,
{
    let warm_end = Instant::now() + window.warm;
    let end = warm_end + window.measure;
    let workers: Vec<JoinHandle<(u64, Vec<u32>)>> = states
        .into_iter()
        .map(|mut state| {
            let t = t.clone();
            tokio::spawn(async move {
                let (mut n, mut latencies) = (0u64, Vec::new());
                loop {
                    let start = Instant::now();
                    if start >= end {
                        return (n, latencies);
                    }
                    state = step(t.clone(), state).await;
                    let done = Instant::now();
                    if done >= warm_end && done < end {
                        n += 1;
                        if record {
                            latencies.push((done - start).as_nanos() as u32);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(warm_end.into()).await;
    let proxy0 = t.pid.map(cpu_ticks);
    let bench0 = cpu_ticks(0);
    let origin0 = t.handshakes.load(Ordering::Relaxed);
    tokio::time::sleep_until(end.into()).await;
    let proxy1 = t.pid.map(cpu_ticks);
    let bench1 = cpu_ticks(0);
    let origin1 = t.handshakes.load(Ordering::Relaxed);
    let secs = window.measure.as_secs_f64();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let mut out = Outcome {
        cpu_bench: pct(bench0, bench1),
        cpu_proxy: proxy0.zip(proxy1).map(|(a, b)| pct(a, b)),
        origin_handshakes: origin1 - origin0,
        ..Outcome::default()
    };
    let mut total = 0;
    for mut worker in workers {
        match tokio::time::timeout(Duration::from_secs(10), &mut worker).await {
            Ok(Ok((n, latencies))) => {
                total += n;
                out.latencies.extend(latencies);
            }
            Ok(Err(_)) => out.failed += 1,
            Err(_) => {
                worker.abort();
                out.failed += 1;
            }
        }
    }
    out.rps = total as f64 / secs;
    out.latencies.sort_unstable();
    out
}

/// Per-idle-tunnel memory: open `n` tunnels and hold them idle, in stages
/// (all CONNECTs, then all TLS handshakes, then one HTTP/1.1 request on
/// each); the proxy's VmRSS (KiB) before and after each stage.
pub async fn idle_tunnels(t: &Arc<Target>, n: usize, rss: impl Fn() -> u64) -> [u64; 4] {
    // Warm-up: leaf minted, upstream connection pooled.
    fresh_step(t.clone(), ()).await;
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    let mut out = [rss(), 0, 0, 0];
    let mut tcps = Vec::with_capacity(n);
    for _ in 0..n {
        tcps.push(t.tcp().await);
    }
    settle().await;
    out[1] = rss();
    let mut tls = Vec::with_capacity(n);
    for tcp in tcps {
        tls.push(t.tls(&t.h1_tls, tcp).await);
    }
    settle().await;
    out[2] = rss();
    let mut held = Vec::with_capacity(n);
    for tls in tls {
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
        let conn = tokio::spawn(async move { conn.await.unwrap() });
        held.push((h1_step(t.clone(), send).await, conn));
    }
    settle().await;
    out[3] = rss();
    for (send, conn) in held {
        drop(send);
        let _ = conn.await;
    }
    out
}

//! `[limits]` (SPEC §4): header size and count, the CONNECT-line, TLS
//! handshake, header-read and idle timeouts, and the connection cap.
//! Timeouts are sub-second; "closed" is checked against a generous bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ERR: &str = "x-iron-proxy-error";
/// How long a connection may stay open after a sub-second timeout expired.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

/// A TLS upstream allowed as `api.test`, a plain one as `plain.test`, and a
/// proxy with `limits` (lines of the `[limits]` table).
async fn setup(limits: &str) -> (Upstream, Upstream, ProxyHandle) {
    let tls = start_upstream(UpstreamOpts::default()).await;
    let plain = start_plain_upstream().await;
    let config = ProxyConfig::new(&tls)
        .allow("api.test", &[tls.port])
        .allow("plain.test", &[plain.port])
        .extra(&format!("[limits]\n{limits}"));
    (tls, plain, start_proxy(config).await)
}

/// Read until the peer closes (EOF or error): what was read, or `None`
/// when the connection is still open after `bound`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, bound: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(bound, read_all).await.is_ok();
    closed.then_some(out)
}

/// A request head: `start` line, `Host`, then `extra` headers.
fn head(start: &str, host: &str, extra: &[String]) -> String {
    let mut text = format!("{start}\r\nHost: {host}\r\n");
    for line in extra {
        text += line;
        text += "\r\n";
    }
    text + "Connection: close\r\n\r\n"
}

/// Headers of ~100 bytes each, `total` bytes in all.
fn padding(total: usize) -> Vec<String> {
    (0..total.div_ceil(100))
        .map(|i| format!("x-pad-{i:04}: {}", "a".repeat(88)))
        .collect()
}

/// `count` small headers.
fn many(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("x-h-{i}: v")).collect()
}

/// Send `extra` headers on the plain port (absolute-form toward
/// `plain.test`) and inside an h1 tunnel to `api.test`; return both replies.
async fn send_both(
    proxy: &ProxyHandle,
    tls: &Upstream,
    plain: &Upstream,
    extra: &[String],
) -> [String; 2] {
    let plain_host = format!("plain.test:{}", plain.port);
    let start = format!("GET http://{plain_host}/echo HTTP/1.1");
    let on_plain = raw_request(
        proxy.proxy_addr,
        head(&start, &plain_host, extra).as_bytes(),
    )
    .await;
    let stream = proxy.tls_to("api.test", tls.port, ALPN_H1).await;
    let api_host = format!("api.test:{}", tls.port);
    let in_tunnel = raw_over(
        stream,
        head("GET /echo HTTP/1.1", &api_host, extra).as_bytes(),
    )
    .await;
    [on_plain, in_tunnel]
}

/// hyper answers heads it refuses to parse with its own bare 431/400.
fn assert_refused(reply: &str, what: &str) {
    let (head, body) = parse_response(reply);
    assert!(matches!(head.status, 400 | 431), "{what}: {head:?} {body}");
}

/// Plain and tunnelled requests with few headers still get through.
async fn assert_still_serving(proxy: &ProxyHandle, tls: &Upstream, plain: &Upstream) {
    let [on_plain, in_tunnel] = send_both(proxy, tls, plain, &many(2)).await;
    for (reply, what) in [(on_plain, "plain port"), (in_tunnel, "tunnel")] {
        let (head, body) = parse_response(&reply);
        assert_eq!(head.status, 200, "{what} after refusals: {body}");
    }
    assert_eq!((plain.requests().len(), tls.requests().len()), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn header_block_over_max_header_bytes_is_refused() {
    let (tls, plain, proxy) = setup("max_header_bytes = 4096").await;
    let [on_plain, in_tunnel] = send_both(&proxy, &tls, &plain, &padding(8 * 1024)).await;
    assert_refused(&on_plain, "8 KiB head on the plain port");
    assert_refused(&in_tunnel, "8 KiB head in an h1 tunnel");

    let mut h2 = h2_client(proxy.proxy_addr, "api.test", tls.port, &proxy.ca_pem).await;
    let big = req("GET", &format!("api.test:{}", tls.port), "/echo")
        .header("x-pad", "a".repeat(8 * 1024));
    if let Ok(response) = h2.request(big.body(Default::default()).unwrap()).await {
        assert!(
            matches!(response.status().as_u16(), 400 | 431),
            "8 KiB head over h2: {response:?}"
        );
    }
    assert!(
        plain.requests().is_empty() && tls.requests().is_empty(),
        "an oversized head reached an upstream"
    );
    assert_still_serving(&proxy, &tls, &plain).await;
}

/// 4096 < 5 KiB < 8 KiB: the configured limit, not some internal buffer
/// size, decides.
#[tokio::test(flavor = "multi_thread")]
async fn header_block_just_over_max_header_bytes_is_refused() {
    let (tls, plain, proxy) = setup("max_header_bytes = 4096").await;
    let [on_plain, in_tunnel] = send_both(&proxy, &tls, &plain, &padding(5 * 1024)).await;
    let status = |reply: &str| parse_response(reply).0.status;
    let (seen_plain, seen_tls) = (plain.requests().len(), tls.requests().len());
    assert!(
        seen_plain == 0 && seen_tls == 0,
        "5 KiB heads (limit 4096) answered {} on the plain port and {} in a tunnel; upstreams saw {seen_plain} and {seen_tls}",
        status(&on_plain),
        status(&in_tunnel),
    );
    assert_refused(&on_plain, "5 KiB head on the plain port");
    assert_refused(&in_tunnel, "5 KiB head in an h1 tunnel");
}

#[tokio::test(flavor = "multi_thread")]
async fn more_headers_than_max_headers_are_refused() {
    let (tls, plain, proxy) = setup("max_headers = 16").await;
    let [on_plain, in_tunnel] = send_both(&proxy, &tls, &plain, &many(40)).await;
    assert_refused(&on_plain, "40 headers on the plain port");
    assert_refused(&in_tunnel, "40 headers in an h1 tunnel");
    assert!(
        plain.requests().is_empty() && tls.requests().is_empty(),
        "a request with too many headers reached an upstream"
    );
    assert_still_serving(&proxy, &tls, &plain).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_or_missing_connect_line_is_closed() {
    let (tls, _plain, proxy) = setup("connect_line_timeout = \"300ms\"").await;
    let mut partial = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let line = format!("CONNECT api.test:{} HTTP/1.1\r\n", tls.port);
    partial.write_all(line.as_bytes()).await.unwrap();
    let mut silent = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    for (stream, what) in [
        (&mut partial, "CONNECT line without blank line"),
        (&mut silent, "silent connection"),
    ] {
        let bytes = closed_within(stream, CLOSE_BOUND).await;
        let bytes = bytes
            .unwrap_or_else(|| panic!("{what}: still open {CLOSE_BOUND:?} after a 300ms timeout"));
        assert!(
            !String::from_utf8_lossy(&bytes).contains(" 200"),
            "{what}: {bytes:?}"
        );
    }
    assert_eq!(tls.connection_count(), 0);
}

/// The timeout bounds the whole head: bytes trickling in do not reset it.
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_trickle_is_cut_off() {
    let (tls, _plain, proxy) = setup("connect_line_timeout = \"500ms\"").await;
    let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let prefix = format!("CONNECT api.test:{} HTTP/1.1\r\nx-slow: ", tls.port);
    let mut bytes = prefix
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat(b'a'));
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            start.elapsed() < CLOSE_BOUND,
            "a 1 byte/100ms trickle kept the connection open for {CLOSE_BOUND:?}"
        );
        if stream.write_all(&[bytes.next().unwrap()]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => assert!(!String::from_utf8_lossy(&buf[..n]).contains(" 200")),
            Err(_) => {}
        }
    }
    assert_eq!(tls.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnel_without_tls_handshake_is_closed() {
    let (tls, _plain, proxy) = setup("tls_handshake_timeout = \"300ms\"").await;
    let (head, mut stream) =
        connect_tunnel(proxy.proxy_addr, &format!("api.test:{}", tls.port)).await;
    assert_eq!(head.status, 200);
    let closed = closed_within(&mut stream, CLOSE_BOUND).await;
    assert!(
        closed.is_some(),
        "tunnel still open {CLOSE_BOUND:?} after a 300ms TLS handshake timeout"
    );
    assert_eq!(
        tls.connection_count(),
        0,
        "upstream connected for a tunnel that never did TLS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn half_a_request_head_in_a_tunnel_is_closed() {
    let (tls, _plain, proxy) = setup("header_read_timeout = \"300ms\"").await;
    let mut stream = proxy.tls_to("api.test", tls.port, ALPN_H1).await;
    let half = format!(
        "GET /echo HTTP/1.1\r\nHost: api.test:{}\r\nx-half: ",
        tls.port
    );
    stream.write_all(half.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let bytes = closed_within(&mut stream, CLOSE_BOUND).await;
    let bytes = bytes
        .unwrap_or_else(|| panic!("still open {CLOSE_BOUND:?} after a 300ms header read timeout"));
    assert!(
        !String::from_utf8_lossy(&bytes).contains(" 200"),
        "{bytes:?}"
    );
    assert!(tls.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_h2_and_h1_tunnels_are_closed() {
    let limits = "idle_timeout = \"400ms\"\nheader_read_timeout = \"30s\"";
    let (tls, _plain, proxy) = setup(limits).await;
    let authority = format!("api.test:{}", tls.port);

    // h2: the client connection future ends when the proxy closes.
    let stream = proxy.tls_to("api.test", tls.port, ALPN_H2).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
    let (sender, conn) = within("h2 handshake", handshake).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = Client::H2(sender);
    assert_eq!(client.send(get(&authority, "/echo")).await.status, 200);
    let ended = tokio::time::timeout(CLOSE_BOUND, conn).await;
    assert!(
        ended.is_ok(),
        "idle h2 tunnel still open {CLOSE_BOUND:?} after a 400ms idle timeout"
    );

    // h1: a read on the TLS stream returns EOF.
    let mut stream = proxy.tls_to("api.test", tls.port, ALPN_H1).await;
    let request = format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let reply = read_head(&mut stream).await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("connection")
        .is_none_or(|v| !v.eq_ignore_ascii_case("close")));
    read_body(&mut stream, &reply).await;
    let closed = closed_within(&mut stream, CLOSE_BOUND).await;
    assert!(
        closed.is_some(),
        "idle h1 tunnel still open {CLOSE_BOUND:?} after a 400ms idle timeout"
    );
}

/// Between requests an HTTP/1.1 tunnel waits under `idle_timeout`, not
/// `header_read_timeout` (which starts with the next request's first byte).
#[tokio::test(flavor = "multi_thread")]
async fn idle_h1_tunnel_outlives_header_read_timeout() {
    let limits = "idle_timeout = \"10s\"\nheader_read_timeout = \"300ms\"";
    let (tls, _plain, proxy) = setup(limits).await;
    let authority = format!("api.test:{}", tls.port);
    let mut stream = proxy.tls_to("api.test", tls.port, ALPN_H1).await;
    let request = format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    for round in 0..2 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_head(&mut stream).await;
        assert_eq!(reply.status, 200, "round {round}");
        read_body(&mut stream, &reply).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert_eq!(tls.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_does_not_cut_a_slow_response() {
    let limits = "idle_timeout = \"400ms\"\nheader_read_timeout = \"30s\"";
    let (tls, _plain, proxy) = setup(limits).await;
    let authority = format!("api.test:{}", tls.port);
    let mut h1 = h1_client(proxy.proxy_addr, "api.test", tls.port, &proxy.ca_pem).await;
    let mut h2 = h2_client(proxy.proxy_addr, "api.test", tls.port, &proxy.ca_pem).await;
    let (a, b) = tokio::join!(
        h1.send(get(&authority, "/slow?ms=1500")),
        h2.send(get(&authority, "/slow?ms=1500")),
    );
    for (reply, what) in [(a, "h1"), (b, "h2")] {
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (200, "slow done\n"),
            "{what}"
        );
    }
    // Idle time counts from the end of the last request, not its start.
    for (client, what) in [(&mut h1, "h1"), (&mut h2, "h2")] {
        let reply = client.send(get(&authority, "/echo")).await;
        assert_eq!(
            reply.status, 200,
            "{what} tunnel unusable right after a slow response"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_max_connections_get_503() {
    let (tls, _plain, proxy) = setup("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(proxy.tls_to("api.test", tls.port, ALPN_H1).await);
    }

    let mut third = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let bytes = closed_within(&mut third, CLOSE_BOUND).await;
    let bytes = bytes.expect("connection over the cap was not closed");
    let (head, body) = parse_response(&String::from_utf8_lossy(&bytes));
    assert_eq!(head.status, 503, "{body}");
    assert_eq!(head.header(ERR), Some("overloaded"));

    held.pop();
    let authority = format!("api.test:{}", tls.port);
    let mut admitted = None;
    for _ in 0..100 {
        let (head, stream) = connect_tunnel(proxy.proxy_addr, &authority).await;
        if head.status == 200 {
            admitted = Some(stream);
            break;
        }
        pause(50).await;
    }
    let stream = admitted.expect("no new connection admitted after one of two closed");
    let tls_stream = tls_handshake(stream, "api.test", &proxy.ca_pem, ALPN_H1)
        .await
        .unwrap();
    let reply = client_over(tls_stream)
        .await
        .send(get(&authority, "/echo"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    drop(held);
}

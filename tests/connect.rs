//! CONNECT, policy, tunnel hygiene and upstream failures (SPEC §5.1–§5.3,
//! §5.7, §5.8), plus absolute-form plain HTTP and request framing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ERR: &str = "x-iron-proxy-error";

/// A default (h2 + http/1.1) upstream and a proxy allowing only `api.test`.
async fn setup() -> (Upstream, ProxyHandle) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream).allow("api.test", &[upstream.port]);
    let proxy = start_proxy(config).await;
    (upstream, proxy)
}

fn api(upstream: &Upstream) -> String {
    format!("api.test:{}", upstream.port)
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_connect_reaches_upstream_over_h1_and_h2() {
    let (upstream, proxy) = setup().await;
    for mut client in [
        h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
        h2_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
    ] {
        let reply = client.send(get(&api(&upstream), "/echo?x=1")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["path"], "/echo");
        assert_eq!(reply.json()["query"], "x=1");
    }
    assert_eq!(upstream.requests().len(), 2);
    let big = h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem);
    let reply = big
        .await
        .send(get(&api(&upstream), "/big?bytes=300000"))
        .await;
    assert_eq!(
        reply.body.len(),
        300_000,
        "response body streamed back whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_host_gets_403_before_any_tls() {
    let (upstream, proxy) = setup().await;
    let (head, mut stream) =
        connect_tunnel(proxy.proxy_addr, &format!("other.test:{}", upstream.port)).await;
    assert_eq!(head.status, 403);
    assert_eq!(head.header(ERR), Some("policy"));
    let body = read_body(&mut stream, &head).await;
    assert_eq!(
        body.trim_end().lines().count(),
        1,
        "one-line reason: {body:?}"
    );
    assert!(
        body.contains("other.test"),
        "reason names the host: {body:?}"
    );
    assert_eq!(
        upstream.connection_count(),
        0,
        "no upstream connection for a denied host"
    );
    let audit = proxy.wait_for_audit(|r| r["status"] == 403).await;
    assert_eq!(audit["decision"], "deny", "{audit}");
    assert_eq!(
        audit["host"], "other.test",
        "audit host is the bare name: {audit}"
    );
    assert_eq!(audit["port"], upstream.port, "audit port: {audit}");
}

/// A CONNECT head that cannot open a tunnel (here: it announces a body) is
/// answered 400 `malformed`, audited, and the connection closed; nothing
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn connect_with_a_body_is_400_and_closed() {
    let (upstream, proxy) = setup().await;
    let head = format!(
        "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nContent-Length: 5\r\n\r\nhello",
        api(&upstream)
    );
    let (reply, closed) = {
        let mut stream = TcpStream::connect(proxy.proxy_addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        read_until_closed(&mut stream).await
    };
    let (head, body) = parse_response(&String::from_utf8_lossy(&reply));
    assert_eq!(head.status, 400, "{body}");
    assert_eq!(head.header(ERR), Some("malformed"));
    assert!(body.contains("body"), "{body}");
    assert!(closed, "the connection stays open after a refused CONNECT");
    let audit = proxy.wait_for_audit(|r| r["status"] == 400).await;
    assert_eq!(
        (audit["method"].as_str(), audit["error"].as_str()),
        (Some("CONNECT"), Some("malformed")),
        "{audit}"
    );
    assert_eq!(upstream.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_port_gets_403() {
    let (upstream, proxy) = setup().await;
    let (head, _stream) = connect_tunnel(proxy.proxy_addr, "api.test:443").await;
    assert_eq!(head.status, 403);
    assert_eq!(head.header(ERR), Some("policy"));
    let (head, _stream) =
        connect_tunnel(proxy.proxy_addr, &format!("api.test:{}", upstream.port + 1)).await;
    assert_eq!(head.status, 403);
    assert_eq!(upstream.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_inside_tunnel_is_closed() {
    let (upstream, proxy) = setup().await;
    let (head, mut stream) = connect_tunnel(proxy.proxy_addr, &api(&upstream)).await;
    assert_eq!(head.status, 200);
    let request = format!("GET /echo HTTP/1.1\r\nHost: {}\r\n\r\n", api(&upstream));
    stream.write_all(request.as_bytes()).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut stream).await;
    assert!(closed, "tunnel not closed after plain HTTP");
    assert!(!String::from_utf8_lossy(&bytes).contains("HTTP/1.1 200"));
    assert!(upstream.requests().is_empty());
    assert_eq!(upstream.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_naming_another_host_fails_the_handshake() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .allow("other.test", &[upstream.port]);
    let proxy = start_proxy(config).await;
    let (head, stream) = connect_tunnel(proxy.proxy_addr, &api(&upstream)).await;
    assert_eq!(head.status, 200);
    let handshake = tls_handshake(stream, "other.test", &proxy.ca_pem, ALPN_BOTH).await;
    assert!(
        handshake.is_err(),
        "TLS with SNI other.test in an api.test tunnel succeeded"
    );
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn host_differing_from_connect_host_is_421() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .allow("other.test", &[upstream.port]);
    let proxy = start_proxy(config).await;
    let other = format!("other.test:{}", upstream.port);
    for mut client in [
        h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
        h2_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
    ] {
        let reply = client.send(get(&other, "/echo")).await;
        assert_eq!(reply.status, 421, "{}", reply.text());
        assert_eq!(reply.header(ERR), Some("host_mismatch"));
    }
    assert!(
        upstream.requests().is_empty(),
        "mismatched request reached upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_is_negotiated_independently_on_each_side() {
    let h1_up = start_upstream(UpstreamOpts::h1_only()).await;
    let h2_up = start_upstream(UpstreamOpts::h2_only()).await;
    let config = ProxyConfig::new(&h1_up)
        .trust(&h2_up.ca_pem)
        .allow("api.test", &[h1_up.port])
        .allow("other.test", &[h2_up.port]);
    let proxy = start_proxy(config).await;

    let mut agent_h2 = h2_client(proxy.proxy_addr, "api.test", h1_up.port, &proxy.ca_pem).await;
    let reply = agent_h2.send(get(&api(&h1_up), "/echo")).await;
    assert_eq!((reply.status, reply.version), (200, hyper::Version::HTTP_2));
    assert_eq!(h1_up.last("/echo").version, "HTTP/1.1");

    let other = format!("other.test:{}", h2_up.port);
    let mut agent_h1 = h1_client(proxy.proxy_addr, "other.test", h2_up.port, &proxy.ca_pem).await;
    let reply = agent_h1.send(get(&other, "/echo")).await;
    assert_eq!(
        (reply.status, reply.version),
        (200, hyper::Version::HTTP_11)
    );
    assert_eq!(h2_up.last("/echo").version, "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_across_tunnels() {
    let (upstream, proxy) = setup().await;
    for _ in 0..2 {
        let mut client =
            h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await;
        assert_eq!(client.send(get(&api(&upstream), "/echo")).await.status, 200);
    }
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(
        upstream.connection_count(),
        1,
        "second tunnel opened a new upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_arrive_one_by_one() {
    use http_body_util::BodyExt;
    let (upstream, proxy) = setup().await;
    let (n, delay_ms) = (5u32, 300u64);
    let mut client = h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await;
    let start = std::time::Instant::now();
    let path = format!("/sse?n={n}&delay_ms={delay_ms}");
    let response = client.request(get(&api(&upstream), &path)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let (mut text, mut arrivals) = (String::new(), Vec::new());
    while let Some(frame) = within("next SSE frame", body.frame()).await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
            arrivals.resize(text.matches("\n\n").count(), start.elapsed());
        }
    }
    assert_eq!(arrivals.len(), n as usize, "all events arrive: {text:?}");
    // Produced (n-1)*delay apart: if the proxy buffered, they would land together.
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    let produced_over = std::time::Duration::from_millis((n as u64 - 1) * delay_ms);
    assert!(
        spread >= produced_over / 2,
        "events were buffered: arrivals {arrivals:?}"
    );
}

async fn websocket_echo(alpn: UpstreamOpts) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (upstream, proxy) = api_proxy(alpn).await;
    let tls = proxy.tls_to("api.test", upstream.port, ALPN_H1).await;
    let url = format!("wss://api.test:{}/ws", upstream.port);
    let (mut ws, _) = within("ws handshake", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    for text in ["hello through the tunnel", "second message"] {
        within("ws send", ws.send(Message::text(text)))
            .await
            .unwrap();
        let echoed = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap(), text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_tunnel_h1_upstream() {
    websocket_echo(UpstreamOpts::h1_only()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_echo_through_tunnel_h2_capable_upstream() {
    websocket_echo(UpstreamOpts::default()).await;
}

/// Expect a 502 `upstream_connect`, at CONNECT or on the first request.
async fn expect_upstream_connect_error(proxy: &ProxyHandle, host: &str, port: u16) {
    let authority = format!("{host}:{port}");
    let (head, stream) = connect_tunnel(proxy.proxy_addr, &authority).await;
    if head.status != 200 {
        assert_eq!(head.status, 502, "{head:?}");
        assert_eq!(head.header(ERR), Some("upstream_connect"));
        return;
    }
    let tls = tls_handshake(stream, host, &proxy.ca_pem, ALPN_H1)
        .await
        .unwrap();
    let reply = client_over(tls).await.send(get(&authority, "/echo")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.header(ERR), Some("upstream_connect"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_with_untrusted_ca_is_502() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let unrelated = TestCa::new("unrelated CA");
    let config = ProxyConfig::bare()
        .trust(&unrelated.cert_pem)
        .allow("api.test", &[upstream.port]);
    let proxy = start_proxy(config).await;
    expect_upstream_connect_error(&proxy, "api.test", upstream.port).await;
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_upstream_port_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = start_proxy(ProxyConfig::bare().allow("dead.test", &[port])).await;
    expect_upstream_connect_error(&proxy, "dead.test", port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_plain_http_follows_policy() {
    let plain = start_plain_upstream().await;
    let proxy = start_proxy(ProxyConfig::new(&plain).allow("plain.test", &[plain.port])).await;
    let get_plain = |host: &str| {
        let authority = format!("{host}:{}", plain.port);
        format!("GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
    };
    let (head, body) =
        parse_response(&raw_request(proxy.proxy_addr, get_plain("plain.test").as_bytes()).await);
    assert_eq!(head.status, 200, "{body}");
    assert!(body.contains("\"path\":\"/echo\""), "{body}");
    assert_eq!(plain.requests().len(), 1);

    let (head, body) =
        parse_response(&raw_request(proxy.proxy_addr, get_plain("other.test").as_bytes()).await);
    assert_eq!(head.status, 403, "{body}");
    assert_eq!(head.header(ERR), Some("policy"));
    assert_eq!(plain.requests().len(), 1, "denied request reached upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_do_not_reach_upstream() {
    // h1 upstream: an h2 upstream could not carry connection headers anyway.
    let (upstream, proxy) = api_proxy(UpstreamOpts::h1_only()).await;
    let mut client = h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await;
    let request = req("GET", &api(&upstream), "/echo")
        .header("connection", "x-foo")
        .header("x-foo", "listed-in-connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "gzip")
        .header("x-kept", "yes")
        .body(Default::default())
        .unwrap();
    assert_eq!(client.send(request).await.status, 200);
    let seen = upstream.last("/echo");
    for name in ["x-foo", "keep-alive", "proxy-authorization", "te"] {
        assert_eq!(
            seen.header(name),
            None,
            "upstream saw hop-by-hop {name}: {seen:?}"
        );
    }
    let connection = seen.header("connection").unwrap_or_default();
    assert!(!connection.contains("x-foo"), "{seen:?}");
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

/// A client may send its ClientHello in the same write as the CONNECT head,
/// before the 200: those bytes must reach the TLS handshake, not be lost
/// with the head.
#[tokio::test(flavor = "multi_thread")]
async fn client_hello_pipelined_with_the_connect_head_is_kept() {
    let (upstream, proxy) = setup().await;
    let tcp = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let head = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", api(&upstream));
    let stream = Pipelined::new(tcp, head.into_bytes());
    let tls = tls_handshake(stream, "api.test", &proxy.ca_pem, ALPN_H1)
        .await
        .expect("TLS through a pipelined CONNECT");
    let reply = raw_over(
        tls,
        format!(
            "GET /echo HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            api(&upstream)
        )
        .as_bytes(),
    )
    .await;
    let (head, body) = parse_response(&reply);
    assert_eq!(head.status, 200, "{body}");
    assert_eq!(upstream.requests().len(), 1);
}

/// The first head is read by hand; a CONNECT after a plain request on the
/// same connection is still served (through hyper's upgrade).
#[tokio::test(flavor = "multi_thread")]
async fn connect_after_a_plain_request_on_one_connection() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let plain = start_plain_upstream().await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .allow("plain.test", &[plain.port]);
    let proxy = start_proxy(config).await;
    let mut tcp = TcpStream::connect(proxy.proxy_addr).await.unwrap();
    let authority = format!("plain.test:{}", plain.port);
    let get = format!("GET http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(head.status, 200);
    let body = read_body(&mut tcp, &head).await;
    assert!(body.contains("\"path\":\"/echo\""), "{body}");

    let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", api(&upstream));
    tcp.write_all(connect.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(head.status, 200, "{head:?}");
    let tls = tls_handshake(tcp, "api.test", &proxy.ca_pem, ALPN_H1)
        .await
        .unwrap();
    let mut client = client_over(tls).await;
    let reply = client.send(get_req(&api(&upstream))).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.requests().len(), 1);
}

fn get_req(authority: &str) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
    get(authority, "/echo")
}

/// Writes `head` in the same `write` as the first bytes written (the
/// ClientHello), and hides the proxy's reply head from the reader after
/// checking it is a 200.
struct Pipelined {
    inner: TcpStream,
    head: Option<Vec<u8>>,
    answer: Vec<u8>,
}

impl Pipelined {
    fn new(inner: TcpStream, head: Vec<u8>) -> Self {
        Pipelined {
            inner,
            head: Some(head),
            answer: Vec::new(),
        }
    }
}

impl tokio::io::AsyncWrite for Pipelined {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(mut both) = self.head.take() {
            both.extend_from_slice(buf);
            // A fresh loopback socket takes a few hundred bytes at once.
            let n = self.inner.try_write(&both).expect("pipelined write");
            assert_eq!(n, both.len(), "the pipelined write was split");
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncRead for Pipelined {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while !self.answer.ends_with(b"\r\n\r\n") {
            assert!(self.answer.len() < 4096, "reply head too large");
            let mut byte = [0u8; 1];
            let mut one = tokio::io::ReadBuf::new(&mut byte);
            std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut one))?;
            assert_eq!(one.filled().len(), 1, "closed before the reply head ended");
            self.answer.push(byte[0]);
            if self.answer.ends_with(b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.answer);
                assert_eq!(parse_head(&head).status, 200, "{head}");
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// An HTTP/1.1 tunnel idle for a few milliseconds is parked (hyper's
/// connection dropped, the TLS stream kept) and resumed on the next byte:
/// requests after pauses, a head that was half-read when the tunnel
/// parked, and a WebSocket upgrade after a pause all work on one tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn parked_h1_tunnel_resumes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (upstream, proxy) = setup().await;
    let host = api(&upstream);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut tls = proxy.tls_to("api.test", upstream.port, ALPN_H1).await;
    let exchange = async |tls: &mut tokio_rustls::client::TlsStream<TcpStream>| {
        let head = read_head(tls).await;
        assert_eq!(head.status, 200, "{head:?}");
        read_body(tls, &head).await
    };
    for i in 0..3 {
        tls.write_all(get(&format!("/echo?n={i}")).as_bytes())
            .await
            .unwrap();
        let body = exchange(&mut tls).await;
        assert!(body.contains(&format!("n={i}")), "{body}");
        pause(30).await;
    }
    // Half a head right after a response: the tunnel parks with it in
    // hyper's buffer, and it must come back in front of the rest.
    tls.write_all(get("/echo?n=warm").as_bytes()).await.unwrap();
    exchange(&mut tls).await;
    let split = get("/echo?n=split");
    let (first, rest) = split.split_at(split.len() / 2);
    tls.write_all(first.as_bytes()).await.unwrap();
    pause(50).await;
    tls.write_all(rest.as_bytes()).await.unwrap();
    let body = exchange(&mut tls).await;
    assert!(body.contains("n=split"), "{body}");
    assert_eq!(upstream.requests().len(), 5);

    pause(30).await;
    let url = format!("wss://{host}/ws");
    let (mut ws, _) = within("ws handshake", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap();
    within("ws send", ws.send(Message::text("after a park")))
        .await
        .unwrap();
    let echoed = within("ws echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap(), "after a park");
}

/// With one CPU allowed the proxy runs a single-threaded runtime (it says
/// so at start); tunnels over both protocols, parking, pooled upstream
/// connections and drain all still work.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_on_one_cpu_runs_single_threaded() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .one_cpu();
    let proxy = start_proxy(config).await;
    let runtime = proxy
        .json_logs()
        .into_iter()
        .find(|l| l["message"] == "async runtime")
        .expect("the runtime is logged at start");
    assert_eq!(
        (runtime["cpus"].as_u64(), runtime["runtime"].as_str()),
        (Some(1), Some("current_thread")),
        "{runtime}"
    );
    for mut client in [
        h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
        h2_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await,
    ] {
        for _ in 0..3 {
            let reply = client.send(get_req(&api(&upstream))).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            pause(20).await;
        }
    }
    assert_eq!(upstream.requests().len(), 6);
}

/// `RUST_LOG=info,audit=off` turns audit records off (and nothing else).
#[tokio::test(flavor = "multi_thread")]
async fn audit_records_follow_the_log_filter() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .env("RUST_LOG", "info,audit=off");
    let proxy = start_proxy(config).await;
    let mut client = h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await;
    let reply = client.send(get_req(&api(&upstream))).await;
    assert_eq!(reply.status, 200);
    let denied = connect_tunnel(proxy.proxy_addr, "other.test:443").await.0;
    assert_eq!(denied.status, 403);
    // Records would have reached the log writer by now.
    pause(300).await;
    assert!(proxy.audit_records().is_empty(), "{}", proxy.all_logs());
    assert!(
        proxy
            .json_logs()
            .iter()
            .any(|l| l["message"] == "listening"),
        "other info lines still flow"
    );
}

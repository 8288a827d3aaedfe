//! Request shapes that let two HTTP parsers disagree on where a message ends,
//! or that no header may hold (SPEC §5.7, issue #2): each is refused with 400
//! and never reaches the upstream, on the plain port (absolute-form) and
//! inside an intercepted HTTP/1.1 tunnel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

/// (what, header lines after Host, including the blank line, and any body)
const SHAPES: &[(&str, &str)] = &[
    (
        "CL then TE",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE then CL",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    ),
    (
        "conflicting CL",
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    ),
    ("CL list disagreeing", "Content-Length: 5, 6\r\n\r\nhello!"),
    ("non-numeric CL", "Content-Length: 5a\r\n\r\nhello"),
    ("negative CL", "Content-Length: -1\r\n\r\n"),
    (
        "TE not ending in chunked",
        "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    ("unknown TE", "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("space before colon", "Content-Length : 5\r\n\r\nhello"),
    ("NUL in a value", "X-Test: a\0b\r\n\r\n"),
    ("bare CR in a value", "X-Test: a\rb\r\n\r\n"),
    ("obs-fold continuation", "X-Test: a\r\n b\r\n\r\n"),
];

fn assert_refused(what: &str, where_: &str, reply: &str, upstream: &Upstream) {
    let (head, body) = parse_response(reply);
    assert_eq!(
        head.status, 400,
        "{what} ({where_}) answered {}: {body}",
        head.status
    );
    assert!(
        upstream.requests().is_empty(),
        "{what} ({where_}) reached the upstream: {:?}",
        upstream.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_on_the_plain_port_are_400() {
    let plain = start_plain_upstream().await;
    let proxy = start_proxy(ProxyConfig::new(&plain).allow("plain.test", &[plain.port])).await;
    let authority = format!("plain.test:{}", plain.port);
    for (what, rest) in SHAPES {
        let raw = format!("POST http://{authority}/echo HTTP/1.1\r\nHost: {authority}\r\n{rest}");
        let reply = raw_request(proxy.proxy_addr, raw.as_bytes()).await;
        assert_refused(what, "plain port", &reply, &plain);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_inside_a_tunnel_are_400() {
    let (upstream, proxy) = api_proxy(UpstreamOpts::default()).await;
    let authority = format!("api.test:{}", upstream.port);
    for (what, rest) in SHAPES {
        let tls = proxy.tls_to("api.test", upstream.port, ALPN_H1).await;
        let raw = format!("POST /echo HTTP/1.1\r\nHost: {authority}\r\n{rest}");
        let reply = raw_over(tls, raw.as_bytes()).await;
        assert_refused(what, "tunnel", &reply, &upstream);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_carries_the_error_header() {
    let (upstream, proxy) = api_proxy(UpstreamOpts::default()).await;
    let tls = proxy.tls_to("api.test", upstream.port, ALPN_H1).await;
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: api.test:{}\r\n{}",
        upstream.port, SHAPES[0].1
    );
    let (head, body) = parse_response(&raw_over(tls, raw.as_bytes()).await);
    assert_eq!(head.header("x-iron-proxy-error"), Some("malformed"));
    assert!(
        body.contains("Content-Length and Transfer-Encoding"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_looks_like_headers_is_just_a_body() {
    let (upstream, proxy) = api_proxy(UpstreamOpts::default()).await;
    let tls = proxy.tls_to("api.test", upstream.port, ALPN_H1).await;
    let body = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: api.test:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        upstream.port,
        body.len()
    );
    let (head, reply) = parse_response(&raw_over(tls, raw.as_bytes()).await);
    assert_eq!(head.status, 200, "{reply}");
    assert_eq!(upstream.last("/echo").method, "POST");
}

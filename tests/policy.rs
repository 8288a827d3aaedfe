//! Who may be reached and how the target is read (SPEC §5.1, §5.2, §5.7,
//! §5.8a): the private-address guard, IP/CIDR rules, strict CONNECT target
//! parsing, wildcard rules, plain-port request forms, the tunnel's Host
//! check, and the leaf certificates presented inside tunnels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use support::*;
use x509_parser::extensions::GeneralName;

const ERR: &str = "x-iron-proxy-error";

/// Default upstream and a proxy built from `configure(base)`.
async fn setup(configure: impl FnOnce(ProxyConfig, u16) -> ProxyConfig) -> (Upstream, ProxyHandle) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = configure(ProxyConfig::new(&upstream), upstream.port);
    let proxy = start_proxy(config).await;
    (upstream, proxy)
}

/// TLS through a tunnel to `host:port`, then `GET /echo`; the status.
async fn echo_through(proxy: &ProxyHandle, host: &str, port: u16) -> u16 {
    let tls = proxy.tls_to(host, port, ALPN_H1).await;
    let authority = format!("{host}:{port}");
    let reply = client_over(tls).await.send(get(&authority, "/echo")).await;
    assert_eq!(reply.status, 200, "{authority}: {}", reply.text());
    reply.status
}

/// A 403 `policy` answer to `CONNECT authority`; returns the body.
async fn expect_connect_denied(proxy: &ProxyHandle, authority: &str) -> String {
    let (head, mut stream) = connect_tunnel(proxy.proxy_addr, authority).await;
    let body = read_body(&mut stream, &head).await;
    assert_eq!(head.status, 403, "CONNECT {authority}: {head:?} {body}");
    assert_eq!(head.header(ERR), Some("policy"), "CONNECT {authority}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn localhost_from_dns_is_refused_as_private() {
    // No `resolve` entry for localhost: /etc/hosts answers with loopback.
    let (upstream, proxy) = setup(|c, port| c.allow("localhost", &[port])).await;
    let body = expect_connect_denied(&proxy, &format!("localhost:{}", upstream.port)).await;
    assert!(
        body.contains("private") && body.contains("reserved"),
        "{body}"
    );
    assert_eq!(
        body.trim_end().lines().count(),
        1,
        "one-line reason: {body:?}"
    );
    assert_eq!(
        upstream.connection_count(),
        0,
        "guarded address was dialled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_private_lets_localhost_through() {
    // The upstream's certificate names `localhost`, so this goes all the way.
    let (upstream, proxy) = setup(|c, port| {
        c.allow("localhost", &[port])
            .upstream_option("allow_private = true")
    })
    .await;
    echo_through(&proxy, "localhost", upstream.port).await;
    assert_eq!(upstream.last("/echo").method, "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_written_ip_and_cidr_rules_are_trusted() {
    for rule in ["127.0.0.1", "127.0.0.0/8"] {
        let (upstream, proxy) = setup(|c, port| c.allow(rule, &[port])).await;
        echo_through(&proxy, "127.0.0.1", upstream.port).await;
        assert_eq!(upstream.requests().len(), 1, "rule {rule}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_connect_targets_are_refused() {
    // 127.0.0.0/8 is allowed: a parser reading `127.1` or `2130706433` the
    // way getaddrinfo does would let those through with a 200.
    let (upstream, proxy) =
        setup(|c, port| c.allow("api.test", &[port]).allow("127.0.0.0/8", &[port])).await;
    let p = upstream.port;
    let targets = [
        "api.test".to_string(),
        "api.test:0".to_string(),
        "api.test:99999".to_string(),
        format!("user@api.test:{p}"),
        format!("api.test:{p}@evil.test:{p}"),
        format!("2130706433:{p}"),
        format!("127.1:{p}"),
        format!("0x7f.0.0.1:{p}"),
        "[::1".to_string(),
        "api.test:+443".to_string(),
        format!("api.test:+{p}"),
    ];
    for target in &targets {
        let (head, mut stream) = connect_tunnel(proxy.proxy_addr, target).await;
        let body = read_body(&mut stream, &head).await;
        assert!(
            matches!(head.status, 400 | 403),
            "CONNECT {target}: {head:?} {body}"
        );
        // hyper answers targets it cannot parse at all with a bare 400.
        if let Some(kind) = head.header(ERR) {
            let expected = if head.status == 400 {
                "malformed"
            } else {
                "policy"
            };
            assert_eq!(kind, expected, "CONNECT {target}");
        }
    }
    assert_eq!(
        upstream.connection_count(),
        0,
        "a malformed target was dialled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trailing_dot_and_uppercase_name_the_same_host() {
    let (upstream, proxy) = setup(|c, port| c.allow("api.test", &[port])).await;
    let authority = format!("api.test:{}", upstream.port);
    for target in [
        format!("api.test.:{}", upstream.port),
        format!("API.TEST:{}", upstream.port),
    ] {
        let (head, stream) = connect_tunnel(proxy.proxy_addr, &target).await;
        assert_eq!(head.status, 200, "CONNECT {target}: {head:?}");
        let tls = tls_handshake(stream, "api.test", &proxy.ca_pem, ALPN_H1).await;
        let tls = tls.unwrap_or_else(|e| panic!("TLS in the {target} tunnel: {e}"));
        let reply = client_over(tls).await.send(get(&authority, "/echo")).await;
        assert_eq!(reply.status, 200, "{target}: {}", reply.text());
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn wildcard_rule_admits_subdomains_on_listed_ports_only() {
    let (upstream, proxy) = setup(|c, port| c.allow("*.wild.test", &[port])).await;
    let p = upstream.port;
    let body = expect_connect_denied(&proxy, &format!("wild.test:{p}")).await;
    assert!(body.contains("wild.test"), "{body}");
    expect_connect_denied(&proxy, &format!("a.wild.test:{}", p + 1)).await;
    expect_connect_denied(&proxy, &format!("a.wild.test.evil:{p}")).await;
    assert_eq!(upstream.connection_count(), 0);
    echo_through(&proxy, "a.wild.test", p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_port_refuses_https_absolute_form_and_origin_form() {
    let (upstream, proxy) = setup(|c, port| c.allow("api.test", &[port])).await;
    let authority = format!("api.test:{}", upstream.port);
    for start in [
        format!("GET https://{authority}/echo HTTP/1.1"),
        "GET /echo HTTP/1.1".to_string(),
    ] {
        let raw = format!("{start}\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        let (head, body) = parse_response(&raw_request(proxy.proxy_addr, raw.as_bytes()).await);
        assert_eq!(head.status, 400, "{start}: {body}");
        assert_eq!(head.header(ERR), Some("malformed"), "{start}");
    }
    assert_eq!(upstream.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnel_requests_must_name_the_connect_host_once() {
    let (upstream, proxy) = setup(|c, port| c.allow("api.test", &[port, port + 1])).await;
    let p = upstream.port;
    let cases = [
        (
            format!("Host: api.test:{}\r\n", p + 1),
            421,
            "host_mismatch",
        ),
        (
            format!("Host: api.test:{p}\r\nHost: api.test:{p}\r\n"),
            400,
            "malformed",
        ),
        (
            format!("Host: api.test:{p}\r\nHost: other.test:{p}\r\n"),
            400,
            "malformed",
        ),
    ];
    for (hosts, status, kind) in cases {
        let tls = proxy.tls_to("api.test", p, ALPN_H1).await;
        let raw = format!("GET /echo HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n");
        let (head, body) = parse_response(&raw_over(tls, raw.as_bytes()).await);
        assert_eq!(head.status, status, "{hosts:?}: {body}");
        assert_eq!(head.header(ERR), Some(kind), "{hosts:?}");
    }
    assert!(
        upstream.requests().is_empty(),
        "a refused request reached upstream"
    );
}

/// The DER of the leaf presented inside a tunnel to `host:port`.
async fn leaf(proxy: &ProxyHandle, host: &str, port: u16) -> Vec<u8> {
    let tls = proxy.tls_to(host, port, ALPN_H1).await;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("no peer certificate");
    chain[0].to_vec()
}

/// Check SAN (exactly `san`), EKU, backdating and issuer of a leaf.
fn check_leaf(der: &[u8], ca_der: &[u8], san: &GeneralName<'_>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der).unwrap();
    let names = &cert
        .subject_alternative_name()
        .unwrap()
        .expect("no SAN")
        .value
        .general_names;
    assert_eq!(names, &vec![san.clone()], "SAN");
    let eku = cert.extended_key_usage().unwrap().expect("no EKU").value;
    assert!(eku.server_auth, "EKU lacks serverAuth");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    assert!(
        not_before <= now - 50 * 60,
        "not_before {not_before} is not backdated (now {now})"
    );
    assert!(
        cert.validity().not_after.timestamp() > now,
        "leaf already expired"
    );
    assert_eq!(cert.issuer(), ca.subject(), "issuer is not the proxy CA");
}

#[tokio::test(flavor = "multi_thread")]
async fn leaf_certificates_name_the_connect_host_and_are_cached() {
    let (upstream, proxy) = setup(|c, port| {
        c.allow("api.test", &[port])
            .allow("other.test", &[port])
            .allow("127.0.0.1", &[port])
    })
    .await;
    let p = upstream.port;
    let ca_der = CertificateDer::from_pem_slice(proxy.ca_pem.as_bytes()).unwrap();

    let api = leaf(&proxy, "api.test", p).await;
    check_leaf(&api, &ca_der, &GeneralName::DNSName("api.test"));
    assert_eq!(
        api,
        leaf(&proxy, "api.test", p).await,
        "second tunnel got a fresh leaf"
    );

    let other = leaf(&proxy, "other.test", p).await;
    check_leaf(&other, &ca_der, &GeneralName::DNSName("other.test"));
    assert_ne!(api, other, "two hosts share a leaf");

    // No SNI for an IP: the leaf is for the CONNECT host, as an IP SAN.
    let ip = leaf(&proxy, "127.0.0.1", p).await;
    check_leaf(&ip, &ca_der, &GeneralName::IPAddress(&[127, 0, 0, 1]));
    assert_eq!(
        upstream.connection_count(),
        0,
        "no request was sent, so no upstream connection"
    );
}

//! CA rotation with no failure window (SPEC §1.3, §6; docs/runbooks/rotate-ca.md).
//!
//! An agent keeps opening new tunnels while the operator (a) creates the
//! next CA, (b) publishes it through `ca.extra_trust` (the agent refetches
//! `/ca.pem`), (c) signs with it, (d) drops the extra entry. Not one request
//! may fail, new tunnels must switch issuer at (c), and a tunnel opened
//! before (c) keeps working. Also: replacing the CA files in place rotates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The agent loop's bounds: it must be stopped by the test well before.
const LOOP_MAX_ITERATIONS: u64 = 1000;
const LOOP_MAX_TIME: Duration = Duration::from_secs(20);

/// One new tunnel plus one request: the leaf's raw issuer name, or why it
/// failed. Never panics.
async fn one_tunnel(
    proxy: std::net::SocketAddr,
    port: u16,
    bundle: &str,
) -> Result<Vec<u8>, String> {
    let attempt = async {
        let mut tcp = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connect = format!("CONNECT api.test:{port} HTTP/1.1\r\nHost: api.test:{port}\r\n\r\n");
        tcp.write_all(connect.as_bytes())
            .await
            .map_err(|e| format!("write CONNECT: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tcp
                .read_u8()
                .await
                .map_err(|e| format!("CONNECT reply: {e} after {head:?}"))?;
            head.push(byte);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "CONNECT refused: {}",
                String::from_utf8_lossy(&head)
            ));
        }
        let connector = TlsConnector::from(client_config(bundle, ALPN_H1));
        let name = rustls_pki_types::ServerName::try_from("api.test").unwrap();
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no peer certificate")?[0]
            .clone();
        let request =
            format!("GET /echo HTTP/1.1\r\nHost: api.test:{port}\r\nConnection: close\r\n\r\n");
        let reply = raw_over(tls, request.as_bytes()).await;
        if !reply.starts_with("HTTP/1.1 200") {
            return Err(format!("request: {reply:?}"));
        }
        Ok(subject_and_issuer(&leaf).1)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 5 s".into()),
    }
}

/// One iteration: its index, then the leaf's issuer or the failure.
type Outcome = (u64, Result<Vec<u8>, String>);

/// The agent: new tunnels in a loop, trusting whatever `bundle` holds.
struct Agent {
    bundle: Mutex<String>,
    stop: AtomicBool,
    /// Iterations started (an iteration's index is the value it took).
    started: AtomicU64,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Agent {
    fn spawn(
        proxy: &ProxyHandle,
        port: u16,
        bundle: String,
    ) -> (Arc<Agent>, tokio::task::JoinHandle<bool>) {
        let agent = Arc::new(Agent {
            bundle: Mutex::new(bundle),
            stop: AtomicBool::new(false),
            started: AtomicU64::new(0),
            outcomes: Mutex::default(),
        });
        let (a, addr) = (agent.clone(), proxy.proxy_addr);
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + LOOP_MAX_TIME;
            while !a.stop.load(Ordering::SeqCst) {
                if Instant::now() >= deadline
                    || a.started.load(Ordering::SeqCst) >= LOOP_MAX_ITERATIONS
                {
                    return false;
                }
                let index = a.started.fetch_add(1, Ordering::SeqCst);
                let bundle = a.bundle.lock().unwrap().clone();
                let outcome = one_tunnel(addr, port, &bundle).await;
                a.outcomes.lock().unwrap().push((index, outcome));
                pause(10).await;
            }
            true
        });
        (agent, task)
    }

    fn done(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// Wait (bounded) until `n` more iterations than now have finished.
    async fn run_more(&self, n: usize) {
        let target = self.done() + n;
        eventually!(
            self.done() >= target,
            "agent stalled at {} iterations",
            self.done()
        );
    }
}

fn subject(pem: &str) -> Vec<u8> {
    subject_and_issuer(&pem_certs(pem)[0]).0
}

async fn ca_bundle(proxy: &ProxyHandle) -> String {
    let reply = proxy.admin("GET", "/ca.pem", None, b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// An upstream and a proxy allowed to it, started on an existing CA (A).
async fn rotation_setup() -> (Upstream, ProxyHandle) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream).allow("api.test", &[upstream.port]);
    let proxy = start_proxy(with_existing_ca(config)).await;
    (upstream, proxy)
}

fn path_toml(path: &Path) -> String {
    qs(path.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_rotation_through_extra_trust_has_no_failure_window() {
    let (upstream, proxy) = rotation_setup().await;
    let port = upstream.port;
    let dir = proxy.dir.path().to_path_buf();
    let ca_a = proxy.ca_pem.clone();
    let a = subject(&ca_a);
    assert_eq!(pem_certs(&ca_bundle(&proxy).await), pem_certs(&ca_a));

    let (agent, task) = Agent::spawn(&proxy, port, ca_bundle(&proxy).await);
    agent.run_more(5).await;

    // (a) the next CA.
    let next = dir.join("next");
    let out = run_cli(
        &[
            "ca",
            "init",
            "--out",
            next.to_str().unwrap(),
            "--name",
            "iron-proxy test CA B",
        ],
        None,
    );
    assert!(out.status.success(), "ca init: {out:?}");
    let ca_b = std::fs::read_to_string(next.join("ca.crt")).unwrap();
    let b = subject(&ca_b);
    assert_ne!(a, b);
    agent.run_more(3).await;

    // (b) publish it; the agent refetches /ca.pem.
    let extra = format!("extra_trust = [{}]\n", path_toml(&next.join("ca.crt")));
    proxy.edit_config(|t| {
        t.replace(
            "generate_if_missing = true\n",
            &format!("generate_if_missing = true\n{extra}"),
        )
    });
    let line = proxy.wait_reloaded(1).await;
    assert_eq!(line["ca_changed"], false, "{line}");
    let bundle = ca_bundle(&proxy).await;
    let certs = pem_certs(&bundle);
    assert_eq!(certs.len(), 2, "{bundle}");
    assert_eq!(certs[0], pem_certs(&ca_a)[0], "current CA first");
    assert_eq!(certs[1], pem_certs(&ca_b)[0]);
    *agent.bundle.lock().unwrap() = bundle.clone();
    agent.run_more(5).await;

    // A tunnel opened before the switch, used on both sides of it.
    let tls = tls_through(proxy.proxy_addr, "api.test", port, &bundle, ALPN_H1).await;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(subject_and_issuer(&leaf).1, a);
    let mut early = client_over(tls).await;
    let authority = format!("api.test:{port}");
    assert_eq!(early.send(get(&authority, "/echo")).await.status, 200);

    // (c) sign with B.
    let done_before_c = agent.done() as u64;
    proxy.edit_config(|t| {
        t.replace(
            &format!("cert = {}", path_toml(&dir.join("ca.crt"))),
            &format!("cert = {}", path_toml(&next.join("ca.crt"))),
        )
        .replace(
            &format!("key = {}", path_toml(&dir.join("ca.key"))),
            &format!("key = {}", path_toml(&next.join("ca.key"))),
        )
    });
    let line = proxy.wait_reloaded(2).await;
    assert_eq!(line["ca_changed"], true, "{line}");
    let after_c = agent.started.load(Ordering::SeqCst);
    assert_eq!(proxy.metric("iron_proxy_ca_generation").await, 2.0);
    // Current CA B, extra_trust B: published once.
    assert_eq!(pem_certs(&ca_bundle(&proxy).await), pem_certs(&ca_b));
    agent.run_more(5).await;
    let reply = early.send(get(&authority, "/echo")).await;
    assert_eq!(
        reply.status,
        200,
        "tunnel opened before (c): {}",
        reply.text()
    );

    // (d) drop the extra entry; keep going a little.
    proxy.edit_config(|t| t.replace(&extra, "extra_trust = []\n"));
    let line = proxy.wait_reloaded(3).await;
    assert_eq!(line["ca_changed"], false, "{line}");
    assert_eq!(pem_certs(&ca_bundle(&proxy).await), pem_certs(&ca_b));
    agent.run_more(10).await;
    assert_eq!(early.send(get(&authority, "/echo")).await.status, 200);

    agent.stop.store(true, Ordering::SeqCst);
    let stopped = within("agent loop", task).await.unwrap();
    assert!(
        stopped,
        "the agent loop hit its bound before the rotation ended"
    );

    let outcomes = agent.outcomes.lock().unwrap();
    eprintln!(
        "agent: {} tunnels; {done_before_c} done before (c), {} started after its reload",
        outcomes.len(),
        outcomes.len() as u64 - after_c
    );
    let failures: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}\n{}",
        failures.len(),
        outcomes.len(),
        proxy.all_logs()
    );
    let issuer = |(i, r): &Outcome| (*i, r.clone().unwrap());
    let issuers: Vec<(u64, Vec<u8>)> = outcomes.iter().map(issuer).collect();
    for (i, issuer) in &issuers {
        if *i < done_before_c {
            assert_eq!(issuer, &a, "tunnel {i} (done before (c)) not issued by A");
        }
        if *i >= after_c {
            assert_eq!(
                issuer, &b,
                "tunnel {i} (after the (c) reload) not issued by B"
            );
        }
    }
    assert!(issuers.iter().any(|(_, x)| *x == a), "A never seen");
    assert!(issuers.iter().any(|(_, x)| *x == b), "B never seen");
    assert!(proxy.reload_failures().is_empty(), "{}", proxy.all_logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn replacing_the_ca_files_in_place_rotates_the_ca() {
    let (upstream, proxy) = rotation_setup().await;
    let port = upstream.port;
    let dir = proxy.dir.path().to_path_buf();
    let ca_a = proxy.ca_pem.clone();

    let next = tempfile::tempdir().unwrap();
    let out = run_cli(
        &[
            "ca",
            "init",
            "--out",
            next.path().to_str().unwrap(),
            "--name",
            "iron-proxy test CA B",
        ],
        None,
    );
    assert!(out.status.success(), "ca init: {out:?}");
    let ca_b = std::fs::read_to_string(next.path().join("ca.crt")).unwrap();
    let key_b = std::fs::read(next.path().join("ca.key")).unwrap();
    let bundle = format!("{ca_a}{ca_b}");

    // Open a tunnel under A (its leaf is cached for api.test, too).
    assert_eq!(
        one_tunnel(proxy.proxy_addr, port, &bundle).await,
        Ok(subject(&ca_a))
    );
    let mut early =
        client_over(tls_through(proxy.proxy_addr, "api.test", port, &bundle, ALPN_H1).await).await;
    let authority = format!("api.test:{port}");
    assert_eq!(early.send(get(&authority, "/echo")).await.status, 200);

    // The new pair over the old files, each with a rename, back to back.
    write_atomic(&dir.join("ca.crt"), ca_b.as_bytes());
    write_atomic(&dir.join("ca.key"), &key_b);
    let line = proxy.wait_reloaded(1).await;
    assert_eq!(line["ca_changed"], true, "{line}");
    assert!(
        proxy.reload_failures().is_empty(),
        "a half-replaced pair was built:\n{}",
        proxy.all_logs()
    );

    assert_eq!(
        one_tunnel(proxy.proxy_addr, port, &bundle).await,
        Ok(subject(&ca_b))
    );
    // A client that trusts only B works now.
    assert_eq!(
        one_tunnel(proxy.proxy_addr, port, &ca_b).await,
        Ok(subject(&ca_b))
    );
    assert_eq!(pem_certs(&ca_bundle(&proxy).await), pem_certs(&ca_b));
    assert_eq!(proxy.metric("iron_proxy_ca_generation").await, 2.0);
    let reply = early.send(get(&authority, "/echo")).await;
    assert_eq!(
        reply.status,
        200,
        "tunnel opened before the rotation: {}",
        reply.text()
    );
}

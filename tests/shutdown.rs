//! SIGTERM (SPEC §3): stop accepting, drain in-flight requests, exit 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::*;
use tokio::net::TcpStream;

/// How long the process may take to exit once the last stream ended.
const EXIT_BOUND: Duration = Duration::from_secs(5);

fn sigterm(proxy: &ProxyHandle) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(proxy.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// Start an SSE stream (5 events, 200 ms apart) over `h2` or h1, SIGTERM
/// after the first event, and check the drain.
async fn sse_survives_sigterm(h2: bool) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream).allow("api.test", &[upstream.port]);
    let mut proxy = start_proxy(config).await;
    let authority = format!("api.test:{}", upstream.port);
    let mut client = if h2 {
        h2_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await
    } else {
        h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await
    };
    let response = client
        .request(get(&authority, "/sse?n=5&delay_ms=200"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let rest = sse_after_first_event(response.into_body()).await;

    sigterm(&proxy);
    eventually!(
        TcpStream::connect(proxy.proxy_addr).await.is_err(),
        "proxy port still accepts connections after SIGTERM"
    );
    assert!(
        !rest.is_finished() && proxy.child.try_wait().unwrap().is_none(),
        "the process or the stream ended before new connections were refused"
    );

    let (text, error) = within("SSE stream after SIGTERM", rest).await.unwrap();
    assert_eq!(error, None, "stream cut during drain; got {text:?}");
    for i in 0..5 {
        assert!(
            text.contains(&format!("data: event {i}\n")),
            "event {i} missing: {text:?}"
        );
    }

    let deadline = Instant::now() + EXIT_BOUND;
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {EXIT_BOUND:?} after the drain:\n{}",
            proxy.all_logs()
        );
        pause(50).await;
    };
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        proxy.all_logs()
    );
    // Held open until here: an idle keep-alive connection must not hold up the exit.
    drop(client);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_h1_sse_stream_and_exits_0() {
    sse_survives_sigterm(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_an_h2_sse_stream_and_exits_0() {
    sse_survives_sigterm(true).await;
}

/// A stream that would outlive `limits.drain_timeout` is cut at the bound
/// and the process still exits 0: a stuck client cannot hold a rollout.
#[tokio::test(flavor = "multi_thread")]
async fn drain_timeout_bounds_an_endless_stream() {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .extra("[limits]\ndrain_timeout = \"500ms\"\n");
    let mut proxy = start_proxy(config).await;
    let authority = format!("api.test:{}", upstream.port);
    let mut client = h1_client(proxy.proxy_addr, "api.test", upstream.port, &proxy.ca_pem).await;
    // 100 events 200 ms apart: 20 s, far beyond the drain timeout.
    let response = client
        .request(get(&authority, "/sse?n=100&delay_ms=200"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    within("first SSE frame", body.frame())
        .await
        .unwrap()
        .unwrap();
    let signalled = Instant::now();
    sigterm(&proxy);
    let status = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < EXIT_BOUND,
            "still running {EXIT_BOUND:?} after SIGTERM with drain_timeout = 500ms:\n{}",
            proxy.all_logs()
        );
        pause(50).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        proxy.all_logs().contains("limits.drain_timeout reached"),
        "the log does not say the drain was cut short"
    );
}

//! Real agent-side clients through the proxy (here: the system `curl`).
//! Skipped, with a message, when the client is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use support::*;

const STUB: &str = "github-token-stub";
const REAL: &str = "ghp_REALsecret0123456789abcdefXYZ";

/// Proxy-related variables a developer's shell may carry into the test.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn curl_installed() -> bool {
    let version = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if version.is_ok_and(|s| s.success()) {
        return true;
    }
    eprintln!("skipping: curl is not installed");
    false
}

async fn setup() -> (Upstream, ProxyHandle) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .credential("gh", STUB, REAL, &["api.test"]);
    let proxy = start_proxy(config).await;
    (upstream, proxy)
}

/// `curl` with a clean proxy environment, `extra_env` set, run off the
/// async workers (the upstream lives on this runtime).
async fn curl(args: Vec<String>, extra_env: Vec<(&'static str, String)>) -> Output {
    let run = move || {
        let mut command = Command::new("curl");
        command
            .arg("-q")
            .args(["-sS", "--max-time", "20"])
            .args(&args);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        command
            .envs(extra_env)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    tokio::task::spawn_blocking(run).await.unwrap()
}

fn echoed_authorization(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl failed: {stderr}\n{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    json["headers"]["authorization"][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_proxy_flag_gets_the_real_token_swapped_in() {
    if !curl_installed() {
        return;
    }
    let (upstream, proxy) = setup().await;
    let ca = proxy.dir.path().join("ca.crt");
    let args = vec![
        "--proxy".into(),
        format!("http://{}", proxy.proxy_addr),
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        format!("https://api.test:{}/echo", upstream.port),
        "-H".into(),
        format!("Authorization: Bearer {STUB}"),
    ];
    let output = curl(args, vec![]).await;
    assert_eq!(echoed_authorization(&output), format!("Bearer {REAL}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_https_proxy_env_gets_the_real_token_swapped_in() {
    if !curl_installed() {
        return;
    }
    let (upstream, proxy) = setup().await;
    let ca = proxy.dir.path().join("ca.crt");
    let args = vec![
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        format!("https://api.test:{}/echo", upstream.port),
        "-H".into(),
        format!("Authorization: Bearer {STUB}"),
    ];
    let env = vec![("HTTPS_PROXY", format!("http://{}", proxy.proxy_addr))];
    let output = curl(args, env).await;
    assert_eq!(echoed_authorization(&output), format!("Bearer {REAL}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_basic_auth_like_git_gets_the_real_pat() {
    if !curl_installed() {
        return;
    }
    let (upstream, proxy) = setup().await;
    let ca = proxy.dir.path().join("ca.crt");
    let args = vec![
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        "-u".into(),
        format!("x-access-token:{STUB}"),
        format!("https://api.test:{}/echo", upstream.port),
    ];
    let env = vec![("HTTPS_PROXY", format!("http://{}", proxy.proxy_addr))];
    let output = curl(args, env).await;
    let expected = format!("Basic {}", B64.encode(format!("x-access-token:{REAL}")));
    assert_eq!(echoed_authorization(&output), expected);
}

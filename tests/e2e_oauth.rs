//! Proxy-owned OAuth refresh end to end (SPEC §8): a home prepared by
//! `iron-agent setup`, the agent's stub credentials sent through the proxy
//! to a strict fake provider whose refresh tokens are single-use and rotate
//! (`support::oauth_server`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::oauth_server::{start_oauth_server, OAuthLog, OAuthServer, API_PATH, TOKEN_PATH};
use support::*;

const ACCESS_STUB: &str = "access-token-stub";
const REFRESH_STUB: &str = "refresh-token-stub";
const REAL_ACCESS: &str = "sk-ant-oat01-REALaccess0123456789";
const REAL_REFRESH: &str = "sk-ant-ort01-REALrefresh0123456789";
const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

type Full = http_body_util::Full<bytes::Bytes>;

/// The fake provider and a proxy whose `[[oauth_refresh]]` points at it.
async fn oauth_setup(expires_in: u64, delay_ms: u64, extra: &str) -> (OAuthServer, ProxyHandle) {
    let delay = Duration::from_millis(delay_ms);
    let oauth = start_oauth_server(REAL_ACCESS, REAL_REFRESH, expires_in, delay).await;
    let proxy = start_proxy(proxy_config(&oauth, extra)).await;
    (oauth, proxy)
}

/// Real values `REAL_ACCESS`/`REAL_REFRESH`; refresh through `oauth`.
fn proxy_config(oauth: &OAuthServer, extra: &str) -> ProxyConfig {
    let entry = format!(
        "[[oauth_refresh]]\ntoken_url = \"https://api.test:{}{TOKEN_PATH}\"\n\
         access = \"claude-access\"\nrefresh = \"claude-refresh\"\n{extra}",
        oauth.port
    );
    ProxyConfig::bare()
        .trust(&oauth.ca_pem)
        .allow("api.test", &[oauth.port])
        .credential("claude-access", ACCESS_STUB, REAL_ACCESS, &["api.test"])
        .credential("claude-refresh", REFRESH_STUB, REAL_REFRESH, &["api.test"])
        .extra(&entry)
}

/// `iron-agent setup` against `proxy` (CA from its admin `/ca.pem`).
fn agent_home(proxy: &ProxyHandle) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iron-agent"))
        .args(["setup", "--proxy", &format!("http://{}", proxy.proxy_addr)])
        .args(["--ca-url", &format!("http://{}/ca.pem", proxy.admin_addr)])
        .arg("--home")
        .arg(home.path())
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "setup: {out:?}");
    home
}

/// The agent's credentials file, and its (access, refresh) values.
fn agent_file(home: &Path) -> (String, (String, String)) {
    let text = std::fs::read_to_string(home.join(".claude/.credentials.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let token = |k: &str| doc["claudeAiOauth"][k].as_str().unwrap().to_string();
    let tokens = (token("accessToken"), token("refreshToken"));
    (text, tokens)
}

fn refresh_request(authority: &str, refresh_stub: &str) -> hyper::Request<Full> {
    let body = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh_stub,
        "client_id": CLIENT_ID,
    });
    req("POST", authority, TOKEN_PATH)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .unwrap()
}

fn api_request(authority: &str, access_stub: &str) -> hyper::Request<Full> {
    req("GET", authority, API_PATH)
        .header("authorization", format!("Bearer {access_stub}"))
        .body(Full::default())
        .unwrap()
}

/// Every token the provider ever issued (the initial real ones included).
fn all_tokens(log: &OAuthLog) -> Vec<String> {
    let issued = log.issued_access.iter().chain(&log.issued_refresh);
    issued.cloned().collect()
}

/// The token endpoint saw the agent's request shape, real token swapped in.
fn assert_replayed_shape(log: &OAuthLog) {
    for call in &log.token_calls {
        let body: Value = serde_json::from_str(&call.body).unwrap();
        assert_eq!(body["grant_type"], "refresh_token", "{call:?}");
        assert_eq!(body["client_id"], CLIENT_ID, "{call:?}");
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
    }
}

/// The proxy's credential files end up holding the latest issued tokens.
async fn assert_proxy_files_hold(proxy: &ProxyHandle, latest: (String, String)) {
    let read = |name: &str| std::fs::read_to_string(proxy.secret_path(name)).unwrap_or_default();
    eventually!(
        read("claude-access").trim() == latest.0 && read("claude-refresh").trim() == latest.1,
        "proxy files: {:?} {:?}, latest issued: {latest:?}",
        read("claude-access"),
        read("claude-refresh")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_refreshes_and_api_calls_with_rotating_refresh_tokens() {
    let (oauth, proxy) = oauth_setup(3600, 150, "").await;
    let home = agent_home(&proxy);
    let (file_before, (access_stub, refresh_stub)) = agent_file(home.path());
    assert_eq!((&*access_stub, &*refresh_stub), (ACCESS_STUB, REFRESH_STUB));
    let authority = format!("api.test:{}", oauth.port);
    // 110 calls, each on its own connection (h1 and h2 alternating),
    // started 4 ms apart: 10 refreshes interleaved with 100 API calls.
    let mut tasks = Vec::new();
    for i in 0..110u64 {
        let (authority, ca, addr) = (authority.clone(), proxy.ca_pem.clone(), proxy.proxy_addr);
        let (port, access_stub, refresh_stub) =
            (oauth.port, access_stub.clone(), refresh_stub.clone());
        tasks.push(tokio::spawn(async move {
            pause(i * 4).await;
            let mut client = if i % 2 == 0 {
                h1_client(addr, "api.test", port, &ca).await
            } else {
                h2_client(addr, "api.test", port, &ca).await
            };
            let is_refresh = i % 11 == 5;
            let request = if is_refresh {
                refresh_request(&authority, &refresh_stub)
            } else {
                api_request(&authority, &access_stub)
            };
            (is_refresh, client.send(request).await)
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(within("stress call", task).await.unwrap());
    }

    let log = oauth.snapshot();
    let failed: Vec<_> = replies.iter().filter(|(_, r)| r.status != 200).collect();
    assert!(failed.is_empty(), "failed: {failed:#?}\nprovider: {log:#?}");
    assert_eq!(replies.iter().filter(|(r, _)| *r).count(), 10);
    let calls = log.token_calls.len();
    eprintln!("10 agent refreshes -> {calls} token endpoint calls");
    assert!(
        (1..10).contains(&calls),
        "{calls} token calls: no single flight"
    );
    assert!(log.rejected.is_empty(), "reused: {:#?}", log.rejected);
    assert_replayed_shape(&log);
    assert_eq!(log.api_auth.len(), 100);
    assert_eq!(log.api_refused, 0, "API refusals: {:?}", log.api_auth);
    for auth in &log.api_auth {
        let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
        let valid = token.is_some_and(|t| log.issued_access.iter().any(|a| a == t));
        assert!(valid, "the API saw {auth:?}, not an issued token");
    }

    let tokens = all_tokens(&log);
    for (is_refresh, reply) in &replies {
        let text = format!("{:?}\n{}", reply.headers, reply.text());
        let leaked = tokens.iter().find(|t| text.contains(t.as_str()));
        assert!(leaked.is_none(), "the agent got {leaked:?}: {text}");
        if *is_refresh {
            let json = reply.json();
            assert_eq!(json["access_token"], ACCESS_STUB, "{json}");
            assert_eq!(json["refresh_token"], REFRESH_STUB, "{json}");
            assert_eq!(json["expires_in"], 3600, "{json}");
            let length = reply.header("content-length").map(str::parse::<usize>);
            assert_eq!(length, Some(Ok(reply.body.len())));
        } else {
            let echo = reply.header("x-echo-authorization");
            assert_eq!(echo, Some(&*format!("Bearer {ACCESS_STUB}")), "{text}");
        }
    }
    let (file_after, stubs_after) = agent_file(home.path());
    assert_eq!(
        file_after, file_before,
        "the agent's credentials file changed"
    );
    assert_eq!(stubs_after, (access_stub, refresh_stub));

    let latest = log.latest();
    assert_proxy_files_hold(&proxy, latest).await;
    let logs = proxy.all_logs();
    let leaked = tokens.iter().find(|t| logs.contains(t.as_str()));
    assert!(
        leaked.is_none(),
        "a real token in the proxy logs: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_refreshes_ahead_of_expiry_by_itself() {
    // Due 2 s after the answer (8 s - 6 s): late enough to tell "scheduled"
    // from "immediate", with 6 s of slack before expiry for a loaded machine.
    let (oauth, proxy) = oauth_setup(8, 0, "refresh_before = \"6s\"\n").await;
    let authority = format!("api.test:{}", oauth.port);
    let mut client = h1_client(proxy.proxy_addr, "api.test", oauth.port, &proxy.ca_pem).await;
    let reply = client.send(refresh_request(&authority, REFRESH_STUB)).await;
    let answered = Instant::now();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["access_token"], ACCESS_STUB);
    assert_eq!(oauth.token_calls(), 1);
    let (first_access, first_refresh) = oauth.latest();

    // No agent request from here on: the proxy must refresh by itself,
    // `refresh_before` ahead of expiry (8 s after the answer).
    eventually!(oauth.token_calls() >= 2, "no proactive refresh");
    let elapsed = answered.elapsed();
    assert!(
        elapsed < Duration::from_secs(8),
        "after expiry: {elapsed:?}"
    );
    assert!(
        elapsed > Duration::from_millis(1500),
        "too early: {elapsed:?}"
    );
    let log = oauth.snapshot();
    assert!(log.rejected.is_empty(), "reused: {:#?}", log.rejected);
    let second = &log.token_calls[1];
    assert_eq!(second.refresh_token, first_refresh, "stale refresh token");
    assert_replayed_shape(&log);
    let latest = log.latest();
    assert_ne!(latest.0, first_access);
    assert_proxy_files_hold(&proxy, latest).await;

    // The agent's next API call goes out with a proactively fetched token.
    let reply = client.send(api_request(&authority, ACCESS_STUB)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let log = oauth.snapshot();
    let last = log.api_auth.last().cloned().flatten().unwrap_or_default();
    let proactive = &log.issued_access[2..];
    let expected = proactive.iter().any(|t| last == format!("Bearer {t}"));
    assert!(expected, "the API saw {last:?}, not a proactive token");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_form_refresh_from_the_env_file_is_owned_by_the_proxy() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipping: curl is not installed");
        return;
    }
    let (oauth, proxy) = oauth_setup(3600, 0, "").await;
    let home = agent_home(&proxy);
    let url = format!("https://api.test:{}{TOKEN_PATH}", oauth.port);
    let script = ". \"$HOME/.config/iron-agent/env\" && curl -q -sS --fail --max-time 20 \
        --data-urlencode grant_type=refresh_token \
        --data-urlencode \"refresh_token=$IRON_AGENT_REFRESH_STUB\" \"$URL\"";
    let (home_path, run_url) = (home.path().to_path_buf(), url.clone());
    let run = move || {
        Command::new("sh")
            .args(["-c", script])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home_path)
            .env("URL", run_url)
            .output()
            .unwrap()
    };
    let out = within("curl", tokio::task::spawn_blocking(run))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl: {out:?}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["access_token"], ACCESS_STUB, "{json}");
    assert_eq!(json["refresh_token"], REFRESH_STUB, "{json}");
    let log = oauth.snapshot();
    assert_eq!(log.token_calls.len(), 1);
    let call = &log.token_calls[0];
    assert_eq!(call.refresh_token, REAL_REFRESH, "{call:?}");
    let form = call.content_type.as_deref().unwrap_or_default();
    assert!(
        form.starts_with("application/x-www-form-urlencoded"),
        "{call:?}"
    );
    assert!(call.body.contains("grant_type=refresh_token"), "{call:?}");
    let leaked = all_tokens(&log)
        .into_iter()
        .find(|t| stdout.contains(t.as_str()));
    assert!(leaked.is_none(), "curl got {leaked:?}: {stdout}");
    let latest = log.latest();
    assert_proxy_files_hold(&proxy, latest).await;
    assert_eq!(
        agent_file(home.path()).1,
        (ACCESS_STUB.into(), REFRESH_STUB.into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_refresh_reaches_the_agent_scrubbed_and_changes_nothing() {
    // The provider knows other tokens: the proxy's real refresh token is
    // refused, and the error quotes it.
    let delay = Duration::ZERO;
    let oauth = start_oauth_server("at-other", "rt-other", 3600, delay).await;
    let proxy = start_proxy(proxy_config(&oauth, "")).await;
    let authority = format!("api.test:{}", oauth.port);
    let mut client = h1_client(proxy.proxy_addr, "api.test", oauth.port, &proxy.ca_pem).await;
    let reply = client.send(refresh_request(&authority, REFRESH_STUB)).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let text = format!("{:?}\n{}", reply.headers, reply.text());
    assert!(
        !text.contains(REAL_REFRESH),
        "the agent got the real token: {text}"
    );
    assert_eq!(reply.json()["error"], "invalid_grant", "{text}");
    let description = reply.json()["error_description"].to_string();
    assert!(
        description.contains(REFRESH_STUB),
        "not scrubbed to the stub: {text}"
    );
    let log = oauth.snapshot();
    assert_eq!(log.rejected.len(), 1);
    assert_eq!(log.rejected[0].refresh_token, REAL_REFRESH);
    let read = |name: &str| std::fs::read_to_string(proxy.secret_path(name)).unwrap();
    assert_eq!(read("claude-access").trim(), REAL_ACCESS);
    assert_eq!(read("claude-refresh").trim(), REAL_REFRESH);
}

//! End to end: a home prepared by `iron-agent setup`, real clients (curl,
//! Python urllib, git) configured only by sourcing the env file it wrote,
//! the proxy in the middle, and strict fake servers behind it (SPEC §5.5,
//! §9). Skipped, with a message, when a client is not installed. The OAuth
//! refresh end to end (SPEC §8) is in `e2e_oauth.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::git_server::{self, basic, GitServer, REPO_CONTENT, REPO_PATH};
use support::*;

const ACCESS_STUB: &str = "access-token-stub";
const PAT_STUB: &str = "github-token-stub";
const REAL_ACCESS: &str = "sk-ant-oat01-REALaccess0123456789";
const REAL_PAT: &str = "ghp_REALpat0123456789abcdefXYZ";

fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if found.is_ok_and(|s| s.success()) {
        return true;
    }
    eprintln!("skipping: {tool} is not installed");
    false
}

fn describe(out: &Output) -> String {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    format!("status {:?}\nstdout:\n{o}\nstderr:\n{e}", out.status)
}

/// `iron-agent setup` against `proxy` (CA from its admin `/ca.pem`).
async fn agent_home(proxy: &ProxyHandle) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = sh_raw(
        home.path(),
        r#""$AGENT" setup --proxy "$PROXY" --ca-url "$CA_URL" --home "$HOME""#,
        vec![
            ("AGENT", env!("CARGO_BIN_EXE_iron-agent").into()),
            ("PROXY", format!("http://{}", proxy.proxy_addr)),
            ("CA_URL", format!("http://{}/ca.pem", proxy.admin_addr)),
        ],
    )
    .await;
    assert!(out.status.success(), "setup: {}", describe(&out));
    home
}

/// `sh -c script` with HOME = `home` and nothing else from the host but
/// PATH (no proxy variables, no git/curl configuration), off the workers.
async fn sh_raw(home: &Path, script: &str, env: Vec<(&'static str, String)>) -> Output {
    let (home, script) = (home.to_path_buf(), script.to_string());
    let run = move || {
        Command::new("sh")
            .args(["-c", &script])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("LANG", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    within("client", tokio::task::spawn_blocking(run))
        .await
        .unwrap()
}

/// An upstream, a proxy holding the real access token for it, an agent home
/// prepared by `iron-agent setup`, and the upstream's `/echo` URL.
async fn access_agent() -> (Upstream, ProxyHandle, tempfile::TempDir, String) {
    let upstream = start_upstream(UpstreamOpts::default()).await;
    let config = ProxyConfig::new(&upstream)
        .allow("api.test", &[upstream.port])
        .credential("claude-access", ACCESS_STUB, REAL_ACCESS, &["api.test"]);
    let proxy = start_proxy(config).await;
    let home = agent_home(&proxy).await;
    let url = format!("https://api.test:{}/echo", upstream.port);
    (upstream, proxy, home, url)
}

/// `script` after sourcing the env file `setup` wrote: its only config.
async fn sh(home: &Path, script: &str, env: Vec<(&'static str, String)>) -> Output {
    let script = format!(". \"$HOME/.config/iron-agent/env\" && {script}");
    sh_raw(home, &script, env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_configured_by_the_env_file_gets_the_real_token() {
    if !installed("curl") {
        return;
    }
    let (upstream, _proxy, home, url) = access_agent().await;
    let script = r#"curl -q -sS --fail --max-time 20 -H "Authorization: Bearer $IRON_AGENT_ACCESS_STUB" "$URL""#;
    let out = sh(home.path(), script, vec![("URL", url)]).await;
    assert!(out.status.success(), "curl: {}", describe(&out));
    let seen = upstream.last("/echo");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {REAL_ACCESS}"))
    );
}

const PY_GET: &str = r#"
import os, urllib.request
req = urllib.request.Request(os.environ["URL"], headers={"Authorization": "Bearer access-token-stub"})
print(urllib.request.urlopen(req, timeout=20).status)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn python_urllib_configured_by_the_env_file_gets_the_real_token() {
    if !installed("python3") {
        return;
    }
    let (upstream, proxy, home, url) = access_agent().await;
    let env = || vec![("URL", url.clone()), ("PY", PY_GET.to_string())];
    // urllib's default context trusts SSL_CERT_FILE: no explicit cafile.
    let out = sh(home.path(), r#"python3 -c "$PY""#, env()).await;
    assert!(out.status.success(), "python: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    let seen = upstream.last("/echo");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {REAL_ACCESS}"))
    );
    // Control: through the proxy without the bundle, verification fails, so
    // the success above really relied on the env file's SSL_CERT_FILE.
    let script = r#"HTTPS_PROXY="http://$P" https_proxy="http://$P" python3 -c "$PY""#;
    let mut env = env();
    env.push(("P", proxy.proxy_addr.to_string()));
    let out = sh_raw(home.path(), script, env).await;
    assert!(
        !out.status.success(),
        "python trusted the proxy without the bundle"
    );
    assert!(
        describe(&out).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        describe(&out)
    );
}

async fn git_setup(require: bool) -> (GitServer, ProxyHandle) {
    let git = git_server::start_git_server(REAL_PAT).await;
    let config = ProxyConfig::bare()
        .trust(&git.ca_pem)
        .allow("api.test", &[git.port])
        .credential("github-pat", PAT_STUB, REAL_PAT, &["api.test"]);
    let config = if require { config.require() } else { config };
    (git, start_proxy(config).await)
}

/// `git ls-remote` and `git clone` through the proxy with only the helper
/// and env file `setup` wrote; the server must see the real PAT only.
async fn git_flow(git: &GitServer, proxy: &ProxyHandle) {
    let home = agent_home(proxy).await;
    let url = format!("https://api.test:{}{REPO_PATH}", git.port);
    let script = r#"git ls-remote "$URL" && git clone -q "$URL" "$HOME/clone" && cat "$HOME/clone/README.md""#;
    let out = sh(home.path(), script, vec![("URL", url)]).await;
    assert!(out.status.success(), "git: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\trefs/heads/main\n"),
        "ls-remote: {stdout}"
    );
    assert!(stdout.ends_with(REPO_CONTENT), "clone: {stdout}");

    let seen = git.requests();
    let real = basic("x-access-token", REAL_PAT);
    assert!(
        seen.iter()
            .any(|s| s.authorization.is_none() && s.status == 401),
        "{seen:#?}"
    );
    assert!(seen
        .iter()
        .any(|s| s.authorization.as_deref() == Some(&*real) && s.status == 200));
    for s in &seen {
        let auth = s.authorization.as_deref();
        assert!(
            auth.is_none() || auth == Some(&*real),
            "unexpected Authorization: {s:?}"
        );
    }
    let all = format!("{seen:?}");
    assert!(!all.contains(PAT_STUB) && !all.contains(&basic("x-access-token", PAT_STUB)));
}

#[tokio::test(flavor = "multi_thread")]
async fn git_ls_remote_and_clone_send_the_real_pat_only() {
    if !git_server::git_installed() {
        return;
    }
    let (git, proxy) = git_setup(false).await;
    git_flow(&git, &proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn git_works_with_require_and_a_foreign_pat_is_refused() {
    if !git_server::git_installed() {
        return;
    }
    let (git, proxy) = git_setup(true).await;
    git_flow(&git, &proxy).await;
    let before = git.requests().len();
    let mut client = h1_client(proxy.proxy_addr, "api.test", git.port, &proxy.ca_pem).await;
    let authority = format!("api.test:{}", git.port);
    let path = format!("{REPO_PATH}/info/refs?service=git-upload-pack");
    let request = req("GET", &authority, &path)
        .header("authorization", basic("x-access-token", "ghp_foreign"))
        .body(Default::default())
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.header("x-iron-proxy-error"), Some("policy"));
    assert!(
        reply.text().contains("github-pat"),
        "reason: {}",
        reply.text()
    );
    assert_eq!(
        git.requests().len(),
        before,
        "the refused request reached the server"
    );
}

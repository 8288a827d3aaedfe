//! `iron-agent setup`, `check` and `git-credential` as an agent pod runs
//! them (SPEC §9), against a real proxy where the check needs one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use support::*;

const AGENT: &str = env!("CARGO_BIN_EXE_iron-agent");
/// A proxy URL for setups that need no running proxy.
const NO_PROXY_URL: &str = "http://127.0.0.1:18080";

/// `iron-agent ARGS` with a clean environment (HOME = `home`), off the
/// async workers (the upstream may live on this runtime).
async fn agent(args: &[&str], home: &Path, stdin: &str) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (home, stdin) = (home.to_path_buf(), stdin.to_string());
    let run = move || {
        let mut child = Command::new(AGENT)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    };
    let done = within("iron-agent", tokio::task::spawn_blocking(run)).await;
    done.unwrap()
}

fn describe(out: &Output) -> String {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    format!("status {:?}\nstdout:\n{o}stderr:\n{e}", out.status)
}

/// Stdout of a command that must have exited with `code`.
fn exited(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `text` starting with `prefix`; panics when there is none.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    let found = text.lines().find(|l| l.starts_with(prefix));
    found.unwrap_or_else(|| panic!("no line starting with `{prefix}` in:\n{text}"))
}

struct Files {
    credentials: PathBuf,
    bundle: PathBuf,
    env: PathBuf,
    gitconfig: PathBuf,
}

fn files(home: &Path) -> Files {
    Files {
        credentials: home.join(".claude/.credentials.json"),
        bundle: home.join(".config/iron-agent/ca-bundle.pem"),
        env: home.join(".config/iron-agent/env"),
        gitconfig: home.join(".gitconfig"),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    certs.collect::<Result<_, _>>().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `iron-agent setup --proxy PROXY CA… --home HOME EXTRA…`.
async fn setup(home: &Path, proxy: &str, ca: [&str; 2], extra: &[&str]) -> Output {
    let mut args = vec!["setup", "--proxy", proxy, ca[0], ca[1]];
    args.extend(["--home", home.to_str().unwrap()]);
    args.extend(extra);
    agent(&args, home, "").await
}

/// A throwaway CA in `home/proxy-ca.pem`: (path, PEM).
fn throwaway_ca(home: &Path) -> (String, String) {
    let pem = TestCa::new("agent test proxy CA").cert_pem;
    let path = home.join("proxy-ca.pem");
    std::fs::write(&path, &pem).unwrap();
    (path.to_str().unwrap().to_string(), pem)
}

/// Source the env file in `sh` and return what it exported.
fn sourced(env_file: &Path) -> Vec<(String, String)> {
    let script = format!(". '{}' && env", env_file.display());
    let out = Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .output();
    let text = exited(&out.unwrap(), 0);
    let pairs = text.lines().filter_map(|l| l.split_once('='));
    pairs.map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn git_helper(gitconfig: &Path) -> String {
    let out = Command::new("git")
        .args(["config", "--file", gitconfig.to_str().unwrap()])
        .args(["--get-all", "credential.helper"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output();
    exited(&out.unwrap(), 0).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_writes_every_file_with_its_mode_and_content() {
    let home = tempfile::tempdir().unwrap();
    let (ca_file, ca) = throwaway_ca(home.path());
    let out = setup(home.path(), NO_PROXY_URL, ["--ca-file", &ca_file], &[]).await;
    let text = exited(&out, 0);
    let f = files(home.path());
    for path in [&f.credentials, &f.bundle, &f.env, &f.gitconfig] {
        line(&text, &format!("wrote {}", path.display()));
    }
    assert!(text.lines().all(|l| l.starts_with("wrote ")), "{text}");

    assert_eq!(mode(&f.credentials), 0o600, "credentials file mode");
    for path in [&f.bundle, &f.env] {
        let mode = mode(path);
        assert!(mode & 0o400 != 0 && mode & 0o022 == 0, "{path:?}: {mode:o}");
    }
    let doc = read_json(&f.credentials);
    let oauth = &doc["claudeAiOauth"];
    assert_eq!(oauth["accessToken"], "access-token-stub");
    assert_eq!(oauth["refreshToken"], "refresh-token-stub");
    assert!(oauth["expiresAt"].as_u64().is_some(), "expiresAt: {doc}");
    assert!(oauth["scopes"].is_array(), "scopes: {doc}");

    let bundle = certs(&std::fs::read_to_string(&f.bundle).unwrap());
    assert!(bundle.contains(&certs(&ca)[0]), "bundle lacks the proxy CA");
    if Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        assert!(bundle.len() > 1, "bundle lacks the system roots");
    }

    let env_text = std::fs::read_to_string(&f.env).unwrap();
    let bundle_path = f.bundle.display().to_string();
    let sourced = sourced(&f.env);
    let expected = [
        ("HTTPS_PROXY", NO_PROXY_URL),
        ("HTTP_PROXY", NO_PROXY_URL),
        ("https_proxy", NO_PROXY_URL),
        ("http_proxy", NO_PROXY_URL),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
        ("no_proxy", "localhost,127.0.0.1,::1"),
        ("NODE_EXTRA_CA_CERTS", &bundle_path),
        ("SSL_CERT_FILE", &bundle_path),
        ("CURL_CA_BUNDLE", &bundle_path),
        ("REQUESTS_CA_BUNDLE", &bundle_path),
        ("GIT_SSL_CAINFO", &bundle_path),
        ("IRON_AGENT_ACCESS_STUB", "access-token-stub"),
        ("IRON_AGENT_REFRESH_STUB", "refresh-token-stub"),
        ("IRON_AGENT_PAT_STUB", "github-token-stub"),
    ];
    for (key, value) in expected {
        line(&env_text, &format!("export {key}='{value}'"));
        let got = sourced
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        assert_eq!(got, Some(value), "{key} after sourcing");
    }

    let helper = format!("!'{AGENT}' git-credential --stub 'github-token-stub'");
    assert_eq!(git_helper(&f.gitconfig), helper);
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_keeps_other_keys_and_honours_custom_stubs() {
    let home = tempfile::tempdir().unwrap();
    let f = files(home.path());
    std::fs::create_dir_all(f.credentials.parent().unwrap()).unwrap();
    let old = r#"{"mcpServers":{"x":1},"claudeAiOauth":{"accessToken":"sk-ant-oat01-REAL"}}"#;
    std::fs::write(&f.credentials, old).unwrap();
    let (ca_file, _) = throwaway_ca(home.path());
    let stubs = [
        "--access-stub",
        "my-access",
        "--refresh-stub",
        "my-refresh",
        "--pat-stub",
        "my-pat",
    ];
    let out = setup(home.path(), NO_PROXY_URL, ["--ca-file", &ca_file], &stubs).await;
    exited(&out, 0);
    assert_eq!(mode(&f.credentials), 0o600);
    let doc = read_json(&f.credentials);
    assert_eq!(doc["mcpServers"]["x"], 1, "other keys kept: {doc}");
    assert_eq!(doc["claudeAiOauth"]["accessToken"], "my-access");
    assert_eq!(doc["claudeAiOauth"]["refreshToken"], "my-refresh");
    assert!(!doc.to_string().contains("sk-ant-oat01-REAL"), "{doc}");
    let env = std::fs::read_to_string(&f.env).unwrap();
    line(&env, "export IRON_AGENT_PAT_STUB='my-pat'");
    let helper = format!("!'{AGENT}' git-credential --stub 'my-pat'");
    assert_eq!(git_helper(&f.gitconfig), helper);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_setup_prints_only_unchanged_and_touches_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (ca_file, _) = throwaway_ca(home.path());
    let ca = ["--ca-file", ca_file.as_str()];
    exited(&setup(home.path(), NO_PROXY_URL, ca, &[]).await, 0);
    let f = files(home.path());
    let paths = [&f.credentials, &f.bundle, &f.env, &f.gitconfig];
    let mtime = |p: &&PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let before: Vec<_> = paths.iter().map(mtime).collect();
    // Coarse file-system clocks would hide a rewrite otherwise.
    pause(1100).await;
    let text = exited(&setup(home.path(), NO_PROXY_URL, ca, &[]).await, 0);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| l.starts_with("unchanged ")), "{text}");
    let after: Vec<_> = paths.iter().map(mtime).collect();
    assert_eq!(after, before, "a second setup rewrote a file");
}

/// A running proxy allowing `api.test` on the upstream's port, and a home
/// set up against it with `--ca-url` (its admin `/ca.pem`).
async fn proxy_and_home() -> (Upstream, ProxyHandle, tempfile::TempDir) {
    let (upstream, proxy) = api_proxy(UpstreamOpts::default()).await;
    let home = tempfile::tempdir().unwrap();
    let url = format!("http://{}/ca.pem", proxy.admin_addr);
    let proxy_url = format!("http://{}", proxy.proxy_addr);
    let out = setup(home.path(), &proxy_url, ["--ca-url", &url], &[]).await;
    exited(&out, 0);
    (upstream, proxy, home)
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_fetches_the_ca_from_the_admin_listener() {
    let (_upstream, proxy, home) = proxy_and_home().await;
    let bundle = std::fs::read_to_string(files(home.path()).bundle).unwrap();
    let ca = &certs(&proxy.ca_pem)[0];
    assert!(certs(&bundle).contains(ca), "bundle lacks the proxy CA");
}

async fn check(home: &Path, host: &str) -> Output {
    let args = ["check", "--home", home.to_str().unwrap(), "--host", host];
    agent(&args, home, "").await
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_against_a_running_proxy() {
    let (upstream, _proxy, home) = proxy_and_home().await;
    let out = check(home.path(), &format!("api.test:{}", upstream.port)).await;
    let text = exited(&out, 0);
    for name in [
        "stub credentials",
        "proxy reachable",
        "CA trusted end to end",
        "allowlisted host",
    ] {
        line(&text, &format!("ok   {name}: "));
    }
    assert!(!text.contains("FAIL"), "{text}");
    let heads = upstream
        .requests()
        .into_iter()
        .filter(|s| s.method == "HEAD");
    assert_eq!(
        heads.count(),
        1,
        "the allowlisted-host check reached upstream once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_on_a_host_that_is_not_allowlisted() {
    let (upstream, _proxy, home) = proxy_and_home().await;
    let out = check(home.path(), &format!("denied.test:{}", upstream.port)).await;
    let text = exited(&out, 1);
    let fail = line(&text, "FAIL allowlisted host: ");
    assert!(
        fail.contains("403") && fail.contains("denied.test"),
        "{fail}"
    );
    line(&text, "ok   CA trusted end to end: ");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_an_overwritten_token_without_printing_it() {
    let (upstream, _proxy, home) = proxy_and_home().await;
    let leaked = "sk-ant-oat01-LEAKED-real-value-0123456789";
    let path = files(home.path()).credentials;
    let mut doc = read_json(&path);
    doc["claudeAiOauth"]["accessToken"] = leaked.into();
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = check(home.path(), &format!("api.test:{}", upstream.port)).await;
    let text = exited(&out, 1);
    let fail = line(&text, "FAIL stub credentials: ");
    assert!(fail.contains("claudeAiOauth.accessToken"), "{fail}");
    assert!(
        !describe(&out).contains("LEAKED"),
        "check printed the token"
    );
    line(&text, "ok   CA trusted end to end: ");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_fails_clearly_when_the_proxy_is_down() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener); // nothing listens there any more
    let home = tempfile::tempdir().unwrap();
    let (ca_file, _) = throwaway_ca(home.path());
    let proxy = format!("http://{closed}");
    exited(
        &setup(home.path(), &proxy, ["--ca-file", &ca_file], &[]).await,
        0,
    );
    let text = exited(&check(home.path(), "api.test:443").await, 1);
    line(&text, "ok   stub credentials: ");
    let fail = line(&text, "FAIL proxy reachable: ");
    assert!(
        fail.contains(&closed.to_string()),
        "does not name the proxy: {fail}"
    );
    assert!(!text.contains("ok   CA trusted"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_credential_answers_the_stub_pat() {
    let home = tempfile::tempdir().unwrap();
    let request = "protocol=https\nhost=github.com\n\n";
    let get = ["git-credential", "--stub", "pat-stub-1", "get"];
    let text = exited(&agent(&get, home.path(), request).await, 0);
    assert_eq!(text, "username=x-access-token\npassword=pat-stub-1\n");
    for op in ["store", "erase"] {
        let input = format!("{request}username=x-access-token\npassword=x\n\n");
        let args = ["git-credential", "--stub", "pat-stub-1", op];
        let text = exited(&agent(&args, home.path(), &input).await, 0);
        assert_eq!(text, "", "{op} printed something");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn git_uses_the_helper_that_setup_configured() {
    if !git_server::git_installed() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let (ca_file, _) = throwaway_ca(home.path());
    let pat = ["--pat-stub", "pat-x"];
    exited(
        &setup(home.path(), NO_PROXY_URL, ["--ca-file", &ca_file], &pat).await,
        0,
    );
    let mut child = git_server::git_command(home.path())
        .args(["credential", "fill"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = b"protocol=https\nhost=api.test\n\n";
    child.stdin.take().unwrap().write_all(request).unwrap();
    let text = exited(&child.wait_with_output().unwrap(), 0);
    assert!(
        text.contains("username=x-access-token\npassword=pat-x\n"),
        "{text}"
    );
}

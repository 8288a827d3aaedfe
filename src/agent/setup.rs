//! `iron-agent setup`: stub credentials, CA bundle, env file, git helper.
//!
//! Every file is written only when its content differs, so a second run
//! changes nothing (and says so). The Claude credentials file keeps any
//! other keys it had; only `claudeAiOauth`'s tokens are set to stubs.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::{json, Value};

use super::{Layout, Stubs};

/// Far in the future on purpose: the proxy refreshes the real tokens, so the
/// agent's client must never decide on its own that its stub expired. A
/// fixed value also keeps a second `setup` from changing the file.
const STUB_EXPIRES_AT_MS: u64 = 4_102_444_800_000; // 2100-01-01T00:00:00Z

/// Trust stores of common distributions, first found wins.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

#[derive(Debug)]
pub enum CaFrom {
    File(PathBuf),
    Url(String),
}

pub fn run(proxy: &str, ca: &CaFrom, home: Option<&Path>, stubs: &Stubs) -> ExitCode {
    match setup(proxy, ca, home, stubs) {
        Ok(lines) => {
            lines.iter().for_each(|l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("iron-agent setup: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup(
    proxy: &str,
    ca: &CaFrom,
    home: Option<&Path>,
    stubs: &Stubs,
) -> Result<Vec<String>, String> {
    let home = home.ok_or("no home directory: pass --home DIR or set HOME")?;
    let proxy = validate_proxy(proxy)?;
    let ca_pem = fetch_ca(ca)?;
    let layout = Layout::new(home);
    let mut report = Vec::new();
    let bundle = bundle(&ca_pem);
    report.push(write_if_changed(&layout.bundle, bundle.as_bytes(), 0o644)?);
    report.push(write_if_changed(
        &layout.credentials,
        &credentials_json(&layout.credentials, stubs)?,
        0o600,
    )?);
    report.push(write_if_changed(
        &layout.env,
        env_file(&proxy, &layout.bundle, stubs).as_bytes(),
        0o644,
    )?);
    report.push(git_helper(&layout.gitconfig, &stubs.pat)?);
    Ok(report)
}

fn validate_proxy(proxy: &str) -> Result<String, String> {
    let uri: http::Uri = proxy
        .parse()
        .map_err(|_| format!("--proxy `{proxy}` is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => Ok(format!("http://{a}")),
        _ => Err(format!("--proxy `{proxy}` must look like http://host:port")),
    }
}

fn fetch_ca(ca: &CaFrom) -> Result<String, String> {
    let pem = match ca {
        CaFrom::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?,
        CaFrom::Url(url) => fetch_url(url)?,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the proxy CA is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(
            "the proxy CA holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        );
    }
    Ok(certs.iter().map(crate::ca::pem_of).collect())
}

fn fetch_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("--ca-url `{url}` is not a URL"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "--ca-url `{url}` must be an http:// URL of the proxy's admin port"
        ));
    }
    let base: http::Uri = format!(
        "http://{}",
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    )
    .parse()
    .map_err(|_| format!("--ca-url `{url}` is not a URL"))?;
    let path = uri
        .path_and_query()
        .map_or("/ca.pem", |p| p.as_str())
        .to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (status, body) = runtime
        .block_on(crate::admin_client::exchange(
            &base,
            http::Method::GET,
            &path,
            None,
            Vec::new(),
        ))
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("GET {url} answered {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url} did not return text"))
}

/// System roots (for hosts reached without the proxy, NO_PROXY) then the
/// proxy CA.
fn bundle(ca_pem: &str) -> String {
    let system = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let mut out = system;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# iron-proxy CA\n");
    out.push_str(ca_pem);
    out
}

fn credentials_json(path: &Path, stubs: &Stubs) -> Result<Vec<u8>, String> {
    let mut doc = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({})),
        Err(_) => json!({}),
    };
    let oauth = &mut doc["claudeAiOauth"];
    if !oauth.is_object() {
        *oauth = json!({});
    }
    oauth["accessToken"] = json!(stubs.access);
    oauth["refreshToken"] = json!(stubs.refresh);
    oauth["expiresAt"] = json!(STUB_EXPIRES_AT_MS);
    if !oauth["scopes"].is_array() {
        oauth["scopes"] = json!(["user:inference", "user:profile"]);
    }
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn env_file(proxy: &str, bundle: &Path, stubs: &Stubs) -> String {
    let b = bundle.display();
    let q = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
    let mut out =
        String::from("# Written by iron-agent setup: source it (. ~/.config/iron-agent/env).\n");
    for (k, v) in [
        ("HTTPS_PROXY", proxy.to_owned()),
        ("HTTP_PROXY", proxy.to_owned()),
        ("https_proxy", proxy.to_owned()),
        ("http_proxy", proxy.to_owned()),
        ("NO_PROXY", "localhost,127.0.0.1,::1".to_owned()),
        ("no_proxy", "localhost,127.0.0.1,::1".to_owned()),
        ("NODE_EXTRA_CA_CERTS", b.to_string()),
        ("SSL_CERT_FILE", b.to_string()),
        ("CURL_CA_BUNDLE", b.to_string()),
        ("REQUESTS_CA_BUNDLE", b.to_string()),
        ("GIT_SSL_CAINFO", b.to_string()),
        ("IRON_AGENT_ACCESS_STUB", stubs.access.clone()),
        ("IRON_AGENT_REFRESH_STUB", stubs.refresh.clone()),
        ("IRON_AGENT_PAT_STUB", stubs.pat.clone()),
    ] {
        out.push_str(&format!("export {k}={}\n", q(&v)));
    }
    out
}

/// Points git at `iron-agent git-credential` through `git config`, which
/// knows the file format better than we would.
fn git_helper(gitconfig: &Path, pat_stub: &str) -> Result<String, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the iron-agent binary: {e}"))?;
    let helper = format!("!'{}' git-credential --stub '{}'", exe.display(), pat_stub);
    let file = gitconfig.display().to_string();
    let current = std::process::Command::new("git")
        .args(["config", "--file", &file, "--get-all", "credential.helper"])
        .output();
    let current = match current {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => {
            return Ok(format!(
                "skipped {file}: git is not installed, so there is no helper to configure"
            ))
        }
    };
    if current == helper {
        return Ok(format!("unchanged {file}"));
    }
    let status = std::process::Command::new("git")
        .args([
            "config",
            "--file",
            &file,
            "--replace-all",
            "credential.helper",
            &helper,
        ])
        .status()
        .map_err(|e| format!("cannot run git config: {e}"))?;
    if !status.success() {
        return Err(format!("git config --file {file} failed ({status})"));
    }
    Ok(format!("wrote {file} (credential.helper)"))
}

/// Writes `bytes` unless the file already holds exactly them; the mode is
/// set before any byte is written.
fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<String, String> {
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let same_mode = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o777 == mode);
    if std::fs::read(path).is_ok_and(|old| old == bytes) && same_mode {
        return Ok(format!("unchanged {}", path.display()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("iron-agent.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(format!("wrote {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stubs() -> Stubs {
        Stubs {
            access: "a-stub".into(),
            refresh: "r-stub".into(),
            pat: "p-stub".into(),
        }
    }

    #[test]
    fn credentials_keep_other_keys_and_replace_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(
            &path,
            r#"{"other":1,"claudeAiOauth":{"accessToken":"sk-real","scopes":["x"]}}"#,
        )
        .unwrap();
        let doc: Value =
            serde_json::from_slice(&credentials_json(&path, &stubs()).unwrap()).unwrap();
        assert_eq!(doc["other"], 1);
        assert_eq!(doc["claudeAiOauth"]["accessToken"], "a-stub");
        assert_eq!(doc["claudeAiOauth"]["refreshToken"], "r-stub");
        assert_eq!(doc["claudeAiOauth"]["scopes"], json!(["x"]));
    }

    #[test]
    fn env_file_quotes_values() {
        let env = env_file("http://p:8080", Path::new("/h/b.pem"), &stubs());
        assert!(env.contains("export HTTPS_PROXY='http://p:8080'\n"));
        assert!(env.contains("export GIT_SSL_CAINFO='/h/b.pem'\n"));
    }

    #[test]
    fn second_write_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/y");
        assert!(write_if_changed(&p, b"1", 0o600)
            .unwrap()
            .starts_with("wrote"));
        assert!(write_if_changed(&p, b"1", 0o600)
            .unwrap()
            .starts_with("unchanged"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

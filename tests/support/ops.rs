//! The operator's side of a running proxy: the admin port (plain HTTP/1.1,
//! optional bearer token), reload signals (log lines, `/readyz`, metrics),
//! atomic file rewrites, signals, the `iron-proxy` CLI and certificate
//! inspection. Every wait is bounded.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::proxy::ProxyHandle;
use super::{within, TIMEOUT};

/// A fully read admin-port response.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl AdminReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }
}

/// One HTTP/1.1 request to the admin port, on a fresh connection.
pub async fn admin_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> AdminReply {
    let tcp = within("connect to admin port", TcpStream::connect(addr))
        .await
        .unwrap();
    let (mut send, conn) = within("admin h1 handshake", http1::handshake(TokioIo::new(tcp)))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = within("admin response", send.send_request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = within("admin body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    AdminReply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The value of one Prometheus series (`name` or `name{labels}`, written
/// exactly as the exposition prints it).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replace `path`'s content the way operators should: temp file in the same
/// directory, then rename over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let name = path.file_name().unwrap().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.test-tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Run `iron-proxy args…` (with `stdin` fed in, if any), bounded by 30 s.
pub fn run_cli(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iron-proxy"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // A command that refuses its arguments exits without reading stdin.
        if let Err(e) = pipe.write_all(input) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("iron-proxy {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Every certificate in a PEM text, DER.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    certs.map(|c| c.unwrap()).collect()
}

/// Raw (DER) subject and issuer names of a certificate.
pub fn subject_and_issuer(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    (
        cert.subject().as_raw().to_vec(),
        cert.issuer().as_raw().to_vec(),
    )
}

// === impl ProxyHandle ===

impl ProxyHandle {
    /// A request to this proxy's admin port.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> AdminReply {
        admin_request(self.admin_addr, method, path, token, body).await
    }

    /// The live snapshot generation, from `GET /readyz`.
    pub async fn generation(&self) -> u64 {
        let reply = self.admin("GET", "/readyz", None, b"").await;
        assert_eq!(reply.status, 200, "/readyz: {reply:?}");
        let n = reply.body.trim().strip_prefix("ready generation ");
        let n = n.unwrap_or_else(|| panic!("/readyz body: {:?}", reply.body));
        n.parse().unwrap()
    }

    /// `GET /metrics`, text.
    pub async fn metrics_text(&self) -> String {
        let reply = self.admin("GET", "/metrics", None, b"").await;
        assert_eq!(reply.status, 200, "/metrics: {reply:?}");
        reply.body
    }

    /// One series of `/metrics`; panics when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    /// Every `"reloaded"` log line.
    pub fn reloads(&self) -> Vec<Value> {
        let logs = self.json_logs().into_iter();
        logs.filter(|v| v["message"] == "reloaded").collect()
    }

    /// Every `"reload failed…"` log line.
    pub fn reload_failures(&self) -> Vec<Value> {
        let logs = self.json_logs().into_iter();
        let failed = |v: &Value| {
            let message = v["message"].as_str().unwrap_or_default();
            message.starts_with("reload failed")
        };
        logs.filter(failed).collect()
    }

    /// Wait (bounded) for a `"reloaded"` line with a generation above
    /// `after`; returns it. Panics with every log line when none comes.
    pub async fn wait_reloaded(&self, after: u64) -> Value {
        let newer = |v: &Value| v["generation"].as_u64().is_some_and(|g| g > after);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(found) = self.reloads().into_iter().find(newer) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no reload past generation {after} within {TIMEOUT:?}; logs:\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait (bounded) until there are more than `before` failure lines;
    /// returns the newest.
    pub async fn wait_reload_failed(&self, before: usize) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let failures = self.reload_failures();
            if failures.len() > before {
                return failures.last().cloned().unwrap();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no reload failure logged within {TIMEOUT:?}; logs:\n{}",
                    self.all_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `kill -<sig> <pid>`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Rewrite the config file (atomically) with `edit(current text)`.
    pub fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let next = edit(&text);
        assert_ne!(text, next, "edit_config: the edit changed nothing");
        write_atomic(&self.config_path, next.as_bytes());
    }
}

/// Add `[admin] token_file` to `config`: the token (plus the trailing
/// newline editors add) goes to a file in a new directory, returned so the
/// caller keeps it alive.
pub fn with_admin_token(
    config: super::ProxyConfig,
    token: &str,
) -> (super::ProxyConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin-token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let toml = format!(
        "[admin]\ntoken_file = {}\n",
        super::qs(path.to_str().unwrap())
    );
    (config.extra(&toml), dir)
}

/// A CA pair (ECDSA P-256) as `iron-proxy` accepts it: cert PEM, key PEM.
pub fn ca_pair(common_name: &str) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// `config` with `ca.crt`/`ca.key` written before start, so the proxy does
/// not generate its dev CA (and nothing changes on disk after it starts).
pub fn with_existing_ca(config: super::ProxyConfig) -> super::ProxyConfig {
    let (cert, key) = ca_pair("iron-proxy test CA A");
    config
        .file("ca.crt", cert.as_bytes())
        .file("ca.key", key.as_bytes())
}

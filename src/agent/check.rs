//! `iron-agent check`: one line per check, non-zero exit on any failure,
//! each failure with its fix. Never prints a token value.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Layout;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What `setup` recorded in the env file.
#[derive(Debug, Default)]
struct EnvFile {
    proxy: Option<String>,
    bundle: Option<String>,
    access_stub: Option<String>,
    refresh_stub: Option<String>,
}

fn read_env(path: &Path) -> Option<EnvFile> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut env = EnvFile::default();
    for line in text.lines() {
        let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) else {
            continue;
        };
        let v = Some(v.trim_matches('\'').replace(r"'\''", "'"));
        match k {
            "HTTPS_PROXY" => env.proxy = v,
            "SSL_CERT_FILE" => env.bundle = v,
            "IRON_AGENT_ACCESS_STUB" => env.access_stub = v,
            "IRON_AGENT_REFRESH_STUB" => env.refresh_stub = v,
            _ => {}
        }
    }
    Some(env)
}

pub fn run(home: Option<&Path>, proxy: Option<&str>, host: &str) -> ExitCode {
    let Some(home) = home else {
        eprintln!("iron-agent check: no home directory: pass --home DIR or set HOME");
        return ExitCode::FAILURE;
    };
    let layout = Layout::new(home);
    let env = read_env(&layout.env).unwrap_or_default();
    let mut failed = false;
    let mut report = |name: &str, result: Result<String, String>| match result {
        Ok(detail) => println!("ok   {name}: {detail}"),
        Err(fix) => {
            failed = true;
            println!("FAIL {name}: {fix}");
        }
    };
    report("stub credentials", stub_file(&layout.credentials, &env));
    let proxy = proxy.map(str::to_owned).or(env.proxy.clone());
    let bundle = env
        .bundle
        .clone()
        .unwrap_or_else(|| layout.bundle.display().to_string());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match (proxy, runtime) {
        (None, _) => report(
            "proxy reachable",
            Err(format!(
                "no proxy: {} is missing; run `iron-agent setup` or pass --proxy",
                layout.env.display()
            )),
        ),
        (_, Err(e)) => report(
            "proxy reachable",
            Err(format!("cannot start the async runtime: {e}")),
        ),
        (Some(proxy), Ok(rt)) => {
            let results = rt.block_on(network_checks(&proxy, &bundle, host));
            results.into_iter().for_each(|(name, r)| report(name, r));
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn stub_file(path: &Path, env: &EnvFile) -> Result<String, String> {
    let rerun = "re-run `iron-agent setup` to put the stubs back, then restart the agent";
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}; {rerun}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| format!("{} is not JSON; {rerun}", path.display()))?;
    let expected = [
        (
            "accessToken",
            env.access_stub
                .as_deref()
                .unwrap_or(super::DEFAULT_ACCESS_STUB),
        ),
        (
            "refreshToken",
            env.refresh_stub
                .as_deref()
                .unwrap_or(super::DEFAULT_REFRESH_STUB),
        ),
    ];
    for (key, stub) in expected {
        if doc["claudeAiOauth"][key].as_str() != Some(stub) {
            return Err(format!(
                "claudeAiOauth.{key} in {} no longer holds the stub (something wrote another value there, \
                 maybe a real token: rotate that token); {rerun}",
                path.display()
            ));
        }
    }
    Ok(format!("{} holds only stubs", path.display()))
}

async fn network_checks(
    proxy: &str,
    bundle: &str,
    host: &str,
) -> Vec<(&'static str, Result<String, String>)> {
    let mut out = Vec::new();
    let proxy_addr = match proxy_authority(proxy) {
        Ok(a) => a,
        Err(e) => {
            out.push(("proxy reachable", Err(e)));
            return out;
        }
    };
    let tls = match tls_config(bundle) {
        Ok(t) => t,
        Err(e) => {
            out.push(("CA trusted end to end", Err(e)));
            return out;
        }
    };
    let self_check = tokio::time::timeout(
        TIMEOUT,
        get_through(&proxy_addr, "iron-proxy.internal:443", &tls, "GET"),
    )
    .await;
    let proxy_answered = matches!(self_check, Ok(Ok(_)) | Ok(Err(Stage::Tls(_))));
    match self_check {
        Err(_) => out.push(("proxy reachable", Err(format!("no answer from {proxy_addr} within {TIMEOUT:?}; check the address and any NetworkPolicy")))),
        Ok(Err(Stage::Connect(e))) => out.push(("proxy reachable", Err(e))),
        Ok(Err(Stage::Tls(e))) => {
            out.push(("proxy reachable", Ok(format!("{proxy_addr} answers CONNECT"))));
            out.push(("CA trusted end to end", Err(e)));
        }
        Ok(Ok((status, body))) => {
            out.push(("proxy reachable", Ok(format!("{proxy_addr} answers CONNECT"))));
            let fp = body.lines().find_map(|l| l.strip_prefix("ca_sha256 ")).unwrap_or("?").to_owned();
            let verdict = if status == 200 && body.starts_with("iron-proxy ok") {
                Ok(format!("TLS to iron-proxy.internal verified with {bundle} (CA sha256 {fp})"))
            } else {
                Err(format!("iron-proxy.internal answered {status}; is {proxy_addr} an iron-proxy?"))
            };
            out.push(("CA trusted end to end", verdict));
        }
    }
    let target = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:443")
    };
    if !proxy_answered {
        let skipped = format!("{target}: not tried, the proxy did not answer");
        out.push(("allowlisted host", Err(skipped)));
        return out;
    }
    let reach =
        tokio::time::timeout(TIMEOUT, get_through(&proxy_addr, &target, &tls, "HEAD")).await;
    out.push((
        "allowlisted host",
        match reach {
            Err(_) => Err(format!("{target}: no answer within {TIMEOUT:?}")),
            Ok(Err(Stage::Connect(e) | Stage::Tls(e))) => Err(format!("{target}: {e}")),
            Ok(Ok((status, _))) => Ok(format!(
                "{target} reachable through the proxy (HTTP {status})"
            )),
        },
    ));
    out
}

fn proxy_authority(proxy: &str) -> Result<String, String> {
    let uri: http::Uri = proxy
        .parse()
        .map_err(|_| format!("proxy `{proxy}` is not a URL"))?;
    let a = uri
        .authority()
        .ok_or_else(|| format!("proxy `{proxy}` has no host:port"))?;
    Ok(match a.port_u16() {
        Some(_) => a.as_str().to_owned(),
        None => format!("{}:80", a.host()),
    })
}

fn tls_config(bundle: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let fix =
        "re-run `iron-agent setup` with the proxy's CA (--ca-url http://<proxy-admin>/ca.pem)";
    let pem = std::fs::read(bundle)
        .map_err(|e| format!("cannot read the CA bundle {bundle}: {e}; {fix}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "the CA bundle {bundle} holds no usable certificate; {fix}"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Stage {
    Connect(String),
    Tls(String),
}

/// CONNECT through the proxy, TLS with the bundle, one request.
async fn get_through(
    proxy: &str,
    target: &str,
    tls: &Arc<rustls::ClientConfig>,
    method: &str,
) -> Result<(u16, String), Stage> {
    let mut stream = TcpStream::connect(proxy).await.map_err(|e| {
        Stage::Connect(format!(
            "cannot connect to {proxy}: {e}; is the proxy running and HTTPS_PROXY right?"
        ))
    })?;
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| Stage::Connect(e.to_string()))?;
    let (status, reason) = read_connect_reply(&mut stream)
        .await
        .map_err(Stage::Connect)?;
    if status != 200 {
        return Err(Stage::Connect(format!(
            "CONNECT {target} answered {status}: {reason}"
        )));
    }
    let host = target
        .rsplit_once(':')
        .map_or(target, |(h, _)| h)
        .to_owned();
    let name = ServerName::try_from(host.clone())
        .map_err(|_| Stage::Tls(format!("`{host}` is not a host name")))?;
    let tls_stream: TlsStream<TcpStream> = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| Stage::Tls(format!("TLS through the proxy failed: {e}; the bundle does not trust the proxy's CA: re-run `iron-agent setup --ca-url …`")))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls_stream))
        .await
        .map_err(|e| Stage::Tls(e.to_string()))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri("/")
        .header(http::header::HOST, &host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| Stage::Tls(e.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| Stage::Tls(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Reads the proxy's reply to CONNECT: status, and the body line on refusal.
async fn read_connect_reply(stream: &mut TcpStream) -> Result<(u16, String), String> {
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 16 * 1024 || stream.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status == 200 {
        return Ok((status, String::new()));
    }
    let mut body = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut body))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    Ok((
        status,
        String::from_utf8_lossy(&body[..n]).trim().to_owned(),
    ))
}

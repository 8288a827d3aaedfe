//! The operator side of the admin API: `iron-proxy credential set`.
//!
//! Owns: finding the admin URL and token (flags first, then the config),
//! sending `PUT /v1/credentials/{name}`, and reporting the result by sha256
//! prefix. The value is read from a file or stdin and never printed.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the new value from {from}: {source}")]
    Value {
        from: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the admin API at {url}: {detail}; is iron-proxy running, and is --admin right?")]
    Connect { url: String, detail: String },
    #[error("the admin API answered {status}: {body}")]
    Refused { status: u16, body: String },
}

/// Where the value comes from.
#[derive(Debug)]
pub enum ValueFrom {
    File(PathBuf),
    Stdin,
}

/// What `credential set` needs, resolved from flags and the config file.
#[derive(Debug)]
pub struct Target {
    pub admin: Uri,
    pub token: String,
}

impl Target {
    pub fn resolve(
        config: &Path,
        admin: Option<&str>,
        token_file: Option<&Path>,
    ) -> Result<Target, ClientError> {
        let loaded = || {
            Config::load(config).map_err(|e| {
                ClientError::Setup(format!(
                    "{e}\n(pass --admin and --token-file to skip reading the config)"
                ))
            })
        };
        let admin = match admin {
            Some(url) => url.to_owned(),
            None => {
                let addr = loaded()?.listen.admin;
                let host = if addr.ip().is_unspecified() {
                    "127.0.0.1".to_owned()
                } else {
                    addr.ip().to_string()
                };
                format!("http://{host}:{}", addr.port())
            }
        };
        let admin: Uri = admin
            .parse()
            .ok()
            .filter(|u: &Uri| u.scheme_str() == Some("http") && u.authority().is_some())
            .ok_or_else(|| {
                ClientError::Setup(format!("--admin `{admin}` is not an http://host:port URL"))
            })?;
        let token_path = match token_file {
            Some(p) => p.to_owned(),
            None => loaded()?.admin.token_file.ok_or_else(|| {
                ClientError::Setup(
                    "no admin token: pass --token-file or set [admin] token_file in the config"
                        .into(),
                )
            })?,
        };
        let token = std::fs::read_to_string(&token_path).map_err(|e| {
            ClientError::Setup(format!(
                "cannot read the admin token {}: {e}",
                token_path.display()
            ))
        })?;
        Ok(Target {
            admin,
            token: token.trim().to_owned(),
        })
    }
}

pub fn read_value(from: &ValueFrom) -> Result<Vec<u8>, ClientError> {
    match from {
        ValueFrom::File(p) => std::fs::read(p).map_err(|source| ClientError::Value {
            from: p.display().to_string(),
            source,
        }),
        ValueFrom::Stdin => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|source| ClientError::Value {
                    from: "stdin".into(),
                    source,
                })?;
            Ok(buf)
        }
    }
}

/// One plain-HTTP/1.1 exchange with `base` (an `http://host:port` URI):
/// returns the status and body. Enough for the admin API and `/ca.pem`.
pub async fn exchange(
    base: &Uri,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> Result<(u16, Bytes), ClientError> {
    let url = base.to_string();
    let connect_err = |detail: String| ClientError::Connect {
        url: url.clone(),
        detail,
    };
    let authority = base
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let connect = tokio::net::TcpStream::connect(&authority);
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| connect_err("timed out after 10s".into()))?
        .map_err(|e| connect_err(e.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &authority);
    if let Some(token) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Setup(format!("`{path}` cannot be sent: {e}")))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| connect_err(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Sends the new value; returns the JSON description the proxy answered.
pub async fn set_credential(
    target: &Target,
    name: &str,
    value: Vec<u8>,
) -> Result<serde_json::Value, ClientError> {
    let path = format!("/v1/credentials/{name}");
    let (status, body) = exchange(
        &target.admin,
        Method::PUT,
        &path,
        Some(&target.token),
        value,
    )
    .await?;
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if status != 200 {
        return Err(ClientError::Refused { status, body: text });
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Refused {
        status,
        body: format!("{text} (not JSON: {e})"),
    })
}

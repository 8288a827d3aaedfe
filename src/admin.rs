//! The admin port (SPEC §7).
//!
//! Routes:
//! - `GET /healthz` — 200 while the process runs.
//! - `GET /readyz` — 200 with the snapshot generation once a valid snapshot
//!   is loaded (the process binds only after it has one); 503 while draining.
//! - `GET /metrics` — Prometheus text (`metrics`).
//! - `GET /ca.pem` — what agents should trust: current CA plus
//!   `ca.extra_trust`.
//! - `GET /v1/credentials` — name, stub, hosts, source, `changed_at` and the
//!   first 12 hex digits of the value's sha256; never the value.
//! - `PUT /v1/credentials/{name}` — body: the new real value (one trailing
//!   newline ignored). Written atomically to a file source and swapped in
//!   memory; an `env` source answers 409.
//! - `POST /v1/reload` — reload everything from disk now.
//!
//! The `/v1/` routes need `Authorization: Bearer <token>`, the content of
//! `[admin] token_file`, compared in constant time; without a token file
//! they answer 404. The admin port is for operators: bind it where agents
//! cannot reach it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::error::{full, Body};
use crate::reload::SetError;
use crate::secret::Secret;
use crate::swap::Credential;

/// A credential value, or a reload request, is never this large.
const MAX_BODY: usize = 64 * 1024;

pub async fn run(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.stopped.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        // Not on `shared.tasks`: the admin port outlives the drain.
        tokio::spawn(async move {
            let service = service_fn(|req| route(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let stopped = shared.stopped.clone();
            tokio::select! {
                _ = conn => {}
                _ = stopped.cancelled() => {}
            }
        });
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if shared.shutdown.is_cancelled() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/readyz") => text(
            StatusCode::OK,
            &format!("ready generation {}\n", shared.store.load().generation),
        ),
        (&Method::GET, "/metrics") => with_type(
            text(StatusCode::OK, &shared.metrics.render()),
            "text/plain; version=0.0.4",
        ),
        (&Method::GET, "/ca.pem") => with_type(
            text(StatusCode::OK, &shared.store.load().trust_bundle),
            "application/x-pem-file",
        ),
        (_, p) if p.starts_with("/v1/") => guarded(&shared, req).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/ca.pem") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// The bearer-protected API.
async fn guarded(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let Some(token) = shared.store.load().admin_token.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "not found (no [admin] token_file configured)\n",
        );
    };
    if !authorized(&req, &token) {
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <admin token>` is required\n",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/v1/credentials") => list_credentials(shared),
        (Method::POST, "/v1/reload") => match shared.reload.reload_now().await {
            Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
            Err(problems) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("reload failed, nothing changed: {problems}\n"),
            ),
        },
        (Method::PUT, p) if p.starts_with("/v1/credentials/") => {
            let name = p.trim_start_matches("/v1/credentials/").to_owned();
            set_credential(shared, &name, req).await
        }
        (_, "/v1/credentials" | "/v1/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Compares digests so neither the token's content nor its length leaks
/// through timing.
fn authorized(req: &Request<Incoming>, token: &Secret) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let a = Sha256::digest(presented.trim().as_bytes());
    let b = Sha256::digest(token.expose().as_bytes());
    !presented.is_empty() && bool::from(a.ct_eq(&b))
}

fn list_credentials(shared: &Shared) -> Response<Body> {
    let snap = shared.store.load();
    let items: Vec<_> = snap.credentials.iter().map(describe).collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(items))
}

fn describe(c: &Credential) -> serde_json::Value {
    let source = match &c.source {
        crate::config::Source::File(p) => json!({ "file": p.display().to_string() }),
        crate::config::Source::Env(v) => json!({ "env": v }),
    };
    json!({
        "name": &*c.name,
        "stub": &*c.stub,
        "hosts": c.hosts.iter().map(crate::config::pattern_text).collect::<Vec<_>>(),
        "source": source,
        "changed_at": rfc3339(c.changed_at),
        "sha256_prefix": c.real.sha256_prefix(),
    })
}

async fn set_credential(shared: &Shared, name: &str, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the value is larger than 64 KiB\n",
            )
        }
    };
    let value = match Secret::from_bytes(&body) {
        Ok(v) => v,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("credential `{name}`: {e}\n"),
            )
        }
    };
    match shared.reload.set_credential(name, value).await {
        Ok(c) => json_response(StatusCode::OK, &describe(&c)),
        Err(e @ SetError::NotFound(_)) => text(StatusCode::NOT_FOUND, &format!("{e}\n")),
        Err(e @ SetError::EnvSource { .. }) => text(StatusCode::CONFLICT, &format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    with_type(r, "text/plain; charset=utf-8")
}

fn with_type(mut r: Response<Body>, content_type: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = text(status, &format!("{value}\n"));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

//! The admin port (SPEC §7).
//!
//! Routes:
//! - `GET /healthz` — 200 while the process serves.
//! - `GET /readyz`  — 200 once a valid snapshot is loaded (always true after
//!   start: the process does not bind before it has one).
//! - `GET /ca.pem`  — what agents should trust: current CA plus
//!   `ca.extra_trust`.
//!
//! Everything else answers 404. Never serves a credential value.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::error::{full, Body};

pub async fn run(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let service = service_fn(|req| route(shared2.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let shutdown = shared2.shutdown.clone();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n".into()),
        (&Method::GET, "/ca.pem") => {
            let mut r = text(StatusCode::OK, shared.store.load().trust_bundle.clone());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(resp)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

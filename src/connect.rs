//! The first request on a downstream connection (SPEC §5.1).
//!
//! Owns: `CONNECT host:port` — strict target parse, policy gate and early
//! private-address refusal, all *before* any TLS (403 with a one-line
//! reason, no upstream connection) — then `200` and the hand-off of the
//! upgraded stream to `serve::tunnel`. Absolute-form `http://` requests go
//! straight to the pipeline. Does not terminate TLS (`serve`).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::Shared;
use crate::audit::Audit;
use crate::error::{self, Body, ErrorKind, ProxyError};
use crate::pipeline::{self, Downstream};
use crate::policy::{Authority, Decision, Host};

/// Serves one request from the proxy port.
pub async fn handle(
    shared: Arc<Shared>,
    down: Arc<Downstream>,
    conn_guard: Arc<crate::listener::Slot>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::CONNECT {
        return pipeline::handle(shared, down, req).await;
    }
    let snap = shared.store.load();
    let mut audit = Audit::start(down.client, req.method(), "", down.in_flight.clone());
    let dest = match admit(&snap, &req, &mut audit).await {
        Ok(dest) => dest,
        Err(e) => {
            audit.error = Some(e.kind);
            audit.status = e.kind.status();
            return Ok(e.to_response());
        }
    };
    audit.status = StatusCode::OK;
    drop(audit);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let client = down.client;
    shared.tasks.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::serve::tunnel(shared, dest, client, upgraded).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
        drop(conn_guard);
    });
    Ok(Response::new(error::empty()))
}

/// Parses and checks a CONNECT target; every refusal happens here, before
/// the 200.
async fn admit(
    snap: &crate::store::Snapshot,
    req: &Request<Incoming>,
    audit: &mut Audit,
) -> Result<Authority, ProxyError> {
    let raw = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let dest = Authority::parse(raw, None).map_err(|m| {
        audit.set_destination(&crate::policy::printable(raw), 0);
        ProxyError::new(ErrorKind::Malformed, format!("bad CONNECT target: {m}"))
    })?;
    audit.set_destination(&dest.host, dest.port);
    let trusted = match snap.config.policy.decide(&dest) {
        Decision::Allow { trusted } => trusted,
        Decision::DenyHost => {
            return Err(ProxyError::new(
                ErrorKind::Policy,
                format!("{} is not on the allowlist", dest.host),
            ))
        }
        Decision::DenyPort => {
            return Err(ProxyError::new(
                ErrorKind::Policy,
                format!("{} is allowed, but not on port {}", dest.host, dest.port),
            ))
        }
    };
    let named = matches!(&dest.host, Host::Name(n) if snap.config.upstream.resolve.contains_key(n));
    if !trusted && !named {
        snap.upstream
            .precheck(&dest.host, dest.port)
            .await
            .map_err(|e| ProxyError::new(e.kind(), e.to_string()))?;
    }
    Ok(dest)
}

//! Proxy-owned OAuth refresh (SPEC §8).
//!
//! An agent that refreshes its own token would write real tokens over its
//! stub file, and from then on the proxy has nothing to swap. Here the proxy
//! owns the refresh: a `POST` to an `[[oauth_refresh]] token_url` whose JSON
//! or form body carries the refresh stub is sent upstream with the real
//! refresh token; the new access and refresh tokens from the answer are
//! stored (memory and files, in one snapshot); the agent gets the answer
//! with the stubs in their place and everything else byte for byte.
//!
//! Owns: recognising such a request (only its small body is buffered; no
//! other body ever is), the single flight per entry, storing the result,
//! rewriting the answer, and the optional proactive refresh.
//!
//! Invariants:
//! - Refresh tokens may be single-use. Concurrent refreshes share one
//!   upstream call and all get its answer; flights of one entry never
//!   overlap, and each reads the *current* refresh token when it starts.
//! - A flight runs to its end even if every agent waiting on it goes away:
//!   a refresh token spent upstream must not be lost with its answer.
//! - A real value never reaches the agent: the answer is scrubbed of the
//!   new and the old tokens, on success and on failure alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use memchr::memmem;

use crate::app::Shared;
use crate::config::OAuthRefresh;
use crate::error::{Body, ErrorKind, ProxyError};
use crate::policy::Authority;
use crate::reload::Persist;
use crate::secret::Secret;
use crate::store::Snapshot;

/// Token requests and answers are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// The answer every agent of one flight gets.
#[derive(Debug)]
pub struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Outcome {
    fn to_response(&self) -> Response<Body> {
        let mut resp = Response::new(crate::error::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }

    fn failed(e: ProxyError) -> Outcome {
        let resp = e.to_response();
        Outcome {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: Bytes::from(format!("iron-proxy: {}\n", e.message)),
        }
    }
}

type Flight = SharedFuture<BoxFuture<'static, Arc<Outcome>>>;

/// A refresh request as the agent shaped it, with its stub still in place;
/// replayed for proactive refreshes.
#[derive(Debug, Clone)]
struct Template {
    parts: Parts,
    body: Bytes,
    form: bool,
}

#[derive(Debug, Default)]
pub struct Refresher {
    /// Keyed by the refresh credential's name.
    flights: Mutex<HashMap<String, Flight>>,
    /// Bumped by every successful flight; a scheduled proactive refresh
    /// stands down when it sees a newer one.
    generations: Mutex<HashMap<String, u64>>,
}

/// What `intercept` did with a request.
#[derive(Debug)]
pub enum Intercepted {
    Answered(Response<Body>, Vec<Arc<str>>),
    /// Not a refresh with our stub: forward it as usual (body buffered).
    NotOurs(Parts, Body),
}

/// The `[[oauth_refresh]]` entry a request is addressed to, if any.
pub fn entry_for<'a>(
    snap: &'a Snapshot,
    dest: &Authority,
    tls: bool,
    parts: &Parts,
) -> Option<&'a OAuthRefresh> {
    if !tls || parts.method != Method::POST {
        return None;
    }
    snap.config.oauth_refresh.iter().find(|e| {
        let url = &e.token_url;
        let host_ok = url.host().is_some_and(|h| match &dest.host {
            crate::policy::Host::Name(n) => n.eq_ignore_ascii_case(h),
            crate::policy::Host::Ip(ip) => h.trim_matches(['[', ']']).parse() == Ok(*ip),
        });
        host_ok && url.port_u16().unwrap_or(443) == dest.port && url.path() == parts.uri.path()
    })
}

/// Buffers the (small) body of a request to a token endpoint and, when it
/// carries the refresh stub, answers it through the single flight.
pub async fn intercept(
    shared: Arc<Shared>,
    entry: OAuthRefresh,
    parts: Parts,
    body: Body,
) -> Result<Intercepted, ProxyError> {
    let body = collect_capped(body, MAX_BODY)
        .await
        .map_err(|e| ProxyError::new(ErrorKind::Malformed, format!("token request body: {e}")))?;
    let stub = shared
        .store
        .load()
        .credential(&entry.refresh)
        .map(|c| c.stub.to_string())
        .unwrap_or_default();
    let Some(form) = carries_stub(&parts.headers, &body, &stub) else {
        return Ok(Intercepted::NotOurs(parts, crate::error::full(body)));
    };
    let template = Template { parts, body, form };
    // Two statements: a temporary borrow must not live across the await.
    let flight = shared.refresher.join(&shared, &entry, template);
    let outcome = flight.await;
    let names = vec![Arc::from(entry.refresh.as_str())];
    Ok(Intercepted::Answered(outcome.to_response(), names))
}

/// `Some(is_form)` when the body's `refresh_token` is exactly the stub.
fn carries_stub(headers: &HeaderMap, body: &[u8], stub: &str) -> Option<bool> {
    if stub.is_empty() {
        return None;
    }
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let found = form_urlencoded::parse(body).any(|(k, v)| k == "refresh_token" && v == stub);
        return found.then_some(true);
    }
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    (json.get("refresh_token").and_then(|v| v.as_str()) == Some(stub)).then_some(false)
}

impl Refresher {
    /// Joins the entry's flight in progress, or starts one.
    fn join(&self, shared: &Arc<Shared>, entry: &OAuthRefresh, template: Template) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        match flights.get(&entry.refresh) {
            Some(f) => f.clone(),
            None => {
                let f = start_flight(shared.clone(), entry.clone(), template);
                flights.insert(entry.refresh.clone(), f.clone());
                f
            }
        }
    }

    fn land(&self, refresh: &str) -> u64 {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(refresh);
        let mut gens = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let g = gens.entry(refresh.to_owned()).or_default();
        *g += 1;
        *g
    }

    fn generation(&self, refresh: &str) -> u64 {
        let gens = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        gens.get(refresh).copied().unwrap_or_default()
    }
}

/// Spawned, so the flight completes even if every waiter is gone.
fn start_flight(shared: Arc<Shared>, entry: OAuthRefresh, template: Template) -> Flight {
    let task = tokio::spawn(async move {
        let outcome = Arc::new(fly(&shared, &entry, &template).await);
        let generation = shared.refresher.land(&entry.refresh);
        if outcome.status.is_success() {
            schedule_proactive(shared, entry, template, generation, &outcome);
        }
        outcome
    });
    let waited: BoxFuture<'static, Arc<Outcome>> = async move {
        task.await.unwrap_or_else(|_| {
            Arc::new(Outcome::failed(ProxyError::new(
                ErrorKind::Internal,
                "the refresh task failed",
            )))
        })
    }
    .boxed();
    waited.shared()
}

/// One upstream refresh with the current real refresh token.
async fn fly(shared: &Shared, entry: &OAuthRefresh, template: &Template) -> Outcome {
    let snap = shared.store.load();
    let (Some(access), Some(refresh)) = (
        snap.credential(&entry.access),
        snap.credential(&entry.refresh),
    ) else {
        return Outcome::failed(ProxyError::new(
            ErrorKind::Internal,
            "the oauth_refresh credentials are gone after a reload",
        ));
    };
    let old = [
        (refresh.real.clone(), refresh.stub.to_string()),
        (access.real.clone(), access.stub.to_string()),
    ];
    let body = with_real_refresh(template, &refresh.stub, &refresh.real);
    refresh.swaps.inc();
    let mut parts = template.parts.clone();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    // The answer must be readable to store it.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let req = Request::from_parts(parts, crate::error::full(body));
    let resp = match snap.upstream.send(req, false).await {
        Ok(r) => r,
        Err(e) => return Outcome::failed(e),
    };
    let (parts, body) = resp.into_parts();
    let body = match collect_capped(body, 16 * MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let e = ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("token endpoint answer: {e}"),
            );
            return Outcome::failed(e);
        }
    };
    let mut scrub: Vec<(Secret, String)> = old.to_vec();
    if parts.status.is_success() {
        match store_tokens(
            shared,
            entry,
            &body,
            access.stub.as_ref(),
            refresh.stub.as_ref(),
        )
        .await
        {
            Ok(new) => scrub.extend(new),
            Err(e) => return Outcome::failed(e),
        }
    } else {
        tracing::warn!(status = parts.status.as_u16(), token_url = %entry.token_url, "the token endpoint refused the refresh");
    }
    let body = replace_all(body, &scrub);
    let mut headers = parts.headers;
    for h in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_ENCODING,
        header::TRAILER,
    ] {
        headers.remove(h);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let snap = shared.store.load();
    crate::swap::scrub_response(&mut headers, &snap.credentials);
    Outcome {
        status: parts.status,
        headers,
        body,
    }
}

/// Reads a whole (small) body, refusing one larger than `max`.
async fn collect_capped<B>(mut body: B, max: usize) -> Result<Bytes, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("cut off: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > max {
                return Err(format!("larger than {max} bytes"));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

fn with_real_refresh(t: &Template, stub: &str, real: &Secret) -> Bytes {
    if t.form {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(&t.body) {
            let v = if k == "refresh_token" && v == stub {
                real.expose().into()
            } else {
                v
            };
            out.append_pair(&k, &v);
        }
        return Bytes::from(out.finish());
    }
    match serde_json::from_slice::<serde_json::Value>(&t.body) {
        Ok(mut json) => {
            json["refresh_token"] = serde_json::Value::String(real.expose().to_owned());
            Bytes::from(json.to_string())
        }
        Err(_) => t.body.clone(),
    }
}

/// Stores the new tokens; returns (value, stub) pairs to scrub.
async fn store_tokens(
    shared: &Shared,
    entry: &OAuthRefresh,
    body: &[u8],
    access_stub: &str,
    refresh_stub: &str,
) -> Result<Vec<(Secret, String)>, ProxyError> {
    let bad = |m: &str| {
        ProxyError::new(
            ErrorKind::UpstreamConnect,
            format!("token endpoint {}: {m}", entry.token_url),
        )
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| bad("the answer is not JSON"))?;
    let field = |k: &str| {
        json.get(k)
            .and_then(|v| v.as_str())
            .map(|v| Secret::from_bytes(v.as_bytes()))
    };
    let access = field("access_token")
        .ok_or_else(|| bad("the answer has no access_token"))?
        .map_err(|e| bad(&format!("access_token: {e}")))?;
    let mut values = vec![(entry.access.clone(), access.clone())];
    let mut scrub = vec![(access, access_stub.to_owned())];
    if let Some(refresh) = field("refresh_token") {
        let refresh = refresh.map_err(|e| bad(&format!("refresh_token: {e}")))?;
        values.push((entry.refresh.clone(), refresh.clone()));
        scrub.push((refresh, refresh_stub.to_owned()));
    }
    shared
        .reload
        .set_credentials(values, Persist::BestEffort)
        .await
        .map_err(|e| {
            ProxyError::new(
                ErrorKind::Internal,
                format!("cannot store the refreshed tokens: {e}"),
            )
        })?;
    Ok(scrub)
}

/// Replaces every occurrence of each real value with its stub, leaving all
/// other bytes as they were.
fn replace_all(body: Bytes, pairs: &[(Secret, String)]) -> Bytes {
    let mut out = body.to_vec();
    for (real, stub) in pairs {
        let needle = real.expose().as_bytes();
        if memmem::find(&out, needle).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut rest = &out[..];
        while let Some(i) = memmem::find(rest, needle) {
            next.extend_from_slice(&rest[..i]);
            next.extend_from_slice(stub.as_bytes());
            rest = &rest[i + needle.len()..];
        }
        next.extend_from_slice(rest);
        out = next;
    }
    Bytes::from(out)
}

/// With `refresh_before` and a known `expires_in`, refreshes ahead of expiry
/// by replaying the agent's last request shape.
fn schedule_proactive(
    shared: Arc<Shared>,
    entry: OAuthRefresh,
    template: Template,
    generation: u64,
    outcome: &Outcome,
) {
    let Some(before) = entry.refresh_before else {
        return;
    };
    let expires_in = serde_json::from_slice::<serde_json::Value>(&outcome.body)
        .ok()
        .and_then(|j| j.get("expires_in").and_then(|v| v.as_u64()));
    let Some(expires_in) = expires_in else { return };
    let wait = Duration::from_secs(expires_in).saturating_sub(before);
    let due = Instant::now() + wait;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        if shared.refresher.generation(&entry.refresh) != generation {
            return; // an agent refreshed in the meantime
        }
        tracing::info!(credential = %entry.access, "refreshing ahead of expiry (refresh_before)");
        // Two statements: a temporary borrow must not live across the await.
        let flight = shared.refresher.join(&shared, &entry, template);
        let outcome = flight.await;
        if !outcome.status.is_success() {
            tracing::warn!(
                status = outcome.status.as_u16(),
                "proactive refresh failed; agents will refresh on their own"
            );
        }
    });
}

//! A fake OAuth provider over HTTPS on 127.0.0.1:0, strict the way real ones
//! are: refresh tokens are single-use and rotate.
//!
//! - `POST /v1/oauth/token` (JSON or form body with `refresh_token`): a
//!   refresh token is valid once; the answer carries a new `access_token`,
//!   a new `refresh_token` and `expires_in`. A reused or unknown token gets
//!   400 `invalid_grant` (whose description quotes the token, as some
//!   providers do) and is recorded in `rejected`.
//! - `GET /v1/api`: 200 only for `Bearer <an access token it issued>` (or
//!   the initial one), else 401; echoes the Authorization value in the
//!   `x-echo-authorization` response header (which the proxy must scrub).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use super::{TestCa, ALPN_BOTH, UPSTREAM_NAMES};

pub const TOKEN_PATH: &str = "/v1/oauth/token";
pub const API_PATH: &str = "/v1/api";

/// One call to the token endpoint.
#[derive(Clone, Debug)]
pub struct TokenCall {
    /// The `refresh_token` the body carried.
    pub refresh_token: String,
    /// The raw request body.
    pub body: String,
    pub content_type: Option<String>,
    pub status: u16,
}

#[derive(Clone, Debug, Default)]
pub struct OAuthLog {
    /// Every access token ever valid (the initial one first).
    pub issued_access: Vec<String>,
    /// Every refresh token ever issued (the initial one first).
    pub issued_refresh: Vec<String>,
    /// Refresh tokens not yet used.
    pub unused_refresh: HashSet<String>,
    pub token_calls: Vec<TokenCall>,
    /// Token calls refused (reused or unknown refresh token).
    pub rejected: Vec<TokenCall>,
    /// The Authorization of every `/v1/api` request (None when absent).
    pub api_auth: Vec<Option<String>>,
    /// `/v1/api` requests answered 401.
    pub api_refused: usize,
}

pub struct OAuthServer {
    pub addr: SocketAddr,
    pub port: u16,
    pub ca_pem: String,
    pub log: Arc<Mutex<OAuthLog>>,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct State {
    log: Arc<Mutex<OAuthLog>>,
    expires_in: u64,
    delay: Duration,
}

/// Start with `initial_access`/`initial_refresh` valid; answers carry
/// `expires_in`; the token endpoint takes `delay` per call, so concurrent
/// refreshes overlap.
pub async fn start_oauth_server(
    initial_access: &str,
    initial_refresh: &str,
    expires_in: u64,
    delay: Duration,
) -> OAuthServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ca = TestCa::new("iron-proxy test OAuth CA");
    let acceptor = TlsAcceptor::from(ca.server_config(UPSTREAM_NAMES, ALPN_BOTH));
    let log = OAuthLog {
        issued_access: vec![initial_access.to_string()],
        issued_refresh: vec![initial_refresh.to_string()],
        unused_refresh: HashSet::from([initial_refresh.to_string()]),
        ..Default::default()
    };
    let state = State {
        log: Arc::new(Mutex::new(log)),
        expires_in,
        delay,
    };
    let accept_state = state.clone();
    let stop_tx = super::serve_https(listener, acceptor, move |req| {
        handle(req, accept_state.clone())
    });
    OAuthServer {
        addr,
        port: addr.port(),
        ca_pem: ca.cert_pem,
        log: state.log,
        stop: Some(stop_tx),
    }
}

// === impl OAuthServer ===

impl OAuthServer {
    pub fn token_calls(&self) -> usize {
        self.log.lock().unwrap().token_calls.len()
    }
    /// The access and refresh tokens issued last.
    pub fn latest(&self) -> (String, String) {
        self.log.lock().unwrap().latest()
    }
    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> OAuthLog {
        self.log.lock().unwrap().clone()
    }
}

// === impl OAuthLog ===

impl OAuthLog {
    /// The access and refresh tokens issued last.
    pub fn latest(&self) -> (String, String) {
        let access = self.issued_access.last().unwrap().clone();
        (access, self.issued_refresh.last().unwrap().clone())
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let json = "application/json".parse().unwrap();
    reply.headers_mut().insert("content-type", json);
    reply
}

async fn handle(req: Request<Incoming>, state: State) -> Result<Reply, Infallible> {
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("POST", TOKEN_PATH) => token(req, &state).await,
        ("GET", API_PATH) => api(&req, &state),
        _ => reply(StatusCode::NOT_FOUND, "{\"error\":\"not_found\"}".into()),
    })
}

async fn token(req: Request<Incoming>, state: &State) -> Reply {
    let content_type = req.headers().get("content-type");
    let content_type = content_type
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let refresh_token = refresh_token_of(&body).unwrap_or_default();
    tokio::time::sleep(state.delay).await;
    let mut log = state.log.lock().unwrap();
    let mut call = TokenCall {
        refresh_token: refresh_token.clone(),
        body,
        content_type,
        status: 200,
    };
    if !log.unused_refresh.remove(&refresh_token) {
        call.status = 400;
        log.token_calls.push(call.clone());
        log.rejected.push(call);
        let error = serde_json::json!({
            "error": "invalid_grant",
            "error_description": format!("refresh token {refresh_token} is not valid"),
        });
        return reply(StatusCode::BAD_REQUEST, error.to_string());
    }
    log.token_calls.push(call);
    let n = log.token_calls.len();
    let access = format!("at-issued-{n}-{:016x}", rand_u64());
    let refresh = format!("rt-issued-{n}-{:016x}", rand_u64());
    log.issued_access.push(access.clone());
    log.issued_refresh.push(refresh.clone());
    log.unused_refresh.insert(refresh.clone());
    let answer = serde_json::json!({
        "token_type": "Bearer",
        "access_token": access,
        "refresh_token": refresh,
        "expires_in": state.expires_in,
        "scope": "user:inference user:profile",
    });
    reply(StatusCode::OK, answer.to_string())
}

fn refresh_token_of(body: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(body) {
        return json["refresh_token"].as_str().map(str::to_string);
    }
    let pairs = body.split('&').filter_map(|kv| kv.split_once('='));
    let mut pairs = pairs.filter(|(k, _)| *k == "refresh_token");
    pairs.next().map(|(_, v)| v.to_string())
}

fn api(req: &Request<Incoming>, state: &State) -> Reply {
    let auth = req.headers().get("authorization");
    let auth = auth.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut log = state.log.lock().unwrap();
    log.api_auth.push(auth.clone());
    let token = auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| log.issued_access.iter().any(|a| a == t));
    if !valid {
        log.api_refused += 1;
        return reply(
            StatusCode::UNAUTHORIZED,
            "{\"error\":\"invalid_token\"}".into(),
        );
    }
    let mut ok = reply(StatusCode::OK, "{\"ok\":true}".into());
    let echo = auth.unwrap().parse().unwrap();
    ok.headers_mut().insert("x-echo-authorization", echo);
    ok
}

/// Unpredictable enough for token values, without a `rand` dependency.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.unwrap_or_default().as_nanos());
    hasher.finish()
}

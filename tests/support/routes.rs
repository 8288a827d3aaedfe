//! Request handlers of the test upstream (see `upstream.rs` for the list).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::upstream::State;

type Body = BoxBody<Bytes, Infallible>;

pub(super) async fn route(
    req: Request<Incoming>,
    state: State,
) -> Result<Response<Body>, Infallible> {
    state.record(&req);
    let path = req.uri().path().to_string();
    let response = match path.as_str() {
        "/echo" => echo(req).await,
        "/echo-auth" => echo_auth(&req),
        "/sse" => sse(&req),
        "/ws" => websocket(req),
        "/slow" => slow(&req).await,
        "/big" => big(&req),
        p if p.starts_with("/status/") => status(p),
        _ => text(StatusCode::NOT_FOUND, "no such route\n"),
    };
    Ok(response)
}

// === routes ===

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    let query = req.uri().query()?;
    let mut pairs = query.split('&').filter_map(|kv| kv.split_once('='));
    pairs
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values = parts.headers.get_all(name).iter();
        let values = values.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        headers.insert(name.to_string(), values.collect::<Vec<_>>().into());
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    let json_type = "application/json".parse().unwrap();
    response.headers_mut().insert(CONTENT_TYPE, json_type);
    response
}

fn echo_auth(req: &Request<Incoming>) -> Response<Body> {
    let mut response = text(StatusCode::OK, "echoed\n");
    if let Some(auth) = req.headers().get("authorization") {
        let headers = response.headers_mut();
        headers.insert("x-echo-authorization", auth.clone());
    }
    response
}

fn sse(req: &Request<Incoming>) -> Response<Body> {
    let n = query_param(req, "n").unwrap_or(3);
    let delay = Duration::from_millis(query_param(req, "delay_ms").unwrap_or(200));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            let event = Bytes::from(format!("id: {i}\ndata: event {i}\n\n"));
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
    headers.insert("cache-control", "no-cache".parse().unwrap());
    response
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return text(StatusCode::BAD_REQUEST, "not a websocket handshake\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Empty::new().boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, "upgrade".parse().unwrap());
    headers.insert(UPGRADE, "websocket".parse().unwrap());
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    response
}

async fn slow(req: &Request<Incoming>) -> Response<Body> {
    let ms = query_param(req, "ms").unwrap_or(1000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, "slow done\n")
}

fn big(req: &Request<Incoming>) -> Response<Body> {
    let n = query_param(req, "bytes").unwrap_or(1 << 20) as usize;
    Response::new(Full::new(Bytes::from(vec![b'x'; n])).boxed())
}

fn status(path: &str) -> Response<Body> {
    let code = path.trim_start_matches("/status/").parse().unwrap_or(500);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(format!("status {code}\n"))).boxed());
    *response.status_mut() = status;
    response
}

/// A response body fed chunk by chunk from a channel, so each chunk is
/// written (and flushed) as it is produced.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

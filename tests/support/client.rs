//! Agent-side clients: raw CONNECT, TLS through the tunnel, hyper h1/h2,
//! and raw bytes for malformed-input tests. Every wait is bounded.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::HOST;
use hyper::http::request::Builder;
use hyper::{HeaderMap, Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::tls::{client_config, ALPN_H1, ALPN_H2};
use super::{within, TIMEOUT};

/// A parsed HTTP/1 response head (header names lower-case).
#[derive(Clone, Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        let found = self.headers.iter().find(|(n, _)| *n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// Parse `HTTP/1.1 200 OK\r\nname: value\r\n…` (the blank line optional).
pub fn parse_head(text: &str) -> Head {
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'));
    let headers = headers.map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()));
    Head {
        status,
        headers: headers.collect(),
    }
}

/// Read a response head byte by byte (so nothing after it is consumed).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Head {
    let mut buf = Vec::new();
    within("reading response head", async {
        while !buf.ends_with(b"\r\n\r\n") {
            assert!(buf.len() < 64 * 1024, "response head too large");
            let byte = stream.read_u8().await;
            let byte = byte.unwrap_or_else(|e| panic!("head cut short ({e}): {buf:?}"));
            buf.push(byte);
        }
    })
    .await;
    parse_head(&String::from_utf8_lossy(&buf))
}

/// Send `CONNECT authority` to the proxy; return the reply head and the
/// stream positioned right after it (the tunnel on 200, the body otherwise).
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> (Head, TcpStream) {
    let mut stream = within("connect to proxy", TcpStream::connect(proxy))
        .await
        .unwrap();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

/// Read until EOF, error or [`TIMEOUT`]; `true` when the peer closed
/// (EOF or error) rather than the time running out.
pub async fn read_until_closed<S: AsyncRead + Unpin>(stream: &mut S) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let result = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (out, result.is_ok())
}

/// The body after `head`: `Content-Length` bytes, or up to EOF.
pub async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, head: &Head) -> String {
    let length = head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let Some(length) = length else {
        return String::from_utf8_lossy(&read_until_closed(stream).await.0).into_owned();
    };
    let mut body = vec![0u8; length];
    within("reading body", stream.read_exact(&mut body))
        .await
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// TLS client handshake over `stream` with the given SNI and ALPN.
pub async fn tls_handshake<S>(
    stream: S,
    sni: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(client_config(ca_pem, alpn));
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within("TLS handshake", connector.connect(name, stream)).await
}

/// CONNECT `host:port` (must answer 200), then TLS with SNI `host`.
pub async fn tls_through(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let (head, stream) = connect_tunnel(proxy, &format!("{host}:{port}")).await;
    assert_eq!(head.status, 200, "CONNECT {host}:{port} refused: {head:?}");
    tls_handshake(stream, host, ca_pem, alpn).await.unwrap()
}

/// Write raw bytes to the proxy's plain port and return what comes back.
pub async fn raw_request(proxy: SocketAddr, bytes: &[u8]) -> String {
    let stream = within("connect to proxy", TcpStream::connect(proxy))
        .await
        .unwrap();
    raw_over(stream, bytes).await
}

/// Write raw bytes on `stream`; read the reply until it is complete (by
/// `Content-Length` or a final chunk), the peer closes, or [`TIMEOUT`].
pub async fn raw_over<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) -> String {
    if stream.write_all(bytes).await.is_err() {
        return String::new();
    }
    let _ = stream.flush().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let _ = tokio::time::timeout(TIMEOUT, async {
        while !response_complete(&out) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = parse_head(head);
    match head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(length) => body.len() >= length,
        None => head.header("transfer-encoding").is_some() && body.ends_with("0\r\n\r\n"),
    }
}

/// Split a raw response into its head and body text.
pub fn parse_response(text: &str) -> (Head, String) {
    assert!(!text.is_empty(), "empty response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    (parse_head(head), body.to_string())
}

/// A hyper client connection through the tunnel, h1 or h2.
pub enum Client {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A fully read response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text()))
    }
}

/// A request builder for `https://authority/path` with a `Host` header.
pub fn req(method: &str, authority: &str, path: &str) -> Builder {
    Request::builder()
        .method(method)
        .uri(format!("https://{authority}{path}"))
        .header(HOST, authority)
}

/// `GET https://authority/path` with an empty body.
pub fn get(authority: &str, path: &str) -> Request<Full<Bytes>> {
    req("GET", authority, path).body(Full::default()).unwrap()
}

/// HTTP/1.1 client through a CONNECT tunnel (ALPN `http/1.1`).
pub async fn h1_client(proxy: SocketAddr, host: &str, port: u16, ca_pem: &str) -> Client {
    client_over(tls_through(proxy, host, port, ca_pem, ALPN_H1).await).await
}

/// HTTP/2 client through a CONNECT tunnel (ALPN `h2`, must be negotiated).
pub async fn h2_client(proxy: SocketAddr, host: &str, port: u16, ca_pem: &str) -> Client {
    let tls = tls_through(proxy, host, port, ca_pem, ALPN_H2).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "proxy did not negotiate h2"
    );
    client_over(tls).await
}

/// A client over an established TLS stream, h2 if ALPN chose it.
pub async fn client_over(tls: TlsStream<TcpStream>) -> Client {
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
    let io = TokioIo::new(tls);
    if is_h2 {
        let handshake = http2::handshake(TokioExecutor::new(), io);
        let (sender, conn) = within("h2 handshake", handshake).await.unwrap();
        tokio::spawn(conn);
        Client::H2(sender)
    } else {
        let (sender, conn) = within("h1 handshake", http1::handshake(io)).await.unwrap();
        tokio::spawn(conn);
        Client::H1(sender)
    }
}

// === impl Client ===

impl Client {
    /// Send `req` (URI absolute for h2, origin-form plus Host for h1) and
    /// return the response head with its body still streaming.
    pub async fn request(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Result<Response<Incoming>> {
        let req = self.normalize(req);
        match self {
            Client::H1(sender) => {
                within("h1 ready", sender.ready()).await?;
                within("h1 response head", sender.send_request(req)).await
            }
            Client::H2(sender) => {
                within("h2 ready", sender.ready()).await?;
                within("h2 response head", sender.send_request(req)).await
            }
        }
    }

    /// Send `req` and read the whole response; panics on transport errors.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let response = self.request(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = within("response body", body.collect())
            .await
            .unwrap()
            .to_bytes();
        Reply {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    fn normalize(&self, mut req: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri_authority = req.uri().authority().map(|a| a.to_string());
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        match self {
            Client::H1(_) => {
                if let (None, Some(authority)) = (&host, uri_authority) {
                    req.headers_mut().insert(HOST, authority.parse().unwrap());
                }
                *req.uri_mut() = path.parse().unwrap();
            }
            Client::H2(_) => {
                // The Host header, when set, decides :authority.
                let authority = host.or(uri_authority).expect("request has no authority");
                req.headers_mut().remove(HOST);
                *req.uri_mut() = format!("https://{authority}{path}").parse().unwrap();
                *req.version_mut() = Version::HTTP_2;
            }
        }
        req
    }
}

/// Wait `ms` milliseconds (sugar for pacing in tests).
pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Reads an SSE response body up to its first event, then goes on reading it
/// in a task, which returns all the text read and the error that ended the
/// stream, if any.
pub async fn sse_after_first_event(
    mut body: hyper::body::Incoming,
) -> tokio::task::JoinHandle<(String, Option<String>)> {
    use http_body_util::BodyExt;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = super::within("first SSE event", body.frame()).await;
        let data = frame.expect("stream ended before the first event").unwrap();
        text.push_str(&String::from_utf8_lossy(
            &data.into_data().unwrap_or_default(),
        ));
    }
    tokio::spawn(async move {
        while let Some(frame) = super::within("next SSE frame", body.frame()).await {
            match frame {
                Ok(frame) => text.push_str(&String::from_utf8_lossy(
                    &frame.into_data().unwrap_or_default(),
                )),
                Err(e) => return (text, Some(e.to_string())),
            }
        }
        (text, None)
    })
}

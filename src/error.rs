//! Errors the proxy itself answers with (SPEC §5.7).
//!
//! Every failure on the request path is classified by who was at fault and
//! maps to exactly one status and one `x-iron-proxy-error` kind. Callers match
//! on `ErrorKind`, never on message text. Messages are for people: they name
//! the host and what to do, and never carry a credential value.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// The response body type every response of ours uses: upstream streams and
/// our short error bodies alike.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const ERROR_HEADER: &str = "x-iron-proxy-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Downstream asked for something policy refuses.
    Policy,
    /// Downstream sent a request for another host inside a tunnel.
    HostMismatch,
    /// Upstream could not be reached or failed TLS verification.
    UpstreamConnect,
    /// Upstream did not answer in time.
    UpstreamTimeout,
    /// Downstream sent something we will not parse or forward.
    Malformed,
    /// Our own fault.
    Internal,
    /// Too many downstream connections (`limits.max_connections`).
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Policy => StatusCode::FORBIDDEN,
            ErrorKind::HostMismatch => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::UpstreamConnect => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Malformed => StatusCode::BAD_REQUEST,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Policy => "policy",
            ErrorKind::HostMismatch => "host_mismatch",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Malformed => "malformed",
            ErrorKind::Internal => "internal",
            ErrorKind::Overloaded => "overloaded",
        }
    }
}

/// A refusal or failure produced by the proxy, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            message: message.into(),
        }
    }

    /// The one-line body: a message must not be able to forge more lines.
    fn body_line(&self) -> String {
        let mut line = String::with_capacity(self.message.len() + 13);
        line.push_str("iron-proxy: ");
        line.extend(
            self.message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c }),
        );
        line.push('\n');
        line
    }

    /// A short plain-text response: one line, the kind in a header.
    pub fn to_response(&self) -> Response<Body> {
        let mut resp = Response::new(full(self.body_line()));
        *resp.status_mut() = self.kind.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.kind.as_str()));
        resp
    }

    /// The same response as raw HTTP/1.1 bytes, then close: for refusals
    /// written before any HTTP parser runs (over `limits.max_connections`).
    pub fn to_http1_close(&self) -> Vec<u8> {
        let body = self.body_line();
        let status = self.kind.status();
        format!(
            "HTTP/1.1 {} {}\r\n{ERROR_HEADER}: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.kind.as_str(),
            body.len(),
        )
        .into_bytes()
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn error_response_is_one_line_with_kind_header() {
        let e = ProxyError::new(ErrorKind::Policy, "evil.test:443 is not allowed\r\nX: y");
        let resp = e.to_response();
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[ERROR_HEADER], "policy");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("evil.test:443"));
    }

    #[test]
    fn raw_refusal_is_a_complete_http1_response() {
        let bytes = ProxyError::new(ErrorKind::Overloaded, "too many").to_http1_close();
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("x-iron-proxy-error: overloaded"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body, "iron-proxy: too many\n");
    }

    #[test]
    fn every_kind_has_its_own_status() {
        let kinds = [
            ErrorKind::Policy,
            ErrorKind::HostMismatch,
            ErrorKind::UpstreamConnect,
            ErrorKind::UpstreamTimeout,
            ErrorKind::Malformed,
            ErrorKind::Internal,
            ErrorKind::Overloaded,
        ];
        let statuses: std::collections::HashSet<_> = kinds.iter().map(|k| k.status()).collect();
        assert_eq!(statuses.len(), kinds.len());
    }
}

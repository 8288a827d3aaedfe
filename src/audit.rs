//! One audit record per request (SPEC §5.9), emitted when the response body
//! is finished or abandoned, so the byte counts and duration are final.
//!
//! Owns: the record's fields and the body wrappers that count bytes each
//! way. Records are one JSON line each with target `audit`, written by
//! `telemetry::write_audit`. They carry credential *names* only; no field can
//! hold a header value, a query string or a body.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::{BoxError, ErrorKind};
use crate::metrics::Metrics;

/// Tracks requests whose response is still being delivered on a downstream
/// connection; the idle timer only runs while this is zero.
#[derive(Debug)]
pub struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    started: AtomicU64,
    metrics: Arc<Metrics>,
}

impl InFlight {
    pub fn new(metrics: Arc<Metrics>) -> InFlight {
        InFlight {
            now: Default::default(),
            started: Default::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn get(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// Requests ever started here: tells the idle timer a request came and
    /// went between two of its ticks.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
}

/// The record being filled in while a request travels.
#[derive(Debug)]
pub struct Audit {
    started: Instant,
    client: SocketAddr,
    method: Method,
    host: String,
    port: u16,
    path: String,
    pub status: StatusCode,
    pub error: Option<ErrorKind>,
    pub credentials: Vec<Arc<str>>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    in_flight: Arc<InFlight>,
}

impl Audit {
    pub fn start(
        client: SocketAddr,
        method: &Method,
        path: &str,
        in_flight: Arc<InFlight>,
    ) -> Audit {
        in_flight.now.fetch_add(1, Ordering::Relaxed);
        in_flight.started.fetch_add(1, Ordering::Relaxed);
        Audit {
            started: Instant::now(),
            client,
            method: method.clone(),
            host: String::new(),
            port: 0,
            path: path.to_owned(),
            status: StatusCode::OK,
            error: None,
            credentials: Vec::new(),
            bytes_in: Arc::default(),
            bytes_out: 0,
            in_flight,
        }
    }

    pub fn set_destination(&mut self, host: &impl std::fmt::Display, port: u16) {
        self.host = host.to_string();
        self.port = port;
    }

    /// Records a refusal or failure answered with `kind`'s status.
    pub fn refused(&mut self, kind: ErrorKind) {
        self.error = Some(kind);
        self.status = kind.status();
    }

    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.bytes_in.clone()
    }

    fn decision(&self) -> &'static str {
        match self.error {
            None => "allow",
            Some(ErrorKind::Policy | ErrorKind::HostMismatch | ErrorKind::Malformed) => "deny",
            Some(_) => "error",
        }
    }

    fn emit(&self) {
        self.in_flight
            .metrics
            .request(self.decision(), self.status.as_u16());
        crate::telemetry::write_audit(|out| {
            use crate::telemetry::{json_float, json_int, json_str};
            let mut client = [0u8; 64];
            json_str(out, "client", display_in(&mut client, self.client));
            json_str(out, "method", self.method.as_str());
            json_str(out, "host", &self.host);
            json_int(out, "port", self.port);
            json_str(out, "path", &self.path);
            json_int(out, "status", self.status.as_u16());
            json_int(out, "bytes_in", self.bytes_in.load(Ordering::Relaxed));
            json_int(out, "bytes_out", self.bytes_out);
            let ms = self.started.elapsed().as_secs_f64() * 1000.0;
            json_float(out, "duration_ms", ms);
            json_str(out, "decision", self.decision());
            json_str(
                out,
                "error",
                self.error.map(ErrorKind::as_str).unwrap_or(""),
            );
            let mut names = String::new();
            for (i, name) in self.credentials.iter().enumerate() {
                if i > 0 {
                    names.push(',');
                }
                names.push_str(name);
            }
            json_str(out, "credentials", &names);
        });
    }
}

/// Formats into a stack buffer (a socket address fits in 64 bytes).
fn display_in(buf: &mut [u8; 64], value: impl std::fmt::Display) -> &str {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{value}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.emit();
        self.in_flight.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a body's byte count goes.
pub trait Tally {
    fn add(&mut self, n: u64);
}

impl Tally for Arc<AtomicU64> {
    fn add(&mut self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }
}

/// The response side: counting into the record, which is emitted when the
/// body is dropped (delivered or abandoned).
impl Tally for Audit {
    fn add(&mut self, n: u64) {
        self.bytes_out += n;
    }
}

pin_project! {
    /// A body that reports the size of each data frame to `tally`.
    pub struct Counted<B, T> {
        #[pin]
        inner: B,
        tally: T,
    }
}

impl<B, T> Counted<B, T> {
    pub fn new(inner: B, tally: T) -> Self {
        Counted { inner, tally }
    }
}

impl<B, T> HttpBody for Counted<B, T>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    T: Tally,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(data) = frame
            .as_ref()
            .and_then(|f| f.as_ref().ok())
            .and_then(Frame::data_ref)
        {
            this.tally.add(data.len() as u64);
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! A watch on the raw HTTP/1 byte stream for framing that hyper resolves
//! silently but we must refuse (request smuggling, SPEC §5.7 `400`).
//!
//! hyper, given both `Content-Length` and `Transfer-Encoding`, drops the
//! length and closes after the response: safe for hyper, but the request
//! still reaches the upstream and the handler cannot tell. `Watched<T>`
//! follows message framing as the bytes are read — head, then a fixed-length
//! or chunked body, then the next head — so body bytes are never mistaken
//! for headers, and raises a per-connection flag when a head carries both.
//! The pipeline checks the flag before forwarding. CONNECT and upgrades end
//! the watch (the rest of the stream is opaque). No allocation: lines are
//! inspected through a fixed 256-byte window.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const WINDOW: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    RequestLine,
    Headers,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Opaque,
}

#[derive(Debug)]
struct Tracker {
    state: State,
    line: [u8; WINDOW],
    len: usize,
    has_length: bool,
    length: u64,
    chunked: bool,
    has_te: bool,
    opaque_after_head: bool,
    flag: Arc<AtomicBool>,
}

impl Tracker {
    fn new(flag: Arc<AtomicBool>) -> Tracker {
        Tracker {
            state: State::RequestLine,
            line: [0; WINDOW],
            len: 0,
            has_length: false,
            length: 0,
            chunked: false,
            has_te: false,
            opaque_after_head: false,
            flag,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Opaque => return,
                State::Fixed(n) | State::ChunkData(n) => {
                    let take = (n as usize).min(bytes.len()) as u64;
                    bytes = &bytes[take as usize..];
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Fixed(_), 0) => State::RequestLine,
                        (State::ChunkData(_), 0) => State::ChunkEnd,
                        (State::Fixed(_), l) => State::Fixed(l),
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    let end = bytes.iter().position(|&b| b == b'\n');
                    let chunk = &bytes[..end.map_or(bytes.len(), |e| e + 1)];
                    let room = WINDOW - self.len;
                    let copy = chunk.len().min(room);
                    self.line[self.len..self.len + copy].copy_from_slice(&chunk[..copy]);
                    self.len += copy;
                    bytes = &bytes[chunk.len()..];
                    if end.is_some() {
                        let len = self.len;
                        self.len = 0;
                        let line = self.line;
                        self.on_line(line[..len].trim_ascii_end());
                    }
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        match self.state {
            State::RequestLine if line.is_empty() => {} // tolerated leading CRLF
            State::RequestLine => {
                self.has_length = false;
                self.length = 0;
                self.chunked = false;
                self.has_te = false;
                self.opaque_after_head = line.starts_with(b"CONNECT ");
                self.state = State::Headers;
            }
            State::Headers if line.is_empty() => self.end_of_head(),
            State::Headers => self.header(line),
            State::ChunkSize => {
                let hex = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                self.state = match std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Opaque, // hyper refuses it; nothing more to follow
                };
            }
            State::ChunkEnd => self.state = State::ChunkSize,
            State::Trailers if line.is_empty() => self.state = State::RequestLine,
            _ => {}
        }
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            self.has_length = true;
            self.length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.has_te = true;
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.opaque_after_head = true;
        }
    }

    fn end_of_head(&mut self) {
        if self.has_te && self.has_length {
            self.flag.store(true, Ordering::Relaxed);
        }
        self.state = if self.opaque_after_head || (self.has_te && !self.chunked) {
            State::Opaque
        } else if self.has_te {
            State::ChunkSize
        } else if self.has_length && self.length > 0 {
            State::Fixed(self.length)
        } else {
            State::RequestLine
        };
    }
}

/// An I/O stream whose incoming HTTP/1 framing is watched (see module doc).
#[derive(Debug)]
pub struct Watched<T> {
    inner: T,
    tracker: Tracker,
}

impl<T> Watched<T> {
    /// Wraps `inner`; `flag` turns true once an ambiguous head was read.
    pub fn new(inner: T, flag: Arc<AtomicBool>) -> Self {
        Watched {
            inner,
            tracker: Tracker::new(flag),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.tracker.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut t = Tracker::new(flag.clone());
        chunks.iter().for_each(|c| t.feed(c));
        flag.load(Ordering::Relaxed)
    }

    #[test]
    fn flags_length_with_transfer_encoding_in_either_order() {
        assert!(flagged(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"]));
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n"
        ]));
    }

    #[test]
    fn body_bytes_never_count_as_headers() {
        let body = b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len());
        assert!(!flagged(&[
            head.as_bytes(),
            body,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        ]));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            31\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n0\r\n\r\n";
        assert!(!flagged(&[chunked]));
    }

    #[test]
    fn follows_framing_across_split_reads_to_the_next_head() {
        let msg: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 1..msg.len() {
            assert!(flagged(&[&msg[..split], &msg[split..]]), "split at {split}");
        }
    }

    #[test]
    fn connect_makes_the_rest_opaque() {
        assert!(!flagged(&[
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ]));
    }
}

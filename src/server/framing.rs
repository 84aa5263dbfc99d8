//! A watch on the raw HTTP/1 byte stream for framing that hyper resolves without telling.
//!
//! hyper follows RFC 9112 §6.3 to the letter: given `Content-Length` *and*
//! `Transfer-Encoding`, it drops the length, reads the body as chunked and closes the
//! connection afterwards; given the same `Content-Length` twice, it keeps one. Neither the
//! dropped nor the repeated line reaches the request the layers see, so they cannot refuse it.
//! This watcher reads the same bytes as hyper, follows message boundaries (head lines,
//! `Content-Length` bodies, chunk sizes) and records the index of the first request head on the
//! connection that carries both framing headers or more than one `Content-Length`. hyper hands
//! HTTP/1 requests to the service strictly in order, so the service numbers them the same way
//! and the normalize layer answers that request (and any after it) with 400 before anything is
//! forwarded (OKTA.md §0.8). Requests before it, even pipelined ones, are not affected.
//!
//! It never changes a byte and never decides on its own: anything it does not understand
//! (HTTP/2's preface, an upgrade, a malformed chunk that hyper will refuse anyway) makes it stop
//! watching that connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::idle;

/// Longest request head hyper accepts (its read buffer is capped at this, see `server.rs`), so
/// also the longest line the watcher ever has to follow: a line that would need more cannot be
/// part of a request hyper serves.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Index (0-based, in arrival order) of the first request on a connection whose head had
/// ambiguous framing.
#[derive(Debug)]
pub struct AmbiguousFraming(AtomicU64);

impl Default for AmbiguousFraming {
    fn default() -> AmbiguousFraming {
        AmbiguousFraming(AtomicU64::new(u64::MAX))
    }
}

impl AmbiguousFraming {
    /// Whether the `index`-th request on the connection (0-based) must be refused.
    pub fn refuses(&self, index: u64) -> bool {
        self.0.load(Ordering::Acquire) <= index
    }
}

/// An I/O stream whose reads are watched for ambiguous framing.
#[derive(Debug)]
pub struct Watched<IO> {
    inner: IO,
    scanner: Scanner,
    flag: Arc<AmbiguousFraming>,
    /// Started when the h2 preface is read: the watch on idle h2 connections.
    on_h2: Option<idle::Arm>,
}

impl<IO> Watched<IO> {
    /// Wraps `inner`; the returned flag is set when an ambiguous request head is read, and
    /// `on_h2` is started if the connection turns out to speak h2.
    pub fn new(inner: IO, on_h2: idle::Arm) -> (Watched<IO>, Arc<AmbiguousFraming>) {
        let flag = Arc::new(AmbiguousFraming::default());
        let watched = Watched {
            inner,
            scanner: Scanner::default(),
            flag: flag.clone(),
            on_h2: Some(on_h2),
        };
        (watched, flag)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        if let Some(index) = this.scanner.feed(&buf.filled()[before..]) {
            // Only the first one counts; hyper closes the connection after it anyway.
            let _ = this.flag.0.fetch_min(index, Ordering::AcqRel);
        }
        if this.scanner.h2
            && let Some(arm) = this.on_h2.take()
        {
            arm.start();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head, line by line.
    Head,
    /// Skipping this many bytes of a `Content-Length` body.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping this many bytes of chunk data.
    ChunkData(u64),
    /// Reading the empty line after chunk data.
    ChunkEnd,
    /// Reading trailer lines up to the empty line.
    Trailers,
    /// No longer watching this connection.
    Off,
}

/// Follows HTTP/1 message boundaries over a byte stream.
#[derive(Debug)]
struct Scanner {
    state: State,
    line: Vec<u8>,
    head: Head,
    /// Request heads completed so far.
    heads: u64,
    /// The connection began with the h2 preface.
    h2: bool,
    /// A line has been read: the preface can only be the first.
    begun: bool,
}

#[derive(Debug, Default)]
struct Head {
    started: bool,
    transfer_encoding: bool,
    content_lengths: u32,
    length: Option<u64>,
    tunnel: bool,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::Head,
            line: Vec::new(),
            head: Head::default(),
            heads: 0,
            h2: false,
            begun: false,
        }
    }
}

impl Scanner {
    /// Consumes `bytes`; the index of the first request head with ambiguous framing that they
    /// completed, if any.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<u64> {
        let mut ambiguous = None;
        while !bytes.is_empty() {
            match self.state {
                State::Off => return ambiguous,
                State::Length(n) | State::ChunkData(n) => {
                    let skip = usize::try_from(n).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = &bytes[skip..];
                    let left = n - skip as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Head,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        self.push_partial(bytes);
                        return ambiguous;
                    };
                    let (piece, rest) = (&bytes[..end], &bytes[end + 1..]);
                    bytes = rest;
                    // A line that arrived whole is read in place; only a line split across
                    // reads is assembled in `self.line`.
                    let done = if self.line.is_empty() {
                        self.line_done(without_cr(piece))
                    } else {
                        self.push_partial(piece);
                        if self.state == State::Off {
                            return ambiguous;
                        }
                        let mut line = std::mem::take(&mut self.line);
                        let done = self.line_done(without_cr(&line));
                        line.clear();
                        self.line = line;
                        done
                    };
                    if done {
                        ambiguous = ambiguous.or(Some(self.heads - 1));
                    }
                }
            }
        }
        ambiguous
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > MAX_HEAD {
            self.state = State::Off;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    /// Handles one complete line (without its line ending).
    fn line_done(&mut self, line: &[u8]) -> bool {
        match self.state {
            State::Head => return self.head_line(line),
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size).ok().map(str::trim);
                self.state = match size.and_then(|s| u64::from_str_radix(s, 16).ok()) {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
            }
            State::ChunkEnd => {
                self.state = if line.is_empty() {
                    State::ChunkSize
                } else {
                    State::Off
                };
            }
            State::Trailers => {
                if line.is_empty() {
                    self.state = State::Head;
                }
            }
            State::Length(_) | State::ChunkData(_) | State::Off => {}
        }
        false
    }

    fn head_line(&mut self, line: &[u8]) -> bool {
        if !self.head.started {
            let first = !std::mem::replace(&mut self.begun, true);
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            if line.is_empty() {
                return false;
            }
            if line.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
                // Only as the connection's very first bytes is it the preface hyper takes.
                self.h2 = first;
                return false;
            }
            self.head.started = true;
            self.head.tunnel = line.starts_with(b"CONNECT ");
            return false;
        }
        if !line.is_empty() {
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                let name = &line[..colon];
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    self.head.transfer_encoding = true;
                } else if name.eq_ignore_ascii_case(b"content-length") {
                    // Only this value is read (not, say, a long Authorization header's).
                    let value = std::str::from_utf8(&line[colon + 1..]).map(str::trim);
                    self.head.content_lengths += 1;
                    self.head.length = value.ok().and_then(|v| v.parse().ok());
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    self.head.tunnel = true;
                }
            }
            return false;
        }
        // End of the head.
        self.heads += 1;
        let head = std::mem::take(&mut self.head);
        let ambiguous =
            (head.transfer_encoding && head.content_lengths > 0) || head.content_lengths > 1;
        self.state = if ambiguous || head.tunnel {
            // hyper closes the connection after an ambiguous request; after an upgrade the
            // bytes are no longer HTTP/1.
            State::Off
        } else if head.transfer_encoding {
            State::ChunkSize
        } else {
            match (head.content_lengths, head.length) {
                (0, _) | (_, Some(0)) => State::Head,
                (_, Some(n)) => State::Length(n),
                (_, None) => State::Off,
            }
        };
        ambiguous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index of the first ambiguous head, and the final state.
    fn scan(chunks: &[&[u8]]) -> (Option<u64>, State) {
        let mut s = Scanner::default();
        let mut ambiguous = None;
        for c in chunks {
            ambiguous = ambiguous.or(s.feed(c));
        }
        (ambiguous, s.state)
    }

    #[test]
    fn only_the_preface_as_the_first_bytes_marks_the_connection_h2() {
        let h2 = |chunks: &[&[u8]]| {
            let mut s = Scanner::default();
            for c in chunks {
                s.feed(c);
            }
            s.h2
        };
        assert!(h2(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]));
        assert!(h2(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]));
        assert!(!h2(&[b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]));
        assert!(!h2(&[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\n"
        ]));
        assert!(!h2(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
    }

    #[test]
    fn plain_requests_are_followed_across_bodies() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /y HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET /z HTTP/1.1\r\n";
        assert_eq!(scan(&[stream]), (None, State::Head));
        // The same bytes split at every position give the same answer.
        for i in 0..stream.len() {
            assert_eq!(
                scan(&[&stream[..i], &stream[i..]]),
                (None, State::Head),
                "split at {i}"
            );
        }
    }

    #[test]
    fn both_framing_headers_in_either_order_are_ambiguous() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\nContent-Length: 3\nContent-Length: 4\n\n",
        ] {
            assert_eq!(
                scan(&[head]).0,
                Some(0),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn an_ambiguous_request_after_a_body_is_found_with_its_index() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 14\r\n\r\nContent-Length\r\nPOST /b HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[stream]).0, Some(1));
        let flag = AmbiguousFraming::default();
        flag.0.fetch_min(1, Ordering::AcqRel);
        assert!(!flag.refuses(0) && flag.refuses(1) && flag.refuses(2));
    }

    #[test]
    fn a_body_that_looks_like_headers_is_not_mistaken_for_a_head() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 52\r\n\r\nX: 1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[stream]), (None, State::Head));
    }

    #[test]
    fn http2_and_upgrades_stop_the_watch() {
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).1, State::Off);
        assert_eq!(
            scan(&[b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"]).1,
            State::Off
        );
        assert_eq!(scan(&[b"CONNECT a:443 HTTP/1.1\r\n\r\n"]).1, State::Off);
    }

    #[test]
    fn a_malformed_chunk_stops_the_watch() {
        let stream: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n";
        assert_eq!(scan(&[stream]).1, State::Off);
    }
}

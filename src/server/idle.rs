//! An h2 connection with no stream open is told to go away after a while.
//!
//! hyper closes an idle HTTP/1 keep-alive connection through its header-read timeout, but has
//! no idle timeout for h2: a client could open connections, send the preface and nothing else,
//! and hold each one for ever. So every h2 connection gets a watch of its own, started when the
//! framing watcher reads the h2 preface (`framing::Watched`). It counts the connection's open
//! streams (a stream is open from its request until its response body has been sent or
//! dropped) and, once none has been open for [`H2_IDLE`], drains the connection as a shutdown
//! would (`drain::Early`): hyper sends GOAWAY, lets the streams already begun finish, and
//! closes. hyper's graceful close waits for the client to answer a PING first; a client that
//! never does would keep the connection all the same, so one that is still open, with no
//! stream, [`H2_IDLE`] after the GOAWAY is dropped (`drain::Early::abort`).
//!
//! HTTP/1 connections pay one small allocation at accept (their [`Streams`], never used) and
//! nothing per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Notify;

use super::drain::Early;

/// How long an h2 connection may stay with no stream open: the same 30 s after which an idle
/// HTTP/1 keep-alive connection is closed.
pub const H2_IDLE: Duration = Duration::from_secs(30);

/// The open streams of one connection, and whether the connection has ended.
#[derive(Debug, Default)]
pub struct Streams {
    open: AtomicUsize,
    ended: AtomicBool,
    changed: Notify,
}

impl Streams {
    /// A stream opens; it stays open until the returned guard is dropped.
    pub fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        Open(self.clone())
    }

    /// The connection has ended: its watch, if one runs, ends too.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Returns once no stream has been open for `idle` (true), or when the connection has
    /// ended (false).
    async fn idle_for(&self, idle: Duration) -> bool {
        // `Notify::notify_one` keeps a permit when nobody waits, so a change between a look at
        // the counts and the wait that follows it is not missed.
        loop {
            if self.ended.load(Ordering::Acquire) {
                return false;
            }
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = tokio::time::sleep(idle) => return true,
                    () = self.changed.notified() => {}
                }
            } else {
                self.changed.notified().await;
            }
        }
    }
}

/// One open stream (see [`Streams::open`]).
#[derive(Debug)]
pub struct Open(Arc<Streams>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// What starts a connection's watch, once it turns out to speak h2.
#[derive(Debug)]
pub struct Arm {
    streams: Arc<Streams>,
    early: Early,
}

impl Arm {
    /// The watch over `streams` that would drain or drop the connection through `early`.
    pub fn new(streams: &Arc<Streams>, early: Early) -> Arm {
        Arm {
            streams: streams.clone(),
            early,
        }
    }

    /// Starts the watch in a task of its own; it ends with the connection.
    pub fn start(self) {
        tokio::spawn(drain_when_idle(self.streams, self.early, H2_IDLE));
    }
}

/// Drains the connection (`early`) once `idle` has passed with no stream open, and drops it
/// if it is still open, with no stream, `idle` after that; returns then, or when the connection
/// ends.
pub async fn drain_when_idle(streams: Arc<Streams>, early: Early, idle: Duration) {
    if !streams.idle_for(idle).await {
        return;
    }
    early.drain();
    if !streams.idle_for(idle).await {
        return;
    }
    tracing::debug!("idle h2 connection dropped: no stream, and the GOAWAY was not answered");
    early.abort();
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream open until it has been sent or dropped.
    pub struct Held<B> {
        #[pin]
        body: B,
        open: Open,
    }
}

impl<B> Held<B> {
    /// `body`, holding `open`.
    pub fn new(body: B, open: Open) -> Held<B> {
        Held { body, open }
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Held<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::server::drain::Drain;

    /// The instant a connection was drained.
    type Drained = tokio::task::JoinHandle<Instant>;
    /// What a connection's run returned (`None`: dropped), and the instant it ended.
    type Ended = tokio::task::JoinHandle<(Option<()>, Instant)>;

    /// A connection that never ends on its own, not even when drained, under the watch of
    /// `streams`. The drain must be kept: dropping it drains too.
    fn watched(streams: &Arc<Streams>) -> (Drain, Drained, Ended) {
        let drain = Drain::new();
        let watch = drain.watch();
        tokio::spawn(drain_when_idle(streams.clone(), watch.early(), H2_IDLE));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ended = tokio::spawn(async move {
            let out = watch
                .run(std::future::pending::<()>(), |_| {
                    let _ = tx.send(Instant::now());
                })
                .await;
            (out, Instant::now())
        });
        (drain, tokio::spawn(async move { rx.await.unwrap() }), ended)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_stream_is_drained_after_the_idle_time() {
        let streams = Arc::new(Streams::default());
        let start = Instant::now();
        let (_drain, drained, _ended) = watched(&streams);
        assert_eq!(drained.await.unwrap() - start, H2_IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_still_open_with_no_stream_after_its_drain_is_dropped() {
        let streams = Arc::new(Streams::default());
        let start = Instant::now();
        let (_drain, drained, ended) = watched(&streams);
        drained.await.unwrap();
        assert!(!ended.is_finished());
        // A stream that began before the GOAWAY holds the drop off.
        let open = streams.open();
        tokio::time::sleep(H2_IDLE * 2).await;
        assert!(!ended.is_finished());
        drop(open);
        let (out, at) = ended.await.unwrap();
        assert_eq!(out, None);
        assert_eq!(at - start, H2_IDLE * 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_time_counts_from_the_last_stream_to_close() {
        let streams = Arc::new(Streams::default());
        let start = Instant::now();
        let (_drain, drained, _ended) = watched(&streams);
        let open = streams.open();
        // Open far longer than the idle time: no drain meanwhile.
        tokio::time::sleep(H2_IDLE * 3).await;
        assert!(!drained.is_finished());
        drop(open);
        assert_eq!(drained.await.unwrap() - start, H2_IDLE * 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_ends_with_its_connection_without_draining_it() {
        let streams = Arc::new(Streams::default());
        let start = Instant::now();
        let (_drain, drained, _ended) = watched(&streams);
        tokio::task::yield_now().await;
        streams.end();
        // The watch has let go of its handle on the streams, and nothing was drained.
        for _ in 0..100 {
            if Arc::strong_count(&streams) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&streams), 1);
        assert_eq!(Instant::now(), start);
        assert!(!drained.is_finished());
    }
}

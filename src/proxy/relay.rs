//! Wake-ups for a carried upstream connection (`conns`), without the ones the client
//! connection's task would only spend a poll on.
//!
//! A carried upstream connection is polled by one task only: the client connection's, from
//! [`Parked::drive`](super::conns). The gateway drives it right after every step that gives it
//! work: handing it a request, taking a chunk of its response body. Its response head and body
//! are only ever produced while it is being driven, and the gateway looks for them right after.
//! hyper does not know that. It registers the waker it is polled with on its internal channels,
//! so each of those steps woke the task that was already running, and tokio polled the whole
//! client connection again for nothing: twice per request, about a fifth of the instructions
//! of a request (docs/performance.md, change 25).
//!
//! So the connection is polled with a waker of its own, a [`Relay`], and its socket with the
//! task's waker:
//!
//! - the socket's readiness is the one wake-up from outside. [`Relayed`] polls the socket with
//!   the task's waker, whatever waker the connection passes down. The drive leaves that waker
//!   in a thread-local for the length of the poll: the socket is only polled from inside the
//!   connection's poll, on the thread that drives it, and a thread-local needs no lock (a
//!   `Mutex` shared with the relay was locked on every socket poll before change 26);
//! - a wake of the relay while the connection is being driven is the connection asking to be
//!   polled again (hyper yielding after a long run of work, tokio's budget running out). It is
//!   passed on to the task once the poll returns;
//! - a wake of the relay at any other time comes from the gateway's own use of the
//!   connection's channels, which is followed by a drive anyway. It is dropped.
//!
//! The response head and body are read with a waker that does nothing for the same reason
//! (the connection only delivers them while driven). One case needs care: tokio's budget.
//! When a task has used its budget, tokio's channels answer `Pending` and wake the waker they
//! were given, here the one that does nothing. [`look`] wakes the task itself then.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use hyper::rt::{Read, ReadBufCursor, Write};

/// The waker a carried upstream connection is polled with.
#[derive(Debug)]
pub(super) struct Relay {
    state: AtomicU8,
}

thread_local! {
    /// The waker of the task driving a carried connection on this thread, while it does
    /// ([`Relay::drive`]): what the connection's socket is polled with ([`Relayed`]).
    static DRIVER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Puts back what [`DRIVER`] held before a drive, also if the poll panics.
struct Restore(Option<Waker>);

impl Drop for Restore {
    fn drop(&mut self) {
        DRIVER.set(self.0.take());
    }
}

/// The connection is being polled.
const DRIVING: u8 = 1;
/// It was woken while being polled.
const WOKEN: u8 = 2;

impl Relay {
    /// A relay and the waker that wakes it.
    pub(super) fn new() -> (Arc<Relay>, Waker) {
        let relay = Arc::new(Relay {
            state: AtomicU8::new(0),
        });
        let waker = Waker::from(relay.clone());
        (relay, waker)
    }

    /// Polls with `poll` the connection `waker` (this relay's) belongs to, on behalf of the task
    /// `cx` belongs to, and wakes that task if the connection asked to be polled again.
    pub(super) fn drive<T>(
        &self,
        waker: &Waker,
        cx: &Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> T,
    ) -> T {
        // The task drives the connection: the client connection's, which changes when the
        // connection goes idle and another client connection takes it.
        let restore = Restore(DRIVER.replace(Some(cx.waker().clone())));
        self.state.store(DRIVING, Ordering::Release);
        let out = poll(&mut Context::from_waker(waker));
        drop(restore);
        if self.state.swap(0, Ordering::AcqRel) & WOKEN != 0 {
            cx.waker().wake_by_ref();
        }
        out
    }
}

/// Runs `poll` with the context of the task driving the connection: for the socket. `cx` is
/// what the connection passed down, used only outside a drive, which does not happen: the
/// connection is polled by [`Relay::drive`] alone.
fn with_task<T>(cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> T) -> T {
    DRIVER.with_borrow(|task| match task {
        Some(task) => poll(&mut Context::from_waker(task)),
        None => poll(cx),
    })
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Outside a drive: the gateway's own use of the channels; it drives the connection next.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & DRIVING != 0).then_some(s | WOKEN)
            });
    }
}

/// Polls with `poll`, under a waker that does nothing, something only a drive delivers (a
/// response head, a body chunk), right after the drive. A `Pending` that may have come from
/// tokio's budget rather than from the channel wakes the task of `cx` itself: the channel woke
/// the waker it was given, which does nothing.
pub(super) fn look<T>(cx: &Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let out = poll(&mut Context::from_waker(Waker::noop()));
    if out.is_pending() && !tokio::task::coop::has_budget_remaining() {
        cx.waker().wake_by_ref();
    }
    out
}

/// An upstream connection's socket, polled with the waker of the task driving the connection
/// rather than the relay's.
#[derive(Debug)]
pub(super) struct Relayed<IO> {
    io: IO,
}

impl<IO> Relayed<IO> {
    pub(super) fn new(io: IO) -> Relayed<IO> {
        Relayed { io }
    }
}

impl<IO: Read + Unpin> Read for Relayed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let io = &mut self.get_mut().io;
        with_task(cx, |cx| Pin::new(io).poll_read(cx, buf))
    }
}

impl<IO: Write + Unpin> Write for Relayed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let io = &mut self.get_mut().io;
        with_task(cx, |cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let io = &mut self.get_mut().io;
        with_task(cx, |cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let io = &mut self.get_mut().io;
        with_task(cx, |cx| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let io = &mut self.get_mut().io;
        with_task(cx, |cx| Pin::new(io).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task's waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_a_wake_during_the_drive_reaches_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let cx = Context::from_waker(&task);
        let (relay, waker) = Relay::new();

        // The connection registers the relay's waker on its channels while it is driven...
        let registered = relay.drive(&waker, &cx, |cx| cx.waker().clone());
        // ...and the gateway's own use of a channel wakes it later: nothing reaches the task.
        registered.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 0);

        // The connection asks to be polled again (a yield): the task is woken once the drive
        // returns, not during it.
        relay.drive(&waker, &cx, |cx| {
            cx.waker().wake_by_ref();
            cx.waker().wake_by_ref();
            assert_eq!(count.0.load(Ordering::Relaxed), 0);
        });
        assert_eq!(count.0.load(Ordering::Relaxed), 1);

        // The socket is polled with the task's own waker, whatever the connection passes down.
        let socket = relay.drive(&waker, &cx, |relayed| {
            assert!(!relayed.waker().will_wake(&task));
            with_task(relayed, |cx| cx.waker().clone())
        });
        assert!(socket.will_wake(&task));
        socket.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
    }
}

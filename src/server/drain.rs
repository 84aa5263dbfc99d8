//! Graceful drain of client connections: on shutdown every connection is told to finish the
//! request under way and close, and the server waits until all have.
//!
//! hyper-util's `GracefulShutdown` does the same, but every time a connection's task wakes it
//! polls the shutdown signal as well as the connection; with two or three wake-ups per
//! request that cost about 660 instructions per request, for a signal that comes once per
//! process (docs/performance.md). Here the signal wakes the connection's task through a waker
//! of its own that leaves a mark, and the connection looks at the signal again only after that
//! mark was left: per wake-up, one registration of the task's waker and one atomic swap.
//!
//! A connection can also be drained on its own, before the server is, or dropped at once
//! ([`Early`]): an h2 connection with no stream open for a while (`server::idle`).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use tokio::sync::watch;

/// The server's side: tells the connections to drain and waits for them.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<()>,
}

/// A connection's side: runs the connection until it ends, draining it when told to.
#[derive(Debug)]
pub struct Watch {
    rx: watch::Receiver<()>,
    mark: Arc<Mark>,
}

/// Drains or drops one connection ahead of the server, from outside its task.
#[derive(Debug, Clone)]
pub struct Early {
    mark: Arc<Mark>,
}

impl Early {
    /// Tells the connection to drain as if the server were shutting down.
    pub fn drain(&self) {
        self.mark.early.store(true, Ordering::Release);
        self.mark.wake_by_ref();
    }

    /// Drops the connection at once, drained or not: [`Watch::run`] returns `None`.
    pub fn abort(&self) {
        self.mark.abort.store(true, Ordering::Release);
        self.mark.wake_by_ref();
    }
}

impl Drain {
    /// A drain no connection watches yet.
    pub fn new() -> Drain {
        Drain {
            tx: watch::channel(()).0,
        }
    }

    /// A watch for one more connection.
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            mark: Arc::new(Mark {
                // Set, so the first poll looks at the signal and registers for it.
                set: AtomicBool::new(true),
                early: AtomicBool::new(false),
                abort: AtomicBool::new(false),
                task: AtomicWaker::new(),
            }),
        }
    }

    /// The connections still open (their watches not yet dropped).
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every connection to drain, then waits until all have ended.
    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

impl Default for Drain {
    fn default() -> Drain {
        Drain::new()
    }
}

impl Watch {
    /// What drains this connection alone.
    pub fn early(&self) -> Early {
        Early {
            mark: self.mark.clone(),
        }
    }

    /// Runs `conn` to its end; when the drain starts (or [`Early::drain`] is called), calls
    /// `drain` on it once (hyper's `graceful_shutdown`: finish the requests under way, then
    /// close). `None` if [`Early::abort`] dropped the connection first.
    pub async fn run<C: Future>(
        self,
        conn: C,
        drain: impl FnOnce(Pin<&mut C>),
    ) -> Option<C::Output> {
        let Watch { mut rx, mark } = self;
        let mut conn = pin!(conn);
        let mut drain = Some(drain);
        let mark_waker = Waker::from(mark.clone());
        let mut signal = pin!(rx.changed());
        poll_fn(|cx| {
            mark.task.register(cx.waker());
            if mark.set.swap(false, Ordering::AcqRel) {
                if mark.abort.load(Ordering::Acquire) {
                    return Poll::Ready(None);
                }
                // Ready with an error means the server is gone: drain all the same.
                if let Some(drain) = drain.take_if(|_| {
                    mark.early.load(Ordering::Acquire)
                        || signal
                            .as_mut()
                            .poll(&mut Context::from_waker(&mark_waker))
                            .is_ready()
                }) {
                    drain(conn.as_mut());
                }
            }
            conn.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

/// Left by the signal's wake-up: look at the signal again, and wake the connection's task.
#[derive(Debug)]
struct Mark {
    set: AtomicBool,
    /// Drain this connection whatever the signal says ([`Early::drain`]).
    early: AtomicBool,
    /// Drop this connection now ([`Early::abort`]).
    abort: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::*;

    /// A connection that ends only after being told to drain, counting its polls.
    struct Conn {
        draining: bool,
        polls: Arc<AtomicUsize>,
        wakers: tokio::sync::mpsc::UnboundedSender<Waker>,
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.draining {
                return Poll::Ready("drained");
            }
            let _ = self.wakers.send(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Conn {
        /// Pending until drained; each poll sends its waker to `wakers`.
        fn new(wakers: mpsc::UnboundedSender<Waker>) -> Conn {
            Conn {
                draining: false,
                polls: Arc::default(),
                wakers,
            }
        }
    }

    /// `f`'s output, or a failure if it never comes: the tests run on the paused clock, where
    /// the bound is due as soon as every task waits, so a connection that never ends, or one
    /// never polled again, fails its test at once rather than hangs it. Every await on a
    /// task, the shutdown or the wakers' channel goes through it.
    async fn bounded<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(1), f)
            .await
            .expect("still pending with every task waiting")
    }

    /// A connection's run in its task, and what drains or drops it early.
    type Running = (JoinHandle<Option<&'static str>>, Early);

    /// Two connections under `drain`, `on_drain` their drain, each polled once; and the
    /// wakers of their later polls.
    async fn two_running(
        drain: &Drain,
        on_drain: fn(Pin<&mut Conn>),
    ) -> ([Running; 2], mpsc::UnboundedReceiver<Waker>) {
        let (tx, mut wakers) = mpsc::unbounded_channel();
        let running = [(); 2].map(|()| {
            let watch = drain.watch();
            let early = watch.early();
            (
                tokio::spawn(watch.run(Conn::new(tx.clone()), on_drain)),
                early,
            )
        });
        bounded(wakers.recv()).await.unwrap();
        bounded(wakers.recv()).await.unwrap();
        (running, wakers)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_drains_when_told_and_the_drain_waits_for_it() {
        let drain = Drain::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut wakers) = mpsc::unbounded_channel();
        let conn = Conn {
            polls: polls.clone(),
            ..Conn::new(tx)
        };
        let task = tokio::spawn(drain.watch().run(conn, |mut c| c.draining = true));
        // Woken by the connection's own I/O, many times: the signal is not ready, nothing drains.
        for _ in 0..5 {
            bounded(wakers.recv()).await.unwrap().wake();
        }
        bounded(wakers.recv()).await.unwrap();
        assert_eq!(polls.load(Ordering::Relaxed), 6);
        assert_eq!(drain.count(), 1);
        bounded(drain.shutdown()).await;
        assert_eq!(bounded(task).await.unwrap(), Some("drained"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_drain_drains_one_connection_and_not_the_others() {
        let drain = Drain::new();
        let ([(one, early), (other, _)], _wakers) =
            two_running(&drain, |mut c| c.draining = true).await;
        early.drain();
        assert_eq!(bounded(one).await.unwrap(), Some("drained"));
        assert_eq!(drain.count(), 1);
        assert!(!other.is_finished());
        bounded(drain.shutdown()).await;
        assert_eq!(bounded(other).await.unwrap(), Some("drained"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_drops_one_connection_at_once_drained_or_not() {
        let drain = Drain::new();
        // Never end, even when drained: as h2 connections whose clients ignore the GOAWAY.
        let ([(one, early_one), (other, early_other)], mut wakers) =
            two_running(&drain, |_| {}).await;
        early_one.abort();
        assert_eq!(bounded(one).await.unwrap(), None);
        early_other.drain();
        bounded(wakers.recv()).await.unwrap();
        assert!(!other.is_finished());
        early_other.abort();
        assert_eq!(bounded(other).await.unwrap(), None);
        assert_eq!(drain.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_no_connections_ends_at_once() {
        bounded(Drain::new().shutdown()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_on_its_own_leaves_the_count() {
        let drain = Drain::new();
        let out = bounded(
            drain
                .watch()
                .run(std::future::ready(7), |_| unreachable!("never drained")),
        )
        .await;
        assert_eq!(out, Some(7));
        assert_eq!(drain.count(), 0);
    }
}

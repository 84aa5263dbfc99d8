//! Timers moved from deadline to deadline instead of made anew: [`Deadline`], one tokio timer
//! reused for successive deadlines (a carried upstream connection's response deadlines), and
//! [`ConnTimer`], hyper's timer for one client connection, whose sleeps share one `Deadline`.
//!
//! hyper bounds each HTTP/1 request head with a header-read timeout (the slowloris defence,
//! docs/decisions.md) and asks its timer for a new sleep at the start of every head, dropping
//! it once the head is in. With hyper-util's `TokioTimer` that is a tokio timer registered in
//! the runtime's timer wheel and removed again for every request. Here the sleeps of one
//! connection share one tokio timer that is only moved: to a later deadline (the usual case,
//! one head after the other) that is one atomic store, and nothing is registered or removed
//! per request. The deadlines hyper asks for are kept exactly.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

/// One tokio timer set for one deadline after another. Moving a registered timer to a later
/// deadline is one atomic store; a timer per deadline is registered in the runtime's timer wheel
/// and removed again each time. Made on first use, within the runtime that polls it.
#[derive(Debug, Default)]
pub struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// The timer, set for `deadline`.
    pub fn aim(&mut self, deadline: tokio::time::Instant) -> Pin<&mut Sleep> {
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut()
    }

    /// Whether the deadline last aimed at has passed (never, if none was); registers `cx` to be
    /// woken when it does.
    pub fn passed(&mut self, cx: &mut Context<'_>) -> bool {
        self.0
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

type Slot = Arc<Mutex<Deadline>>;

/// The timer of one connection (give each connection its own).
#[derive(Debug, Clone, Default)]
pub struct ConnTimer(Slot);

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which hyper adds its timeouts to (paused in tests).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .aim(deadline);
        Box::pin(ConnSleep {
            shared: self.0.clone(),
            deadline,
        })
    }
}

/// One sleep handed to hyper.
struct ConnSleep {
    shared: Slot,
    deadline: tokio::time::Instant,
}

impl Future for ConnSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slot = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // A later sleep of the same connection may have moved the timer; this one keeps its
        // own deadline.
        slot.aim(self.deadline).poll(cx)
    }
}

impl hyper::rt::Sleep for ConnSleep {}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer as _;

    use super::*;

    /// Ended `secs` after `start`, give or take the timer wheel's millisecond.
    fn ended_after(start: tokio::time::Instant, secs: u64) {
        let elapsed = start.elapsed();
        let secs = Duration::from_secs(secs);
        assert!(
            (secs..=secs + Duration::from_millis(1)).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_sleep_ends_at_its_own_deadline() {
        let timer = ConnTimer::default();
        let start = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(30)).await;
        ended_after(start, 30);
        // Later, earlier, and two at once: the shared timer is moved back and forth.
        let start = tokio::time::Instant::now();
        let long = timer.sleep(Duration::from_secs(20));
        timer.sleep(Duration::from_secs(5)).await;
        ended_after(start, 5);
        long.await;
        ended_after(start, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_sleep_leaves_the_next_one_alone() {
        let timer = ConnTimer::default();
        let start = tokio::time::Instant::now();
        drop(timer.sleep(Duration::from_secs(1)));
        timer.sleep(Duration::from_secs(30)).await;
        ended_after(start, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_tokios_clock() {
        let timer = ConnTimer::default();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let start = tokio::time::Instant::now();
        let deadline = timer.now() + Duration::from_secs(30);
        timer.sleep_until(deadline).await;
        ended_after(start, 30);
    }
}

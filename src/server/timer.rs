//! hyper's timer for one client connection: every sleep it hands out shares one tokio timer.
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

type Slot = Arc<Mutex<Option<Pin<Box<Sleep>>>>>;

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
        aim(
            &mut self.0.lock().unwrap_or_else(PoisonError::into_inner),
            deadline,
        );
        Box::pin(ConnSleep {
            shared: self.0.clone(),
            deadline,
        })
    }
}

/// The shared timer, set for `deadline` (made on first use, within the connection's runtime).
fn aim(slot: &mut Option<Pin<Box<Sleep>>>, deadline: tokio::time::Instant) -> Pin<&mut Sleep> {
    match slot {
        Some(sleep) => {
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            sleep.as_mut()
        }
        None => slot
            .insert(Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut(),
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
        aim(&mut slot, self.deadline).poll(cx)
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

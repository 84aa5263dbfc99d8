//! SPEC §3 step 5: per-group rate limits with governor's GCRA (429).
//!
//! Requires the `RequestContext` with its route and, on protected routes, its identity; adds
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` to every response of a
//! limited request, and answers 429 with `Retry-After` (whole seconds, at least 1) when the
//! caller's bucket is empty. Public routes are not group-limited.
//!
//! Which limit applies ([`RateLimiter::select`], pure): among the caller's groups that have a
//! `[rate_limits.groups]` entry, the most generous (highest sustained rate, then largest burst,
//! then name); otherwise `[rate_limits].default`; otherwise none. Whose bucket is charged:
//! `by = "subject"` keys it by the caller's stable identity (`uid`, else `sub`);
//! `by = "group"` gives the whole group one bucket. Buckets are shared by every route.
//!
//! Memory: one entry per caller with a non-full bucket. Entries whose bucket has refilled are
//! dropped by [`RateLimiter::retain_recent`] (every 30s), and each limit tracks at most
//! `max_tracked_callers` callers (default 100,000): beyond that, *new* callers of that limit
//! share one overflow bucket with the limit's quota until entries are dropped, so the state
//! stays bounded and the excess is throttled rather than let through.

pub mod remote;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::auth::validate::Identity;
use crate::body::Body;
use crate::config::{By, Limit, RateLimits};
use crate::metrics::{LimitLabels, Metrics};
use crate::reject::Reject;
use crate::snapshot::RequestContext;
use prometheus_client::metrics::counter::Counter;
use remote::Remote;

/// `RateLimit-Limit`.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Callers tracked per limit before new ones share the overflow bucket.
pub const DEFAULT_MAX_TRACKED_CALLERS: usize = 100_000;

/// Which limit applies to a caller, and the bucket it is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected<'a> {
    /// The group whose limit applies; `None` for the default limit.
    pub group: Option<&'a str>,
    /// The limit.
    pub limit: Limit,
    /// The bucket key within that limit (borrowed from the identity or the limit's name: no
    /// copy per request).
    pub bucket: &'a String,
}

/// The outcome of one rate-limit check, with what the response headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// `RateLimit-Limit`: the burst, the most requests the bucket holds.
    pub limit: u32,
    /// `RateLimit-Remaining`: requests left in the bucket now.
    pub remaining: u32,
    /// `RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Retry-After` in seconds when refused; `None` when allowed.
    pub retry_after_secs: Option<u64>,
}

/// Per-caller GCRA state with a hard cap on tracked callers.
#[derive(Debug)]
pub struct CappedStore {
    /// Keyed by verified `uid`/`sub` values, hashed with foldhash's seeded "quality" hasher
    /// (std's SipHash costs several times more per request for keys nobody can choose freely).
    callers: DashMap<String, InMemoryState, foldhash::quality::RandomState>,
    overflow: InMemoryState,
    cap: usize,
    overflowing: AtomicBool,
}

impl CappedStore {
    fn new(cap: usize) -> CappedStore {
        CappedStore {
            callers: DashMap::default(),
            overflow: InMemoryState::default(),
            cap,
            overflowing: AtomicBool::new(false),
        }
    }
}

impl StateStore for CappedStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.callers.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if self.callers.len() >= self.cap {
            if !self.overflowing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cap = self.cap,
                    "rate limiter tracks its maximum number of callers; new callers share one bucket"
                );
            }
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let state = self.callers.entry(key.clone()).or_default();
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<String> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        // A state is "recent" when its theoretical arrival time is after `drop_below`, i.e. its
        // bucket is not full yet. Reading it through `measure_and_replace` with a closure that
        // declines the update leaves it untouched.
        let recent = |state: &InMemoryState| {
            let tat = state
                .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
                .err()
                .flatten();
            tat.is_some_and(|t| t > drop_below)
        };
        self.callers.retain(|_, state| recent(state));
        if self.callers.len() < self.cap {
            self.overflowing.store(false, Ordering::Relaxed);
        }
    }

    fn shrink_to_fit(&self) {
        self.callers.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.callers.len()
    }

    fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

type Keyed<C> = governor::RateLimiter<String, CappedStore, C, StateInformationMiddleware>;

struct Bucket<C: Clock> {
    limit: Limit,
    limiter: Keyed<C>,
    decisions: Decisions,
}

/// The `jwtgate_ratelimit_decisions_total` series of one limit, looked up by label once (on
/// first use) rather than on every request. Kept with the limit's bucket, which a reload keeps
/// only for the same limit name, and the process's metrics are kept too.
#[derive(Debug, Default)]
pub struct Decisions([OnceLock<Counter>; 4]);

impl Decisions {
    fn count(&self, metrics: &Metrics, limit: &str, decision: &Decision, store: Store) {
        let refused = decision.retry_after_secs.is_some();
        self.0[usize::from(store == Store::Redis) * 2 + usize::from(refused)]
            .get_or_init(|| {
                let labels = LimitLabels {
                    limit: limit.to_owned(),
                    decision: if refused { "limited" } else { "allowed" },
                    backend: store.label(),
                };
                metrics.ratelimit.get_or_create_owned(&labels)
            })
            .inc();
    }
}

/// Where a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In this process.
    Local,
    /// In Redis, shared by every gateway process.
    Redis,
}

impl Store {
    /// The `backend` label of the decision metrics.
    pub fn label(self) -> &'static str {
        match self {
            Store::Local => "local",
            Store::Redis => "redis",
        }
    }
}

/// A decision, which limit made it and which store decided.
#[derive(Debug)]
pub struct Decided<'a> {
    /// The decision.
    pub decision: Decision,
    /// The group whose limit applied, or `default`.
    pub limit: &'a str,
    /// Where it was taken.
    pub store: Store,
    counters: &'a Decisions,
}

impl Decided<'_> {
    /// Counts the decision in `jwtgate_ratelimit_decisions_total` and returns it.
    pub fn count(self, metrics: &Metrics) -> Decision {
        self.counters
            .count(metrics, self.limit, &self.decision, self.store);
        self.decision
    }
}

/// The limits of one configuration and their buckets.
pub struct RateLimiter<C: Clock = DefaultClock> {
    default: Option<Arc<Bucket<C>>>,
    groups: BTreeMap<String, Arc<Bucket<C>>>,
    max_tracked_callers: usize,
    clock: C,
    /// With `backend = "redis"`: the shared store; the buckets above are the fallback.
    remote: Option<Arc<Remote>>,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("default", &self.default.as_ref().map(|b| b.limit))
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl RateLimiter<DefaultClock> {
    /// The limiter of `[rate_limits]` on the real clock.
    pub fn new(limits: &RateLimits) -> RateLimiter<DefaultClock> {
        RateLimiter::with_clock(limits, DefaultClock::default())
    }

    /// The limiter of `[rate_limits]`, keeping `previous`'s buckets (and so its callers'
    /// state) for every limit that did not change.
    pub fn reusing(limits: &RateLimits, previous: Option<&RateLimiter>) -> RateLimiter {
        let mut fresh = RateLimiter::new(limits);
        let Some(previous) =
            previous.filter(|p| p.max_tracked_callers == limits.max_tracked_callers)
        else {
            return fresh;
        };
        let keep = |new: &mut Arc<Bucket<DefaultClock>>,
                    old: Option<&Arc<Bucket<DefaultClock>>>| {
            if let Some(old) = old.filter(|o| o.limit == new.limit) {
                *new = old.clone();
            }
        };
        if let Some(d) = fresh.default.as_mut() {
            keep(d, previous.default.as_ref());
        }
        for (group, bucket) in &mut fresh.groups {
            keep(bucket, previous.groups.get(group));
        }
        fresh
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// The limiter of `[rate_limits]` on `clock` (governor's `FakeRelativeClock` in tests).
    pub fn with_clock(limits: &RateLimits, clock: C) -> RateLimiter<C> {
        let bucket = |limit: &Limit| {
            Arc::new(Bucket {
                limit: *limit,
                limiter: governor::RateLimiter::<String, _, C, NoOpMiddleware<C::Instant>>::new(
                    quota(limit),
                    CappedStore::new(limits.max_tracked_callers),
                    clock.clone(),
                )
                .with_middleware::<StateInformationMiddleware>(),
                decisions: Decisions::default(),
            })
        };
        RateLimiter {
            default: limits.default.as_ref().map(bucket),
            groups: limits
                .groups
                .iter()
                .map(|(g, l)| (g.clone(), bucket(l)))
                .collect(),
            max_tracked_callers: limits.max_tracked_callers,
            clock,
            remote: None,
        }
    }

    /// Decides in Redis through `remote` (local buckets become the fallback).
    #[must_use]
    pub fn with_remote(mut self, remote: Option<Arc<Remote>>) -> RateLimiter<C> {
        self.remote = remote;
        self
    }

    /// The Redis side, with `backend = "redis"`.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Whether any limit is configured.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.groups.is_empty()
    }

    /// Which limit applies to `identity` and which bucket it charges (pure).
    pub fn select<'a>(&'a self, identity: &'a Identity) -> Option<Selected<'a>> {
        self.pick(identity).map(|(selected, _)| selected)
    }

    fn pick<'a>(&'a self, identity: &'a Identity) -> Option<(Selected<'a>, &'a Bucket<C>)> {
        let best = identity
            .groups
            .iter()
            .filter_map(|g| self.groups.get_key_value(g))
            .max_by(|(a_name, a), (b_name, b)| {
                more_generous(&a.limit, &b.limit).then_with(|| b_name.cmp(a_name))
            });
        let (group, bucket) = match best {
            Some((name, bucket)) => (Some(name), bucket),
            None => (None, self.default.as_ref()?),
        };
        let limit = bucket.limit;
        let key = match (limit.by, group) {
            (By::Group, Some(g)) => g,
            _ => identity.uid.as_ref().unwrap_or(&identity.sub),
        };
        let selected = Selected {
            group: group.map(String::as_str),
            limit,
            bucket: key,
        };
        Some((selected, bucket))
    }

    /// Charges one request to `identity`'s bucket; `None` when no limit applies.
    pub fn check(&self, identity: &Identity) -> Option<Decision> {
        self.check_local(identity).map(|d| d.decision)
    }

    /// Like [`RateLimiter::check`], also naming the limit that applied (its group, or
    /// `default`), ready to be counted.
    pub fn check_local<'a>(&'a self, identity: &'a Identity) -> Option<Decided<'a>> {
        let (selected, bucket) = self.pick(identity)?;
        let limit = selected.limit;
        let interval = quota(&limit).replenish_interval();
        let decision = match bucket.limiter.check_key(selected.bucket) {
            Ok(snapshot) => {
                Decision::allowed(&limit, interval, snapshot.remaining_burst_capacity())
            }
            Err(not_until) => {
                Decision::refused(&limit, interval, wait_time(&not_until, &self.clock))
            }
        };
        Some(Decided {
            decision,
            limit: selected.group.unwrap_or("default"),
            store: Store::Local,
            counters: &bucket.decisions,
        })
    }

    /// Like [`RateLimiter::check_local`], deciding in Redis when `backend = "redis"` and
    /// Redis answers in time, locally otherwise.
    pub async fn check_shared<'a>(&'a self, identity: &'a Identity) -> Option<Decided<'a>> {
        if let Some(remote) = self.remote.as_ref().filter(|r| r.should_ask()) {
            let (selected, bucket) = self.pick(identity)?;
            let name = selected.group.unwrap_or("default");
            let key = remote.key(name, selected.bucket);
            match remote.verdict(&key, &selected.limit, None).await {
                Ok(verdict) => {
                    remote.answered();
                    return Some(Decided {
                        decision: Remote::decision(&selected.limit, verdict),
                        limit: name,
                        store: Store::Redis,
                        counters: &bucket.decisions,
                    });
                }
                Err(failure) => remote.failed(&failure),
            }
        }
        self.check_local(identity)
    }

    /// Drops callers whose buckets are full again (indistinguishable from new ones).
    pub fn retain_recent(&self) {
        for bucket in self.default.iter().chain(self.groups.values()) {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }

    /// Callers tracked, over every limit.
    pub fn tracked_callers(&self) -> usize {
        self.default
            .iter()
            .chain(self.groups.values())
            .map(|b| b.limiter.len())
            .sum()
    }
}

fn wait_time<C: Clock>(not_until: &NotUntil<C::Instant>, clock: &C) -> Duration {
    not_until.wait_time_from(clock.now())
}

/// GCRA quota: one cell every `per / requests`, at most `burst` at once.
fn quota(limit: &Limit) -> Quota {
    let period = (limit.per / limit.requests.get()).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(limit.requests))
        .allow_burst(limit.burst)
}

/// Orders limits by sustained rate (requests per second), then burst.
fn more_generous(a: &Limit, b: &Limit) -> std::cmp::Ordering {
    // a.requests / a.per vs b.requests / b.per, compared without division.
    let a_rate = u128::from(a.requests.get()) * b.per.as_nanos();
    let b_rate = u128::from(b.requests.get()) * a.per.as_nanos();
    a_rate.cmp(&b_rate).then(a.burst.cmp(&b.burst))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// An allowed request, `remaining` requests left (governor's count, capped at the burst).
    fn allowed(limit: &Limit, interval: Duration, remaining: u32) -> Decision {
        let burst = limit.burst.get();
        let remaining = remaining.min(burst);
        Decision {
            limit: burst,
            remaining,
            reset_secs: ceil_secs(interval * (burst - remaining)),
            retry_after_secs: None,
        }
    }

    /// A refused request; one more is allowed after `wait`.
    fn refused(limit: &Limit, interval: Duration, wait: Duration) -> Decision {
        let burst = limit.burst.get();
        Decision {
            limit: burst,
            remaining: 0,
            reset_secs: ceil_secs(wait + interval * (burst - 1)),
            retry_after_secs: Some(ceil_secs(wait).max(1)),
        }
    }

    fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (RATELIMIT_LIMIT, number(Slot::Limit, self.limit.into())),
            (
                RATELIMIT_REMAINING,
                number(Slot::Remaining, self.remaining.into()),
            ),
            (RATELIMIT_RESET, number(Slot::Reset, self.reset_secs)),
        ]
    }
}

/// Which `RateLimit-*` header a number is for: each keeps its own last rendering.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Limit,
    Remaining,
    Reset,
}

thread_local! {
    /// The last number of 1,000 or more each header was given on this thread, rendered. A
    /// limit's burst repeats on every request, and so does what remains of a bucket that was
    /// full (`burst - 1`). Per thread, so that the workers do not all update one value's
    /// shared count.
    static RENDERED: std::cell::RefCell<[(u64, HeaderValue); 3]> = const {
        std::cell::RefCell::new([
            (0, HeaderValue::from_static("0")),
            (0, HeaderValue::from_static("0")),
            (0, HeaderValue::from_static("0")),
        ])
    };
}

/// `000` to `999`, three digits each.
static THREE_DIGITS: [u8; 3000] = {
    let mut digits = [0u8; 3000];
    let mut n = 0;
    while n < 1000 {
        digits[n * 3] = b'0' + (n / 100) as u8;
        digits[n * 3 + 1] = b'0' + (n / 10 % 10) as u8;
        digits[n * 3 + 2] = b'0' + (n % 10) as u8;
        n += 1;
    }
    digits
};

/// `n` as the value of `slot`'s header. Below 1,000 (most limits, what remains of them, and
/// reset times) it points into a static table. `HeaderValue::from` allocates a buffer for
/// every number, so a larger one is rendered only when it differs from the last one this
/// thread gave the same header.
fn number(slot: Slot, n: u64) -> HeaderValue {
    let small = usize::try_from(n).ok().filter(|&n| n < 1000).and_then(|n| {
        let skip = usize::from(n < 100) + usize::from(n < 10);
        std::str::from_utf8(&THREE_DIGITS[n * 3 + skip..n * 3 + 3]).ok()
    });
    if let Some(digits) = small {
        return HeaderValue::from_static(digits);
    }
    // `try_with`: a thread being torn down has no cache left, and renders every number.
    RENDERED
        .try_with(|rendered| {
            let (last, value) = &mut rendered.borrow_mut()[slot as usize];
            if *last != n {
                (*last, *value) = (n, HeaderValue::from(n));
            }
            value.clone()
        })
        .unwrap_or_else(|_| HeaderValue::from(n))
}

/// The layer: 429 when the caller's bucket is empty; `RateLimit-*` on every limited response.
pub fn layer() -> RateLimitLayer {
    RateLimitLayer
}

/// Layer behind [`layer`]; the limiter comes from the request's snapshot.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitLayer;

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit { inner }
    }
}

/// Service behind [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (snapshot, identity, limiter) = match limited(&req) {
            Some((snapshot, identity, limiter)) if limiter.remote().is_none() => {
                // Local: decided here, borrowing from the request.
                let decision = limiter
                    .check_local(identity)
                    .map(|d| d.count(&snapshot.metrics));
                return respond(decision, || self.inner.call(req));
            }
            Some((snapshot, identity, limiter)) => {
                (snapshot.clone(), identity.clone(), limiter.clone())
            }
            None => {
                return ResponseFuture::Inner {
                    inner: self.inner.call(req),
                    decision: None,
                };
            }
        };
        // The Redis round trip happens before the request goes on: the service that was made
        // ready is taken along, a clone stays for the next call (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::Remote {
            future: Box::pin(async move {
                let decision = limiter
                    .check_shared(&identity)
                    .await
                    .map(|d| d.count(&snapshot.metrics));
                respond(decision, || inner.call(req)).await
            }),
        }
    }
}

/// The snapshot, identity and limiter of a request that may be rate limited (protected routes
/// with a limit configured).
fn limited<B>(
    req: &Request<B>,
) -> Option<(
    &Arc<crate::snapshot::Snapshot>,
    &Arc<Identity>,
    &Arc<RateLimiter>,
)> {
    let (context, route) = RequestContext::routed(req)?;
    let identity = context.identity()?;
    let snapshot = &context.snapshot;
    if route.route.access == crate::config::Access::Public {
        return None;
    }
    let limiter = snapshot.limiter.as_ref()?;
    Some((snapshot, identity, limiter))
}

/// A 429 for a refused decision, otherwise the inner call with the decision's headers.
fn respond<F, E>(decision: Option<Decision>, call: impl FnOnce() -> F) -> ResponseFuture<F, E> {
    match decision {
        Some(
            d @ Decision {
                retry_after_secs: Some(retry_after),
                ..
            },
        ) => {
            let mut response = Reject::RateLimited { retry_after }.into_response();
            add_headers(&mut response, &d);
            ResponseFuture::Early {
                response: Some(response),
            }
        }
        decision => ResponseFuture::Inner {
            inner: call(),
            decision,
        },
    }
}

fn add_headers(response: &mut Response<Body>, decision: &Decision) {
    for (name, value) in decision.headers() {
        response.headers_mut().insert(name, value);
    }
}

/// A boxed response future (the Redis path).
type Boxed<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`RateLimit`]: a 429 made up front, the inner response with the
    /// `RateLimit-*` headers added, or (Redis backend) the decision's round trip first.
    #[project = Projected]
    pub enum ResponseFuture<F, E> {
        /// Refused before calling the inner service.
        Early { response: Option<Response<Body>> },
        /// The inner service's response, plus the decision's headers.
        Inner { #[pin] inner: F, decision: Option<Decision> },
        /// Decided in Redis (or by the fallback), then one of the above.
        Remote { future: Boxed<E> },
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Early { response } => Poll::Ready(Ok(response
                .take()
                // Polled after completion: a bug in the caller; answer rather than panic.
                .unwrap_or_else(|| Reject::Internal.into_response()))),
            Projected::Inner { inner, decision } => {
                let mut response = ready!(inner.poll(cx))?;
                if let Some(decision) = decision {
                    add_headers(&mut response, decision);
                }
                Poll::Ready(Ok(response))
            }
            Projected::Remote { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::config::Config;

    #[test]
    fn numbers_are_written_as_decimal_header_values() {
        let large = [9_999, 1_000_000_000, u64::from(u32::MAX), u64::MAX];
        for n in (0..=1500).chain(large) {
            for slot in [Slot::Limit, Slot::Remaining, Slot::Reset] {
                assert_eq!(number(slot, n), n.to_string().as_str(), "{n} {slot:?}");
            }
        }
    }

    #[test]
    fn each_header_keeps_its_own_last_large_number() {
        // Interleaved as for a limit of 10,000 and a bucket that drains and refills: the
        // limit's rendering is reused (the same bytes), and the other headers' numbers are
        // rendered anew whenever they change, also back and forth.
        let limit = number(Slot::Limit, 10_000);
        for remaining in [9_999, 9_998, 9_998, 1_000, 999, 5_000, 9_999] {
            let again = number(Slot::Limit, 10_000);
            assert_eq!(again, "10000");
            assert_eq!(again.as_bytes().as_ptr(), limit.as_bytes().as_ptr());
            let reset = 10_000 - remaining;
            assert_eq!(
                number(Slot::Remaining, remaining),
                remaining.to_string().as_str()
            );
            assert_eq!(number(Slot::Reset, reset), reset.to_string().as_str());
        }
    }

    fn limits(toml: &str) -> RateLimits {
        Config::from_toml_str(&format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}"))
            .unwrap()
            .rate_limits
    }

    fn who(sub: &str, uid: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            sub: sub.into(),
            uid: uid.map(Into::into),
            cid: Some("client".into()),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            scopes: vec![],
            exp: 0,
            claims: BTreeMap::new(),
        }
    }

    const LIMITS: &str = r#"
[rate_limits]
default = { requests = 5, per = "1m" }
[rate_limits.groups]
slow = { requests = 1, per = "1s" }
fast = { requests = 100, per = "1s" }
bursty = { requests = 60, per = "1m", burst = 500 }
shared = { requests = 2, per = "1s", by = "group" }
"#;

    #[test]
    fn the_most_generous_limit_of_the_callers_groups_applies() {
        let l = RateLimiter::with_clock(&limits(LIMITS), FakeRelativeClock::default());
        let table: [(&[&str], Option<&str>); 7] = [
            (&["slow", "fast"], Some("fast")),
            (&["fast", "slow"], Some("fast")),
            // 100/s beats 1/s of sustained rate even with a burst of 500.
            (&["bursty", "fast"], Some("fast")),
            (&["bursty", "slow"], Some("bursty")),
            (&["other", "slow"], Some("slow")),
            (&["other"], None),
            (&[], None),
        ];
        for (groups, want) in table {
            let caller = who("alice", None, groups);
            let s = l.select(&caller).unwrap();
            assert_eq!(s.group, want, "{groups:?}");
        }
        let without_default = RateLimiter::with_clock(
            &limits("[rate_limits.groups]\ng = { requests = 1, per = \"1s\" }"),
            FakeRelativeClock::default(),
        );
        assert_eq!(without_default.select(&who("a", None, &["x"])), None);
    }

    #[test]
    fn buckets_are_keyed_by_uid_then_sub_or_by_group() {
        let l = RateLimiter::with_clock(&limits(LIMITS), FakeRelativeClock::default());
        assert_eq!(
            l.select(&who("alice", Some("00u1"), &["slow"]))
                .unwrap()
                .bucket,
            "00u1"
        );
        assert_eq!(
            l.select(&who("svc", None, &["slow"])).unwrap().bucket,
            "svc"
        );
        assert_eq!(
            l.select(&who("alice", Some("00u1"), &["shared"]))
                .unwrap()
                .bucket,
            "shared"
        );
    }

    #[test]
    fn a_burst_passes_then_429s_say_when_to_retry_and_time_refills() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(
            &limits("[rate_limits]\ndefault = { requests = 3, per = \"3s\" }"),
            clock.clone(),
        );
        let alice = who("alice", None, &[]);
        let remaining: Vec<u32> = (0..3).map(|_| l.check(&alice).unwrap().remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = l.check(&alice).unwrap();
        assert_eq!(refused.retry_after_secs, Some(1));
        assert_eq!((refused.limit, refused.remaining), (3, 0));
        assert_eq!(refused.reset_secs, 3);
        clock.advance(Duration::from_millis(999));
        assert!(l.check(&alice).unwrap().retry_after_secs.is_some());
        clock.advance(Duration::from_millis(1));
        let again = l.check(&alice).unwrap();
        assert_eq!(again.retry_after_secs, None);
        assert_eq!(again.remaining, 0);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(
            &limits("[rate_limits]\ndefault = { requests = 1, per = \"90s\" }"),
            clock.clone(),
        );
        let alice = who("alice", None, &[]);
        assert!(l.check(&alice).unwrap().retry_after_secs.is_none());
        assert_eq!(l.check(&alice).unwrap().retry_after_secs, Some(90));
        clock.advance(Duration::from_millis(89_500));
        assert_eq!(l.check(&alice).unwrap().retry_after_secs, Some(1));
    }

    #[test]
    fn subjects_are_isolated_and_a_group_bucket_is_shared() {
        let l = RateLimiter::with_clock(&limits(LIMITS), FakeRelativeClock::default());
        let (a, b) = (who("a", None, &["slow"]), who("b", None, &["slow"]));
        assert!(l.check(&a).unwrap().retry_after_secs.is_none());
        assert!(l.check(&a).unwrap().retry_after_secs.is_some());
        assert!(
            l.check(&b).unwrap().retry_after_secs.is_none(),
            "b has its own bucket"
        );
        let (c, d) = (who("c", None, &["shared"]), who("d", None, &["shared"]));
        assert!(l.check(&c).unwrap().retry_after_secs.is_none());
        assert!(l.check(&d).unwrap().retry_after_secs.is_none());
        assert!(
            l.check(&c).unwrap().retry_after_secs.is_some(),
            "the group's bucket is empty"
        );
    }

    #[test]
    fn refilled_buckets_are_dropped_and_the_cap_bounds_new_callers() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(
            &limits(
                "[rate_limits]\nmax_tracked_callers = 100\ndefault = { requests = 1, per = \"10s\" }",
            ),
            clock.clone(),
        );
        for i in 0..100 {
            assert!(
                l.check(&who(&format!("u{i}"), None, &[]))
                    .unwrap()
                    .retry_after_secs
                    .is_none()
            );
        }
        assert_eq!(l.tracked_callers(), 100);
        // Beyond the cap, new callers share one overflow bucket: the first passes, the next is
        // refused, and nothing more is tracked.
        assert!(
            l.check(&who("new-1", None, &[]))
                .unwrap()
                .retry_after_secs
                .is_none()
        );
        assert!(
            l.check(&who("new-2", None, &[]))
                .unwrap()
                .retry_after_secs
                .is_some()
        );
        assert_eq!(l.tracked_callers(), 100);
        // Tracked callers keep their own buckets.
        assert!(
            l.check(&who("u0", None, &[]))
                .unwrap()
                .retry_after_secs
                .is_some()
        );
        // governor keeps a key one replenish interval past the moment its bucket is full.
        clock.advance(Duration::from_secs(20));
        l.retain_recent();
        assert_eq!(
            l.tracked_callers(),
            0,
            "full buckets are indistinguishable from new ones"
        );
        assert!(
            l.check(&who("new-2", None, &[]))
                .unwrap()
                .retry_after_secs
                .is_none()
        );
        assert_eq!(l.tracked_callers(), 1);
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_limits_only() {
        let before = RateLimiter::new(&limits(LIMITS));
        let alice = who("alice", None, &["slow"]);
        let carol = who("carol", None, &["fast"]);
        assert!(before.check(&alice).unwrap().retry_after_secs.is_none());
        assert!(before.check(&carol).unwrap().retry_after_secs.is_none());
        let changed = LIMITS.replace("fast = { requests = 100", "fast = { requests = 50");
        let after = RateLimiter::reusing(&limits(&changed), Some(&before));
        assert!(
            after.check(&alice).unwrap().retry_after_secs.is_some(),
            "slow kept its state"
        );
        assert_eq!(
            after.check(&carol).unwrap().remaining,
            49,
            "fast started afresh"
        );
    }

    #[test]
    fn callers_with_a_non_full_bucket_are_kept() {
        let clock = FakeRelativeClock::default();
        let l = RateLimiter::with_clock(
            &limits("[rate_limits]\ndefault = { requests = 2, per = \"10s\" }"),
            clock.clone(),
        );
        l.check(&who("a", None, &[]));
        clock.advance(Duration::from_secs(1));
        l.retain_recent();
        assert_eq!(l.tracked_callers(), 1);
    }
}

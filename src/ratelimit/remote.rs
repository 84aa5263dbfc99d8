//! SPEC §7: one limit across replicas, decided in Redis.
//!
//! Each decision is one `EVALSHA` of `gcra.lua` (loaded once; redis-rs loads it again on
//! `NOSCRIPT`, after a Redis restart or `SCRIPT FLUSH`) over a multiplexed connection that
//! reconnects by itself ([`ConnectionManager`]). The script runs governor's arithmetic on the
//! Redis server's clock, so replicas with skewed clocks still agree, and every key expires when
//! its bucket is full again.
//!
//! Failure never costs a request more than `redis_timeout`, and never a 5xx: a decision that
//! fails or is late is taken by the replica's local limiter instead, and the replica stays on
//! its local limiter, probing Redis with one request per [`PROBE_INTERVAL`], until Redis
//! answers again. Each transition is logged once and shown by
//! `jwtgate_ratelimit_redis_fallback`. Redis is not a readiness dependency: a replica that
//! cannot reach it at start serves with local limits and keeps trying to connect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::task::JoinHandle;

use super::Decision;
use crate::config::{Limit, RedisBackend};
use crate::lock;
use crate::metrics::Metrics;

/// How long a replica that fell back keeps to its local limiter before asking Redis again,
/// and how often it retries a connection Redis refused.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The GCRA script (see the file for the arithmetic).
const GCRA: &str = include_str!("gcra.lua");

/// Why Redis did not decide.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection yet (Redis unreachable since start).
    #[error("not connected")]
    NotConnected,
    /// No answer within `redis_timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Redis or the connection reported an error.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// The script answered something else than it returns.
    #[error("unexpected reply from the script")]
    Reply,
}

/// What the script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with this many requests left in the bucket.
    Allowed {
        /// Requests left.
        remaining: u32,
    },
    /// Refused; the bucket lets one more request through after this wait.
    Refused {
        /// Time until the next request is allowed.
        wait: Duration,
    },
}

/// The Redis side of the limiter: connection, script and fallback state.
pub struct Remote {
    settings: RedisBackend,
    connection: Arc<ArcSwapOption<ConnectionManager>>,
    script: redis::Script,
    fallback: AtomicBool,
    /// While in fallback: when the next request may probe Redis.
    next_probe: std::sync::Mutex<Instant>,
    metrics: Arc<Metrics>,
    connector: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &redacted(&self.settings.url))
            .field("fallback", &self.fallback.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(connector) = &self.connector {
            connector.abort();
        }
    }
}

impl Remote {
    /// Starts connecting to `settings.url` in the background (retrying every
    /// [`PROBE_INTERVAL`] until Redis accepts); decisions fall back to the local limiter until
    /// then. Outside a tokio runtime nothing connects and every decision is local.
    pub fn connect(settings: &RedisBackend, metrics: Arc<Metrics>) -> Remote {
        let connection = Arc::new(ArcSwapOption::empty());
        let connector = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            runtime.spawn(keep_connecting(
                settings.url.clone(),
                settings.timeout,
                connection.clone(),
            ))
        });
        Remote {
            settings: settings.clone(),
            connection,
            script: redis::Script::new(GCRA),
            // Until the first answer, decisions are local; the first success logs "using Redis".
            fallback: AtomicBool::new(false),
            next_probe: std::sync::Mutex::new(Instant::now()),
            metrics,
            connector,
        }
    }

    /// The settings this connection was made for (a reload with the same ones keeps it).
    pub fn settings(&self) -> &RedisBackend {
        &self.settings
    }

    /// Whether decisions are currently taken locally because Redis failed.
    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Relaxed)
    }

    /// The key of `bucket` under the limit `limit_name`: the prefix, then the limit's name
    /// length-prefixed, so no group name and subject can combine into another pair's key.
    pub fn key(&self, limit_name: &str, bucket: &str) -> String {
        format!(
            "{}{}:{limit_name}:{bucket}",
            self.settings.key_prefix,
            limit_name.len()
        )
    }

    /// Whether this request should ask Redis: always when Redis is healthy; in fallback, one
    /// request per [`PROBE_INTERVAL`].
    pub fn should_ask(&self) -> bool {
        if !self.in_fallback() {
            return true;
        }
        let mut next = lock(&self.next_probe);
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + PROBE_INTERVAL;
        true
    }

    /// Asks Redis for a decision on `limit` for the bucket `key`, within `redis_timeout`;
    /// `now_micros` replaces the Redis server's clock (tests).
    ///
    /// # Errors
    ///
    /// A [`Failure`]; the caller decides locally instead.
    pub async fn verdict(
        &self,
        key: &str,
        limit: &Limit,
        now_micros: Option<u64>,
    ) -> Result<Verdict, Failure> {
        let Some(connection) = self.connection.load_full() else {
            return Err(Failure::NotConnected);
        };
        let mut connection = (*connection).clone();
        let interval = super::quota(limit).replenish_interval();
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_us)
            .arg(limit.burst.get())
            .arg(now_micros.map(|n| n.to_string()).unwrap_or_default());
        let timeout = self.settings.timeout;
        let reply: Vec<i64> =
            tokio::time::timeout(timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| Failure::Timeout(timeout))??;
        match reply[..] {
            [1, remaining, _] => Ok(Verdict::Allowed {
                remaining: u32::try_from(remaining).map_err(|_| Failure::Reply)?,
            }),
            [0, _, wait] => Ok(Verdict::Refused {
                wait: Duration::from_micros(u64::try_from(wait).map_err(|_| Failure::Reply)?),
            }),
            _ => Err(Failure::Reply),
        }
    }

    /// Records that Redis answered: leaves fallback (logged once).
    pub fn answered(&self) {
        if self.fallback.swap(false, Ordering::Relaxed) {
            tracing::info!(url = %redacted(&self.settings.url), "Redis answers again: rate limits are shared again");
        }
        self.metrics.ratelimit_redis_fallback.set(0);
    }

    /// Records that Redis did not answer: enters fallback (logged once).
    pub fn failed(&self, failure: &Failure) {
        *lock(&self.next_probe) = Instant::now() + PROBE_INTERVAL;
        if !self.fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                url = %redacted(&self.settings.url),
                error = %failure,
                "Redis rate limiting unavailable: each replica enforces its limits locally until it answers"
            );
        }
        self.metrics.ratelimit_redis_fallback.set(1);
    }

    /// Turns the script's verdict into the decision the layers see (same as the local one).
    pub fn decision(limit: &Limit, verdict: Verdict) -> Decision {
        let interval = super::quota(limit).replenish_interval();
        match verdict {
            Verdict::Allowed { remaining } => Decision::allowed(limit, interval, remaining),
            Verdict::Refused { wait } => Decision::refused(limit, interval, wait),
        }
    }
}

/// Connects, retrying every [`PROBE_INTERVAL`]; once connected, the [`ConnectionManager`]
/// reconnects by itself.
async fn keep_connecting(
    url: String,
    timeout: Duration,
    slot: Arc<ArcSwapOption<ConnectionManager>>,
) {
    // redis-rs builds its rustls config with the process-wide provider: make it aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            // `check` validated the URL; this is a URL redis-rs reads differently.
            tracing::error!(url = %redacted(&url), error = %e, "Redis URL not usable: limits stay local");
            return;
        }
    };
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(PROBE_INTERVAL.max(timeout)))
        .set_response_timeout(Some(PROBE_INTERVAL.max(timeout)))
        .set_number_of_retries(2)
        .set_max_delay(PROBE_INTERVAL);
    let mut first = true;
    loop {
        match client
            .get_connection_manager_with_config(config.clone())
            .await
        {
            Ok(manager) => {
                slot.store(Some(Arc::new(manager)));
                tracing::info!(url = %redacted(&url), "connected to Redis for rate limits");
                return;
            }
            Err(e) => {
                // The first failure says why at the default level (a refused certificate, a
                // wrong password, nothing listening); the retries after it only at debug.
                if std::mem::take(&mut first) {
                    tracing::warn!(url = %redacted(&url), error = %e, retry = ?PROBE_INTERVAL, "cannot connect to Redis for rate limits; retrying");
                } else {
                    tracing::debug!(url = %redacted(&url), error = %e, "Redis connection failed; retrying");
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        }
    }
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redacted("redis://user:secret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(redacted("rediss://cache:6380"), "rediss://cache:6380");
    }
}

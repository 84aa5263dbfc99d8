//! Measures the memory Redis holds per active bucket with `backend = "redis"`.
//!
//! `cargo run --release --example redis_memory -- REDIS_URL [BUCKETS]` (default 100000):
//! charges one request to each of BUCKETS distinct buckets through the gateway's own script
//! and connection, and reports the growth of Redis's `used_memory` divided by BUCKETS, plus
//! the time per decision (sequential, one connection). The keys expire by themselves. Figures
//! go to docs/scaling.md.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwtgate::config::{By, Limit, RedisBackend};
use jwtgate::metrics::Metrics;
use jwtgate::ratelimit::remote::{Failure, Remote};

async fn used_memory(url: &str) -> i64 {
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: redis_memory REDIS_URL [BUCKETS]");
    let buckets: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let remote = Remote::connect(
        &RedisBackend {
            url: url.clone(),
            timeout: Duration::from_secs(5),
            key_prefix: "jwtgate:".into(),
        },
        Arc::new(Metrics::new()),
    );
    // One request per minute, burst 10: a bucket charged once stays in Redis for a minute.
    let limit = Limit {
        requests: NonZeroU32::new(60).unwrap(),
        per: Duration::from_secs(3600),
        burst: NonZeroU32::new(10).unwrap(),
        by: By::Subject,
    };
    let before = used_memory(&url).await;
    let start = Instant::now();
    let mut i = 0;
    while i < buckets {
        // Okta-shaped user ids, as `by = "subject"` keys them.
        let key = remote.key("orders-readers", &format!("00u{i:017x}"));
        match remote.verdict(&key, &limit, None).await {
            Ok(_) => i += 1,
            Err(Failure::NotConnected) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let elapsed = start.elapsed();
    let after = used_memory(&url).await;
    println!(
        "{buckets} buckets: used_memory grew {} KiB, {} bytes per bucket; {:.1} µs per decision",
        (after - before) / 1024,
        (after - before) / i64::try_from(buckets).unwrap(),
        elapsed.as_secs_f64() * 1e6 / buckets as f64
    );
}

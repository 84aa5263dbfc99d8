//! Measures the memory the rate limiter holds per tracked caller.
//!
//! `cargo run --release --example limiter_memory -- [CALLERS]` (default 100000): charges one
//! request for each of CALLERS distinct Okta-shaped user ids and reports the growth of the
//! process's resident memory, then drops the refilled buckets the way the gateway's
//! housekeeping does and reports what is still tracked. Figures go to docs/performance.md.

use std::collections::BTreeMap;

use jwtgate::auth::validate::Identity;
use jwtgate::config::Config;
use jwtgate::ratelimit::RateLimiter;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let callers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let config = Config::from_toml_str(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[rate_limits]\nmax_tracked_callers = {callers}\ndefault = {{ requests = 60, per = \"1s\" }}\n"
    ))
    .expect("valid config");
    let limiter = RateLimiter::new(&config.rate_limits);
    let before = rss_kib();
    for i in 0..callers {
        let identity = Identity {
            sub: format!("user{i}@example.com"),
            // Okta user ids are 20 characters: "00u" and 17 more.
            uid: Some(format!("00u{i:017}")),
            cid: Some("0oa1b2c3d4e5f6g7h8i9".to_owned()),
            groups: Vec::new(),
            scopes: Vec::new(),
            exp: 0,
            claims: BTreeMap::new(),
        };
        limiter.check(&identity);
    }
    let after = rss_kib();
    let tracked = limiter.tracked_callers();
    println!("callers charged:        {callers}");
    println!("callers tracked:        {tracked}");
    println!(
        "resident memory growth: {} KiB",
        after.saturating_sub(before)
    );
    println!(
        "per tracked caller:     {} bytes",
        after.saturating_sub(before) * 1024 / tracked.max(1) as u64
    );
    // Every bucket refills within one second; the gateway drops them every 30 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    limiter.retain_recent();
    println!("tracked after refill:   {}", limiter.tracked_callers());
    println!(
        "resident after refill:  {} KiB (freed memory may stay with the allocator)",
        rss_kib()
    );
}

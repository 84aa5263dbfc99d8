//! Per-group rate limits over real sockets: 429 with `Retry-After`, `RateLimit-*` headers,
//! isolation, shared group buckets, most-generous selection, the default, exact counts under
//! concurrency. Quotas are long (per minute or hour) so no bucket refills during a test; time-
//! dependent behaviour is tested on governor's fake clock in `src/ratelimit.rs`.

use futures_util::future::join_all;

use crate::support::{Harness, ROUTES};

const LIMITS: &str = r#"
[rate_limits]
default = { requests = 3, per = "1h" }

[rate_limits.groups]
orders-readers = { requests = 2, per = "1h" }
admins = { requests = 4, per = "1h", by = "group" }
"#;

async fn harness() -> Harness {
    Harness::with(&format!("{ROUTES}{LIMITS}")).await
}

#[tokio::test]
async fn the_burst_passes_then_429_with_retry_after_and_ratelimit_headers() {
    let h = harness().await;
    let token = h.token("alice"); // orders-readers: 2 per hour
    for remaining in ["1", "0"] {
        let r = h.get_with("/api/orders", &token).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["ratelimit-limit"], "2");
        assert_eq!(r.headers["ratelimit-remaining"], remaining);
        assert!(r.headers.contains_key("ratelimit-reset"));
    }
    let r = h.get_with("/api/orders", &token).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1800).contains(&retry), "{retry}");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert_eq!(h.echo.requests(), 2, "a refused request is not forwarded");
}

#[tokio::test]
async fn each_subject_has_its_own_bucket() {
    let h = harness().await;
    let alice = h.token("alice");
    for _ in 0..2 {
        assert_eq!(h.get_with("/api/orders", &alice).await.status, 200);
    }
    assert_eq!(h.get_with("/api/orders", &alice).await.status, 429);
    // Another user of the same group is not affected; the same user on another route is.
    let mut other = h.issuer.claims_for_user("alice");
    other["sub"] = serde_json::json!("alice2");
    other["uid"] = serde_json::json!("00u-other");
    assert_eq!(
        h.get_with("/api/orders", &h.issuer.sign(&other))
            .await
            .status,
        200
    );
    assert_eq!(
        h.get_with("/api/any", &alice).await.status,
        429,
        "buckets span routes"
    );
}

#[tokio::test]
async fn a_group_bucket_is_shared_and_the_most_generous_group_wins() {
    let h = harness().await;
    // bob is in admins (4/h, one bucket for the group) and orders-readers (2/h): admins wins.
    let bob = h.token("bob");
    let mut bob_twin = h.issuer.claims_for_user("bob");
    bob_twin["sub"] = serde_json::json!("bob-twin");
    bob_twin["uid"] = serde_json::json!("00u-twin");
    let twin = h.issuer.sign(&bob_twin);
    let mut statuses = Vec::new();
    for token in [&bob, &twin, &bob, &twin, &bob] {
        let r = h.get_with("/api/orders", token).await;
        statuses.push(r.status.as_u16());
        if r.status == 200 {
            assert_eq!(r.headers["ratelimit-limit"], "4");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
}

#[tokio::test]
async fn callers_without_a_limited_group_get_the_default() {
    let h = harness().await;
    let nobody = h.token("nobody");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(h.get_with("/api/any", &nobody).await.status.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn exactly_the_burst_passes_out_of_many_simultaneous_requests() {
    let h = Harness::with(&format!(
        "{ROUTES}[rate_limits.groups]\norders-readers = {{ requests = 10, per = \"1h\" }}\n"
    ))
    .await;
    let token = h.token("alice");
    let replies = join_all((0..60).map(|_| h.get_with("/api/orders", &token))).await;
    let passed = replies.iter().filter(|r| r.status == 200).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((passed, limited), (10, 50));
    assert_eq!(h.echo.requests(), 10);
}

#[tokio::test]
async fn public_routes_and_unlimited_callers_carry_no_ratelimit_headers() {
    let h = Harness::with(&format!(
        "{ROUTES}[rate_limits.groups]\nadmins = {{ requests = 1, per = \"1h\" }}\n"
    ))
    .await;
    for _ in 0..5 {
        let r = h.get("/public/x").await;
        assert_eq!(r.status, 200);
        assert!(!r.headers.contains_key("ratelimit-limit"));
        let r = h.get_with("/api/orders", &h.token("alice")).await;
        assert_eq!(
            r.status, 200,
            "alice's groups have no limit and there is no default"
        );
        assert!(!r.headers.contains_key("ratelimit-limit"));
    }
}

#[tokio::test]
async fn limits_of_a_thousand_and_more_are_written_exactly() {
    // Values of 1,000 and more are rendered, not taken from the static table; each header
    // keeps its last one per thread. Two callers with different large limits (bob is in both
    // groups, and admins is the more generous), interleaved, make every header change value
    // from one response to the next.
    let h = Harness::with(&format!(
        "{ROUTES}[rate_limits.groups]\norders-readers = {{ requests = 5000, per = \"1h\" }}\n\
         admins = {{ requests = 6000, per = \"1h\", by = \"group\" }}\n"
    ))
    .await;
    let (alice, bob) = (h.token("alice"), h.token("bob"));
    for n in 1..=3 {
        for (token, limit) in [(&alice, 5000), (&bob, 6000)] {
            let r = h.get_with("/api/orders", token).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.headers["ratelimit-limit"], limit.to_string().as_str());
            let remaining = (limit - n).to_string();
            assert_eq!(r.headers["ratelimit-remaining"], remaining.as_str());
        }
    }
}
